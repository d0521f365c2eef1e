"""Predict: validate a request against its signature, run it, build the response.

Checks and messages follow TF Serving's predict_util.cc and TensorFlow's
saved_model::GetInputValues, in the same order.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from pyserving.client.tensors import (
    DTYPE_NAMES,
    TensorParseError,
    TensorTooLargeError,
    dtype_enum_for,
    fill_tensor_proto,
    ndarray_from_tensor_proto,
)
from pyserving.server.apis import predict_pb2
from pyserving.server.errors import failed_precondition, internal, invalid_argument
from pyserving.server.servable import (
    EncodeObserver,
    Runner,
    RuntimeObserver,
    Servable,
    SignatureDef,
    Steps,
    run_steps,
    run_unbatched,
)

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
OutputArray = tuple[str, np.ndarray, int]  # (alias, value, tensorflow.DataType)
# TensorFlow's numpy bridge (TF_SessionRun from Python) segfaults on string arrays of more
# dimensions than numpy 1's NPY_MAXDIMS; TF Serving, without numpy, has no such limit.
_MAX_STRING_RANK = 32


def _joined(keys: Any) -> str:
    return ",".join(sorted(keys))


def find_predict_signature(servable: Servable, signature_name: str) -> tuple[str, SignatureDef]:
    name = signature_name or DEFAULT_SIGNATURE
    signature = servable.signatures.get(name)
    if signature is None:
        raise failed_precondition(f'Serving signature key "{name}" not found.')
    return name, signature


def _verify_method_name(signature: SignatureDef) -> None:
    if signature.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
        raise internal("Expected prediction signature method_name to be one of "
                       f"{{{PREDICT_METHOD}, {CLASSIFY_METHOD}, {REGRESS_METHOD}}}. "
                       f"Was: {signature.method_name}")


def _verify_inputs_size(signature: SignatureDef, inputs: Any) -> None:
    sent, expected = len(inputs), len(signature.inputs)
    if sent > expected or (sent < expected and not signature.defaults):
        request_keys, signature_keys = set(inputs.keys()), set(signature.inputs.keys())
        raise invalid_argument(
            f"input size does not match signature: {sent}!={expected} "
            f"len({{{_joined(request_keys)}}}) != len({{{_joined(signature_keys)}}}). "
            f"Sent extra: {{{_joined(request_keys - signature_keys)}}}. "
            f"Missing but required: {{{_joined(signature_keys - request_keys)}}}.")


def _too_large(alias: str, error: TensorTooLargeError, max_bytes: int, taken: int) -> str:
    # TF Serving's text first (its Tensor::FromProto fails when the allocation does).
    others = f" on top of the {taken} bytes of the request's other tensors" if taken else ""
    return (f"tensor parsing error: {alias}: {error.dtype_name} tensor of shape "
            f"{list(error.shape)} needs {error.nbytes} bytes{others}; a request's tensors may "
            f"take at most {max_bytes} bytes (--max_request_tensor_bytes)")


def _decoded(alias: str, tensor: Any, max_bytes: int, taken: int) -> np.ndarray:
    """A TensorProto decoded within ``max_bytes - taken`` bytes, or an array (REST decodes
    its own) checked against the same limit."""
    try:
        if not isinstance(tensor, np.ndarray):
            return ndarray_from_tensor_proto(tensor, max_bytes=max_bytes - taken)
        if tensor.nbytes > max_bytes - taken:
            raise TensorTooLargeError(tensor.shape, DTYPE_NAMES.get(dtype_enum_for(tensor), ""),
                                      tensor.nbytes, max_bytes - taken)
        return tensor
    except TensorTooLargeError as error:
        raise invalid_argument(_too_large(alias, error, max_bytes, taken)) from None
    except TensorParseError:
        raise invalid_argument(f"tensor parsing error: {alias}") from None


def input_feeds(signature: SignatureDef, inputs: Mapping[str, Any],
                max_bytes: int) -> list[tuple[str, np.ndarray]]:
    """Decode the request's tensors (TensorProtos or arrays; else the signature's defaults)
    into (feed name, array); together they may take at most ``max_bytes``, checked before
    each proto is decoded."""
    feeds = []
    used = 0
    taken = 0
    for alias, info in signature.inputs.items():
        if alias in inputs:
            proto = inputs[alias]
            used += 1
        elif alias in signature.defaults:
            proto = signature.defaults[alias]
        else:
            raise invalid_argument(
                f"Signature input alias: {alias}(feed name: {info.name}) not found in request "
                f"and no default value provided. Inputs expected to be in the request "
                f"{{{_joined(inputs.keys())}}}, or default input alias set: "
                f"{_joined(signature.defaults.keys())}")
        array = _decoded(alias, proto, max_bytes, taken)
        if array.ndim > _MAX_STRING_RANK and array.dtype.kind == "O":
            raise invalid_argument(f"tensor parsing error: {alias}: string tensors of more than "
                                   f"{_MAX_STRING_RANK} dimensions are not supported")
        taken += array.nbytes
        feeds.append((info.name, array))
    if inputs and used != len(inputs):
        seen = [alias for alias in signature.inputs if alias in inputs]
        raise invalid_argument(
            f"Inputs contains invalid name. Used request inputs: {_joined(seen)}, "
            f"request input: {_joined(inputs.keys())}")
    return feeds


def output_aliases(signature: SignatureDef, output_filter: Any) -> list[str]:
    """The outputs to fetch: the filter in its order, or every output of the signature."""
    if not output_filter:
        return list(signature.outputs.keys())
    seen: set[str] = set()
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid_argument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be "
                f"in the set {{{_joined(signature.outputs.keys())}}}.")
        if alias in seen:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    return list(output_filter)


class PredictPlan(NamedTuple):
    """A validated PredictRequest: what to feed and fetch, and how to name the outputs."""
    signature_name: str
    signature: SignatureDef
    feeds: list[tuple[str, np.ndarray]]
    aliases: list[str]
    fetches: list[str]


class Predictor:
    """Runs PredictRequests against servables: each request's work is written once, as
    ``Steps`` (servable.py), and ``runner`` makes its TensorFlow call in a thread; an event
    loop drives the same steps with its own runner."""

    def __init__(self, *, as_tensor_content: bool = False, check_method_name: bool = False,
                 max_tensor_bytes: int = 2**31, runner: Runner = run_unbatched,
                 on_runtime: RuntimeObserver | None = None,
                 on_encode: EncodeObserver | None = None) -> None:
        self.runner = runner
        self._on_runtime = on_runtime
        self._on_encode = on_encode
        self._as_tensor_content = as_tensor_content
        self._check_method_name = check_method_name
        self._max_tensor_bytes = max_tensor_bytes

    def plan(self, servable: Servable, request: predict_pb2.PredictRequest) -> PredictPlan:
        """Validate the request against its signature and decode its tensors."""
        return self._plan(servable, request.model_spec.signature_name, request.inputs,
                          request.output_filter)

    def _plan(self, servable: Servable, signature_name: str, inputs: Mapping[str, Any],
              output_filter: Any) -> PredictPlan:
        name, signature = find_predict_signature(servable, signature_name)
        if self._check_method_name:
            _verify_method_name(signature)
        _verify_inputs_size(signature, inputs)
        feeds = input_feeds(signature, inputs, self._max_tensor_bytes)
        aliases = output_aliases(signature, output_filter)
        fetches = [signature.outputs[alias].name for alias in aliases]
        return PredictPlan(name, signature, feeds, aliases, fetches)

    def array_steps(self, servable: Servable, model: str, signature_name: str,
                    inputs: Mapping[str, np.ndarray], output_filter: Sequence[str] = ()
                    ) -> Steps[list[OutputArray]]:
        """Predict for a transport that decodes its own tensors (REST, V2): the inputs as
        arrays by alias; the outputs as (alias, array, tensorflow.DataType), no protos
        between."""
        plan = self._plan(servable, signature_name, inputs, output_filter)
        values = yield from self._execute(servable, model, plan)
        outputs = plan.signature.outputs
        return [(alias, value, outputs[alias].dtype)
                for alias, value in zip(plan.aliases, values, strict=False)]

    def respond(self, servable: Servable, request: predict_pb2.PredictRequest,
                plan: PredictPlan, values: list[np.ndarray]) -> predict_pb2.PredictResponse:
        """The PredictResponse for the fetched values of a plan."""
        response = predict_pb2.PredictResponse()
        spec = response.model_spec
        spec.name = request.model_spec.name
        spec.signature_name = plan.signature_name
        spec.version.value = servable.version
        outputs = response.outputs
        signature_outputs = plan.signature.outputs
        for alias, value in zip(plan.aliases, values, strict=False):
            fill_tensor_proto(outputs[alias], value, as_content=self._as_tensor_content,
                              dtype_enum=signature_outputs[alias].dtype or None)
        return response

    def predict(self, servable: Servable,
                request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        return run_steps(self.predict_steps(servable, request), self.runner)

    def predict_steps(self, servable: Servable, request: predict_pb2.PredictRequest
                      ) -> Steps[predict_pb2.PredictResponse]:
        plan = self.plan(servable, request)
        values = yield from self._execute(servable, request.model_spec.name, plan)
        if self._on_encode is None:
            return self.respond(servable, request, plan, values)
        started = time.monotonic()
        response = self.respond(servable, request, plan, values)
        self._on_encode(request.model_spec.name, "Predict", started, time.monotonic() - started)
        return response

    def _execute(self, servable: Servable, model: str, plan: PredictPlan
                 ) -> Steps[list[np.ndarray]]:
        """The plan's TensorFlow call, its runtime observed."""
        started = time.monotonic()
        values = yield servable, plan.signature, plan.feeds, plan.fetches
        if self._on_runtime is not None:
            self._on_runtime(model, "Predict", time.monotonic() - started)
        return values
