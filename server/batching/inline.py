"""Which lone batches run on the caller's event loop instead of a batch thread.

A batch that closes early (``arrivals.py``: opened by a lone request, every request in flight
to its model joined) costs a hop to a batch thread and an answer back through the event loop,
which for a call of a few microseconds costs more than the call (issue 28: batched at one
client 0.78x of unbatched on half_plus_two over gRPC). The unbatched path runs such calls on
the loop already (``servable.unbatched_async``); a queue decides the same way, with the same
numbers: its lone batches run on the loop of the request that closed them once the fastest of
``INLINE_AFTER`` one-request batches on the batch threads took under ``INLINE_MAX_SECONDS``
(the fastest: a batch thread's clock also counts its waits for the GIL), and go back to the
batch threads after two runs in a row on the loop took ``DEMOTE_FACTOR`` times longer (one may
be the thread descheduled on a busy machine). A slow signature's lone batch stays on the batch
threads, so the loop keeps serving while it runs.

Samples come from the batch threads and the loops without a lock: a lost sample or a flip
decided on one sample fewer only delays the choice by a batch.
"""

from __future__ import annotations

from pyserving.server.servable import DEMOTE_FACTOR, INLINE_AFTER, INLINE_MAX_SECONDS


class CallTimes:
    """A queue's batch run times, and whether its lone batches run on the caller's loop."""

    __slots__ = ("_samples", "_slow_in_a_row", "fast")

    def __init__(self) -> None:
        self.fast = False
        self._samples: list[float] = []
        self._slow_in_a_row = 0

    def ran_on_thread(self, seconds: float) -> None:
        """A batch of one request ran on a batch thread in ``seconds``."""
        samples = self._samples
        samples.append(seconds)
        if len(samples) >= INLINE_AFTER:
            self.fast = min(samples) < INLINE_MAX_SECONDS
            samples.clear()

    def ran_inline(self, seconds: float) -> None:
        """A lone batch ran on the caller's loop in ``seconds``."""
        if seconds < INLINE_MAX_SECONDS * DEMOTE_FACTOR:
            self._slow_in_a_row = 0
        elif self._slow_in_a_row >= 1:
            self.fast = False
            self._slow_in_a_row = 0
            self._samples.clear()
        else:
            self._slow_in_a_row = 1
