"""Plain dicts of features as tf.Example protos, for Classify, Regress and MultiInference.

A feature value is a scalar or a flat sequence (list, tuple, 1-D array): floats go to
``float_list``, ints and bools to ``int64_list``, bytes and str (UTF-8) to ``bytes_list``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Union

import numpy as np

from pyserving.client.apis import example_pb2, input_pb2

Features = Mapping[str, Any]
ExampleLike = Union[Features, "example_pb2.Example"]


def example_from_features(features: Features) -> example_pb2.Example:
    """A tf.Example holding ``features``."""
    example = example_pb2.Example()
    for name, value in features.items():
        _fill_feature(example.features.feature[name], name, value)
    return example


def as_example(value: ExampleLike) -> example_pb2.Example:
    """An Example proto (TensorFlow's or the client's) as it is, a dict converted."""
    if isinstance(value, Mapping):
        return example_from_features(value)
    if hasattr(value, "features") and hasattr(value, "SerializeToString"):
        if isinstance(value, example_pb2.Example):
            return value
        return example_pb2.Example.FromString(value.SerializeToString())
    raise TypeError(f"an example is a dict of features or a tf.Example, not "
                    f"{type(value).__name__}")


def fill_input(proto: input_pb2.Input, examples: Iterable[ExampleLike],
               context: ExampleLike | None = None) -> None:
    """Fill an Input: ``example_list``, or ``example_list_with_context`` given a context."""
    if context is None:
        target = proto.example_list.examples
    else:
        listed = proto.example_list_with_context
        listed.context.CopyFrom(as_example(context))
        target = listed.examples
    for example in examples:
        target.add().CopyFrom(as_example(example))


def _fill_feature(feature: Any, name: str, value: Any) -> None:
    values = np.asarray(value)
    if values.ndim > 1:
        raise ValueError(f"feature {name!r} must be a scalar or a flat list, "
                         f"not of shape {values.shape}")
    flat = values.reshape(-1)
    kind = flat.dtype.kind
    if kind in "SUO":
        feature.bytes_list.value.extend(_as_bytes(name, v) for v in flat.tolist())
    elif kind in "biu":
        feature.int64_list.value.extend(int(v) for v in flat.tolist())
    elif kind == "f":
        feature.float_list.value.extend(flat.astype(np.float32).tolist())
    else:
        raise TypeError(f"feature {name!r} has values of type {flat.dtype}; tf.Example holds "
                        "floats, ints and bytes")


def _as_bytes(name: str, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"feature {name!r} mixes strings with {type(value).__name__}")
