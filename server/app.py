"""The model server as a library object: the CLI and embedding applications both use it.

    with ModelServer(ServerOptions(port=0, model_base_path="/models/half_plus_two")) as server:
        channel = grpc.insecure_channel(server.grpc_target)
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np

from pyserving.server import config as model_config
from pyserving.server import device
from pyserving.server.batching.batcher import Batcher, Feeds
from pyserving.server.batching.config import BatchingOptions, read_batching_parameters
from pyserving.server.config import VersionDirectory
from pyserving.server.configurator import AppliedObserver, ModelConfigurator
from pyserving.server.core import ServingCore
from pyserving.server.errors import ServingError, invalid_argument
from pyserving.server.example_inference import ExampleInference
from pyserving.server.gc_policy import keep_models_out_of_gc_scans
from pyserving.server.grpc_aio import AsyncPredictionService, LoopServer
from pyserving.server.grpc_ports import bind, server_options
from pyserving.server.grpc_services import (
    add_services,
)
from pyserving.server.health import ServingHealth
from pyserving.server.loading import VersionLoader
from pyserving.server.manager import LoadPolicy, ModelEvent, ModelManager
from pyserving.server.metrics import PrometheusSettings, ServerMetrics, read_monitoring_config
from pyserving.server.op_libraries import load_op_libraries
from pyserving.server.options import ServerOptions
from pyserving.server.predict import Predictor
from pyserving.server.remote_storage import RemoteStorage, VersionCache
from pyserving.server.request_log import RequestLog
from pyserving.server.rest.server import RestOptions, RestServer
from pyserving.server.rollout.plan import RolloutFileWatcher
from pyserving.server.rollout.router import Router
from pyserving.server.rollout.state import Rollouts
from pyserving.server.saved_model import tfrecords
from pyserving.server.servable import (
    AsyncRunner,
    EncodeObserver,
    Runner,
    Servable,
    SignatureDef,
    run_unbatched,
    unbatched_async,
)
from pyserving.server.source import FileSystemSource
from pyserving.server.status import StatusBoard, request_counts
from pyserving.server.tls import server_credentials
from pyserving.server.tracing import Tracing, build_tracing
from pyserving.server.v2.grpc_service import GRPCInferenceService, add_service
from pyserving.server.v2.inference import V2Inference, server_metadata
from pyserving.server.v2.rest import V2RestHandler
from pyserving.server.warmup import Warmup

log = logging.getLogger(__name__)


class ModelServer:
    """Loads the configured models once and serves them over gRPC until stopped.

    ``on_configured`` runs in start() once the start-up model config is applied, before the
    ports open; ``on_reload`` hears of each config a ReloadConfig request applied.
    """

    def __init__(self, options: ServerOptions, *, host: str = "0.0.0.0",
                 on_configured: Callable[[ModelServer], None] | None = None,
                 on_reload: AppliedObserver | None = None) -> None:
        self.options = options
        self._on_configured = on_configured
        self._host = host
        self._server: grpc.Server | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stopped = threading.Event()
        self.port: int | None = None
        self._rest: RestServer | None = None
        # Made in start(), so a bad batching flag or file is a start-up error like any other.
        self.batcher: Batcher | None = None
        remote = RemoteStorage()
        self._cache = VersionCache(remote, options.model_cache_dir)
        self._loader = VersionLoader(options.tags, device.session_config(options), self._cache)
        self.manager = ModelManager(self._loader, _load_policy(options),
                                    allow_labels_for_unavailable=(
                                        options.allow_version_labels_for_unavailable_models),
                                    observers=[self._on_model_event])
        self.metrics = ServerMetrics(self.manager, self._queue_depths,
                                     batching=options.enable_batching)
        # --enable_tracing: the hooks that make a request span's children (tracing.py).
        self.tracing = build_tracing(options.enable_tracing)
        runner: Runner = self._run_batched if options.enable_batching else run_unbatched
        on_encode: EncodeObserver = self.metrics.observe_encode
        if self.tracing is not None:
            runner = self.tracing.traced_runner(runner, batched=options.enable_batching)
            on_encode = _both(self.metrics.observe_encode, self.tracing.observe_encode)
        self._on_encode = on_encode
        predictor = Predictor(as_tensor_content=options.enable_serialization_as_tensor_content,
                              check_method_name=options.enable_signature_method_name_check,
                              max_tensor_bytes=options.max_request_tensor_bytes,
                              runner=runner, on_runtime=self.metrics.observe_runtime,
                              on_encode=on_encode)
        inference = ExampleInference(check_method_name=options.enable_signature_method_name_check,
                                     runner=runner, on_runtime=self.metrics.observe_runtime,
                                     on_examples=self.metrics.observe_examples,
                                     on_encode=on_encode)
        self._loader.on_saved_model_load = self.metrics.observe_saved_model_load
        self._loader.warmup = Warmup(predictor, inference, tfrecords,
                                     options.num_request_iterations_for_warmup,
                                     self.metrics.observe_warmup
                                     ) if options.enable_model_warmup else None
        self.health = ServingHealth(self.manager, options.enable_grpc_healthcheck_service)
        self.monitoring = PrometheusSettings()  # --monitoring_config_file, read with REST
        self._source = FileSystemSource(options.file_system_poll_wait_seconds, remote,
                                        on_listed=self._retry_changed_versions)
        self._source.set_aspired_versions_callback(self.manager.set_aspired_versions)
        self.request_log = RequestLog(self.metrics, tags=options.tags,
                                      max_file_bytes=options.request_log_max_file_bytes,
                                      queue_size=options.request_log_queue_size)
        self.configurator = ModelConfigurator(self.manager, self._source, self.request_log)
        self.router = Router(self.manager, Rollouts(observer=self.metrics))
        self.metrics.watch_rollouts(self.router.rollouts)
        self._rollout_watcher = RolloutFileWatcher(
            options.rollout_config_file, options.rollout_config_poll_wait_seconds,
            self.router.rollouts.apply) if options.rollout_config_file else None
        self.core = ServingCore(self.manager, self.configurator, predictor, inference,
                                options.max_in_flight_requests_per_model, on_reload,
                                metric_value=self.metrics.int64_value, router=self.router,
                                tracing=self.tracing)
        self.v2 = V2Inference(self.core) if options.enable_v2_protocol else None
        self.status = StatusBoard(
            self.manager, rollout_status=self._rollout_statuses, queue_depths=self._queue_depths,
            request_counts=lambda: request_counts(self.metrics.registry.collect()),
            server_info={"batching": "on" if options.enable_batching else "off",
                         "tracing": "on" if self.tracing is not None else "off"})
        # An answer observer only while some model logs: otherwise requests never visit it.
        self.request_log.on_active = self._request_log_active

    def _request_log_active(self, active: bool) -> None:
        if active:
            self.core.add_answer_observer(self.request_log.observe)
        else:
            self.core.remove_answer_observer(self.request_log.observe)

    def _run_batched(self, servable: Servable, signature: SignatureDef, feeds: Feeds,
                     fetches: Sequence[str]) -> list[np.ndarray]:
        assert self.batcher is not None, "start() makes the batcher before serving"
        return self.batcher.run(servable, signature, feeds, fetches)

    def _rollout_statuses(self) -> dict[str, dict[str, Any]]:
        return {name: self.core.rollout_status(name) for name, _ in self.router.rollouts.items()}

    def _async_runner(self, executor: Executor) -> AsyncRunner:
        """How an event-loop transport awaits a TensorFlow call: in a batch, or unbatched
        (``executor`` runs what does not run inline); with tracing, as spans."""
        run: AsyncRunner = functools.partial(self.batcher.run_async, executor=executor) \
            if self.batcher is not None else unbatched_async(executor)
        if self.tracing is not None:
            run = self.tracing.traced_async_runner(run, batched=self.batcher is not None)
        return run

    def _on_model_event(self, event: ModelEvent) -> None:
        keep_models_out_of_gc_scans(event)
        self.metrics.observe_model_event(event)
        self.status.observe_model_event(event)
        self.health.observe_model_event(event)

    def _queue_depths(self) -> dict[str, int]:
        return self.batcher.queue_depths() if self.batcher is not None else {}

    def _retry_changed_versions(self, name: str, versions: list[VersionDirectory]) -> None:
        """A bucket version whose copy or load failed (a poll caught its upload midway) is
        tried again once its files change."""
        for version in versions:
            if self._cache.changed_since_failure(version.path):
                log.info("The files of servable version {name: %s version: %d} changed since "
                         "its load failed: loading it again", name, version.version)
                self.manager.retry_failed(name, version.version)

    @property
    def source(self) -> FileSystemSource:
        """The base-path poller (its ``polls`` counts the scans done)."""
        return self._source

    @property
    def grpc_target(self) -> str:
        """Where a client on this machine connects (``127.0.0.1:PORT``)."""
        if self.port:
            return f"127.0.0.1:{self.port}"
        return f"unix:{self.options.grpc_socket_path}"

    @property
    def serving(self) -> bool:
        """True from the moment the gRPC server is open until stop()."""
        return self._server is not None and not self._stopped.is_set()

    def start(self) -> ModelServer:
        """Load every model, then open the gRPC port(s); waits (without timeout) for models
        that have no version yet. Raises ServingError on failure."""
        log.info("%s", device.describe_devices())
        try:
            load_op_libraries(self.options.custom_op_libraries)  # before any model loads
            self.batcher = self._loader.batcher = _batcher(self.options, self.metrics,
                                                           self.tracing)
            if self._rollout_watcher is not None:
                self._rollout_watcher.start()
            config = model_config.model_server_config(self.options)
            # Polling runs while start-up waits: a model whose base path is missing or empty
            # loads once a version appears there (TF Serving waits for it, without timeout).
            self._source.start()
            self.configurator.apply(config)
            if self._on_configured is not None:
                self._on_configured(self)
            if self.options.model_config_file:
                self.configurator.watch_file(self.options.model_config_file,
                                             self.options.model_config_file_poll_wait_seconds)
            self._open_grpc()
            self._open_rest()
            self.health.mark_serving()
        except BaseException:
            self.stop(grace=None)
            raise
        if self.port:
            log.info("Running gRPC ModelServer at %s:%d ...", self._host, self.port)
        if self.options.grpc_socket_path:
            log.info("Running gRPC ModelServer at UNIX socket %s ...",
                     self.options.grpc_socket_path)
        return self

    def _open_grpc(self) -> None:
        options = self.options
        channel_options = server_options(options.grpc_channel_arguments)
        self._executor = ThreadPoolExecutor(max_workers=max(options.grpc_max_threads, 1),
                                            thread_name_prefix="grpc")
        max_rpcs = options.grpc_max_concurrent_rpcs or None
        # Every mode on grpc.aio: a request is a coroutine on the loop, its TensorFlow call
        # awaited on the pool (unbatched) or as a batch's future (docs/performance.md).
        server = LoopServer(self._executor, channel_options, max_rpcs)
        run = self._async_runner(self._executor)
        prediction = AsyncPredictionService(self.core, run, self.metrics, self.tracing)
        add_services(server, self.core, prediction)
        if self.v2 is not None:
            add_service(server, GRPCInferenceService(
                self.v2, server_metadata(), run, self.metrics, self.tracing, self._on_encode))
        self.health.serve_on(server, v2=self.v2 is not None)
        # --port=0 disables TCP when a socket path is given (as in TF Serving); alone, it
        # binds a free port, which embedding applications and tests read from .port.
        self._server = server
        if options.port or not options.grpc_socket_path:
            self.port = bind(server, f"{self._host}:{options.port}",
                              server_credentials(options.ssl_config_file))
        if options.grpc_socket_path:
            bind(server, f"unix:{os.path.abspath(options.grpc_socket_path)}",
                  server_credentials(options.ssl_config_file))
        server.start()

    def _open_rest(self) -> None:
        """TF Serving's HTTP/REST API on --rest_api_port (0: off), once gRPC is open. As in
        server.cc, a REST port equal to the gRPC port, or one that cannot be bound, is logged
        and skipped: the server goes on serving gRPC."""
        options = self.options
        if not options.rest_api_port:
            return
        if options.rest_api_port == options.port:
            log.error("server_options.http_port cannot be same as grpc_port. Please use a "
                      "different port for HTTP/REST API. Skipped exporting HTTP/REST API.")
            return
        # server.cc reads --monitoring_config_file only here, when the REST port opens.
        self.monitoring = read_monitoring_config(options.monitoring_config_file)
        try:
            self._rest = RestServer(self.core, RestOptions(
                port=options.rest_api_port, num_threads=options.rest_api_num_threads,
                timeout_ms=options.rest_api_timeout_in_ms,
                enable_cors=options.rest_api_enable_cors_support,
                max_request_bytes=options.rest_api_max_request_bytes,
                shutdown_grace_seconds=options.shutdown_grace_period_seconds), host=self._host,
                metrics=self.metrics, metrics_page=((self.monitoring.path, self.metrics.render)
                              if self.monitoring.enable else None),
                status=self.status.document, tracing=self.tracing,
                on_encode=self._on_encode, runner_for=self._async_runner,
                v2=functools.partial(V2RestHandler, self.v2, server_metadata(),
                                     metrics=self.metrics, on_encode=self._on_encode)
                if self.v2 is not None else None
            ).start()
        except ServingError as error:
            log.error("%s", error.message)
            return
        log.info("Exporting HTTP/REST API at:localhost:%d ...", self._rest.port)

    @property
    def rest_port(self) -> int | None:
        """The HTTP/REST port while it is open, else None."""
        return self._rest.port if self._rest is not None else None

    def stop(self, grace: float | None = None) -> None:
        """Stop taking RPCs, let in-flight ones finish within ``grace`` seconds (default
        --shutdown_grace_period_seconds), then unload every model."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        # A warmup in progress ends after its current request: the load it belongs to fails
        # at once instead of keeping the load pool (and so manager.close) busy for minutes.
        if self._loader.warmup is not None:
            self._loader.warmup.stop()
        # Publishing NOT_SERVING to Watch streams waits on gRPC (on grpc.aio, for the event
        # loop); bound the wait: the gRPC stop below ends those streams anyway.
        notifier = threading.Thread(target=self.health.shut_down, name="health-shutdown",
                                    daemon=True)
        notifier.start()
        notifier.join(timeout=1.0)
        if grace is None:
            grace = self.options.shutdown_grace_period_seconds
        self.manager.stop_waiting()  # a start-up or reload still waiting for its models
        self.configurator.stop()
        self._source.stop()
        if self._rollout_watcher is not None:
            self._rollout_watcher.stop()
        if self._server is not None:
            log.info("stopping the gRPC server: in-flight RPCs have %g s to finish", grace)
            self._server.stop(grace).wait()
        if self._rest is not None:
            # a TensorFlow call its cancelled requests left on the pool ends with the sessions
            self._rest.stop(join_pool=False)
        # The grace period is over and gRPC has cancelled what was left: queued shadow
        # requests are dropped, a running one is cancelled like any request below.
        self.router.stop(wait=False)
        # Closing the sessions stops the TensorFlow runs still going, so the thread pools can
        # finish. The batcher stops after the manager: a load still warming up replays through
        # it, and a batcher stopped first would leave that request where no thread looks.
        self.manager.close(drain_seconds=0)
        if self._rest is not None:
            self._rest.join_pool()
        self.router.stop()
        if self.batcher is not None:
            self.batcher.stop()
        self.request_log.stop()  # every answered request is queued by now: write them all
        self._cache.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self.tracing is not None:
            self.tracing.shutdown()
        log.info("server stopped")

    def wait(self) -> None:
        """Block until stop() is called."""
        self._stopped.wait()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _both(first: EncodeObserver, second: EncodeObserver) -> EncodeObserver:
    def both(model: str, api: str, started: float, seconds: float) -> None:
        first(model, api, started, seconds)
        second(model, api, started, seconds)
    return both


