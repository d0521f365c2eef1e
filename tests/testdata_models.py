"""Build a folder laid out like TF Serving's testdata (tensorflow_serving/servables/tensorflow/
testdata/) from this repository alone: the SavedModels, config files and recorded metadata
answers that the suite and the benchmarks use, under the same names.

The models are our own exports of the same graphs: the same tensor names, signatures, shapes and
values (y = 0.5x + 2 and friends), so a test passes the same way against them and against TF
Serving's original files (``PYSERVING_TESTDATA``). Run as a script to build a folder:

    python tests/testdata_models.py OUTDIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

VERSION = "00000123"
NEXT_VERSION = "00000124"
PREDICT = "tensorflow/serving/predict"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"

# Signatures of TF1 half_plus_two: name -> (method, input key, input tensor, output key, output).
_TF1_SIGNATURES = {
    "serving_default": (PREDICT, "x", "x", "y", "y"),
    "classify_x_to_y": (CLASSIFY, "inputs", "tf_example", "scores", "y"),
    "regress_x_to_y": (REGRESS, "inputs", "tf_example", "outputs", "y"),
    "regress_x_to_y2": (REGRESS, "inputs", "tf_example", "outputs", "y2"),
    "regress_x2_to_y3": (REGRESS, "inputs", "x2", "outputs", "y3"),
}
_CLASSIFY_X2 = {"classify_x2_to_y3": (CLASSIFY, "inputs", "x2", "scores", "y3")}


def export_tf1_half_plus_two(export_dir: Path, *, offset: float = 2.0, device: str = "/cpu:0",
                             classify_x2: bool = False) -> None:
    """TF1 graph: y = a*x + b (a=0.5, b=offset), y2 = a*x + 3, y3 = a2*x2 + c2 (0.5, 3), with x and
    x2 parsed from serialized tf.Examples (``tf_example``) or fed directly; variables, a main op
    and an asset (assets/foo.txt), as TF Serving's saved_model_half_plus_two.py exports them."""
    import tensorflow as tf

    v1 = tf.compat.v1
    signatures = dict(_TF1_SIGNATURES, **(_CLASSIFY_X2 if classify_x2 else {}))
    with tf.Graph().as_default() as graph:
        with tf.device(device):
            a = v1.Variable(0.5, name="a")
            b = v1.Variable(offset, name="b")
            c = v1.Variable(3.0, name="c")
            examples = v1.placeholder(tf.string, name="tf_example")  # unknown rank, as TF's
            with tf.device("/cpu:0"):
                features = v1.io.parse_example(v1.ensure_shape(examples, [None]), {
                    "x": v1.io.FixedLenFeature([1], tf.float32),
                    "x2": v1.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
                })
            x = tf.identity(features["x"], name="x")
            tf.identity(a * x + b, name="y")
            tf.identity(a * x + c, name="y2")
            x2 = tf.identity(features["x2"], name="x2")
            # Variables of their own for y3, so no optimizer fuses it with y and y2.
            a2 = v1.Variable(0.5, name="a2")
            c2 = v1.Variable(3.0, name="c2")
            tf.identity(a2 * x2 + c2, name="y3")
        asset_init = _asset_init(v1, export_dir)
        config = v1.ConfigProto(allow_soft_placement=True)
        with v1.Session(graph=graph, config=config) as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(export_dir))
            builder.add_meta_graph_and_variables(
                session, [v1.saved_model.tag_constants.SERVING],
                signature_def_map={name: _signature(graph, *spec)
                                   for name, spec in signatures.items()},
                assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS),
                main_op=tf.group(asset_init))
            builder.save()


def _asset_init(v1: Any, export_dir: Path) -> Any:
    """An asset file (foo.txt) in the ASSET_FILEPATHS collection and the op that names it."""
    source = export_dir.parent / f".{export_dir.name}.assets" / "foo.txt"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text("asset-file-contents")
    v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, v1.constant(str(source)))
    filename = v1.Variable("foo.txt", name="filename_tensor", trainable=False, collections=[])
    return filename.assign("foo.txt")


def _signature(graph: Any, method: str, input_key: str, input_name: str, output_key: str,
               output_name: str) -> Any:
    import tensorflow as tf

    info = tf.compat.v1.saved_model.utils.build_tensor_info
    return tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
        {input_key: info(graph.get_tensor_by_name(f"{input_name}:0"))},
        {output_key: info(graph.get_tensor_by_name(f"{output_name}:0"))}, method)


