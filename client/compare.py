"""Rollout testing: replay requests against two versions (or labels) of a model and compare
their outputs and latencies.

A side is a version or a label (``version=1``, ``label=canary``), optionally with another
``model=`` or ``signature=``. Side a is the baseline: an element differs when
``|b - a| > atol + rtol * |a|``; outputs that are not floats must be equal.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pyserving.client.errors import PredictionError
from pyserving.client.replay import ReplayRequest
from pyserving.client.sync_client import PredictionClient


@dataclass(frozen=True)
class Side:
    """Which servable answers: a model, and a version, a label or neither (the latest)."""

    model: str
    version: int | None = None
    label: str | None = None
    signature: str | None = None

    @classmethod
    def parse(cls, text: str, model: str) -> Side:
        """``version=N``, ``label=L``, optionally with ``,model=M`` and ``,signature=S``."""
        fields: dict[str, Any] = {"model": model}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, separator, value = item.partition("=")
            if not separator or key not in ("version", "label", "model", "signature"):
                raise ValueError(f"bad side {text!r}: expected version=N or label=L, "
                                 "optionally with ,model=M ,signature=S")
            fields[key] = int(value) if key == "version" else value
        if "version" in fields and "label" in fields:
            raise ValueError(f"bad side {text!r}: a version or a label, not both")
        return cls(**fields)

    def describe(self) -> str:
        choice = f"version {self.version}" if self.version is not None else \
            f"label {self.label}" if self.label is not None else "latest"
        return f"{self.model} {choice}" + (f" ({self.signature})" if self.signature else "")


@dataclass
class OutputDiff:
    """How one output differs over all requests."""

    name: str
    elements: int = 0
    differing: int = 0  # elements outside the tolerance (or unequal, for non-numbers)
    max_abs: float = 0.0
    max_rel: float = 0.0
    argmax_rows: int = 0  # rows of 2-D float (score) outputs compared by argmax
    argmax_agreeing: int = 0
    problems: list[str] = field(default_factory=list)  # shape, dtype or presence mismatches

    @property
    def argmax_agreement(self) -> float | None:
        return self.argmax_agreeing / self.argmax_rows if self.argmax_rows else None

    def add(self, a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> None:
        if a.shape != b.shape:
            self.problems.append(f"shape {a.shape} vs {b.shape}")
            return
        if a.dtype != b.dtype:
            self.problems.append(f"dtype {a.dtype} vs {b.dtype}")
            return
        self.elements += a.size
        if a.dtype.kind not in "fc" or not a.size:
            self.differing += int(np.count_nonzero(a != b))
            return
        a64, b64 = a.astype(np.complex128 if a.dtype.kind == "c" else np.float64), \
            b.astype(np.complex128 if b.dtype.kind == "c" else np.float64)
        both_nan = np.isnan(a64) & np.isnan(b64)
        diff = np.where(both_nan, 0.0, np.abs(b64 - a64))
        scale = np.abs(a64)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(diff == 0, 0.0, diff / scale)
        self.differing += int(np.count_nonzero(~(diff <= atol + rtol * scale)))
        self.max_abs = max(self.max_abs, float(np.nanmax(np.where(np.isnan(diff), np.inf,
                                                                  diff))))
        self.max_rel = max(self.max_rel, float(np.nanmax(np.where(np.isnan(rel), np.inf,
                                                                  rel))))
        if a.ndim == 2 and a.shape[1] > 1 and a.dtype.kind == "f":
            self.argmax_rows += a.shape[0]
            self.argmax_agreeing += int(np.count_nonzero(a.argmax(1) == b.argmax(1)))


@dataclass
class SideStats:
    side: Side
    latencies: list[float] = field(default_factory=list)  # seconds, successful calls
    errors: int = 0

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies, q)) if self.latencies else None


@dataclass
class Report:
    atol: float
    rtol: float
    min_argmax_agreement: float | None
    a: SideStats
    b: SideStats
    requests: int = 0
    compared: int = 0  # requests both sides answered
    outputs: dict[str, OutputDiff] = field(default_factory=dict)
    one_sided_errors: list[str] = field(default_factory=list)  # first few, as "side: error"
    one_sided_error_count: int = 0

    @property
    def failures(self) -> list[str]:
        """Why the comparison fails; empty when b matches a."""
        reasons = []
        if not self.compared:
            reasons.append("no request succeeded on both sides")
        if self.one_sided_error_count:
            reasons.append(f"{self.one_sided_error_count} requests failed on one side only")
        for diff in self.outputs.values():
            if diff.problems:
                reasons.append(f"output {diff.name}: {diff.problems[0]}")
            if diff.differing:
                reasons.append(f"output {diff.name}: {diff.differing} of {diff.elements} "
                               f"values outside atol={self.atol:g} rtol={self.rtol:g}")
            agreement = diff.argmax_agreement
            if self.min_argmax_agreement is not None and agreement is not None \
                    and agreement < self.min_argmax_agreement:
                reasons.append(f"output {diff.name}: argmax agreement {agreement:.2%} below "
                               f"{self.min_argmax_agreement:.2%}")
        return reasons

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        def side(stats: SideStats) -> dict[str, Any]:
            return {**asdict(stats.side), "p50_ms": _ms(stats.percentile(50)),
                    "p99_ms": _ms(stats.percentile(99)), "errors": stats.errors}
        return {
            "passed": self.passed, "failures": self.failures, "requests": self.requests,
            "compared": self.compared,
            "atol": self.atol, "rtol": self.rtol, "a": side(self.a), "b": side(self.b),
            "outputs": {name: {"max_abs_diff": d.max_abs, "max_rel_diff": d.max_rel,
                               "differing": d.differing, "elements": d.elements,
                               "argmax_agreement": d.argmax_agreement,
                               "problems": d.problems[:5]}
                        for name, d in self.outputs.items()},
            "one_sided_errors": self.one_sided_errors,
        }

    def format(self) -> str:
        lines = [f"a = {self.a.side.describe()}   b = {self.b.side.describe()}   "
                 f"{self.requests} requests", "",
                 f"{'output':<20} {'max abs diff':>12} {'max rel diff':>12} "
                 f"{'differing':>14} {'argmax agree':>12}"]
        for name, d in self.outputs.items():
            agreement = d.argmax_agreement
            lines.append(f"{name:<20} {d.max_abs:>12.4g} {d.max_rel:>12.4g} "
                         f"{f'{d.differing}/{d.elements}':>14} "
                         f"{'-' if agreement is None else f'{agreement:.2%}':>12}")
        lines += ["", f"{'side':<6} {'p50 ms':>10} {'p99 ms':>10} {'errors':>8}"]
        for label, stats in (("a", self.a), ("b", self.b)):
            p50, p99 = _ms(stats.percentile(50)), _ms(stats.percentile(99))
            lines.append(f"{label:<6} {_cell(p50):>10} {_cell(p99):>10} {stats.errors:>8}")
        lines += ["", *self.one_sided_errors]
        lines.append("PASS" if self.passed else "FAIL: " + "; ".join(self.failures))
        return "\n".join(lines)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _call(client: PredictionClient, side: Side, request: ReplayRequest,
          stats: SideStats) -> dict[str, np.ndarray] | PredictionError:
    started = time.perf_counter()
    try:
        outputs = client.predict(side.model, request.inputs, version=side.version,
                                 label=side.label, signature=side.signature or request.signature,
                                 output_filter=request.output_filter or None)
    except PredictionError as error:
        stats.errors += 1
        return error
    stats.latencies.append(time.perf_counter() - started)
    return outputs


def compare(client: PredictionClient, a: Side, b: Side, requests: Iterable[ReplayRequest], *,
            atol: float = 1e-6, rtol: float = 1e-5,
            min_argmax_agreement: float | None = None) -> Report:
    """Send every request to both sides (alternating which goes first) and compare."""
    report = Report(atol, rtol, min_argmax_agreement, SideStats(a), SideStats(b))
    for number, request in enumerate(requests):
        if number % 2:
            out_b = _call(client, b, request, report.b)
            out_a = _call(client, a, request, report.a)
        else:
            out_a = _call(client, a, request, report.a)
            out_b = _call(client, b, request, report.b)
        report.requests += 1
        _record(report, number, out_a, out_b)
    return report


def _record(report: Report, number: int, out_a: Any, out_b: Any) -> None:
    if isinstance(out_a, PredictionError) or isinstance(out_b, PredictionError):
        same = isinstance(out_a, PredictionError) and isinstance(out_b, PredictionError) \
            and (out_a.code, out_a.message) == (out_b.code, out_b.message)
        if not same:  # the same error from both sides is the same behaviour
            report.one_sided_error_count += 1
            if len(report.one_sided_errors) < 5:
                which, error = ("a", out_a) if isinstance(out_a, PredictionError) \
                    else ("b", out_b)
                report.one_sided_errors.append(f"request {number}: {which}: {error}")
        return
    report.compared += 1
    for name in sorted(out_a.keys() | out_b.keys()):
        diff = report.outputs.setdefault(name, OutputDiff(name))
        if name not in out_a or name not in out_b:
            diff.problems.append(f"only side {'a' if name in out_a else 'b'} returns it")
            continue
        diff.add(out_a[name], out_b[name], report.atol, report.rtol)
