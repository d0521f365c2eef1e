"""PredictionClient: TF Serving's PredictionService and ModelService as Python calls."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from pyserving.client import calls
from pyserving.client.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
from pyserving.client.channel import ChannelOptions, Credentials, create_channel
from pyserving.client.examples import ExampleLike
from pyserving.client.requests import Inputs, ServerConfig
from pyserving.client.results import Classifications, InferenceResult, ModelMetadata, VersionStatus
from pyserving.client.retry import Metadata, Retries, call_with_retry, retry_policy

DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3


class PredictionClient:
    """A client of one TF Serving (or pyserving) server, over one reused channel.

    ``timeout`` is each call's deadline in seconds (retries included; None waits forever),
    ``retries`` how often an UNAVAILABLE call is retried (an int, or a RetryPolicy).
    Failures raise PredictionError. ``prediction_service`` and ``model_service`` are the raw
    gRPC stubs; pass ``channel`` to share one channel between clients.
    """

    def __init__(self, target: str, *, credentials: Credentials = None,
                 timeout: float | None = DEFAULT_TIMEOUT, retries: Retries = DEFAULT_RETRIES,
                 channel_options: ChannelOptions | None = None,
                 metadata: Metadata | None = None, channel: grpc.Channel | None = None) -> None:
        self.target = target
        self.timeout = timeout
        self.retry = retry_policy(retries)
        self._call_metadata = tuple(metadata) if metadata else None
        self._owns_channel = channel is None
        self.channel = channel if channel is not None else create_channel(
            target, credentials, channel_options)
        self.prediction_service = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_service = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def _invoke(self, call: calls.Call, timeout: float | None) -> Any:
        stub = self.prediction_service if call.service == calls.PREDICTION_SERVICE \
            else self.model_service
        response = call_with_retry(getattr(stub, call.method), call.request,
                                   timeout=self.timeout if timeout is None else timeout,
                                   policy=self.retry, metadata=self._call_metadata)
        return call.decode(response)

    def predict(self, model: str, inputs: Inputs, *, version: int | None = None,
                label: str | None = None, signature: str | None = None,
                output_filter: Sequence[str] | None = None,
                timeout: float | None = None) -> dict[str, np.ndarray]:
        """Run a predict signature (``serving_default`` unless named) on named inputs."""
        return self._invoke(calls.predict(model, inputs, version=version, label=label,
                                          signature=signature, output_filter=output_filter),
                            timeout)

    def classify(self, model: str, examples: Iterable[ExampleLike], *,
                 context: ExampleLike | None = None, version: int | None = None,
                 label: str | None = None, signature: str | None = None,
                 timeout: float | None = None) -> Classifications:
        """Classify examples (dicts of features or tf.Example protos)."""
        return self._invoke(calls.classify(model, examples, context=context, version=version,
                                           label=label, signature=signature), timeout)

    def regress(self, model: str, examples: Iterable[ExampleLike], *,
                context: ExampleLike | None = None, version: int | None = None,
                label: str | None = None, signature: str | None = None,
                timeout: float | None = None) -> np.ndarray:
        """One regression value per example (dicts of features or tf.Example protos)."""
        return self._invoke(calls.regress(model, examples, context=context, version=version,
                                          label=label, signature=signature), timeout)

    def multi_inference(self, model: str, examples: Iterable[ExampleLike],
                        tasks: Mapping[str, str], *, context: ExampleLike | None = None,
                        version: int | None = None, label: str | None = None,
                        timeout: float | None = None) -> dict[str, InferenceResult]:
        """Several signatures over the same examples; ``tasks`` maps each signature name to
        "classify" or "regress". Results come back by signature name."""
        return self._invoke(calls.multi_inference(model, examples, tasks, context=context,
                                                  version=version, label=label), timeout)

    def metadata(self, model: str, *, version: int | None = None, label: str | None = None,
                 timeout: float | None = None) -> ModelMetadata:
        """The served version and its signatures."""
        return self._invoke(calls.metadata(model, version=version, label=label), timeout)

    def status(self, model: str, *, version: int | None = None,
               timeout: float | None = None) -> list[VersionStatus]:
        """The state of each version of the model (or of one version)."""
        return self._invoke(calls.status(model, version=version), timeout)

    def reload_config(self, config: ServerConfig, *, timeout: float | None = None) -> None:
        """Replace the served models: a ModelServerConfig, its text format or a file path."""
        self._invoke(calls.reload_config(config), timeout)

    def send(self, request: Any, *, timeout: float | None = None) -> Any:
        """Send a ready-made request proto (with retries); returns the response proto."""
        return self._invoke(calls.raw(request), timeout)

    def close(self) -> None:
        """Close the channel, unless it was passed in."""
        if self._owns_channel:
            self.channel.close()

    def __enter__(self) -> PredictionClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