def export_tf1_half_plus_three(export_dir: Path) -> None:
    """The older TF1 export: ``serving_default`` maps x (any shape) to y = 0.5x + 3, and a
    regression signature keyed by its method name reads tf.Examples."""
    import tensorflow as tf

    v1 = tf.compat.v1
    with tf.Graph().as_default() as graph:
        a = v1.Variable(0.5, name="a")
        b = v1.Variable(3.0, name="b")
        x = v1.placeholder(tf.float32, name="x")
        tf.identity(a * x + b, name="y")
        examples = v1.placeholder(tf.string, name="tf_example")
        parsed = v1.io.parse_example(examples, {"x": v1.io.FixedLenFeature([1], tf.float32)})
        tf.identity(a * parsed["x"] + b)  # "Identity", as in TF Serving's export
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(export_dir))
            builder.add_meta_graph_and_variables(
                session, [v1.saved_model.tag_constants.SERVING],
                signature_def_map={
                    "serving_default": _signature(graph, PREDICT, "x", "x", "y", "y"),
                    REGRESS: _signature(graph, REGRESS, "inputs", "tf_example", "outputs",
                                        "Identity"),
                })
            builder.save()


def export_tf2_half_plus_two(export_dir: Path) -> None:
    """A ``tf.saved_model.save`` export: every signature has TF2's predict method name, x and x2
    have shape [1], tf.Example signatures take a [-1] string vector."""
    import tensorflow as tf

    class HalfPlusTwo(tf.Module):
        def __init__(self, asset: str) -> None:
            super().__init__()
            self.a = tf.Variable(0.5)
            self.b = tf.Variable(2.0)
            self.c = tf.Variable(3.0)
            self.asset = tf.saved_model.Asset(asset)

        def parse(self, inputs: tf.Tensor) -> tf.Tensor:
            return tf.io.parse_example(inputs, {
                "x": tf.io.FixedLenFeature([1], tf.float32),
                "x2": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
            })["x"]

    asset = export_dir.parent / f".{export_dir.name}.assets" / "foo.txt"
    asset.parent.mkdir(parents=True, exist_ok=True)
    asset.write_text("asset-file-contents")
    module = HalfPlusTwo(str(asset))
    floats = tf.TensorSpec([1], tf.float32)
    examples = tf.TensorSpec([None], tf.string)

    def from_x(inputs: tf.Tensor) -> tf.Tensor:
        return module.a * module.parse(inputs) + module.b

    def from_x_plus_three(inputs: tf.Tensor) -> tf.Tensor:
        return module.a * module.parse(inputs) + module.c

    def y3(x2: tf.Tensor) -> tf.Tensor:
        return module.a * x2 + module.c

    # A tensor default is saved as the signature's `defaults` (TF 2.14+), as in TF Serving's export.
    @tf.function(input_signature=[tf.TensorSpec([1], tf.float32, name="x")])
    def serving_default(x: tf.Tensor = tf.constant([0.0])) -> dict[str, tf.Tensor]:  # noqa: B008
        return {"y": module.a * x + module.b}

    @tf.function(input_signature=[examples])
    def classify_x_to_y(inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"scores": from_x(inputs)}

    @tf.function(input_signature=[examples])
    def regress_x_to_y(inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"outputs": from_x(inputs)}

    @tf.function(input_signature=[examples])
    def regress_x_to_y2(inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"outputs": from_x_plus_three(inputs)}

    @tf.function(input_signature=[floats])
    def classify_x2_to_y3(inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"scores": y3(inputs)}

    @tf.function(input_signature=[floats])
    def regress_x2_to_y3(inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"outputs": y3(inputs)}

    tf.saved_model.save(module, str(export_dir), signatures={
        "serving_default": serving_default,
        "classify_x_to_y": classify_x_to_y,
        "regress_x_to_y": regress_x_to_y,
        "regress_x_to_y2": regress_x_to_y2,
        "classify_x2_to_y3": classify_x2_to_y3,
        "regress_x2_to_y3": regress_x2_to_y3,
    })


def write_session_bundle(export_dir: Path) -> None:
    """A pre-SavedModel export (export.meta + checkpoint), which a server must refuse to load."""
    export_dir.mkdir(parents=True)
    (export_dir / "export.meta").write_bytes(b"")
    (export_dir / "export").write_bytes(b"")
    (export_dir / "checkpoint").write_text('model_checkpoint_path: "export"\n'
                                           'all_model_checkpoint_paths: "export"\n')


def _tensor_json(name: str, dtype: str, dims: list[int] | None) -> dict:
    shape = ({"dim": [], "unknown_rank": True} if dims is None else
             {"dim": [{"size": str(size), "name": ""} for size in dims], "unknown_rank": False})
    return {"dtype": dtype, "tensor_shape": shape, "name": name}


