"""Models in object storage: s3:// and gs:// base paths, as TF Serving reads them through
TensorFlow's file systems. ``RemoteStorage`` lists a model's version "directories" in a bucket
and reads files; ``VersionCache`` copies one version into a local directory before it loads.

Why fsspec (s3fs, gcsfs) rather than TensorFlow's file systems: TF 2.21 has no S3 file system
(``tf.io.gfile.exists("s3://b/m")``: "File system scheme 's3' not implemented";
tensorflow-io's does not support 2.21), and the source must not import TensorFlow. They come
with the optional extra ``pyserving[cloud]`` and are imported only once a remote path is used.

Credentials and endpoints come from the variables TF Serving users already set: botocore reads
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE and
AWS_ENDPOINT_URL(_S3) itself; TensorFlow's S3_ENDPOINT, S3_USE_HTTPS, S3_VERIFY_SSL and
AWS_REGION are translated here. gcsfs finds GOOGLE_APPLICATION_CREDENTIALS and workload
identity (google.auth's default) and STORAGE_EMULATOR_HOST itself.
"""

from __future__ import annotations

import errno
import fcntl
import importlib
import logging
import os
import posixpath
import shutil
import tempfile
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any

import grpc

from pyserving.server.errors import ServingError, not_found, unavailable, unimplemented

log = logging.getLogger(__name__)

# URL scheme -> the fsspec implementation that reads it.
_LIBRARIES = {"s3": "s3fs", "gs": "gcsfs"}
CLOUD_EXTRA = "pip install 'pyserving[cloud]'"
# TF Serving's loader looks for these (saved_model.py's check, before a version is copied).
_SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt", "saved_model.cpb")
# Seconds to wait for a connection: an unreachable bucket fails a poll, it does not hang it.
_CONNECT_TIMEOUT = 5
# botocore's own retries on top of s3fs's: few, so a dead endpoint fails a poll in seconds
# (AWS_MAX_ATTEMPTS still wins when it is set).
_S3_MAX_ATTEMPTS = 2

# (relative path, size, fingerprint) of each file of a version, sorted.
Listing = tuple[tuple[str, int, str], ...]
# A server's cache folder, and the file whose lock (held while it lives) marks it as in use.
CACHE_PREFIX = "pyserving-models-"
OWNER_LOCK = "owner.lock"
_STARTING_PREFIX = ".pyserving-starting-"


def is_remote(path: str) -> bool:
    """True for a path pyserving reads from object storage (s3://, gs://)."""
    scheme, separator, _ = path.partition("://")
    return bool(separator) and scheme in _LIBRARIES


def require_cloud_extra(url: str) -> None:
    """Raise TensorFlow's error for a file system it lacks, naming the extra to install, when
    the library that reads ``url`` cannot be imported."""
    scheme = url.partition("://")[0]
    try:
        importlib.import_module("fsspec")
        importlib.import_module(_LIBRARIES[scheme])
    except ImportError as error:
        raise unimplemented(f"File system scheme '{scheme}' not implemented (file: '{url}'); "
                            f"pyserving reads {scheme}:// paths with its cloud extra: "
                            f"{CLOUD_EXTRA} ({error})") from None


def s3_options(environ: Mapping[str, str]) -> dict[str, Any]:
    """s3fs arguments from TensorFlow's S3 variables (tensorflow/io's s3_filesystem.cc)."""
    client: dict[str, Any] = {}
    config: dict[str, Any] = {"connect_timeout": _CONNECT_TIMEOUT}
    endpoint = environ.get("S3_ENDPOINT", "")
    standard = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    if endpoint and not standard:
        if "://" not in endpoint:  # TensorFlow's form is host:port, the scheme from S3_USE_HTTPS
            scheme = "https" if _flag(environ, "S3_USE_HTTPS", True) else "http"
            endpoint = f"{scheme}://{endpoint}"
        client["endpoint_url"] = endpoint
        # MinIO and other S3-compatible servers are addressed by path, as TensorFlow does.
        config["s3"] = {"addressing_style": "path"}
    if not _flag(environ, "S3_VERIFY_SSL", True):
        client["verify"] = False
    if environ.get("AWS_REGION"):  # botocore itself reads only AWS_DEFAULT_REGION
        client["region_name"] = environ["AWS_REGION"]
    if "AWS_MAX_ATTEMPTS" not in environ:
        config["retries"] = {"max_attempts": _S3_MAX_ATTEMPTS}
    return {"client_kwargs": client, "config_kwargs": config, "use_listings_cache": False,
            "skip_instance_cache": True}