def _batcher(options: ServerOptions, metrics: ServerMetrics,
             tracing: Tracing | None = None) -> Batcher | None:
    """The batcher --enable_batching asks for (TF Serving's defaults without a file)."""
    if not options.enable_batching:
        if options.batching_parameters_file:
            raise invalid_argument("server_options.batching_parameters_file is set without "
                                   "setting server_options.enable_batching to true.")
        return None
    batching = read_batching_parameters(options.batching_parameters_file) \
        if options.batching_parameters_file else BatchingOptions()
    run_observers = [metrics.observe_batch_run]
    if tracing is not None:
        run_observers.append(tracing.observe_batch_run)
    batcher = Batcher(batching, [metrics.observe_batch],
                      per_model_parameters=options.enable_per_model_batching_parameters,
                      wait_for_full_batch=options.batching_wait_for_full_batch,
                      run_observers=run_observers)
    metrics.batch_traffic = batcher.traffic  # the transports' in-flight count feeds it
    return batcher


def _load_policy(options: ServerOptions) -> LoadPolicy:
    return LoadPolicy(
        max_retries=max(options.max_num_load_retries, 0),
        retry_interval_seconds=max(options.load_retry_interval_micros, 0) / 1e6,
        load_threads=max(options.num_load_threads, 1),
        unload_threads=max(options.num_unload_threads, 1),
    )
