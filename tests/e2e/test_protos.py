"""protos/ and the generated client modules: up to date, identical to TensorFlow's descriptors,
importable without TensorFlow and side by side with it, in either import order."""

from __future__ import annotations

import filecmp
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support import REPO

sys.path.insert(0, str(REPO / "tools"))
from generate_protos import embedded_descriptor
from proto_printer import proto_source

PROTOS = REPO / "protos"
CLIENT_PROTOS = REPO / "client" / "protos"
GENERATOR = REPO / "tools" / "generate_protos.py"
PACKAGE = "pyserving.client.protos"


def run_python(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the venv's Python in a fresh process; TensorFlow's start-up logging is silenced."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                            cwd=cwd, env=env, timeout=240)
    assert result.returncode == 0, f"{args[:2]} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return result


def tree_differences(expected: Path, actual: Path) -> list[str]:
    def files(root: Path) -> set[str]:
        return {str(path.relative_to(root)) for path in root.rglob("*")
                if path.is_file() and "__pycache__" not in path.parts}

    expected_files, actual_files = files(expected), files(actual)
    differences = [f"missing {name}" for name in sorted(expected_files - actual_files)]
    differences += [f"stale {name}" for name in sorted(actual_files - expected_files)]
    differences += [f"differs {name}" for name in sorted(expected_files & actual_files)
                    if not filecmp.cmp(expected / name, actual / name, shallow=False)]
    return differences


def own(path: Path) -> bool:
    """pyserving's own protos (protos/pyserving) and Triton's V2 protos (protos/inference),
    which TensorFlow's pool does not hold."""
    root = CLIENT_PROTOS if path.is_relative_to(CLIENT_PROTOS) else PROTOS
    return path.relative_to(root).parts[0] in ("pyserving", "inference")


def tf_serving_protos() -> list[str]:
    """The .proto files of TF Serving's API, as paths relative to protos/."""
    return sorted(str(path.relative_to(PROTOS)) for path in PROTOS.rglob("*.proto")
                  if not own(path))


def test_own_protos_compile_and_load_without_tensorflow(tmp_path):
    names = sorted(str(path.relative_to(PROTOS)) for path in PROTOS.rglob("*.proto")
                   if own(path) and path.parent.name == "pyserving")
    assert "pyserving/rollout.proto" in names
    run_python("-m", "grpc_tools.protoc", f"-I{PROTOS}", f"--python_out={tmp_path}", *names)
    for name in names:
        generated = tmp_path / (name[: -len(".proto")] + "_pb2.py")
        committed = CLIENT_PROTOS / (name[: -len(".proto")] + "_pb2.py")
        assert embedded_descriptor(generated) == embedded_descriptor(committed), name


def test_v2_protos_are_tritons_and_match_kserves_subset():
    """Triton's grpc_service.proto as published: the service and the messages KServe's
    grpc_predict_v2.proto defines, with the same field names and numbers."""
    from pyserving.client.protos.inference import grpc_service_pb2

    file = grpc_service_pb2.DESCRIPTOR
    assert file.name == "grpc_service.proto" and file.package == "inference"
    service = file.services_by_name["GRPCInferenceService"]
    assert {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
            "ModelInfer"} <= set(service.methods_by_name)
    fields = {name: {f.name: f.number for f in file.message_types_by_name[name].fields}
              for name in ("ModelInferRequest", "ModelInferResponse")}
    assert fields["ModelInferRequest"] == {
        "model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "inputs": 5,
        "outputs": 6, "raw_input_contents": 7}
    assert fields["ModelInferResponse"] == {
        "model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "outputs": 5,
        "raw_output_contents": 6}
    contents = file.message_types_by_name["InferTensorContents"]
    assert {f.name: f.number for f in contents.fields} == {
        "bool_contents": 1, "int_contents": 2, "int64_contents": 3, "uint_contents": 4,
        "uint64_contents": 5, "fp32_contents": 6, "fp64_contents": 7, "bytes_contents": 8}


def test_committed_files_are_what_make_protos_generates(tmp_path):
    run_python(str(GENERATOR), "--root", str(tmp_path))

    differences = (tree_differences(tmp_path / "protos", PROTOS)
                   + tree_differences(tmp_path / "client" / "protos", CLIENT_PROTOS))

    assert not differences, (
        "protos/ or client/protos/ are out of date with the installed tensorflow, "
        "tensorflow-serving-api and grpcio-tools; run `make protos`:\n" + "\n".join(differences))


def test_generated_modules_embed_the_installed_descriptors_byte_for_byte():
    import tensorflow_serving.apis.model_service_pb2
    import tensorflow_serving.apis.prediction_log_pb2
    import tensorflow_serving.apis.prediction_service_pb2  # noqa: F401
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.Default()
    modules = sorted(path for path in CLIENT_PROTOS.rglob("*_pb2.py") if not own(path))
    assert len(modules) == len(tf_serving_protos()) > 50
    for module in modules:
        name = str(module.relative_to(CLIENT_PROTOS))[: -len("_pb2.py")] + ".proto"
        assert embedded_descriptor(module) == pool.FindFileByName(name).serialized_pb, name


def test_protos_compile_with_protoc_to_the_installed_descriptors(tmp_path):
    import tensorflow_serving.apis.model_service_pb2
    import tensorflow_serving.apis.prediction_log_pb2
    import tensorflow_serving.apis.prediction_service_pb2  # noqa: F401
    from google.protobuf import descriptor_pool

    names = tf_serving_protos()
    run_python("-m", "grpc_tools.protoc", f"-I{PROTOS}", f"--python_out={tmp_path}", *names)

    for name in names:
        module = tmp_path / (name[: -len(".proto")] + "_pb2.py")
        installed = descriptor_pool.Default().FindFileByName(name).serialized_pb
        assert embedded_descriptor(module) == installed, name


CROSS_SIDE_CLIENT = """
import json, sys

import grpc

def client_side():
    from pyserving.client import apis
    return apis.predict_pb2, apis.prediction_service_pb2_grpc, apis.get_model_status_pb2, \\
        apis.model_service_pb2_grpc

def tensorflow_side():
    import tensorflow  # noqa: F401
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc, \\
        predict_pb2, prediction_service_pb2_grpc
    return predict_pb2, prediction_service_pb2_grpc, get_model_status_pb2, \\
        model_service_pb2_grpc

first, target = sys.argv[1], sys.argv[2]
sides = {"client": client_side, "tensorflow": tensorflow_side}
loaded = {name: sides[name]() for name in ([first] + [n for n in sides if n != first])}
channel = grpc.insecure_channel(target)
results = []
for build, send in [("client", "tensorflow"), ("tensorflow", "client"),
                    ("client", "client"), ("tensorflow", "tensorflow")]:
    predict_pb2, _, status_pb2, _ = loaded[build]
    _, prediction_grpc, _, model_grpc = loaded[send]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["x"].dtype = 1
    request.inputs["x"].tensor_shape.dim.add(size=1)
    request.inputs["x"].float_val.append(2.0)
    response = prediction_grpc.PredictionServiceStub(channel).Predict(request, timeout=20)
    status = model_grpc.ModelServiceStub(channel).GetModelStatus(
        status_pb2.GetModelStatusRequest(model_spec=request.model_spec), timeout=20)
    other = loaded[send][0].PredictRequest
    results.append({
        "build": build, "send": send, "y": list(response.outputs["y"].float_val),
        "status": [(s.version, s.state) for s in status.model_version_status],
        "reparsed": other.FromString(request.SerializeToString()) == request,
        "isinstance": isinstance(request, other),
    })
print(json.dumps(results))
"""


@pytest.mark.parametrize("first", ["client", "tensorflow"])
def test_messages_of_either_side_work_with_stubs_of_the_other(first, serve, testdata_model,
                                                              tmp_path):
    import json

    server = serve(model_base_path=testdata_model("saved_model_half_plus_two_cpu"))
    script = tmp_path / "cross_side_client.py"
    script.write_text(CROSS_SIDE_CLIENT)

    results = json.loads(run_python(str(script), first, server.grpc_target).stdout)

    assert len(results) == 4
    for result in results:
        assert result["y"] == [3.0], result
        assert result["status"] == [[123, 30]], result  # 30: AVAILABLE
        assert result["reparsed"] and result["isinstance"], result


IMPORT_WITHOUT_TENSORFLOW = """
import importlib, pkgutil, sys

class NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_serving"):
            raise ImportError(f"{name} must not be imported by the client")

sys.meta_path.insert(0, NoTensorFlow())
import pyserving.client.apis
import pyserving.client.protos as protos
modules = [info.name for info in pkgutil.walk_packages(protos.__path__, protos.__name__ + ".")]
for name in modules:
    importlib.import_module(name)
request = pyserving.client.apis.predict_pb2.PredictRequest()
request.inputs["x"].float_val.append(1.0)
assert request.SerializeToString()
loaded = sorted(name for name in sys.modules if name.split(".")[0].startswith("tensorflow"))
assert not loaded, loaded
print(len(modules))
"""


def test_client_imports_every_generated_module_without_tensorflow(tmp_path):
    modules = int(run_python("-c", IMPORT_WITHOUT_TENSORFLOW, cwd=tmp_path).stdout)

    assert modules == len(list(CLIENT_PROTOS.rglob("*.py"))) - 1  # all but the package itself


def test_packaging_lists_every_generated_package_and_the_gencode_version_floors():
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    generated = {PACKAGE + "".join("." + part for part in path.parent.relative_to(CLIENT_PROTOS)
                                   .parts) for path in CLIENT_PROTOS.rglob("__init__.py")}
    listed = {name for name in project["tool"]["setuptools"]["packages"]
              if name.startswith(PACKAGE)}
    assert listed == generated

    some_module = (CLIENT_PROTOS / "tensorflow_serving/apis/predict_pb2.py").read_text()
    some_stub = (CLIENT_PROTOS / "tensorflow_serving/apis/prediction_service_pb2_grpc.py")
    protobuf = re.search(r"Protobuf Python Version: (\S+)", some_module).group(1)
    grpcio = re.search(r"GRPC_GENERATED_VERSION = '(\S+)'", some_stub.read_text()).group(1)
    dependencies = project["project"]["dependencies"]
    assert f"protobuf>={protobuf}" in dependencies
    assert f"grpcio>={grpcio}" in dependencies


PRINTER_SAMPLES = {
    "dep.proto": """
        syntax = "proto2";
        package demo.dep;
        message Base {
          optional int32 id = 1;
          extensions 100 to 199;
          extensions 1000 to max;
        }
        enum Color {
          option allow_alias = true;
          RED = 0;
          CRIMSON = 0;
          GREEN = 1 [deprecated = true];
          reserved 5, 7 to 9, 100 to max;
          reserved "BLUE";
        }
    """,
    "pub.proto": 'syntax = "proto3"; package demo.pub; message P { string s = 1; }',
    "weak.proto": 'syntax = "proto3"; package demo.weak; message W {}',
    "main.proto": r"""
        syntax = "proto2";
        package demo;
        import "dep.proto";
        import public "pub.proto";
        import weak "weak.proto";
        option java_package = "org.demo";
        option optimize_for = CODE_SIZE;
        option go_package = "example.com/demo";
        message Everything {
          option deprecated = true;
          message Early { optional string a = 1; }
          required int64 must = 1;
          optional string name = 2 [default = "a \"quoted\"\n\001 \303\251"];
          optional bytes blob = 3 [default = "\000\377abc"];
          optional double ratio = 4 [default = -inf];
          optional float f = 5 [default = 1.5e10];
          optional demo.dep.Color color = 6 [default = GREEN];
          optional bool flag = 7 [default = true];
          optional uint64 big = 8 [default = 18446744073709551615];
          map<string, Early> by_name = 9;
          message Late { repeated int32 v = 1 [packed = true]; }
          map<int32, Late> by_id = 10;
          oneof choice { string text = 11; Late late = 12; }
          repeated sint32 s = 13 [json_name = "sss", deprecated = true];
          optional demo.pub.P p = 14;
          extensions 500 to 599;
          reserved 20, 30 to 40;
          reserved "old", "older";
          extend demo.dep.Base { optional string nested_ext = 150; }
        }
        extend demo.dep.Base {
          optional Everything everything = 101;
          repeated int32 numbers = 1000;
        }
        enum Top { TOP_ZERO = 0; TOP_NEG = -1; }
        service Svc {
          option deprecated = true;
          rpc Unary(Everything) returns (Everything);
          rpc Upload(stream Everything) returns (Everything) {
            option idempotency_level = NO_SIDE_EFFECTS;
          }
          rpc Chat(stream Everything) returns (stream .demo.dep.Base) { option deprecated = true; }
        }
    """,
    "three.proto": """
        syntax = "proto3";
        package demo.three;
        message Opt {
          optional int32 maybe = 1;
          oneof real { string a = 2; int32 b = 3; }
          optional string later = 4;
          repeated int32 packed_by_default = 5;
          repeated int32 unpacked = 6 [packed = false];
          int64 as_string = 7 [jstype = JS_STRING];
          reserved 8 to max;
        }
    """,
}


def compile_embedded_descriptors(root: Path, output: Path) -> dict[str, bytes]:
    """What protoc's Python modules of root's samples register, by file name."""
    output.mkdir()
    run_python("-m", "grpc_tools.protoc", f"-I{root}", f"--python_out={output}",
               *sorted(PRINTER_SAMPLES))
    return {name: embedded_descriptor(output / name.replace(".proto", "_pb2.py"))
            for name in PRINTER_SAMPLES}


def test_printer_round_trips_features_the_served_api_does_not_use(tmp_path):
    from google.protobuf import descriptor_pb2

    original, printed = tmp_path / "original", tmp_path / "printed"
    original.mkdir(), printed.mkdir()
    for name, source in PRINTER_SAMPLES.items():
        (original / name).write_text(textwrap.dedent(source))
    expected = compile_embedded_descriptors(original, tmp_path / "original_pb2")
    for name, serialized in expected.items():
        file = descriptor_pb2.FileDescriptorProto.FromString(serialized)
        (printed / name).write_text(proto_source(file))

    assert compile_embedded_descriptors(printed, tmp_path / "printed_pb2") == expected
