"""Replay a request log against a server (pyserving or TF Serving) and compare each answer with
the one logged: per-output max difference and mismatch count (as ``compare`` reports them),
latency percentiles, errors. A record without a response (a warmup file's) is sent and timed
but not compared.

Requests go out ``concurrency`` at a time, or, with ``rate``, at that many per second
(open loop: a slow answer does not delay the next request).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pyserving.client.compare import OutputDiff
from pyserving.client.errors import PredictionError
from pyserving.client.prediction_logs import PredictionLog, answer_arrays, retargeted
from pyserving.client.sync_client import PredictionClient

MAX_RATE_WORKERS = 64


@dataclass
class ReplayReport:
    max_abs_diff: float
    requests: int = 0
    compared: int = 0
    mismatched: int = 0  # requests with an output beyond the tolerance (or of another shape)
    failed: int = 0
    errors: list[str] = field(default_factory=list)  # the first few
    outputs: dict[str, OutputDiff] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # seconds, answered requests
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def passed(self) -> bool:
        return self.requests > 0 and not self.failed and not self.mismatched

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies, q)) if self.latencies else None

    def add(self, number: int, kind: str, logged: Any, answer: Any, seconds: float) -> None:
        with self._lock:
            self.requests += 1
            if isinstance(answer, PredictionError):
                self.failed += 1
                if len(self.errors) < 5:
                    self.errors.append(f"record {number}: {answer}")
                return
            self.latencies.append(seconds)
            if logged is None:
                return
            self.compared += 1
            expected, got = answer_arrays(kind, logged), answer_arrays(kind, answer)
            differs = False
            for name in sorted(expected.keys() | got.keys()):
                diff = self.outputs.setdefault(name, OutputDiff(name))
                before = (diff.differing, len(diff.problems))
                if name not in expected or name not in got:
                    diff.problems.append("only the " + ("log" if name in expected else
                                                        "answer") + " has it")
                else:
                    diff.add(expected[name], got[name], self.max_abs_diff, 0.0)
                differs = differs or (diff.differing, len(diff.problems)) != before
            self.mismatched += differs

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed, "requests": self.requests, "compared": self.compared,
            "mismatched": self.mismatched, "failed": self.failed, "errors": self.errors,
            "max_abs_diff": self.max_abs_diff, "seconds": round(self.seconds, 3),
            "requests_per_second": round(self.requests / self.seconds, 1)
            if self.seconds else None,
            "latency_ms": {f"p{q}": _ms(self.percentile(q)) for q in (50, 90, 99)},
            "outputs": {name: {"max_abs_diff": d.max_abs, "differing": d.differing,
                               "elements": d.elements, "problems": d.problems[:5]}
                        for name, d in self.outputs.items()},
        }

    def format(self) -> str:
        lines = [f"{self.requests} requests in {self.seconds:.2f} s: {self.compared} compared, "
                 f"{self.mismatched} mismatched, {self.failed} failed", "",
                 f"{'output':<24} {'max abs diff':>12} {'differing':>14}"]
        for name, d in self.outputs.items():
            lines.append(f"{name:<24} {d.max_abs:>12.4g} {f'{d.differing}/{d.elements}':>14}"
                         + (f"  {d.problems[0]}" if d.problems else ""))
        latency = "  ".join(f"p{q} {_cell(_ms(self.percentile(q)))} ms" for q in (50, 90, 99))
        lines += ["", f"latency: {latency}", *self.errors]
        lines.append("PASS" if self.passed else
                     f"FAIL: {self.mismatched} mismatched, {self.failed} failed"
                     f" (max_abs_diff={self.max_abs_diff:g})")
        return "\n".join(lines)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def replay(client: PredictionClient, records: Iterable[PredictionLog], *,
           version: int | None = None, label: str | None = None, max_abs_diff: float = 1e-6,
           concurrency: int = 1, rate: float | None = None) -> ReplayReport:
    """Send every record's request (to ``version``/``label`` if given) and compare."""
    report = ReplayReport(max_abs_diff)

    def send(number: int, record: PredictionLog) -> None:
        kind = record.WhichOneof("log_type")
        if kind is None:
            return
        entry = getattr(record, kind)
        request = retargeted(record, version, label)
        started = time.perf_counter()
        try:
            answer: Any = client.send(request)
        except PredictionError as error:
            answer = error
        seconds = time.perf_counter() - started
        report.add(number, kind, entry.response if entry.HasField("response") else None,
                   answer, seconds)

    workers = MAX_RATE_WORKERS if rate else max(concurrency, 1)
    started = time.perf_counter()
    with ThreadPoolExecutor(workers, thread_name_prefix="replay") as pool:
        pending: list[Future[None]] = []
        for number, record in enumerate(records):
            if rate:
                delay = started + number / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            pending.append(pool.submit(send, number, record))
            if len(pending) >= 4 * workers:  # bounded: the log may be long
                pending[0].result()
                pending = [future for future in pending if not future.done()]
        for future in pending:
            future.result()
    report.seconds = time.perf_counter() - started
    return report
