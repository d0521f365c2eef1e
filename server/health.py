"""gRPC extras: the standard health service (grpc.health.v1) and server reflection.

Health: "" (the whole server) is SERVING once the start-up models are loaded and NOT_SERVING
from the start of shutdown; each model name is SERVING while it has an AVAILABLE version.
With ``--workers N``, "" is SERVING only while every worker process is serving (each worker
hears it from its supervisor's readiness record); model statuses are each worker's own.
"""

from __future__ import annotations

import threading

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pyserving.server.apis import model_service_pb2, prediction_service_pb2
from pyserving.server.errors import ServingError
from pyserving.server.manager import ModelEvent, ModelManager, VersionState

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

SERVICE_NAMES = (
    prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name,
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
    health.SERVICE_NAME,
    reflection.SERVICE_NAME,
)


class ServingHealth:
    """The health statuses of one server, kept in step with its manager's model events."""

    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager
        self.servicer = health.HealthServicer()
        self.servicer.set(health.OVERALL_HEALTH, NOT_SERVING)
        self._started = False
        self._peers_ready = True
        self._overall_lock = threading.Lock()

    def mark_serving(self) -> None:
        """Start-up is done: the server and every model with an AVAILABLE version serve."""
        for name in self._manager.model_names():
            self._update(name)
        with self._overall_lock:
            self._started = True
            self._set_overall()

    def set_peers_ready(self, ready: bool) -> None:
        """Whether the other processes serving the same ports (``--workers N``) all serve;
        "" is SERVING only while they do and this server has started."""
        with self._overall_lock:
            if ready != self._peers_ready:
                self._peers_ready = ready
                self._set_overall()

    def _set_overall(self) -> None:
        serving = self._started and self._peers_ready
        self.servicer.set(health.OVERALL_HEALTH, SERVING if serving else NOT_SERVING)

    def observe_model_event(self, event: ModelEvent) -> None:
        self._update(event.model)

    def _update(self, name: str) -> None:
        try:
            available = any(status.state == VersionState.AVAILABLE
                            for status in self._manager.version_statuses(name))
        except ServingError:  # no version known (yet)
            available = False
        self.servicer.set(name, SERVING if available else NOT_SERVING)

    def shut_down(self) -> None:
        """Every service NOT_SERVING for good (watchers hear it before the port closes)."""
        self.servicer.enter_graceful_shutdown()


def add_health_and_reflection(server: grpc.Server, serving_health: ServingHealth) -> None:
    health_pb2_grpc.add_HealthServicer_to_server(serving_health.servicer, server)
    reflection.enable_server_reflection(SERVICE_NAMES, server)
