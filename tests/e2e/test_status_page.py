"""The status page (GET / and /status on the REST port) and its document (GET /status.json):
models, versions, states, labels, a rollout's arms, shadow and guard, request and error counts,
batch queue depths and recent load errors; opened in a real headless Chromium (Debian's
``chromium`` driven by Playwright), which also checks that it refreshes in place."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_service_pb2_grpc

from pyserving.server import ModelServer, ServerOptions
from pyserving.server.rest import status_page
from support import TESTDATA, free_port, wait_until

TIMEOUT = 10.0
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
LABELS = 'version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 }'
ROLLOUT = ('rollouts { model_name: "m" split { label: "stable" weight: 80 } '
           'split { label: "canary" weight: 20 } sticky_metadata_key: "user" '
           'shadow { version: 3 fraction: 1.0 } guard { max_error_rate: 0.5 min_requests: 10 } }')


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ModelServer]:
    """``m`` at versions 1-3 with labels, a rollout with a shadow, batching on."""
    for version, source in ((1, "saved_model_half_plus_two_cpu"),
                            (2, "saved_model_half_plus_three"),
                            (3, "saved_model_half_plus_two_cpu")):
        shutil.copytree(TESTDATA / source / "00000123", tmp_path / "m" / str(version))
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "m" base_path: "{tmp_path / "m"}" '
                      f'model_platform: "tensorflow" model_version_policy {{ all {{}} }} '
                      f'{LABELS} }} }}')
    rollout = tmp_path / "rollout.txt"
    rollout.write_text(ROLLOUT)
    running = ModelServer(ServerOptions(
        port=0, rest_api_port=free_port(), model_config_file=str(config),
        rollout_config_file=str(rollout), rollout_config_poll_wait_seconds=0,
        file_system_poll_wait_seconds=1, enable_batching=True,
        allow_version_labels_for_unavailable_models=True), host="127.0.0.1").start()
    yield running
    running.stop(grace=None)


def predict(server: ModelServer, count: int, model: str = "m") -> None:
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model))
    request.inputs["x"].dtype = 1
    request.inputs["x"].tensor_shape.dim.add(size=1)
    request.inputs["x"].float_val.append(1.0)
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(count):
            with contextlib.suppress(grpc.RpcError):
                stub.Predict(request, TIMEOUT)


def get(server: ModelServer, path: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.rest_port}{path}",
                                timeout=TIMEOUT) as answer:
        return answer.status, answer.headers["Content-Type"], answer.read()


def document(server: ModelServer) -> dict[str, Any]:
    status, content_type, body = get(server, "/status.json")
    assert (status, content_type) == (200, "application/json")
    return json.loads(body)


def break_a_version(server: ModelServer, tmp_path: Path) -> None:
    """Version 4 appears with a SavedModel that cannot load: a recent load error."""
    shutil.copytree(TESTDATA / "bad_half_plus_two" / "00000123", tmp_path / "m" / "4")
    wait_until(lambda: document(server)["recent_load_errors"], "the load error", timeout=30)


def test_the_document_shows_models_rollouts_counts_and_load_errors(server, tmp_path):
    predict(server, 20)
    predict(server, 2, model="missing")
    break_a_version(server, tmp_path)
    status = document(server)
    (model,) = [m for m in status["models"] if m["name"] == "m"]
    states = {v["version"]: v["state"] for v in model["versions"]}
    assert {states[1], states[2], states[3]} == {"AVAILABLE"}
    assert model["labels"] == {"canary": 2, "stable": 1}
    assert (model["requests"], model["errors"]) == (20, 0)
    assert model["batch_queue_depth"] == 0
    rollout = status["rollouts"]["m"]
    assert [(arm["label"], arm["weight"]) for arm in rollout["arms"]] == [
        ("stable", 80), ("canary", 20)]
    assert sum(arm["requests"] for arm in rollout["arms"]) == 20
    assert rollout["shadow"]["version"] == 3 and rollout["guard"]["tripped"] is False
    (error,) = status["recent_load_errors"][:1]
    assert (error["model"], error["version"]) == ("m", 4)
    assert status["server"]["batching"] == "on" and status["server"]["pid"] == os.getpid()


def test_the_html_page_is_served_at_root_and_status_with_no_external_assets(server):
    predict(server, 3)
    for path in ("/", "/status"):
        status, content_type, body = get(server, path)
        assert (status, content_type) == (200, "text/html; charset=utf-8")
        page = body.decode()
        assert "<main>" in page and "Rollout of m" in page and "stable &rarr; 1" in page
        # Works offline and behind a TLS proxy: nothing is loaded from anywhere else.
        for external in ("http://", "https://", "src=", "<link"):
            assert external not in page
    # The TF Serving routes are untouched.
    assert get(server, "/v1/models/m")[0] == 200


def test_names_are_escaped() -> None:
    page = status_page.render({
        "server": {"pid": 1}, "rollouts": {}, "recent_load_errors": [
            {"time": 0, "model": "<b>x</b>", "version": 1, "error": "<script>alert(1)"}],
        "models": [{"name": "<script>bad()</script>", "versions": [], "labels": {},
                    "requests": 0, "errors": 0, "batch_queue_depth": 0}]}).decode()
    assert "<script>bad()" not in page and "&lt;script&gt;bad()" in page
    assert "<script>alert" not in page


def _browser() -> Any:
    """A launched headless Chromium, or a skip saying what is missing."""
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install playwright)")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no browser at {CHROMIUM}: apt-get install chromium (CI's .ci/run does)")
    return sync_api


def test_the_page_in_a_real_browser_refreshes_in_place(server, tmp_path):
    sync_api = _browser()
    predict(server, 5)
    break_a_version(server, tmp_path)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(f"http://127.0.0.1:{server.rest_port}/", wait_until="load")
            assert page.title() == "pyserving status"
            models = page.locator("main section").first
            assert "m" in models.inner_text()
            row = page.locator("main table").first.locator("tbody tr").first
            assert "1 AVAILABLE" in row.inner_text() and "canary → 2" in row.inner_text()
            assert "stable" in page.locator("main").inner_text()
            assert "Shadow version 3" in page.locator("main").inner_text()
            assert "version 4" not in row.inner_text()  # the failed version shows as END
            assert "m" in page.locator("main section").last.inner_text()
            # A marker in the page's JavaScript survives the refresh: it is in place.
            page.evaluate("window.stillHere = true")
            predict(server, 7)
            page.wait_for_function(
                "document.querySelector('main table tbody tr').innerText.includes('\\t12\\t')",
                timeout=15000)
            assert page.evaluate("window.stillHere") is True
            assert page.locator("#updated").inner_text().startswith("updated")
            page.screenshot(path=os.environ.get("PYSERVING_STATUS_SCREENSHOT",
                                                str(tmp_path / "status.png")), full_page=True)
        finally:
            browser.close()
