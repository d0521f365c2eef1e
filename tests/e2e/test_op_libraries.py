"""Ops beyond core TensorFlow (op_libraries.py): TF Text models served over gRPC and REST with the
values they compute in process, a C++ op compiled here and loaded by --custom_op_libraries, and
the load errors that name the missing op library.

The in-process servers run in this process, which imports tensorflow_text to build its models;
whatever must run without an op library (the hint, a model without its flag) runs as a
server process of its own.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from pyserving.client.tensors import fill_tensor_proto, ndarray_from_tensor_proto
from pyserving.server.errors import ServingError
from pyserving.server.op_libraries import DECISION_FORESTS, TEXT, op_hint
from support import free_port, post_json

START_TIMEOUT = 120.0  # a server process that imports TensorFlow on a busy two-core machine
STARTUP_FAILED = "Failed to start server. Error: "
# TensorFlow's text for a graph op no loaded library registers.
UNREGISTERED = "Op type not registered '{}' in binary running on "

SENTENCES = np.array([b"the quick  brown cat", b"fox", b"", b"the fox the  fox jumps"])
SCORES = np.random.default_rng(3).normal(size=(3, 5, 3)).astype(np.float32)
LENGTHS = np.array([5, 2, 4], dtype=np.int32)


# TF Text models, built here and run in process for the expected values.

@pytest.fixture(scope="module")
def text_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two SavedModels whose graphs hold ops only TF Text registers: whitespace tokens looked up
    in a vocabulary (TFText>WhitespaceTokenizeWithOffsetsV2) and a Viterbi decode under allowed
    tag transitions (ConstrainedSequence). Returns their config file's folder."""
    text = pytest.importorskip("tensorflow_text", reason="the text extra is not installed")
    import tensorflow as tf

    class Tokens(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            vocabulary = tf.constant(["the", "quick", "brown", "fox"])
            self.table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                vocabulary, tf.range(4, dtype=tf.int64)), default_value=-1)
            self.tokenizer = text.WhitespaceTokenizer()

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, sentences: tf.Tensor) -> dict:
            ids = tf.ragged.map_flat_values(self.table.lookup, self.tokenizer.tokenize(sentences))
            return {"ids": ids.to_tensor(default_value=-2), "lengths": ids.row_lengths()}

    class Tags(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.float32),
                                      tf.TensorSpec([None], tf.int32)])
        def serve(self, scores: tf.Tensor, lengths: tf.Tensor) -> dict:
            allowed = tf.constant([[True, False, True, True], [True, True, False, True],
                                   [False, True, True, True], [True, True, False, False]])
            tags = text.viterbi_constrained_sequence(scores, lengths, allowed_transitions=allowed)
            return {"tags": tags.to_tensor(default_value=-1)}

    root = tmp_path_factory.mktemp("text_models")
    entries = []
    for name, module in (("tokens", Tokens()), ("tags", Tags())):
        tf.saved_model.save(module, str(root / name / "1"),
                            signatures={"serving_default": module.serve})
        entries.append(f'config {{ name: "{name}" base_path: "{root / name}" '
                       'model_platform: "tensorflow" }')
    (root / "models.config").write_text(f"model_config_list {{ {' '.join(entries)} }}")
    return root


