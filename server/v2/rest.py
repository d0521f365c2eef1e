"""V2 REST routes under /v2 (the protocol's REST spec, with Triton's binary tensor data
extension), one request in, (HTTP status, body, headers) out; paths, texts and status codes as
Triton's src/http_server.cc."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor
from typing import Any
from urllib.parse import parse_qs, unquote

import grpc
import orjson

from pyserving.server import request_context
from pyserving.server.errors import ServingError, invalid_argument, unimplemented
from pyserving.server.metrics import REST, ServerMetrics
from pyserving.server.rest.handler import HTTP_STATUS
from pyserving.server.servable import AsyncRunner, EncodeObserver, run_steps_async
from pyserving.server.v2 import codec
from pyserving.server.v2.inference import (
    SIGNATURE_PARAMETER,
    InferInput,
    InferOutput,
    InferRequest,
    V2Inference,
)

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
_HEADER_LENGTH_KEY = HEADER_LENGTH.lower()
INFER_API = "ModelInfer"  # the API label of V2 inference in the request metrics
V2_PATH = re.compile(r"/v2(?:[/?#].*)?", re.DOTALL)
_SERVER_PATH = re.compile(r"/v2(?:/health/(live|ready))?")
_MODEL_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?"
                         r"(?:/(infer|ready|config|stats|generate|generate_stream|"
                         r"trace/setting))?")
_JSON = {"Content-Type": "application/json"}
_MAX_TIMEOUT_MICROS = 2**63 - 1
Response = tuple[int, bytes, Mapping[str, str]]


def error_response(status: int, message: str) -> Response:
    return status, orjson.dumps({"error": message}), _JSON


class V2RestHandler:
    """The /v2 routes over one ``V2Inference``."""

    def __init__(self, inference: V2Inference, server_metadata: dict[str, Any],
                 run: AsyncRunner, executor: Executor,
                 metrics: ServerMetrics | None = None,
                 on_encode: EncodeObserver | None = None) -> None:
        self._inference = inference
        self._server_metadata = orjson.dumps(server_metadata)
        self._run = run
        self._executor = executor
        self._metrics = metrics
        self._on_encode = on_encode  # the encode stage's histogram (and span)

    async def process(self, method: str, target: str, body: bytes,
                      header: Callable[[str], str | None]) -> Response:
        """Inference on the caller's event loop like TF Serving's REST predict (decode, await
        the TensorFlow call through ``run``, encode); the other routes on ``executor``."""
        path, _, query = target.partition("?")
        path = path.partition("#")[0]
        match = _MODEL_PATH.fullmatch(path)
        if match and match.group(3) == "infer" and method == "POST":
            name, version = unquote(match.group(1)), unquote(match.group(2) or "")
            return await self._infer(name, version, body, header, target)
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._route, method, path, query, target, match)

    def _route(self, method: str, path: str, query: str, target: str,
               match: re.Match | None) -> Response:
        try:
            if match:
                return self._model(method, match, query)
            server = _SERVER_PATH.fullmatch(path)
            if server:
                return self._server(method, server.group(1))
            return error_response(404, "Not Found")
        except Exception as error:
            return _failure(error, method, target)[1]

    def _server(self, method: str, kind: str | None) -> Response:
        if method != "GET":
            return error_response(405, "Method Not Allowed")
        if kind is None:
            return 200, self._server_metadata, _JSON
        ready = True if kind == "live" else self._inference.server_ready()
        return (200 if ready else 400), b"", {}

    def _model(self, method: str, match: re.Match, query: str) -> Response:
        name, version, verb = unquote(match.group(1)), unquote(match.group(2) or ""), \
            match.group(3)
        if verb == "infer" or method != "GET":
            return error_response(405, "Method Not Allowed")
        if verb is None:
            signature = parse_qs(query).get(SIGNATURE_PARAMETER, [""])[0]
            metadata = self._inference.model_metadata(name, version, signature)
            return 200, orjson.dumps(metadata), _JSON
        if verb == "ready":
            if self._inference.model_ready(name, version):
                return 200, b"", {}
            return error_response(400, "Model version not ready")
        raise unimplemented(f"/v2/models/{{model}}/{verb} is not implemented by pyserving; "
                            "see docs/v2.md")

    async def _infer(self, name: str, version: str, body: bytes,
                     header: Callable[[str], str | None], target: str) -> Response:
        if self._metrics is None:
            return (await self._infer_counted(name, version, body, header, target))[1]
        started = time.monotonic()
        with self._metrics.in_flight(name, INFER_API, REST):
            code, response = await self._infer_counted(name, version, body, header, target)
        self._metrics.observe_request(name, INFER_API, REST, code, time.monotonic() - started)
        return response

    async def _infer_counted(self, name: str, version: str, body: bytes,
                             header: Callable[[str], str | None], target: str
                             ) -> tuple[grpc.StatusCode, Response]:
        try:
            return grpc.StatusCode.OK, await self._run_infer(name, version, body, header)
        except Exception as error:
            return _failure(error, "POST", target)

    async def _run_infer(self, name: str, version: str, body: bytes,
                         header: Callable[[str], str | None]) -> Response:
        header_length = _header_length(header(_HEADER_LENGTH_KEY), len(body))
        document = _parse(body[:header_length])
        parameters = _object(document.get("parameters", {}), "parameters")
        if not isinstance(document.get("id", ""), str):
            raise invalid_argument("Unable to parse 'id'")
        request = InferRequest(name, version, _string_parameter(parameters))
        view = memoryview(body)
        offset = header_length
        for tensor in _array(document.get("inputs"), "inputs"):
            request.inputs.append(_input(_object(tensor, "inputs"), view, offset))
            offset += _consumed(tensor)
        if offset != len(body):
            raise invalid_argument(f"unexpected additional input data for model '{name}'")
        default_binary = _bool(parameters.get("binary_data_output", False),
                               "binary_data_output")
        binary: dict[str, bool] = {}
        if "outputs" in document:
            for item in _array(document["outputs"], "outputs"):
                output = _object(item, "outputs")
                output_name = output.get("name")
                if not isinstance(output_name, str):
                    raise invalid_argument("Unable to parse 'name'")
                output_parameters = _object(output.get("parameters", {}), "parameters")
                binary[output_name] = _bool(output_parameters.get("binary_data",
                                                                  default_binary), "binary_data")
        request.outputs = list(binary)
        timeout = _timeout_seconds(parameters.get("timeout"))
        if timeout is None:  # the usual case: no context manager on the way
            served, outputs = await run_steps_async(self._inference.infer_steps(request),
                                                    self._run)
        else:
            with within(timeout):
                served, outputs = await run_steps_async(self._inference.infer_steps(request),
                                                        self._run)
        if self._on_encode is None:
            return _response(document, name, served, outputs, binary, default_binary)
        started = time.monotonic()
        response = _response(document, name, served, outputs, binary, default_binary)
        self._on_encode(name, INFER_API, started, time.monotonic() - started)
        return response


def _failure(error: Exception, method: str, target: str) -> tuple[grpc.StatusCode, Response]:
    """A ServingError as its status and text; anything else is a bug: logged, and a 500
    with the protocol's error body."""
    if isinstance(error, ServingError):
        return error.code, error_response(HTTP_STATUS.get(error.code, 500), error.message)
    log.exception("REST %s %s failed", method, target)
    return grpc.StatusCode.INTERNAL, error_response(500, repr(error))


