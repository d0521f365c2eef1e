"""The REST handler: TF Serving's /v1/models routes (http_rest_api_handler.cc) over the serving
core, one request in, (HTTP status, JSON body) out, whatever server carries it."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any
from urllib.parse import unquote

import grpc
import orjson

from pyserving.server.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    regression_pb2,
)
from pyserving.server.core import SIGNATURE_DEF_FIELD, ServingCore
from pyserving.server.errors import ServingError, invalid_argument
from pyserving.server.metrics import REST, ServerMetrics
from pyserving.server.predict import DEFAULT_SIGNATURE
from pyserving.server.rest import json_parse, request_json, response_json
from pyserving.server.servable import AsyncRunner, EncodeObserver, Servable, run_steps_async

log = logging.getLogger(__name__)

# http_server.cc ToHTTPStatusCode.
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

# http_rest_api_util.cc / http_rest_api_handler.cc.
_PREDICTION_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE)
_ROLLOUT_PATH = re.compile(r"/v1/models/([^/:]+)/rollout", re.IGNORECASE)  # pyserving's own
_INT64_MAX = 2**63 - 1


class _UnparsedModelInfo(ServingError):
    """ParseModelInfo failed: TF Serving's handler returns before writing the error JSON, so
    the answer is a 400 with an empty body."""


def _model_spec(name: str, version: str, label: str) -> model_pb2.ModelSpec:
    """ParseModelInfo + FillModelSpecWithNameVersionAndLabel, from the captured path parts."""
    spec = model_pb2.ModelSpec(name=unquote(name))
    if version:
        if int(version) > _INT64_MAX:
            raise _UnparsedModelInfo(grpc.StatusCode.INVALID_ARGUMENT,
                                     f"Failed to convert version: {version} to numeric.")
        spec.version.value = int(version)
    if label:
        spec.version_label = unquote(label)
    return spec


class RestHandler:
    """HttpRestApiHandler::ProcessRequest: one request in, (HTTP status, JSON body) out.
    Predict, Classify and Regress run on the event loop by the core's steps, their TensorFlow
    call awaited through ``run`` (the batcher, or a pool thread); the other routes run on
    ``executor``."""

    def __init__(self, core: ServingCore, run: AsyncRunner, executor: Executor,
                 metrics: ServerMetrics | None = None,
                 on_encode: EncodeObserver | None = None) -> None:
        self._core = core
        self._run = run
        self._executor = executor
        self._metrics = metrics
        self._on_encode = on_encode

    async def process(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        prediction = _PREDICTION_PATH.fullmatch(path) if method == "POST" else None
        if prediction is None:
            return (await asyncio.get_running_loop().run_in_executor(
                self._executor, self._process, method, path, body))[1:]
        if self._metrics is None:
            return (await self._predict_route(method, path, body, prediction))[1:]
        model, api = unquote(prediction.group(1)), prediction.group(4)
        started = time.monotonic()
        with self._metrics.in_flight(model, api, REST):
            code, status, payload = await self._predict_route(method, path, body, prediction)
        self._metrics.observe_request(model, api, REST, code, time.monotonic() - started)
        return status, payload

    async def _predict_route(self, method: str, path: str, body: bytes, prediction: re.Match
                             ) -> tuple[grpc.StatusCode, int, bytes]:
        name, version, label, verb = prediction.groups()
        try:
            call = {"predict": self._predict, "classify": self._classify,
                    "regress": self._regress}.get(verb)
            if call is None:  # the verb matched in another case
                raise invalid_argument(f"Malformed request: {method} {path}")
            return grpc.StatusCode.OK, 200, await call(
                _model_spec(name, version or "", label or ""), body)
        except Exception as error:
            return _failure(error, method, path)

    def _process(self, method: str, path: str, body: bytes
                 ) -> tuple[grpc.StatusCode, int, bytes]:
        try:
            return grpc.StatusCode.OK, 200, self._dispatch(method, path)
        except Exception as error:
            return _failure(error, method, path)

    def _dispatch(self, method: str, path: str) -> bytes:
        if method == "GET":
            rollout = _ROLLOUT_PATH.fullmatch(path)
            if rollout:
                return orjson.dumps(self._core.rollout_status(unquote(rollout.group(1))))
            match = _STATUS_PATH.fullmatch(path)
            if match:
                name, version, label, subresource = match.groups()
                spec = _model_spec(name or "", version or "", label or "")
                if subresource == "metadata":
                    return self._metadata(spec)
                return self._status(spec)
        raise invalid_argument(f"Malformed request: {method} {path}")

    async def _predict(self, spec: model_pb2.ModelSpec, body: bytes) -> bytes:
        """The body is parsed before the model is resolved, and read against the signature
        of the one version that then runs it."""
        document = json_parse.parse_json(body)
        request_json.signature_name(document)  # checked before the model, as in TF Serving
        may_hold_bools = json_parse.may_hold_bools(body)
        fmt = request_json.RequestFormat.ROW

        def read(servable: Servable) -> tuple[str, Mapping[str, Any]]:
            nonlocal fmt
            name, arrays, fmt = request_json.predict_inputs(
                document, lambda name: _signature_inputs(servable, name), may_hold_bools)
            return name, arrays

        outputs = await run_steps_async(self._core.predict_arrays_steps(spec, read), self._run)
        if self._on_encode is None:
            return response_json.predict_json(outputs, fmt)
        started = time.monotonic()
        encoded = response_json.predict_json(outputs, fmt)
        self._on_encode(spec.name, "Predict", started, time.monotonic() - started)
        return encoded

    async def _classify(self, spec: model_pb2.ModelSpec, body: bytes) -> bytes:
        request = classification_pb2.ClassificationRequest(model_spec=spec)
        request_json.fill_examples_request(json_parse.parse_json(body), request)
        return response_json.classification_json(
            await run_steps_async(self._core.classify_steps(request), self._run))

    async def _regress(self, spec: model_pb2.ModelSpec, body: bytes) -> bytes:
        request = regression_pb2.RegressionRequest(model_spec=spec)
        request_json.fill_examples_request(json_parse.parse_json(body), request)
        return response_json.regression_json(
            await run_steps_async(self._core.regress_steps(request), self._run))

    def _status(self, spec: model_pb2.ModelSpec) -> bytes:
        if not spec.name:
            raise invalid_argument("Missing model name in request.")
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=spec)
        return response_json.model_status_json(self._core.model_status(request))

    def _metadata(self, spec: model_pb2.ModelSpec) -> bytes:
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=spec, metadata_field=[SIGNATURE_DEF_FIELD])
        return response_json.model_metadata_json(self._core.model_metadata(request))


def _failure(error: Exception, method: str, path: str) -> tuple[grpc.StatusCode, int, bytes]:
    """The answer to a request that failed: TF Serving's error JSON and HTTP status."""
    if isinstance(error, ServingError):
        body = b"" if isinstance(error, _UnparsedModelInfo) else \
            response_json.error_json(error.message)
        return error.code, HTTP_STATUS.get(error.code, 500), body
    # a bug: logged, and answered as TF Serving's INTERNAL
    log.exception("REST %s %s failed", method, path, exc_info=error)
    return grpc.StatusCode.INTERNAL, 500, response_json.error_json(repr(error))


def _signature_inputs(servable: Servable, name: str) -> Mapping[str, Any]:
    """HttpRestApiHandler::GetInfoMap."""
    signature = servable.signatures.get(name or DEFAULT_SIGNATURE)
    if signature is None:
        raise invalid_argument(f'Serving signature name: "{name or DEFAULT_SIGNATURE}" '
                               "not found in signature def")
    return signature.inputs