def run_in_process(model_dir: Path, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    import tensorflow as tf

    signature = tf.saved_model.load(str(model_dir / "1")).signatures["serving_default"]
    return {key: value.numpy() for key, value in signature(**inputs).items()}


def grpc_predict(server: Any, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    channel = grpc.insecure_channel(server.grpc_target)
    try:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        for key, value in inputs.items():
            fill_tensor_proto(request.inputs[key], value)
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, 30)
    finally:
        channel.close()
    return {key: ndarray_from_tensor_proto(proto) for key, proto in response.outputs.items()}


def rest_predict(server: Any, name: str, inputs: dict[str, list],
                 outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The columnar ("inputs") form; a single output is the response's value itself."""
    status, body = post_json(f"http://127.0.0.1:{server.rest_port}/v1/models/{name}:predict",
                             {"inputs": inputs})
    assert status == 200, body
    values = body["outputs"] if len(outputs) > 1 else {outputs[0]: body["outputs"]}
    return {key: np.array(value) for key, value in values.items()}


def assert_same_outputs(served: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert served.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(served[key], value, err_msg=key)


def test_text_models_serve_over_grpc_and_rest_as_in_process(
        text_models: Path, serve: Callable, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyserving.server.op_libraries")
    server = serve(model_config_file=str(text_models / "models.config"),
                   rest_api_port=free_port())
    assert "op libraries beyond core TensorFlow: TensorFlow Text (tensorflow-text 2.21." \
        in caplog.text
    tokens = run_in_process(text_models / "tokens", sentences=SENTENCES)
    assert tokens["ids"].tolist() == [[0, 1, 2, -1, -2], [3, -2, -2, -2, -2],
                                      [-2] * 5, [0, 3, 0, 3, -1]]
    tags = run_in_process(text_models / "tags", scores=SCORES, lengths=LENGTHS)
    assert tags["tags"].shape == (3, 5) and tags["tags"].max() == 2

    assert_same_outputs(grpc_predict(server, "tokens", {"sentences": SENTENCES}), tokens)
    assert_same_outputs(grpc_predict(server, "tags", {"scores": SCORES, "lengths": LENGTHS}),
                        tags)
    assert_same_outputs(rest_predict(server, "tokens", {
        "sentences": [sentence.decode() for sentence in SENTENCES]}, ("ids", "lengths")), tokens)
    assert_same_outputs(rest_predict(server, "tags", {
        "scores": SCORES.tolist(), "lengths": LENGTHS.tolist()}, ("tags",)), tags)


def test_text_ops_listed_are_the_ops_tensorflow_text_registers() -> None:
    """TEXT.ops names the op of a model whose load fails without TF Text; it must be what the
    installed tensorflow_text registers (a fresh process: this one has imported it)."""
    pytest.importorskip("tensorflow_text", reason="the text extra is not installed")
    script = textwrap.dedent("""
        import json
        from tensorflow.core.framework import op_def_pb2
        from tensorflow.python.client import pywrap_tf_session as c

        def registered():
            buffer = c.TF_GetAllOpList()
            try:
                return {op.name for op in op_def_pb2.OpList.FromString(c.TF_GetBuffer(buffer)).op}
            finally:
                c.TF_DeleteBuffer(buffer)

        before = registered()
        import tensorflow_text
        print(json.dumps(sorted(registered() - before)))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=START_TIMEOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) == TEXT.ops


# A server process without TF Text: its load error names the extra.

# The server's command line in a Python where tensorflow_text cannot be imported, as in an
# install without the text extra.
WITHOUT_TEXT = ("import sys; sys.modules['tensorflow_text'] = None; "
                "from pyserving.server.cli import main; sys.exit(main())")


def start_up_failure(*args: str, python_code: str | None = None) -> str:
    """Run a server process that must fail at start-up; returns its "Failed to start server"
    text, having checked the exit status and that no traceback was printed."""
    command = [sys.executable, "-c", python_code] if python_code else \
        [sys.executable, "-m", "pyserving.server"]
    result = subprocess.run([*command, "--port=0", "--max_num_load_retries=0", *args],
                            capture_output=True, text=True, timeout=START_TIMEOUT,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 255, (result.stdout, result.stderr)
    assert result.stdout.startswith(STARTUP_FAILED), result.stdout
    assert "Traceback" not in result.stderr
    return result.stdout[len(STARTUP_FAILED):].rstrip("\n")


def test_text_model_without_tensorflow_text_fails_with_tf_error_and_the_extra(
        text_models: Path) -> None:
    failure = start_up_failure(f"--model_config_file={text_models / 'models.config'}",
                               python_code=WITHOUT_TEXT)
    assert failure.startswith("UNKNOWN: 2 servable(s) did not become available: ")
    for op in ("ConstrainedSequence", "TFText>WhitespaceTokenizeWithOffsetsV2"):
        # TensorFlow's own error, then the hint, in the servable's entry.
        assert f"NOT_FOUND: {UNREGISTERED.format(op)}" in failure
        assert ("lazily registered when the module is first accessed. "
                f"pyserving: '{op}' is a TensorFlow Text op: install pyserving's text extra "
                "(pip install 'pyserving[text]', tensorflow-text for TensorFlow 2.21); "
                "pyserving registers its ops at start-up.}") in failure


def test_op_hint_for_decision_forests_and_unknown_ops() -> None:
    message = UNREGISTERED.format("SimpleMLInferenceOpWithHandle") + "host. Make sure ..."
    assert op_hint(message) == (
        "pyserving: 'SimpleMLInferenceOpWithHandle' is a TensorFlow Decision Forests op: "
        f"{DECISION_FORESTS.install}.")
    assert "requires tensorflow==2.19.0" in op_hint(message)
    assert op_hint(UNREGISTERED.format("TFText>SomeFutureOp")).startswith(
        "pyserving: 'TFText>SomeFutureOp' is a TensorFlow Text op")
    assert op_hint(UNREGISTERED.format("MyOwnOp")) == (
        "pyserving: if 'MyOwnOp' is a custom op, load its compiled library with "
        "--custom_op_libraries=/path/to/library.so.")
    assert op_hint("Could not find meta graph def matching supplied tags") is None


# --custom_op_libraries: a C++ op compiled against the installed TensorFlow's headers.

CUSTOM_OP = "PyservingDoublePlusOne"
CUSTOM_OP_SOURCE = """
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

using namespace tensorflow;

REGISTER_OP("PyservingDoublePlusOne")
    .Input("x: float")
    .Output("y: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    });

class DoublePlusOne : public OpKernel {
 public:
  explicit DoublePlusOne(OpKernelConstruction* context) : OpKernel(context) {}
  void Compute(OpKernelContext* context) override {
    const Tensor& input = context->input(0);
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, input.shape(), &output));
    auto x = input.flat<float>();
    auto y = output->flat<float>();
    for (int64_t i = 0; i < x.size(); ++i) y(i) = 2.0f * x(i) + 1.0f;
  }
};

REGISTER_KERNEL_BUILDER(Name("PyservingDoublePlusOne").Device(DEVICE_CPU), DoublePlusOne);
"""


def _compiler() -> str:
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler (g++) to build a custom op library")
    return compiler


@pytest.fixture(scope="session")
def custom_op_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """libdouble_plus_one.so: one float op, y = 2x + 1, built once per session."""
    import tensorflow as tf

    compiler = _compiler()
    root = tmp_path_factory.mktemp("custom_op")
    source, library = root / "double_plus_one.cc", root / "libdouble_plus_one.so"
    source.write_text(CUSTOM_OP_SOURCE)
    started = time.monotonic()
    build = subprocess.run([compiler, "-std=c++17", "-shared", "-fPIC", "-O1", "-w",
                            str(source), "-o", str(library), *tf.sysconfig.get_compile_flags(),
                            *tf.sysconfig.get_link_flags()],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-4000:]
    logging.getLogger(__name__).info("compiled %s in %.1f s", library,
                                     time.monotonic() - started)
    return library


@pytest.fixture(scope="module")
def custom_op_model(custom_op_library: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SavedModel computing y = DoublePlusOne(x) + x, built in a process of its own so that
    this one has not registered the op when a server loads the library."""
    base = tmp_path_factory.mktemp("custom_op_model") / "double_plus_one"
    script = textwrap.dedent("""
        import sys
        import tensorflow as tf

        library = tf.load_op_library(sys.argv[1])

        class Model(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
            def serve(self, x):
                return {"y": library.pyserving_double_plus_one(x) + x}

        model = Model()
        tf.saved_model.save(model, sys.argv[2], signatures={"serving_default": model.serve})
    """)
    result = subprocess.run([sys.executable, "-c", script, str(custom_op_library),
                             str(base / "1")], capture_output=True, text=True,
                            timeout=START_TIMEOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-4000:]
    return base


def test_custom_op_library_serves_its_model_over_grpc_and_rest(
        custom_op_library: Path, custom_op_model: Path, serve: Callable,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyserving.server.op_libraries")
    server = serve(model_base_path=str(custom_op_model), custom_op_libraries=str(custom_op_library),
                   rest_api_port=free_port())
    assert f"{custom_op_library} (ops: {CUSTOM_OP})" in caplog.text
    x = np.array([0.0, 1.5, -4.0, 1e6], dtype=np.float32)
    expected = {"y": 3 * x + 1}
    assert_same_outputs(grpc_predict(server, "default", {"x": x}), expected)
    assert_same_outputs(rest_predict(server, "default", {"x": x.tolist()}, ("y",)), expected)


def test_custom_op_model_without_its_library_fails_with_the_flag_hint(
        custom_op_model: Path) -> None:
    failure = start_up_failure(f"--model_base_path={custom_op_model}")
    assert f"NOT_FOUND: {UNREGISTERED.format(CUSTOM_OP)}" in failure
    assert failure.endswith(f"pyserving: if '{CUSTOM_OP}' is a custom op, load its compiled "
                            "library with --custom_op_libraries=/path/to/library.so.}, }")


def test_missing_custom_op_library_fails_start_up(tmp_path: Path) -> None:
    missing = tmp_path / "libmissing.so"
    assert start_up_failure(f"--custom_op_libraries={missing}",
                            f"--model_base_path={tmp_path / 'models'}") == (
        f"NOT_FOUND: --custom_op_libraries: cannot load {missing}: {missing}: cannot open "
        "shared object file: No such file or directory")


def test_incompatible_custom_op_library_fails_start_up(tmp_path: Path, serve: Callable) -> None:
    """A library built against another TensorFlow needs symbols this one lacks (TF-DF 1.12's
    inference.so in TF 2.21: undefined symbol ...StrCat...); dlopen refuses it at once."""
    compiler = _compiler()
    source, library = tmp_path / "other_tf.cc", tmp_path / "libother_tf.so"
    source.write_text('extern "C" void only_in_another_tensorflow();\n'
                      'extern "C" void register_ops() { only_in_another_tensorflow(); }\n')
    subprocess.run([compiler, "-shared", "-fPIC", str(source), "-o", str(library)], check=True,
                   timeout=60)
    with pytest.raises(ServingError) as raised:
        serve(custom_op_libraries=f" {library} ", model_base_path=str(tmp_path / "models"))
    assert raised.value.code == grpc.StatusCode.NOT_FOUND
    assert raised.value.message == (f"--custom_op_libraries: cannot load {library}: {library}: "
                                    "undefined symbol: only_in_another_tensorflow")
