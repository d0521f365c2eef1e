"""The metrics page in TF Serving's own text (util/prometheus_exporter.cc GeneratePage), drawn
from prometheus-client's collected samples, which only store the values.

Per metric, sorted by TF Serving's name: ``# TYPE <name> counter|gauge|histogram``, then one
line per point (label values in declaration order, sorted): ``<name>{l="v"} <int>`` for a
counter or gauge; ``_bucket{...,le="<%g>"}`` cumulative counts ending with ``le="+Inf"``,
``_sum{...} <%g>`` and ``_count{...} <int>`` for a histogram. No HELP lines, no ``_created``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from prometheus_client import Histogram
from prometheus_client.metrics_core import Metric

CONTENT_TYPE = "text/plain"  # http_server.cc ProcessPrometheusRequest
COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"


@dataclass(frozen=True)
class MetricLayout:
    """How TF Serving declares a metric: Counter, Gauge or Sampler, and its label names."""

    kind: str
    labels: tuple[str, ...] = ()


class SamplerHistogram(Histogram):
    """A histogram that buckets as TF's monitoring::Sampler does: a value goes to the first
    bucket whose limit is *above* it (upper_bound), so a batch of 2 is not under le="2"."""

    def observe(self, amount: float, exemplar: object = None) -> None:  # noqa: ARG002
        self._raise_if_not_observable()
        self._sum.inc(amount)
        for bucket, bound in zip(self._buckets, self._upper_bounds):
            if amount < bound or bound == math.inf:
                bucket.inc(1)
                break


@dataclass
class _Point:
    value: float = 0.0
    total: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)


def render(families: Iterable[Metric], layouts: Mapping[str, MetricLayout]) -> bytes:
    """The page for every metric in ``layouts`` (exported name -> layout), values from
    ``families``; a declared metric without points still gets its TYPE line, as in TF."""
    points: dict[str, dict[tuple[str, ...], _Point]] = {name: {} for name in layouts}
    for family in families:
        layout = layouts.get(family.name)
        if layout is not None:
            _add_samples(family, layout, points[family.name])
    lines: list[str] = []
    # TF's std::map holds the metrics by their "/tensorflow/..." names.
    for name in sorted(layouts, key=lambda exported: exported.replace(":", "/")):
        layout = layouts[name]
        lines.append(f"# TYPE {name} {layout.kind}")
        for values, point in sorted(points[name].items()):
            labels = [f'{label}="{_escape(value)}"' for label, value in zip(layout.labels, values)]
            if layout.kind == HISTOGRAM:
                lines.extend(_histogram_lines(name, labels, point))
            else:
                lines.append(f"{name}{{{','.join(labels)}}} {int(point.value)}")
    return ("\n".join(lines) + "\n").encode()


def _add_samples(family: Metric, layout: MetricLayout,
                 points: dict[tuple[str, ...], _Point]) -> None:
    for sample in family.samples:
        values = tuple(sample.labels.get(label, "") for label in layout.labels)
        suffix = sample.name[len(family.name):]
        if layout.kind != HISTOGRAM:
            if suffix == "":
                points.setdefault(values, _Point()).value += sample.value
        elif suffix == "_bucket":
            limit = float(sample.labels["le"])
            point = points.setdefault(values, _Point())
            point.buckets[limit] = point.buckets.get(limit, 0.0) + sample.value
        elif suffix == "_sum":
            points.setdefault(values, _Point()).total += sample.value
    if layout.kind == HISTOGRAM and not layout.labels:
        # A Sampler<0>'s one cell is made by its first sample; before that it has no point.
        for values in [v for v, point in points.items() if not any(point.buckets.values())]:
            del points[values]


def _histogram_lines(name: str, labels: list[str], point: _Point) -> list[str]:
    joined = ",".join(labels)
    prefix = f"{name}_bucket{{{joined}{',' if labels else ''}"
    lines = []
    count = 0
    for limit, cumulative in sorted(point.buckets.items()):
        count = int(cumulative)
        le = "+Inf" if limit == math.inf else _six_digits(limit)
        lines.append(f'{prefix}le="{le}"}} {count}')
    lines.append(f"{name}_sum{{{joined}}} {_six_digits(point.total)}")
    lines.append(f"{name}_count{{{joined}}} {count}")
    return lines


def _six_digits(number: float) -> str:
    """absl::StrCat of a double: printf's %g (six significant digits)."""
    return "%g" % number


def _escape(value: str) -> str:
    """SanitizeLabelValue: only backslash and double quote are escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"')
