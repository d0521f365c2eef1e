"""run_mode.RunModes: each signature's first calls alternate TensorFlow's pool and the calling
thread; the faster (by the fastest call of each) is kept; a long call in the caller's thread
sends the signature back to be measured."""

from __future__ import annotations

from pyserving.server.run_mode import CALLER_MAX_SECONDS, RunModes

KEY = ("y:0",)


def measure(modes: RunModes, pool: float, caller: float, key: object = KEY) -> None:
    while modes.chosen(key) is None:
        in_caller = modes.next_mode(key)
        modes.record(key, in_caller, caller if in_caller else pool)


def test_calls_alternate_until_each_mode_has_its_samples():
    modes = RunModes(samples=3)
    seen = []
    while modes.chosen(KEY) is None:
        in_caller = modes.next_mode(KEY)
        seen.append(in_caller)
        modes.record(KEY, in_caller, 0.001)
    assert seen == [False, True, False, True, False, True]


def test_a_graph_faster_in_the_calling_thread_runs_there():
    modes = RunModes(samples=4)
    measure(modes, pool=0.000058, caller=0.000012)
    assert modes.chosen(KEY) is True


def test_a_graph_faster_on_the_pool_stays_there():
    modes = RunModes(samples=4)
    measure(modes, pool=0.0004, caller=0.0009)
    assert modes.chosen(KEY) is False


def test_the_fastest_call_of_each_mode_decides_not_one_slow_outlier():
    modes = RunModes(samples=3)
    times = {False: [0.00006, 0.02, 0.00007], True: [0.05, 0.00001, 0.00002]}
    while modes.chosen(KEY) is None:
        in_caller = modes.next_mode(KEY)
        modes.record(KEY, in_caller, times[in_caller].pop(0))
    assert modes.chosen(KEY) is True


def test_a_long_graph_stays_on_the_pool_even_when_faster_in_the_caller():
    # TensorFlow cannot stop a graph in the caller's thread at the request's deadline
    modes = RunModes(samples=2)
    measure(modes, pool=CALLER_MAX_SECONDS * 3, caller=CALLER_MAX_SECONDS * 2)
    assert modes.chosen(KEY) is False


def test_a_long_call_in_the_calling_thread_sends_the_signature_back_to_be_measured():
    modes = RunModes(samples=2)
    measure(modes, pool=0.0001, caller=0.00001)
    modes.took(KEY, CALLER_MAX_SECONDS / 2)
    assert modes.chosen(KEY) is True
    modes.took(KEY, CALLER_MAX_SECONDS * 2)
    assert modes.chosen(KEY) is None
    measure(modes, pool=CALLER_MAX_SECONDS * 4, caller=CALLER_MAX_SECONDS * 3)
    assert modes.chosen(KEY) is False


def test_each_signature_is_measured_on_its_own():
    modes = RunModes(samples=2)
    measure(modes, pool=0.0001, caller=0.00001, key=("a:0",))
    measure(modes, pool=0.0001, caller=0.0003, key=("b:0",))
    assert (modes.chosen(("a:0",)), modes.chosen(("b:0",))) == (True, False)
    assert modes.chosen(("c:0",)) is None


def test_a_call_reporting_after_the_decision_does_not_undo_it():
    # a call that began measuring before the decision reports after it (another thread)
    modes = RunModes(samples=2)
    measure(modes, pool=0.0001, caller=0.00001)
    modes.record(KEY, False, 0.0001)
    modes.record(KEY, True, 0.00001)
    assert modes.chosen(KEY) is True
