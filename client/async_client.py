"""AsyncPredictionClient: the asyncio twin of PredictionClient, over a grpc.aio channel."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from pyserving.client import calls
from pyserving.client.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
from pyserving.client.channel import ChannelOptions, Credentials, create_aio_channel
from pyserving.client.examples import ExampleLike
from pyserving.client.requests import Inputs, ServerConfig
from pyserving.client.results import Classifications, InferenceResult, ModelMetadata, VersionStatus
from pyserving.client.retry import Metadata, Retries, call_with_retry_async, retry_policy
from pyserving.client.sync_client import DEFAULT_RETRIES, DEFAULT_TIMEOUT


class AsyncPredictionClient:
    """PredictionClient's calls as coroutines; create and use it inside one event loop."""

    def __init__(self, target: str, *, credentials: Credentials = None,
                 timeout: float | None = DEFAULT_TIMEOUT, retries: Retries = DEFAULT_RETRIES,
                 channel_options: ChannelOptions | None = None,
                 metadata: Metadata | None = None,
                 channel: grpc.aio.Channel | None = None) -> None:
        self.target = target
        self.timeout = timeout
        self.retry = retry_policy(retries)
        self._call_metadata = tuple(metadata) if metadata else None
        self._owns_channel = channel is None
        self.channel = channel if channel is not None else create_aio_channel(
            target, credentials, channel_options)
        self.prediction_service = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_service = model_service_pb2_grpc.ModelServiceStub(self.channel)

    async def _invoke(self, call: calls.Call, timeout: float | None) -> Any:
        stub = self.prediction_service if call.service == calls.PREDICTION_SERVICE \
            else self.model_service
        response = await call_with_retry_async(
            getattr(stub, call.method), call.request,
            timeout=self.timeout if timeout is None else timeout, policy=self.retry,
            metadata=self._call_metadata)
        return call.decode(response)

    async def predict(self, model: str, inputs: Inputs, *, version: int | None = None,
                      label: str | None = None, signature: str | None = None,
                      output_filter: Sequence[str] | None = None,
                      timeout: float | None = None) -> dict[str, np.ndarray]:
        return await self._invoke(calls.predict(model, inputs, version=version, label=label,
                                                signature=signature,
                                                output_filter=output_filter), timeout)

    async def classify(self, model: str, examples: Iterable[ExampleLike], *,
                       context: ExampleLike | None = None, version: int | None = None,
                       label: str | None = None, signature: str | None = None,
                       timeout: float | None = None) -> Classifications:
        return await self._invoke(calls.classify(model, examples, context=context,
                                                 version=version, label=label,
                                                 signature=signature), timeout)

    async def regress(self, model: str, examples: Iterable[ExampleLike], *,
                      context: ExampleLike | None = None, version: int | None = None,
                      label: str | None = None, signature: str | None = None,
                      timeout: float | None = None) -> np.ndarray:
        return await self._invoke(calls.regress(model, examples, context=context,
                                                version=version, label=label,
                                                signature=signature), timeout)

    async def multi_inference(self, model: str, examples: Iterable[ExampleLike],
                              tasks: Mapping[str, str], *, context: ExampleLike | None = None,
                              version: int | None = None, label: str | None = None,
                              timeout: float | None = None) -> dict[str, InferenceResult]:
        return await self._invoke(calls.multi_inference(model, examples, tasks,
                                                        context=context, version=version,
                                                        label=label), timeout)

    async def metadata(self, model: str, *, version: int | None = None,
                       label: str | None = None, timeout: float | None = None
                       ) -> ModelMetadata:
        return await self._invoke(calls.metadata(model, version=version, label=label),
                                  timeout)

    async def status(self, model: str, *, version: int | None = None,
                     timeout: float | None = None) -> list[VersionStatus]:
        return await self._invoke(calls.status(model, version=version), timeout)

    async def reload_config(self, config: ServerConfig, *,
                            timeout: float | None = None) -> None:
        await self._invoke(calls.reload_config(config), timeout)

    async def send(self, request: Any, *, timeout: float | None = None) -> Any:
        return await self._invoke(calls.raw(request), timeout)

    async def close(self) -> None:
        if self._owns_channel:
            await self.channel.close()

    async def __aenter__(self) -> AsyncPredictionClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
