"""Where TensorFlow runs a call's graph: on its inter-op thread pool, or in the calling thread.

TensorFlow's default hands every op of a graph to its inter-op pool and wakes the caller when
the graph is done: two thread switches per call at least, one per op on a chain of ops. For a
graph of microseconds that hand-off is most of the call (the tiny model: 58 us a call through
the pool, 12 us in the caller's thread); a graph whose ops could run side by side gains from the
pool. ``RunModes`` measures both for each signature (the set of tensors a call fetches): its
first calls alternate the two modes, then the faster one (by the fastest call of each: the one
least disturbed by other load) is kept. It does not import TensorFlow; ``saved_model.py``
turns the choice into ``RunOptions.inter_op_thread_pool = -1`` (TensorFlow runs a graph of one
device partition in the caller's thread; one with more, e.g. on a GPU, on the pool anyway).

Only when the operator left the inter-op pool to TensorFlow (``--tensorflow_inter_op_parallelism``
0, the default): an explicit size keeps every call on the pool, -1 runs every call in the caller.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

# Calls of each mode measured before a signature's mode is chosen (they alternate).
SAMPLES = 8
# TensorFlow cannot stop a graph running in the caller's thread at the request's deadline
# (RunOptions.timeout_in_ms), so only short graphs run there: a signature whose fastest call
# there took this long or more stays on the pool, and a call there that takes longer sends its
# signature back to be measured again.
CALLER_MAX_SECONDS = 0.005


class RunModes:
    """Per signature: True when its calls should run in the calling thread. Thread-safe enough:
    a race between two measuring calls loses a sample, never a decision."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter,
                 samples: int = SAMPLES) -> None:
        self.clock = clock
        self._samples = samples
        self._chosen: dict[Hashable, bool] = {}
        # per signature still measured: the fastest call of each mode, and calls made
        self._fastest: dict[Hashable, list[float]] = {}
        self._calls: dict[Hashable, int] = {}

    def chosen(self, key: Hashable) -> bool | None:
        """The mode chosen for ``key`` (True: the caller's thread), None while measuring."""
        return self._chosen.get(key)

    def took(self, key: Hashable, seconds: float) -> None:
        """A call of ``key`` in the caller's thread took ``seconds``: too long, measure again."""
        if seconds > CALLER_MAX_SECONDS:
            self._chosen.pop(key, None)

    def next_mode(self, key: Hashable) -> bool:
        """The mode of ``key``'s next measured call: they alternate, caller's thread second."""
        return self._calls.get(key, 0) % 2 == 1

    def record(self, key: Hashable, in_caller: bool, seconds: float) -> None:
        """Count a measured call; choose once each mode has ``samples`` calls."""
        fastest = self._fastest.setdefault(key, [float("inf"), float("inf")])
        fastest[in_caller] = min(fastest[in_caller], seconds)
        calls = self._calls[key] = self._calls.get(key, 0) + 1
        if calls >= 2 * self._samples:
            pool, caller = fastest
            self._chosen[key] = caller < pool and caller < CALLER_MAX_SECONDS
            # two threads may both finish the count: neither may fail a request
            self._fastest.pop(key, None)
            self._calls.pop(key, None)
