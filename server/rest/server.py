"""The HTTP server of the REST API: aiohttp on its own event loop in a background thread. A
Predict, Classify or Regress is parsed, run by the core's steps and encoded on the loop; its
TensorFlow call waits as a batch's future or runs on a pool of --rest_api_num_threads threads
(inline when its signature measured faster than the hop, servable.unbatched_async). Status,
metadata and the metrics page run on the pool."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
from aiohttp import web

from pyserving.server import request_context
from pyserving.server.core import ServingCore
from pyserving.server.errors import unavailable
from pyserving.server.metrics import ServerMetrics
from pyserving.server.request_context import RequestContext
from pyserving.server.request_id import HEADER as REQUEST_ID_HEADER
from pyserving.server.request_id import request_id
from pyserving.server.rest import response_json, status_page
from pyserving.server.rest.handler import HTTP_STATUS, RestHandler
from pyserving.server.servable import AsyncRunner, EncodeObserver, unbatched_async
from pyserving.server.tracing import Tracing
from pyserving.server.v2.rest import V2_PATH, V2RestHandler
from pyserving.server.v2.rest import error_response as v2_error

log = logging.getLogger(__name__)

_HANDLED_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
_JSON = "application/json"
_CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET",
    "Access-Control-Allow-Headers": "Content-Type",
}
_ORIGIN = re.compile(r"https?://")
# evhttp_server.cc evhttp_set_allowed_methods (libevent answers others with its own page)
_ALLOWED_METHODS = frozenset({"GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"})
_share_port = False


def share_port_with_other_processes() -> None:
    """``--workers N``: REST servers of this process bind with SO_REUSEPORT, as gRPC does."""
    global _share_port  # noqa: PLW0603 (SO_REUSEPORT is for every REST server of a worker)
    _share_port = True


@dataclass(frozen=True)
class RestOptions:
    port: int
    num_threads: int
    timeout_ms: int
    enable_cors: bool
    max_request_bytes: int
    # on stop, what in-flight requests get to finish before they are cancelled
    shutdown_grace_seconds: float = 5.0


class RestServer:
    """The REST API on its own event loop thread; start() returns once the port is open."""

    def __init__(self, core: ServingCore, options: RestOptions, host: str = "0.0.0.0", *,
                 metrics: ServerMetrics | None = None,
                 metrics_page: tuple[str, Callable[[], tuple[bytes, str]]] | None = None,
                 status: Callable[[], dict[str, Any]] | None = None,
                 tracing: Tracing | None = None,
                 on_encode: EncodeObserver | None = None,
                 runner_for: Callable[[Executor], AsyncRunner] = unbatched_async,
                 v2: Callable[[AsyncRunner, Executor], V2RestHandler] | None = None) -> None:
        self._metrics_page = metrics_page  # (path, render) of the Prometheus page, if enabled
        self._status = status  # the status page's document (status.py), if served
        self._tracing = tracing
        self._options = options
        self._host = host
        self._executor = ThreadPoolExecutor(max_workers=max(options.num_threads, 1),
                                            thread_name_prefix="rest")
        run = runner_for(self._executor)
        self._handler = RestHandler(core, run, self._executor, metrics, on_encode)
        # the Open Inference Protocol's /v2 routes, when served
        self._v2 = v2(run, self._executor) if v2 is not None else None
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def start(self) -> RestServer:
        self._thread = threading.Thread(target=self._loop.run_forever, name="rest-loop",
                                        daemon=True)
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._open(), self._loop)
        try:
            self.port = future.result()
        except OSError as error:
            self.stop()
            raise unavailable(f"Failed to start HTTP Server at localhost:"
                              f"{self._options.port} ({error})") from None
        return self

    async def _open(self) -> int:
        app = web.Application(client_max_size=self._options.max_request_bytes)
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=self._options.shutdown_grace_seconds)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._options.port, reuse_address=True,
                           reuse_port=_share_port or None)
        await site.start()
        port: int = self._runner.addresses[0][1]  # the real port when 0 was asked
        return port

    def stop(self, *, join_pool: bool = True) -> None:
        """Stop taking requests; those in flight get ``shutdown_grace_seconds`` to finish, then
        are cancelled (their clients get the connection closed). With ``join_pool=False`` a
        TensorFlow call still running on the pool is not waited for (``join_pool()`` later,
        once the sessions are closed and so the call has ended)."""
        if self._thread is None:
            return
        if self._runner is not None:
            cleanup = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            # aiohttp waits the grace for the handlers, then as long again for the cancelled ones
            limit = 2 * self._options.shutdown_grace_seconds + 5
            try:
                cleanup.result(timeout=limit)
            except TimeoutError:
                log.warning("the HTTP/REST server did not close within %g s", limit)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._thread = None
        # A connection whose request was cancelled may still be ending: let it end, and the
        # callbacks that close sockets run, before the loop closes (as asyncio.run does).
        left = asyncio.all_tasks(self._loop)
        for task in left:
            task.cancel()
        if left:
            self._loop.run_until_complete(asyncio.wait(left, timeout=1.0))
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()
        self._executor.shutdown(wait=join_pool)

    def join_pool(self) -> None:
        """Wait for the pool's threads (after ``stop(join_pool=False)``)."""
        self._executor.shutdown(wait=True)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        if request.method not in _ALLOWED_METHODS:
            # JSON like every other answer, so JSON clients can read it (issue #24)
            response = self._response(405, response_json.error_json(
                f"Method Not Allowed: {request.method}"))
            response.headers["Allow"] = ", ".join(sorted(_ALLOWED_METHODS))
            return response
        target = _path_and_query(request)
        path = request.rel_url.raw_path
        page = self._metrics_page
        if page is not None and path == page[0]:
            return await self._serve_metrics(target, *page)
        if self._status is not None and request.method == "GET" and (
                path in status_page.HTML_PATHS or path == status_page.JSON_PATH):
            return await self._serve_status(path, self._status)
        v2 = self._v2 is not None and target.startswith("/v2") and \
            V2_PATH.fullmatch(target) is not None
        if not v2 and not _HANDLED_PATH.fullmatch(target):
            # no handler for the path (libevent's HTML page in TF Serving); JSON here
            return self._response(404, response_json.error_json(f"Not Found: {target}"))
        if request.content_length and request.content_length > self._options.max_request_bytes:
            return self._too_large(request.content_length)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(None)
        if request.method == "OPTIONS":
            return self._preflight(request)
        rid = request_id(request.headers.get)
        if v2:
            response = await self._serve_v2(request.method, target, body, request.headers,
                                            rid)
        else:
            status, payload = await self._run(request.method, target, body, request.headers,
                                              rid)
            response = self._response(status, payload)
        response.headers[REQUEST_ID_HEADER] = rid
        return response

    async def _serve_status(self, path: str, status: Callable[[], dict[str, Any]]
                            ) -> web.Response:
        """The status page (HTML) or its document (JSON), built on the thread pool."""
        document = await self._loop.run_in_executor(self._executor, status)
        if path == status_page.JSON_PATH:
            return web.Response(status=200, body=orjson.dumps(document),
                                headers={"Content-Type": _JSON, "Cache-Control": "no-store"})
        return web.Response(status=200, body=status_page.render(document), headers={
            "Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"})

    async def _serve_v2(self, method: str, target: str, body: bytes,
                        headers: Mapping[str, str], rid: str) -> web.Response:
        assert self._v2 is not None
        timeout = self._options.timeout_ms / 1000 if self._options.timeout_ms > 0 else None
        deadline = None if timeout is None else time.monotonic() + timeout
        # spans for inference and model metadata, as for TF Serving's API; not for probes
        trace = None if self._tracing is None or not target.startswith("/v2/models/") or \
            target.endswith("/ready") else self._tracing.start_rest(method, target,
                                                                    headers.get, rid)
        token = request_context.current.set(
            RequestContext(deadline, header=headers.get, request_id=rid, trace=trace))
        try:
            status, payload, extra = await asyncio.wait_for(
                self._v2.process(method, target, body, headers.get), timeout)
        except asyncio.TimeoutError:
            status, payload, extra = v2_error(504, "Deadline Exceeded")
        except asyncio.CancelledError:
            if trace is not None:
                trace.end(grpc.StatusCode.CANCELLED)
            raise
        finally:
            request_context.current.reset(token)
        if trace is not None:
            trace.end(_status_code(status), attributes={"http.response.status_code": status})
        response_headers = dict(extra)
        if self._options.enable_cors:
            response_headers.update(_CORS_HEADERS)
        return web.Response(status=status, body=payload, headers=response_headers)

    async def _serve_metrics(self, target: str, path: str,
                             render: Callable[[], tuple[bytes, str]]) -> web.Response:
        """http_server.cc ProcessPrometheusRequest, registered for the path whatever the
        method: a target with a query or fragment is refused with its text."""
        if target != path:
            return web.Response(status=400, headers={"Content-Type": "text/plain"},
                                body=f"Unexpected path: {target}. Should be {path}".encode())
        body, content_type = await self._loop.run_in_executor(self._executor, render)
        return web.Response(status=200, body=body, headers={"Content-Type": content_type})

    def _preflight(self, request: web.Request) -> web.Response:
        """http_server.cc: 200 with an Origin, else FAILED_PRECONDITION ("Origin header is
        missing in CORS preflight"), which is only logged: the body is empty either way."""
        return self._response(200 if _ORIGIN.search(request.headers.get("Origin", "")) else 400,
                              b"")

    async def _run(self, method: str, path: str, body: bytes,
                   headers: Mapping[str, str], rid: str = "") -> tuple[int, bytes]:
        """The handler's answer, on this loop, within --rest_api_timeout_in_ms (its
        TensorFlow call on the pool or in a batch: the loop never waits for one)."""
        timeout = self._options.timeout_ms / 1000 if self._options.timeout_ms > 0 else None
        deadline = None if timeout is None else time.monotonic() + timeout
        trace = None if self._tracing is None else \
            self._tracing.start_rest(method, path, headers.get, rid)
        token = request_context.current.set(
            RequestContext(deadline, header=headers.get, request_id=rid, trace=trace))
        try:
            answer: tuple[int, bytes] = await asyncio.wait_for(
                self._handler.process(method, path, body), timeout)
        except asyncio.TimeoutError:
            answer = HTTP_STATUS[grpc.StatusCode.DEADLINE_EXCEEDED], \
                response_json.error_json("Deadline Exceeded")
        except asyncio.CancelledError:
            if trace is not None:
                trace.end(grpc.StatusCode.CANCELLED)
            raise
        finally:
            request_context.current.reset(token)
        if trace is not None:
            trace.end(_status_code(answer[0]), attributes={"http.response.status_code": answer[0]})
        return answer

    def _too_large(self, size: int | None) -> web.Response:
        limit = self._options.max_request_bytes
        sent = f" of {size} bytes" if size is not None else ""
        message = (f"Request body{sent} exceeds the limit of {limit} bytes "
                   "(--rest_api_max_request_bytes)")
        return self._response(413, response_json.error_json(message))

    def _response(self, status: int, payload: bytes) -> web.Response:
        headers = {"Content-Type": _JSON}
        if self._options.enable_cors:
            headers.update(_CORS_HEADERS)
        return web.Response(status=status, body=payload, headers=headers)


_STATUS_CODES = {http: code for code, http in reversed(list(HTTP_STATUS.items()))}


def _status_code(http_status: int) -> grpc.StatusCode:
    """The gRPC code a REST answer stands for (the first that maps to its HTTP status)."""
    return _STATUS_CODES.get(http_status, grpc.StatusCode.UNKNOWN)


def _path_and_query(request: web.Request) -> str:
    """What TF Serving's handlers match: the path with its '?query' and '#fragment', undecoded
    (evhttp_request.cc ParsedEvRequest::decode), so a query string makes most routes miss."""
    target = request.raw_path  # the request line's target, as sent
    return target if target.startswith("/") else request.rel_url.raw_path_qs