def _metadata_json(model_name: str, signatures: dict) -> dict:
    return {"model_spec": {"name": model_name, "signature_name": "", "version": "123"},
            "metadata": {"signature_def": {"signature_def": signatures}}}


def tf1_metadata_json(model_name: str, classify_x2: bool = False) -> dict:
    """TF Serving's REST GetModelMetadata answer for version 123 of the TF1 half_plus_two."""
    signatures = dict(_TF1_SIGNATURES, **(_CLASSIFY_X2 if classify_x2 else {}))
    documents = {}
    for name, (method, input_key, input_name, output_key, output_name) in signatures.items():
        examples = input_name == "tf_example"
        documents[name] = {
            "inputs": {input_key: _tensor_json(f"{input_name}:0", "DT_STRING" if examples else
                                               "DT_FLOAT", None if examples else [-1, 1])},
            "outputs": {output_key: _tensor_json(f"{output_name}:0", "DT_FLOAT", [-1, 1])},
            "method_name": method,
            "defaults": {},
        }
    return _metadata_json(model_name, documents)


def tf2_metadata_json(model_name: str) -> dict:
    """TF Serving's REST GetModelMetadata answer for the TF2 half_plus_two, as it recorded it
    (before TF 2.14 saved `defaults`): every method is predict, outputs are named by the call op
    of each signature in name order, and TF2's init op is listed as a signature."""
    documents = {"__saved_model_init_op": {
        "inputs": {}, "method_name": "",
        "outputs": {"__saved_model_init_op": _tensor_json("NoOp", "DT_INVALID", None)}}}
    for index, (name, (_, input_key, input_name, output_key, _)) in enumerate(
            sorted(dict(_TF1_SIGNATURES, **_CLASSIFY_X2).items())):
        examples = input_name == "tf_example"
        input_tensor = "serving_default_x" if name == "serving_default" else f"{name}_inputs"
        call = "StatefulPartitionedCall" + (f"_{index}" if index else "")
        documents[name] = {
            "inputs": {input_key: _tensor_json(f"{input_tensor}:0", "DT_STRING" if examples
                                               else "DT_FLOAT", [-1] if examples else [1])},
            "outputs": {output_key: _tensor_json(f"{call}:0", "DT_FLOAT",
                                                 [-1, 1] if examples else [1])},
            "method_name": PREDICT,
            "defaults": {},
        }
    return _metadata_json(model_name, documents)


_CONFIG_FILES = {
    "good_model_config.txt": """\
model_config_list: {
  config: {
    name: "half_plus_two",
    base_path: "${TEST_HALF_PLUS_TWO_DIR}",
    model_platform: "tensorflow"
  },
  config: {
    name: "half_plus_three",
    base_path: "${TEST_HALF_PLUS_THREE_DIR}",
    model_platform: "tensorflow"
  }
}
""",
    "bad_model_config.txt": "this is not a text-format ModelServerConfig",
    "batching_config.txt": """\
max_batch_size { value: 128 }
batch_timeout_micros { value: 0 }
max_enqueued_batches { value: 1000000 }
num_batch_threads { value: 8 }
""",
    "monitoring_config.txt": """\
prometheus_config: {
  enable: true,
  path: "/monitoring/prometheus/metrics"
}
""",
}


def build(root: Path) -> Path:
    """Write every model, config file and metadata answer under ``root``; returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    export_tf1_half_plus_two(root / "saved_model_half_plus_two_cpu" / VERSION)
    export_tf1_half_plus_two(root / "saved_model_half_plus_two_gpu" / VERSION,
                             device="/gpu:0", classify_x2=True)
    for version in (VERSION, NEXT_VERSION):
        export_tf1_half_plus_two(root / "saved_model_half_plus_two_2_versions" / version,
                                 classify_x2=True)
    export_tf1_half_plus_three(root / "saved_model_half_plus_three" / VERSION)
    export_tf2_half_plus_two(root / "saved_model_half_plus_two_tf2_cpu" / VERSION)
    write_session_bundle(root / "bad_half_plus_two" / VERSION)
    for name, text in _CONFIG_FILES.items():
        (root / name).write_text(text)
    for name, document in (
            ("half_plus_two_model_metadata.json", tf1_metadata_json("default")),
            ("saved_model_half_plus_two_2_versions_metadata.json",
             tf1_metadata_json("saved_model_half_plus_two_2_versions", classify_x2=True)),
            ("saved_model_half_plus_two_tf2_2_versions_metadata.json",
             tf2_metadata_json("saved_model_half_plus_two_2_versions"))):
        (root / name).write_text(json.dumps(document, indent=1))
    for hidden in root.rglob(".*.assets"):
        for path in sorted(hidden.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        hidden.rmdir()
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUTDIR")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(build(Path(sys.argv[1])))
