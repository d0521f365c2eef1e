"""gRPC extras: the standard health service (grpc.health.v1) and server reflection.

Health: "" (the whole server) is SERVING once the start-up models are loaded and NOT_SERVING
from the start of shutdown; each model name is SERVING while it has an AVAILABLE version; with
--enable_grpc_healthcheck_service, "ModelService" and "PredictionService" too, as TF Serving.
Under --enable_batching (grpc.aio) the health and reflection servicers are grpc.aio's.
With ``--workers N``, "" is SERVING only while every worker process is serving (each worker
hears it from its supervisor's readiness record); model statuses are each worker's own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from pyserving.server.apis import grpc_service_pb2, model_service_pb2, prediction_service_pb2
from pyserving.server.errors import ServingError
from pyserving.server.grpc_aio import LoopServer
from pyserving.server.manager import ModelEvent, ModelManager, VersionState

log = logging.getLogger(__name__)

_SET_SECONDS = 5.0  # most a status change waits for the event loop to publish it
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

SERVICE_NAMES = (
    prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name,
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
    health.SERVICE_NAME,
    reflection.SERVICE_NAME,
)
V2_SERVICE_NAME = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


# What TF Serving 2.15+ marks SERVING with --enable_grpc_healthcheck_service
# (tensorflow_serving/model_servers/server.cc, SetServingStatus): the short service names.
TF_SERVING_SERVICE_NAMES = ("ModelService", "PredictionService")


class _LoopHealth:
    """grpc.aio's health servicer (Watch streams hold no thread), set from any thread: each
    change runs on the server's event loop, in order, waited for a bounded time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.servicer = health.aio.HealthServicer()
        self._loop = loop

    def set(self, service: str, status: int) -> None:
        self._call(self.servicer.set(service, status))

    def enter_graceful_shutdown(self) -> None:
        self._call(self.servicer.enter_graceful_shutdown())

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        try:
            done = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        except RuntimeError:  # the loop is closed: nobody can watch any more
            coroutine.close()
            return
        try:
            done.result(_SET_SECONDS)
        except concurrent.futures.TimeoutError:
            log.warning("the gRPC event loop took over %g s to publish a health status",
                        _SET_SECONDS)


class ServingHealth:
    """The health statuses of one server, kept in step with its manager's model events and
    published by a grpc.health.v1 servicer (sync, or grpc.aio's on a ``LoopServer``)."""

    def __init__(self, manager: ModelManager, tf_serving_names: bool = False) -> None:
        self._manager = manager
        self._tf_serving_names = tf_serving_names
        # Blocking Watch streams: the non-blocking default sends under the servicer's lock,
        # which a closing stream's callback also takes, and stop() deadlocked on it.
        self._servicer: Any = health.HealthServicer(experimental_non_blocking=False)
        self._statuses: dict[str, int] = {health.OVERALL_HEALTH: NOT_SERVING}
        self._lock = threading.RLock()  # one change at a time, published in order
        self._started = False
        self._peers_ready = True
        self._shut_down = False
        self._v2 = False

    def serve_on(self, server: grpc.Server | LoopServer, v2: bool = False) -> None:
        """Add the health and reflection services to ``server``; on a ``LoopServer``, as
        grpc.aio servicers, carrying over the statuses set so far. ``v2``: the server also
        serves inference.GRPCInferenceService, named in reflection and SERVING with it."""
        names = (*SERVICE_NAMES, V2_SERVICE_NAME) if v2 else SERVICE_NAMES
        self._v2 = v2
        if isinstance(server, LoopServer):
            with self._lock:
                self._servicer = _LoopHealth(server.loop)
                for service, status in self._statuses.items():
                    self._servicer.set(service, status)
            health_pb2_grpc.add_HealthServicer_to_server(self._servicer.servicer, server)
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
                reflection.aio.ReflectionServicer(names), server)
        else:
            health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)
            reflection.enable_server_reflection(names, server)

    def mark_serving(self) -> None:
        """Start-up is done: the server and every model with an AVAILABLE version serve,
        and, as in TF Serving, its two service names."""
        for name in self._manager.model_names():
            self._update(name)
        with self._lock:
            self._started = True
            self._set_overall()
            if self._tf_serving_names:
                for name in TF_SERVING_SERVICE_NAMES:
                    self._set(name, SERVING)
            if self._v2:
                self._set(V2_SERVICE_NAME, SERVING)

    def set_peers_ready(self, ready: bool) -> None:
        """Whether the other processes serving the same ports (``--workers N``) all serve;
        "" is SERVING only while they do and this server has started."""
        with self._lock:
            if ready != self._peers_ready:
                self._peers_ready = ready
                self._set_overall()

    def _set_overall(self) -> None:
        serving = self._started and self._peers_ready
        self._set(health.OVERALL_HEALTH, SERVING if serving else NOT_SERVING)

    def observe_model_event(self, event: ModelEvent) -> None:
        self._update(event.model)

    def _update(self, name: str) -> None:
        try:
            available = any(status.state == VersionState.AVAILABLE
                            for status in self._manager.version_statuses(name))
        except ServingError:  # no version known (yet)
            available = False
        with self._lock:
            self._set(name, SERVING if available else NOT_SERVING)

    def _set(self, service: str, status: int) -> None:
        """Record and publish one status (the lock is held)."""
        self._statuses[service] = status
        if not self._shut_down:  # after it, the servicer ignores changes (and may be gone)
            self._servicer.set(service, status)

    def status(self, service: str) -> int | None:
        """The status last set for ``service``, None if never set."""
        with self._lock:
            return self._statuses.get(service)

    def shut_down(self) -> None:
        """Every service NOT_SERVING for good (watchers hear it before the port closes)."""
        with self._lock:
            self._servicer.enter_graceful_shutdown()
            self._shut_down = True
