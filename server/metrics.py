"""Prometheus metrics under TF Serving's names, plus the queue/in-flight/state gauges a Triton
user looks for; one registry per ModelServer, whose page prometheus-client writes
(``generate_latest``).

TF Serving exports ``/tensorflow/serving/request_count`` as ``:tensorflow:serving:request_count``
(slashes become colons) and its counters without a ``_total`` suffix. prometheus-client's text
format always adds ``_total`` to a counter's samples, so TF Serving's counters are Gauges here:
their series keep TF Serving's names (what queries and alerts use), their TYPE line says gauge.
TF's Samplers are Histograms with the same bucket limits; a value equal to a limit counts under
that ``le``, as Prometheus defines it (TF counts it under the next one).

With ``--workers N`` every worker process keeps its values in prometheus-client's multiprocess
files (``use_multiprocess_dir``) and any worker's page sums them: counters and histograms over
every worker that ran (a restarted worker's counts stay), in-flight requests over live workers.
Version states and batch queue depths are computed at scrape time by the answering worker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import grpc
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from pyserving.client.protos.pyserving.monitoring_config_pb2 import MonitoringConfig
from pyserving.server.batching.arrivals import ModelTraffic, Traffic
from pyserving.server.batching.batcher import BatchRun
from pyserving.server.config import parse_proto_text_file
from pyserving.server.errors import ServingError
from pyserving.server.manager import ModelEvent, ModelManager
from pyserving.server.rollout.state import Rollouts

log = logging.getLogger(__name__)
events_log = logging.getLogger("pyserving.server.events")

DEFAULT_PATH = "/monitoring/prometheus/metrics"
GRPC, REST = "GRPC", "REST"
BATCH_THREAD_POOL = "batch_threads"  # BatchingParameters.thread_pool_name's default

# monitoring::Buckets::Exponential(scale, growth, count), then +Inf.


def _exponential(scale: float, growth: float, count: int) -> list[float]:
    limits = [scale]
    for _ in range(count - 1):
        limits.append(limits[-1] * growth)  # multiplied in turn, as TF computes them
    return [*limits, float("inf")]


_LATENCY_BUCKETS = _exponential(10, 1.8, 33)  # microseconds, ~20 minutes
_QUEUING_BUCKETS = _exponential(100, 1.2, 52)  # microseconds, ~1 second
_SIZE_BUCKETS = _exponential(1, 2, 14)
_EXAMPLE_COUNT_BUCKETS = _exponential(1, 2, 15)
RUNTIME = "TF1"  # TF Serving's runtime label for SavedModels run in a Session
# How a Gauge's per-process values merge with --workers N: TF Serving's counters add up over
# every process that ever ran; a live value over the processes running now.
_COUNTER: Final = "sum"
_LIVE: Final = "livesum"
_multiprocess_dir: str | None = None


def use_multiprocess_dir(path: str) -> None:
    """Make this process one of several whose metrics add up (``--workers N``): values go to
    files in ``path`` and every page reads all of them. Call before any ServerMetrics."""
    global _multiprocess_dir  # noqa: PLW0603 (prometheus-client reads it process-wide)
    # prometheus-client reads the directory from the environment when it creates a file.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    values.ValueClass = values.MultiProcessValue()
    _multiprocess_dir = path


@dataclass(frozen=True)
class PrometheusSettings:
    """What --monitoring_config_file asks for: whether the REST port serves metrics, where."""

    enable: bool = False
    path: str = DEFAULT_PATH


def read_monitoring_config(path: str) -> PrometheusSettings:
    """Parse a text-format MonitoringConfig file ("" means monitoring off)."""
    if not path:
        return PrometheusSettings()
    prometheus = parse_proto_text_file(path, MonitoringConfig()).prometheus_config
    return PrometheusSettings(enable=prometheus.enable, path=prometheus.path or DEFAULT_PATH)


class _StateCollector(Collector):
    """Scrape-time gauges: each model version's state and each model's batch queue depth."""

    def __init__(self, manager: ModelManager,
                 queue_depths: Callable[[], Mapping[str, int]]) -> None:
        self._manager = manager
        self._queue_depths = queue_depths

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states = GaugeMetricFamily(
            "pyserving_model_version_state",
            "1 for the current state of each model version (ModelVersionStatus.State).",
            labels=["model_name", "version", "state"])
        for name in self._manager.model_names():
            try:
                statuses = self._manager.version_statuses(name)
            except ServingError:  # no version known yet
                continue
            for status in statuses:
                states.add_metric([name, str(status.version), status.state.name], 1)
        yield states
        depth = GaugeMetricFamily("pyserving_batch_queue_size",
                                  "Requests waiting in the model's batch queues.",
                                  labels=["model_name"])
        for name, size in sorted(self._queue_depths().items()):
            depth.add_metric([name], size)
        yield depth


class _RolloutCollector(Collector):
    """Scrape-time gauges of each rollout: arm weights in force, the guard, the shadow's
    largest difference (this process's, as its status route shows them)."""

    def __init__(self, rollouts: Rollouts) -> None:
        self._rollouts = rollouts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        weights = GaugeMetricFamily(
            "pyserving_rollout_arm_weight", "Weight of each arm in force (0 once tripped).",
            labels=["model_name", "arm"])
        tripped = GaugeMetricFamily(
            "pyserving_rollout_guard_tripped", "1 while a guard of the rollout is tripped.",
            labels=["model_name"])
        largest = GaugeMetricFamily(
            "pyserving_rollout_shadow_max_abs_diff",
            "Largest absolute difference between a primary answer and its shadow's.",
            labels=["model_name"])
        for name, rollout in self._rollouts.items():
            for arm in rollout.arms:
                weights.add_metric([name, arm.name], arm.weight)
            tripped.add_metric([name], float(bool(rollout.reasons)))
            if rollout.plan.shadow is not None:
                largest.add_metric([name], rollout.shadow.max_abs_diff)
        yield from (weights, tripped, largest)


class InFlight:
    """One request in the in-flight gauge (and its model's batch traffic) while entered: a
    plain class, as the generator a contextlib.contextmanager makes costs more per request."""

    __slots__ = ("_gauge", "_traffic")

    def __init__(self, gauge: Any, traffic: ModelTraffic | None) -> None:
        self._gauge = gauge
        self._traffic = traffic

    def __enter__(self) -> None:
        self._gauge.inc()
        if self._traffic is not None:
            self._traffic.arrive()

    def __exit__(self, *exc_info: object) -> None:
        self._gauge.dec()
        if self._traffic is not None:
            self._traffic.leave()


class ServerMetrics:
    """The metrics of one ModelServer; transports call observe_request and in_flight."""

    def __init__(self, manager: ModelManager,
                 queue_depths: Callable[[], Mapping[str, int]] = dict, *,
                 batching: bool = False) -> None:
        # No collect() at registration: with --workers it would read the other workers'
        # files, one of which may be half-created at start-up (struct.error, worker exits).
        self.registry = CollectorRegistry(auto_describe=False)
        # Set with batching on: in_flight also counts each request for the batcher.
        self.batch_traffic: Traffic | None = None
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._store: CollectorRegistry | None = self.registry
        if _multiprocess_dir is not None:
            # The metrics below write files; the page is the sum of every worker's files.
            MultiProcessCollector(self.registry, path=_multiprocess_dir)
            self._store = None
        tf_serving, saved_model = ":tensorflow:serving:", ":tensorflow:cc:saved_model:"
        self._request_count = self._counter(
            tf_serving + "request_count", "The total number of requests.",
            "model_name", "status")
        self._request_latency = self._sampler(
            tf_serving + "request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            _LATENCY_BUCKETS, "model_name", "API", "entrypoint")
        self._runtime_latency = self._sampler(
            tf_serving + "runtime_latency",
            "Distribution of wall time (in microseconds) for Tensorflow runtime.",
            _LATENCY_BUCKETS, "model_name", "API", "runtime")
        self._example_counts = self._sampler(
            tf_serving + "request_example_counts",
            "The number of tensorflow.Examples per request.", _EXAMPLE_COUNT_BUCKETS, "model")
        self._example_count_total = self._counter(
            tf_serving + "request_example_count_total",
            "The total number of tensorflow.Examples.", "model")
        self._load_attempts = self._counter(
            saved_model + "load_attempt_count",
            "The number of times a SavedModel was successfully loaded.", "model_path", "status")
        self._load_latency = self._counter(
            saved_model + "load_latency",
            "Latency in microseconds for SavedModels that were successfully loaded.",
            "model_path")
        self._warmup_latency = self._sampler(
            tf_serving + "model_warmup_latency",
            "Distribution of wall time (in microseconds) for warming up the model.",
            _LATENCY_BUCKETS, "model_path", "status")
        self._warmup_records = self._counter(
            tf_serving + "model_warmup_records_read",
            "Total number of warmup records read during model warmup.", "model_path", "status")
        self._queuing_latency = self._sampler(
            tf_serving + "batching_session:queuing_latency",
            "Distribution of wall time spent (in microseconds) in queuing",
            _QUEUING_BUCKETS, "thread_pool_name")
        self._input_batch_size = self._sampler(
            tf_serving + "batching_session:input_batch_size",
            "Tracks the batch size distribution on the inputs.", _SIZE_BUCKETS)
        self._processed_batch_size = self._sampler(
            tf_serving + "batching_session:processed_batch_size",
            "Tracks the batch size distribution on processing.", _SIZE_BUCKETS)
        self._padding_size = self._sampler(
            tf_serving + "batching_session:padding_size",
            "Tracks the padding size distribution on batches.", _SIZE_BUCKETS,
            "execution_batch_size")
        self._in_flight = Gauge(
            "pyserving_inflight_requests", "Requests being handled now.",
            ["model_name", "API", "entrypoint"], registry=self._store, multiprocess_mode=_LIVE)
        self._model_loads = self._sampler(
            "pyserving_model_load_seconds", "Wall time of successful model version loads.",
            Histogram.DEFAULT_BUCKETS, "model_name")
        # pyserving's per-stage breakdown of a request, in TF Serving's units and buckets so
        # it plots next to request_latency: queue (batch queue wait), run (TensorFlow; with
        # batching the batch's run), encode (outputs to the response: protos, or REST's JSON).
        self._stage_latency = self._sampler(
            "pyserving_request_stage_latency",
            "Distribution of wall time (in microseconds) of each stage of a request: queue, "
            "run, encode.", _LATENCY_BUCKETS, "model_name", "stage")
        self._run_stage_from_runtime = not batching
        self.registry.register(_StateCollector(manager, queue_depths))

        # pyserving's rollouts (rollout/state.py): prometheus-client Counters, named *_total.
        self._rollout_requests = Counter(
            "pyserving_rollout_requests", "Requests a rollout routed, by arm and outcome.",
            ["model_name", "arm", "status"], registry=self._store)
        self._rollout_shadow = Counter(
            "pyserving_rollout_shadow_requests", "Shadow requests by event: mirrored, "
            "dropped, errors, compared, mismatches.", ["model_name", "event"],
            registry=self._store)
        self._rollout_trips = Counter(
            "pyserving_rollout_guard_trips", "Guards tripped: an arm taken out of the split, "
            "or the shadow stopped.", ["model_name", "what"], registry=self._store)
        # Request logging (request_log/): records written, dropped by reason, bytes written.
        self._log_records = Counter(
            "pyserving_request_log_records", "Request log records written to files.",
            ["model_name"], registry=self._store)
        self._log_bytes = Counter(
            "pyserving_request_log_bytes", "Bytes of request log records written to files.",
            ["model_name"], registry=self._store)
        self._log_dropped = Counter(
            "pyserving_request_log_dropped", "Request log records lost, by reason: "
            "queue_full, write_error, file_deleted, shutdown.", ["model_name", "reason"],
            registry=self._store)

    def _counter(self, name: str, documentation: str, *labels: str) -> Gauge:
        """A TF monitoring::Counter (kCumulative): summed over --workers processes."""
        return Gauge(name, documentation, labels, registry=self._store,
                     multiprocess_mode=_COUNTER)

    def _sampler(self, name: str, documentation: str, buckets: Sequence[float],
                 *labels: str) -> Histogram:
        """A TF monitoring::Sampler, exported as a histogram."""
        return Histogram(name, documentation, labels, buckets=buckets, registry=self._store)

    def render(self) -> tuple[bytes, str]:
        """The metrics page: (body, Content-Type), in Prometheus' text format."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def int64_value(self, name: str) -> int:
        """What TF Serving's HandleReloadConfigRequest reads of a metric (``/tensorflow/...``
        name): the integer value of its first point, label values in order; 0 for a metric
        it does not know or that has no integer points (histograms)."""
        wanted = name.replace("/", ":")
        for family in self.registry.collect():
            if family.name != wanted or family.type not in ("gauge", "counter", "unknown"):
                continue
            samples = sorted((tuple(sample.labels.values()), sample.value)
                             for sample in family.samples if sample.name == wanted)
            return int(samples[0][1]) if samples else 0
        return 0

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: prometheus-client validates and locks on
        every labels() call, which the per-request path need not pay."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_request(self, model: str, api: str, entrypoint: str, code: grpc.StatusCode,
                        seconds: float) -> None:
        """One finished request: counted with its status; its latency only when OK, as in
        TF Serving. ``api`` is "Predict", "Classify", "Regress" (gRPC) or the REST method."""
        self._child(self._request_count, model, code.name).inc()
        if code == grpc.StatusCode.OK:
            self._child(self._request_latency, model, api, entrypoint).observe(seconds * 1e6)

    def observe_runtime(self, model: str, api: str, seconds: float) -> None:
        """One successful TensorFlow run of a Predict/Classify/Regress (batch wait included,
        as TF Serving's batching session counts it)."""
        self._child(self._runtime_latency, model, api, RUNTIME).observe(seconds * 1e6)
        if self._run_stage_from_runtime:  # with batching, observe_batch_run times the run
            self._child(self._stage_latency, model, "run").observe(seconds * 1e6)

    def observe_encode(self, model: str, api: str, started: float, seconds: float) -> None:
        """A request's outputs made into its response (protos, or REST's JSON)."""
        self._child(self._stage_latency, model, "encode").observe(seconds * 1e6)

    def observe_batch_run(self, batch: BatchRun) -> None:
        """Batcher observer: each request's queue wait and the run of its batch."""
        queue = self._child(self._stage_latency, batch.model, "queue")
        run = self._child(self._stage_latency, batch.model, "run")
        run_micros = batch.seconds * 1e6
        for _, enqueued in batch.requests:
            queue.observe((batch.started - enqueued) * 1e6)
            run.observe(run_micros)

    def observe_examples(self, model: str, count: int) -> None:
        """The tf.Examples of one successful MultiInference, as TF Serving counts them."""
        self._child(self._example_counts, model).observe(count)
        self._child(self._example_count_total, model).inc(count)

    def in_flight(self, model: str, api: str, entrypoint: str) -> InFlight:
        """``with``: the request counts in the in-flight gauge (and, for a batched model, in
        its batch traffic) until it leaves."""
        gauge = self._child(self._in_flight, model, api, entrypoint)
        traffic = self.batch_traffic.of(model) if self.batch_traffic is not None else None
        return InFlight(gauge, traffic)

    def observe_warmup(self, model_path: str, status: str, seconds: float,
                       records: int) -> None:
        """A warmup replay read to its end ("OK") or to a read error (absl's Status text)."""
        self._child(self._warmup_latency, model_path, status).observe(int(seconds * 1e6))
        self._child(self._warmup_records, model_path, status).inc(records)

    def observe_batch(self, model: str, size: int, padded: int, waits: list[float]) -> None:
        """Batcher observer. One shared pool, named as TF Serving's default one."""
        for wait in waits:
            self._queuing_latency.labels(BATCH_THREAD_POOL).observe(wait * 1e6)
        self._input_batch_size.observe(size)
        self._processed_batch_size.observe(padded)
        self._padding_size.labels(str(padded)).observe(padded - size)

    def watch_rollouts(self, rollouts: Rollouts) -> None:
        """Export the live state of these rollouts at each scrape."""
        self.registry.register(_RolloutCollector(rollouts))

    def observe_rollout_request(self, model: str, arm: str, ok: bool) -> None:
        self._child(self._rollout_requests, model, arm, "ok" if ok else "error").inc()

    def observe_rollout_shadow(self, model: str, event: str, count: int) -> None:
        self._child(self._rollout_shadow, model, event).inc(count)

    def observe_rollout_trip(self, model: str, what: str) -> None:
        self._child(self._rollout_trips, model, what).inc()

    def observe_request_log_written(self, model: str, records: int, size: int) -> None:
        self._child(self._log_records, model).inc(records)
        self._child(self._log_bytes, model).inc(size)

    def observe_request_log_dropped(self, model: str, reason: str, records: int) -> None:
        self._child(self._log_dropped, model, reason).inc(records)

    def observe_model_event(self, event: ModelEvent) -> None:
        """Manager observer: load seconds, plus one structured log line per event."""
        if event.kind == "load":
            self._model_loads.labels(event.model).observe(event.seconds)
        log_model_event(event)

    def observe_saved_model_load(self, path: str, loaded: bool, seconds: float) -> None:
        """One LoadSavedModel attempt (loader.cc): counted as success or fail, its latency
        added either way; batching and warmup come after it."""
        self._load_attempts.labels(path, "success" if loaded else "fail").inc()
        self._load_latency.labels(path).inc(int(seconds * 1e6))


def log_model_event(event: ModelEvent) -> None:
    """``model_event kind=load model=m version=2 duration_ms=41`` (fields also in ``extra``)."""
    fields = {"event": event.kind, "model": event.model, "version": event.version,
              "duration_ms": round(event.seconds * 1000, 1)}
    if event.previous_version is not None:
        fields["previous_version"] = event.previous_version
    if event.error is not None:
        fields["error"] = str(event.error)
    text = " ".join(f"{key}={value!r}" if key == "error" else f"{key}={value}"
                    for key, value in fields.items())
    level = logging.WARNING if event.kind == "load_failure" else logging.INFO
    events_log.log(level, "model_event %s", text, extra={"model_event": fields})
