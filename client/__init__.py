"""pyserving's client side: a TF Serving client over the public gRPC API (no TensorFlow
needed), its asyncio twin, bulk inference and rollout comparison, and the numpy <->
TensorProto conversion the server shares."""

from pyserving.client.async_client import AsyncPredictionClient
from pyserving.client.bulk import Batch, predict_all, predict_batches
from pyserving.client.channel import TLS, ChannelOptions, create_aio_channel, create_channel
from pyserving.client.errors import PredictionError
from pyserving.client.examples import example_from_features
from pyserving.client.results import (
    Classifications,
    ModelMetadata,
    Signature,
    TensorSpec,
    VersionStatus,
)
from pyserving.client.retry import RetryPolicy
from pyserving.client.sync_client import PredictionClient
from pyserving.client.tensors import (
    TensorParseError,
    fill_tensor_proto,
    make_tensor_proto,
    ndarray_from_tensor_proto,
)

__all__ = [
    "TLS",
    "AsyncPredictionClient",
    "Batch",
    "ChannelOptions",
    "Classifications",
    "ModelMetadata",
    "PredictionClient",
    "PredictionError",
    "RetryPolicy",
    "Signature",
    "TensorParseError",
    "TensorSpec",
    "VersionStatus",
    "create_aio_channel",
    "create_channel",
    "example_from_features",
    "fill_tensor_proto",
    "make_tensor_proto",
    "ndarray_from_tensor_proto",
    "predict_all",
    "predict_batches",
]
