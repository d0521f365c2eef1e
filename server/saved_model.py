"""The one door to TensorFlow: a SavedModel version in its own graph and session.

SavedModels are loaded the way TF Serving loads them (a MetaGraphDef into a session, whatever
TF version exported them), so signatures, feeding leniency and error texts match: feeds are
not shape-checked against the signature, and a wrong dtype fails inside TensorFlow with its
own message. Everything else in the server (manager, batcher, transports) sees a ``Servable``
and imports no TensorFlow; ``device.py`` builds the session config.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.python.client import pywrap_tf_session
from tensorflow.python.saved_model import loader_impl

from pyserving.server import request_context
from pyserving.server.apis import config_pb2, meta_graph_pb2
from pyserving.server.errors import ServingError, from_tensorflow, internal, not_found
from pyserving.server.op_libraries import with_op_hint
from pyserving.server.rollout.verdict import model_failure
from pyserving.server.run_mode import RunModes
from pyserving.server.servable import Servable, SignatureDef

log = logging.getLogger(__name__)


class SavedModel:
    """A loaded MetaGraphDef: its session runs signatures' tensors; thread-safe."""

    def __init__(self, graph: tf.Graph, session: tf.compat.v1.Session,
                 meta_graph: meta_graph_pb2.MetaGraphDef,
                 run_modes: RunModes | None = None) -> None:
        self.meta_graph = meta_graph
        # None: the operator sized the inter-op pool (or chose -1): TensorFlow's own mode
        self.run_modes = run_modes
        self.signatures: dict[str, SignatureDef] = dict(meta_graph.signature_def)
        self._graph = graph
        self._session = session
        self._endpoints: dict[str, object] = {}
        self._endpoints_lock = threading.Lock()
        for signature in self.signatures.values():
            for info in list(signature.inputs.values()) + list(signature.outputs.values()):
                if ":" in info.name:  # TF2's __saved_model_init_op names an op, not a tensor
                    self._endpoint(info.name)

    def _endpoint(self, tensor_name: str) -> object:
        endpoint = self._endpoints.get(tensor_name)
        if endpoint is None:
            try:
                tensor = self._graph.get_tensor_by_name(tensor_name)
            except (KeyError, ValueError) as error:
                raise internal(f"Tensor {tensor_name} not found in the graph: {error}") from None
            endpoint = tensor._as_tf_output()  # the C TF_Output that TF_SessionRun takes
            with self._endpoints_lock:
                self._endpoints[tensor_name] = endpoint
        return endpoint

    def run(self, feeds: Sequence[tuple[str, np.ndarray]],
            fetches: Sequence[str]) -> list[np.ndarray]:
        """Run the session: feed tensor names to arrays, return the fetched tensors' values.

        Within the current request's deadline (TensorFlow's RunOptions.timeout_in_ms, as TF
        Serving sets it from the gRPC deadline); a request whose deadline passed or whose
        caller went away is not run at all."""
        feed_dict = {self._endpoint(name): value for name, value in feeds}
        fetch_list = [self._endpoint(name) for name in fetches]
        modes = self.run_modes
        if modes is None:
            return self._run(feed_dict, fetch_list, False)
        key = tuple(fetches)
        in_caller = modes.chosen(key)
        if in_caller is False:
            return self._run(feed_dict, fetch_list, False)
        measured = in_caller is None
        if measured:
            in_caller = modes.next_mode(key)
        started = modes.clock()
        outputs = self._run(feed_dict, fetch_list, bool(in_caller))
        if measured:
            modes.record(key, bool(in_caller), modes.clock() - started)
        else:
            modes.took(key, modes.clock() - started)
        return outputs

    def _run(self, feed_dict: dict[object, np.ndarray], fetch_list: list[object],
             in_caller: bool) -> list[np.ndarray]:
        options = run_options_for(request_context.current.get(), in_caller)
        try:
            # Session.run's Python layer rejects feeds whose shape differs from the
            # placeholder's; TF Serving does not check shapes, so go to TF_SessionRun directly.
            return self._session._call_tf_sessionrun(options, feed_dict, fetch_list, [], None)
        except tf.errors.OpError as error:
            raise model_failure(from_tensorflow(error)) from None
        finally:
            if options is not None and options is not _IN_CALLER:
                pywrap_tf_session.TF_DeleteBuffer(options)

    def close(self) -> None:
        """Free the session; closing it cancels any run still going."""
        self._session.close()
        self._endpoints.clear()


DEADLINE_PASSED = "Deadline exceeded before the TensorFlow run started"
CALLER_GONE = "Request cancelled before the TensorFlow run started"
_MAX_TIMEOUT_MS = 2**31 - 1  # TF Serving's DeadlineToTimeoutMillis saturates at INT_MAX


# RunOptions running the graph in the calling thread (run_mode.py), shared by every call
# without a deadline: TensorFlow only reads it.
_IN_CALLER = pywrap_tf_session.TF_NewBufferFromString(
    config_pb2.RunOptions(inter_op_thread_pool=-1).SerializeToString())