def gcs_options(environ: Mapping[str, str]) -> dict[str, Any]:
    """gcsfs arguments: an emulator without credentials is used anonymously (google.auth's
    search would otherwise wait for a metadata server that is not there)."""
    options: dict[str, Any] = {"use_listings_cache": False, "skip_instance_cache": True}
    emulator = environ.get("STORAGE_EMULATOR_HOST", "")
    if emulator:
        options["endpoint_url"] = emulator if "://" in emulator else f"http://{emulator}"
        if not environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
            options["token"] = "anon"
    return options


def _make_filesystem(scheme: str, environ: Mapping[str, str]) -> Any:
    if scheme == "s3":
        import s3fs

        return s3fs.S3FileSystem(**s3_options(environ))
    # gcsfs's core class, the JSON API TensorFlow's GCS file system uses too: its default
    # (ExtendedGcsFileSystem) first asks the Storage Control gRPC API for each bucket's layout,
    # which took 60 s per bucket against an emulator before falling back to the JSON API.
    from gcsfs.core import GCSFileSystem

    return GCSFileSystem(**gcs_options(environ))


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    value = environ.get(name, "").strip().lower()
    if not value:
        return default
    return value not in ("0", "false", "no", "off")


class RemoteStorage:
    """The buckets one server reads: one fsspec file system per scheme, configured from
    ``environ`` when first used. Failures are ServingErrors in TensorFlow's status terms."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._filesystems: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _filesystem(self, url: str) -> Any:
        scheme = url.partition("://")[0]
        with self._lock:
            if scheme not in self._filesystems:
                require_cloud_extra(url)
                self._filesystems[scheme] = _make_filesystem(scheme, self._environ)
            return self._filesystems[scheme]

    def version_directories(self, base: str) -> list[tuple[int, str]]:
        """(version, URL) of the numbered "directories" right under ``base``; NOT_FOUND when
        nothing is there."""
        entries = self._call(base, "ls", base, detail=True)
        found = []
        for entry in entries:
            name = posixpath.basename(entry["name"].rstrip("/"))
            if entry.get("type") == "directory" and name.isdigit():
                found.append((int(name), posixpath.join(base.rstrip("/"), name)))
        return found

    def read_bytes(self, url: str) -> bytes:
        return self._call(url, "cat_file", url)

    def listing(self, url: str) -> Listing:
        """Every file under ``url`` with its size and ETag (or generation): two equal
        listings mean nothing was written in between."""
        found = self._call(url, "find", url, detail=True)
        root = url.partition("://")[2].rstrip("/") + "/"
        files = []
        for name, info in found.items():
            # Zero-byte "dir/" keys are folder markers some upload tools write, not files.
            if info.get("type") == "directory" or not name.startswith(root) or \
                    name.endswith("/") or name == root:
                continue
            fingerprint = info.get("ETag") or info.get("etag") or info.get("generation") or ""
            files.append((name[len(root):], int(info.get("size") or 0), str(fingerprint)))
        return tuple(sorted(files))

    def download(self, url: str, names: list[str], target: str) -> None:
        """Copy ``url``/name to ``target``/name for each name (concurrently where fsspec
        can)."""
        remote = [posixpath.join(url, name) for name in names]
        local = [os.path.join(target, *name.split("/")) for name in names]
        for path in local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        self._call(url, "get", remote, local)

    def _call(self, url: str, method: str, *args: Any, **kwargs: Any) -> Any:
        filesystem = self._filesystem(url)
        try:
            return getattr(filesystem, method)(*args, **kwargs)
        except FileNotFoundError:
            raise not_found(f"{url} not found") from None
        except PermissionError as error:
            raise ServingError(grpc.StatusCode.PERMISSION_DENIED,
                               f"{url}: access denied ({error})") from None
        except Exception as error:
            raise unavailable(f"{url}: {type(error).__name__}: {error}") from None


class VersionCache:
    """Local copies of remote versions, one directory per version that is loading or loaded
    (the server evicts a version when its load fails or it unloads). Copies live in a
    directory of this server's own, made in ``root`` (a temp dir when empty) at first use and
    removed by ``close``.

    A process killed before ``close`` (OOM, SIGKILL, a ``--workers`` restart) cannot remove
    its folder, so each folder holds ``owner.lock``, locked (flock) by its process while it
    lives: the kernel releases the lock when the process dies, and the next cache made in
    the same root deletes every folder whose lock it can take.

    The listing of a version whose copy or load failed is kept: ``changed_since_failure``
    tells when its files changed (an upload the poll caught midway finished), so the version
    is tried again."""

    def __init__(self, storage: RemoteStorage, root: str = "") -> None:
        self._storage = storage
        self._root = root
        self._directory: str | None = None
        self._owner: int | None = None  # the descriptor holding owner.lock's lock
        self._lock = threading.Lock()
        self._seen: dict[str, Listing | None] = {}  # url -> the last listing fetch saw
        self._failed: dict[str, Listing | None] = {}  # url -> its listing when it failed

    def _model_directory(self, name: str) -> str:
        with self._lock:
            if self._directory is None:
                self._directory = self._claim_directory()
            path = os.path.join(self._directory, urllib.parse.quote(name, safe=""))
        os.makedirs(path, exist_ok=True)
        return path

    def _claim_directory(self) -> str:
        """Reclaim the folders of dead servers, then make this one's, locked before it gets
        the name other caches look at (the lock is held from its first moment)."""
        root = self._root or tempfile.gettempdir()
        os.makedirs(root, exist_ok=True)
        reclaim_abandoned(root)
        staging = tempfile.mkdtemp(prefix=_STARTING_PREFIX, dir=root)
        owner = os.open(os.path.join(staging, OWNER_LOCK), os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(owner, fcntl.LOCK_EX)
        directory = os.path.join(root, CACHE_PREFIX +
                                 os.path.basename(staging)[len(_STARTING_PREFIX):])
        os.rename(staging, directory)
        self._owner = owner
        return directory

    def path(self, name: str, version: int) -> str:
        return os.path.join(self._model_directory(name), str(version))

    def fetch(self, name: str, version: int, url: str) -> str:
        """Copy version ``version`` of ``name`` from ``url``; returns its local directory.
        The copy goes to a temporary name, is checked (every file at its listed size, and a
        second listing equal to the first: no upload in progress), then renamed into place.
        A version without its SavedModel file yet, or still changing, fails as a load does."""
        with self._lock:
            self._seen[url] = None
        files = self._storage.listing(url)
        self._saw(url, files)
        if not any(name_ in _SAVED_MODEL_FILES for name_, _, _ in files):
            raise not_found("Specified file path does not appear to contain a SavedModel "
                            "bundle (should have a file called `saved_model.pb`)\n"
                            f"Specified file path: {url}")
        target = self.path(name, version)
        partial = tempfile.mkdtemp(prefix=f".{version}.partial-", dir=os.path.dirname(target))
        try:
            self._storage.download(url, [relative for relative, _, _ in files], partial)
            for relative, size, _ in files:
                copied = os.path.join(partial, *relative.split("/"))
                if os.path.getsize(copied) != size:
                    raise unavailable(f"Copying {url}/{relative} stopped after "
                                      f"{os.path.getsize(copied)} of {size} bytes")
            again = self._storage.listing(url)
            if again != files:
                self._saw(url, again)
                raise unavailable(f"{url} changed while it was copied (an upload in "
                                  "progress?); the next attempt copies it again")
            shutil.rmtree(target, ignore_errors=True)
            os.rename(partial, target)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        with self._lock:
            self._failed.pop(url, None)
        return target

    def _saw(self, url: str, files: Listing) -> None:
        with self._lock:
            self._seen[url] = files

    def note_failure(self, url: str) -> None:
        """The copy or load of ``url`` failed: remember its files as they were."""
        with self._lock:
            self._failed[url] = self._seen.pop(url, None)

    def changed_since_failure(self, url: str) -> bool:
        """Whether ``url`` failed and its files have changed since (lists it; True once per
        change). False for a version that did not fail or cannot be listed now."""
        with self._lock:
            if url not in self._failed:
                return False
            before = self._failed[url]
        try:
            now = self._storage.listing(url)
        except ServingError:
            return False
        if now == before:
            return False
        with self._lock:
            self._failed.pop(url, None)
        return True

    def evict(self, name: str, version: int) -> None:
        with self._lock:
            directory = self._directory
        if directory is not None:
            shutil.rmtree(os.path.join(directory, urllib.parse.quote(name, safe=""),
                                       str(version)), ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            directory, self._directory = self._directory, None
            owner, self._owner = self._owner, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
        if owner is not None:
            os.close(owner)  # after the folder is gone: no one reclaims it under our feet


def reclaim_abandoned(root: str) -> list[str]:
    """Delete the cache folders in ``root`` whose process is gone (their owner.lock can be
    locked); returns their paths. A folder without the lock file is left alone."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    reclaimed = []
    for name in sorted(names):
        if not name.startswith(CACHE_PREFIX):
            continue
        folder = os.path.join(root, name)
        try:
            owner = os.open(os.path.join(folder, OWNER_LOCK), os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                log.warning("Cannot check the model cache folder %s: %s", folder, error)
            os.close(owner)
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
            reclaimed.append(folder)
            log.info("Deleted the model cache folder %s of a server that is gone", folder)
        finally:
            os.close(owner)
    return reclaimed
