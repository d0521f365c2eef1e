"""pyserving's client side: tensor conversion now, the light client stub in a later release."""

from pyserving.client.tensors import (
    TensorParseError,
    fill_tensor_proto,
    make_tensor_proto,
    ndarray_from_tensor_proto,
)

__all__ = ["TensorParseError", "fill_tensor_proto", "make_tensor_proto",
           "ndarray_from_tensor_proto"]
