"""--log_format: text and JSON log lines, and the request and trace IDs of the request a line
is about (logging_setup.py); the CLI's flag end to end."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from types import SimpleNamespace

import pytest

from pyserving.server import logging_setup, request_context
from pyserving.server.request_context import RequestContext
from support import free_port, stop_process, wait_until


def _logged(log_format: str, context: RequestContext | None, tag: str = "") -> str:
    stream = io.StringIO()
    logger = logging.getLogger("pyserving.test.logging_setup")
    logger.propagate = False
    handler = logging_setup.log_handler(log_format, tag, stream)
    logger.addHandler(handler)
    token = request_context.current.set(context) if context is not None else None
    try:
        logger.warning("answered %d", 7, extra={"model_event": {"event": "load"}})
    finally:
        if token is not None:
            request_context.current.reset(token)
        logger.removeHandler(handler)
    return stream.getvalue()


def _fake_trace() -> SimpleNamespace:
    return SimpleNamespace(span_context=SimpleNamespace(
        trace_id=0x4bf92f3577b34da6a3ce929d0e0e4736, span_id=0x00f067aa0ba902b7))


def test_json_lines_carry_the_request_and_trace_ids() -> None:
    line = _logged("json", RequestContext(request_id="req-1", trace=_fake_trace()), "worker 2")
    record = json.loads(line)
    assert record["message"] == "answered 7"
    assert (record["level"], record["logger"]) == ("WARNING", "pyserving.test.logging_setup")
    assert record["request_id"] == "req-1"
    assert record["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert record["span_id"] == "00f067aa0ba902b7"
    assert record["worker"] == "worker 2"
    assert record["model_event"] == {"event": "load"}
    assert line.count("\n") == 1


def test_json_lines_outside_a_request_have_no_ids() -> None:
    record = json.loads(_logged("json", None))
    assert "request_id" not in record and "trace_id" not in record


def test_text_lines_name_the_request() -> None:
    line = _logged("text", RequestContext(request_id="req-9", trace=_fake_trace()))
    assert line.rstrip().endswith(
        "logging_setup] request_id=req-9 trace_id=4bf92f3577b34da6a3ce929d0e0e4736 answered 7")
    assert _logged("text", RequestContext(request_id="req-3")).rstrip().endswith(
        "logging_setup] request_id=req-3 answered 7")
    assert _logged("text", None).rstrip().endswith("logging_setup] answered 7")


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="--log_format"):
        logging_setup.log_handler("xml")


def test_cli_json_logs_are_one_object_per_line(testdata_model) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "pyserving.server", f"--port={free_port()}",
         "--model_base_path=" + testdata_model("saved_model_half_plus_two_cpu"),
         "--log_format=json"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    try:
        assert process.stderr is not None

        def running() -> bool:
            line = process.stderr.readline()  # type: ignore[union-attr]
            lines.append(line)
            return "Running gRPC ModelServer" in line or not line
        wait_until(running, "the server to start", timeout=120)
    finally:
        stop_process(process)
    ours = [json.loads(line) for line in lines if line.startswith("{")]
    assert any(record["message"].startswith("Running gRPC ModelServer") for record in ours)
    assert all({"time", "level", "logger", "message"} <= set(record) for record in ours)
    # TensorFlow's C++ runtime writes its own lines; every line Python logs is JSON.
    assert not [line for line in lines if " INFO " in line and "pyserving" in line]


def test_cli_refuses_an_unknown_format() -> None:
    answer = subprocess.run([sys.executable, "-m", "pyserving.server", "--log_format=xml"],
                            capture_output=True, text=True, timeout=60)
    assert answer.returncode == 255
    assert "--log_format must be one of text, json, not 'xml'" in answer.stdout