def _header_length(value: str | None, content_length: int) -> int:
    """GetInferenceHeaderLength: the JSON part's size, the whole body without the header."""
    if value is None:
        return content_length
    try:
        parsed = int(value.strip())
    except ValueError:
        raise invalid_argument(f"Unable to parse {HEADER_LENGTH}, got: {value}") from None
    if not 0 <= parsed <= content_length:
        raise invalid_argument(f"inference header size should be in range (0, "
                               f"{content_length}), got: {value}")
    return parsed


def _parse(data: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise invalid_argument(f"failed to parse the request JSON buffer: {error}") from None
    return _object(document, "request")


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid_argument(f"Unable to parse '{what}': expected a JSON object")
    return value


def _array(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise invalid_argument(f"Unable to parse '{what}': expected a JSON array")
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise invalid_argument(f"Unable to parse '{what}'")
    return value


def _string_parameter(parameters: Mapping[str, Any]) -> str:
    value = parameters.get(SIGNATURE_PARAMETER, "")
    if not isinstance(value, str):
        raise invalid_argument(f"Unable to parse '{SIGNATURE_PARAMETER}': expected a string")
    return value


def _binary_size(tensor: Mapping[str, Any]) -> int | None:
    parameters = _object(tensor.get("parameters", {}), "parameters")
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise invalid_argument("Unable to parse 'binary_data_size'")
    return size


def _consumed(tensor: Mapping[str, Any]) -> int:
    return _binary_size(tensor) or 0


def _input(tensor: Mapping[str, Any], body: memoryview, offset: int) -> InferInput:
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(name, str):
        raise invalid_argument("Unable to parse 'name'")
    if not isinstance(datatype, str):
        raise invalid_argument(f"Unable to parse 'datatype' of input '{name}'")
    if not isinstance(shape, list):
        raise invalid_argument(f"Unable to parse 'shape' of input '{name}'")
    size = _binary_size(tensor)
    if size is not None:
        if "data" in tensor:
            raise invalid_argument(f"input '{name}' has both 'data' and 'binary_data_size'")
        chunk = body[offset:offset + size]
        if len(chunk) != size:
            raise invalid_argument(f"unexpected size for input '{name}', expecting "
                                   f"{size - len(chunk)} additional bytes")
        array = codec.array_from_raw(name, datatype, shape, chunk)
    else:
        if "data" not in tensor:
            raise invalid_argument(f"must specify 'data' or 'binary_data_size' for input "
                                   f"'{name}'")
        array = codec.array_from_json(name, datatype, shape, tensor["data"])
    return InferInput(name, datatype, list(shape), array)


def _timeout_seconds(micros: Any) -> float | None:
    """The ``timeout`` request parameter, in microseconds as Triton reads it."""
    if micros is None:
        return None
    if not isinstance(micros, int) or isinstance(micros, bool) or \
            not 0 <= micros <= _MAX_TIMEOUT_MICROS:
        raise invalid_argument("Unable to parse 'timeout'")
    return micros / 1e6


@contextlib.contextmanager
def within(seconds: float | None) -> Iterator[None]:
    """Narrow the request's deadline to ``seconds`` from now (for the batcher and TensorFlow's
    RunOptions) while the block runs; no change without a timeout."""
    if seconds is None:
        yield
        return
    token = request_context.narrow_deadline(seconds)
    try:
        yield
    finally:
        request_context.current.reset(token)


def _response(document: Mapping[str, Any], model: str, version: int,
              outputs: list[InferOutput], binary: Mapping[str, bool],
              default_binary: bool) -> Response:
    chunks: list[bytes] = []
    described = []
    for output in outputs:
        entry: dict[str, Any] = {"name": output.name, "datatype": output.datatype,
                                 "shape": list(output.array.shape)}
        if binary.get(output.name, default_binary):
            raw = codec.raw_bytes(output.array, output.datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = codec.json_data(output.array, output.datatype)
        described.append(entry)
    answer: dict[str, Any] = {"model_name": model, "model_version": str(version)}
    if "id" in document:
        answer["id"] = document["id"]
    answer["outputs"] = described
    header = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return 200, header, _JSON
    return 200, b"".join([header, *chunks]), {
        "Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