def run_options_for(context: request_context.RequestContext,
                    in_caller: bool = False) -> object | None:
    """A TF_Buffer of RunOptions bounding the run by the request's deadline (the caller
    deletes it unless it is ``_IN_CALLER``), in the calling thread when ``in_caller``; None
    for TensorFlow's defaults; raises when the request should not run at all."""
    if context.deadline is None:
        if context.is_active():
            return _IN_CALLER if in_caller else None
        raise ServingError(grpc.StatusCode.CANCELLED, CALLER_GONE)
    remaining_ms = (context.deadline - time.monotonic()) * 1000
    if remaining_ms <= 0:
        raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, DEADLINE_PASSED)
    if not context.is_active():
        raise ServingError(grpc.StatusCode.CANCELLED, CALLER_GONE)
    if remaining_ms >= _MAX_TIMEOUT_MS:  # gRPC reports "no deadline" as centuries away
        return _IN_CALLER if in_caller else None
    # At least 1 ms: TensorFlow reads a timeout of 0 as "none".
    options = config_pb2.RunOptions(timeout_in_ms=max(math.ceil(remaining_ms), 1),
                                    inter_op_thread_pool=-1 if in_caller else 0)
    return pywrap_tf_session.TF_NewBufferFromString(options.SerializeToString())


_SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt", "saved_model.cpb")


def check_saved_model_directory(path: str) -> None:
    """TF Serving's LoadSessionBundleOrSavedModelBundle checks: a session bundle (export.meta)
    is refused, and a directory without a SavedModel file is NOT_FOUND."""
    if os.access(os.path.join(path, "export.meta"), os.F_OK):
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                           "Session Bundle is deprecated and removed.")
    if not any(os.access(os.path.join(path, name), os.F_OK) for name in _SAVED_MODEL_FILES):
        raise not_found("Specified file path does not appear to contain a SavedModel bundle "
                        "(should have a file called `saved_model.pb`)\n"
                        f"Specified file path: {path}")


# Told of each LoadSavedModel attempt: export dir, whether it loaded, seconds (TensorFlow's
# load_attempt_count and load_latency; a later warmup failure does not undo a success).
SavedModelLoadObserver = Callable[[str, bool, float], None]


def load_servable(name: str, version: int, path: str, tags: Sequence[str],
                  session_config: config_pb2.ConfigProto,
                  on_attempt: SavedModelLoadObserver | None = None) -> Servable:
    """Load a SavedModel version; raises ServingError with TensorFlow's message on failure."""
    started = time.monotonic()
    check_saved_model_directory(path)  # before LoadSavedModel, which counts the attempts
    loaded = False
    try:
        servable = _load_saved_model(name, version, path, tags, session_config)
        loaded = True
    finally:
        if on_attempt is not None:
            on_attempt(path, loaded, time.monotonic() - started)
    log.info("loaded servable %s version %d from %s in %.0f ms with signatures %s", name,
             version, path, (time.monotonic() - started) * 1000, sorted(servable.signatures))
    return servable


def _load_saved_model(name: str, version: int, path: str, tags: Sequence[str],
                      session_config: config_pb2.ConfigProto) -> Servable:
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph, config=session_config)
    try:
        with graph.as_default():
            # tf.compat.v1.saved_model.load without its deprecation warning on every load.
            meta_graph = loader_impl.SavedModelLoader(path).load(session, list(tags))
    except tf.errors.OpError as error:
        session.close()
        raise with_op_hint(from_tensorflow(error)) from None
    except (OSError, RuntimeError, ValueError) as error:
        session.close()
        raise _load_error(path, tags, error) from None
    graph.finalize()
    modes = RunModes() if measures_run_mode(session_config) else None
    return Servable(name, version, path, SavedModel(graph, session, meta_graph, modes))


def measures_run_mode(config: config_pb2.ConfigProto) -> bool:
    """Whether TensorFlow's inter-op pool was left to it (run_mode.py may then run short
    graphs in the calling thread): no size, no named pools, no global pools."""
    return config.inter_op_parallelism_threads == 0 and \
        not config.session_inter_op_thread_pool and not config.use_per_session_threads


def _load_error(path: str, tags: Sequence[str], error: Exception) -> ServingError:
    """The error TF Serving's loader gives: a corrupt or truncated SavedModel file is
    TensorFlow's DATA_LOSS (ReadBinaryProto / ReadTextProto), not a missing file; tags that
    match no MetaGraphDef are reader.cc FindMetaGraphDef's NOT_FOUND."""
    if isinstance(error, RuntimeError) and "could not be found in SavedModel" in str(error):
        return not_found(f"Could not find meta graph def matching supplied tags: "
                         f"{{ {' '.join(tags)} }}. To inspect available tag-sets in the "
                         "SavedModel, please use the SavedModel CLI: `saved_model_cli`")
    if isinstance(error, OSError):
        if str(error).startswith("Cannot parse file"):  # SavedModelLoader's wording
            text = os.path.isfile(os.path.join(path, "saved_model.pbtxt")) and \
                not os.path.isfile(os.path.join(path, "saved_model.pb"))
            file = os.path.join(path, "saved_model.pbtxt" if text else "saved_model.pb")
            return ServingError(grpc.StatusCode.DATA_LOSS,
                                f"Can't parse {file} as {'text' if text else 'binary'} proto")
        return ServingError(grpc.StatusCode.NOT_FOUND, str(error))
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(error))


def tfrecords(path: str) -> Iterator[bytes]:
    """The records of a TFRecord file (model warmup's file); a read error is a ServingError
    with TensorFlow's code and text (DATA_LOSS for a file that is not TFRecord)."""
    records = tf.compat.v1.io.tf_record_iterator(path)
    while True:
        try:
            yield next(records)
        except StopIteration:
            return
        except tf.errors.OpError as error:
            raise model_failure(from_tensorflow(error)) from None
