"""Build the demo model ``make serve`` serves: half_plus_two (y = 0.5 * x + 2) as a TF2
SavedModel with predict, classify and regress signatures, like TF Serving's test model.

    python -m pyserving.server.demo demo_models
"""

from __future__ import annotations

import argparse
import os

import tensorflow as tf


class HalfPlusTwo(tf.Module):
    """y = a * x + b with a = 0.5, b = 2, kept in variables so loading restores state."""

    def __init__(self) -> None:
        super().__init__()
        self.a = tf.Variable(0.5, name="a")
        self.b = tf.Variable(2.0, name="b")

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": self.a * x + self.b}

    def _from_examples(self, serialized: tf.Tensor) -> tf.Tensor:
        features = tf.io.parse_example(
            serialized, {"x": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0])})
        return self.a * features["x"] + self.b

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"scores": self._from_examples(inputs)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"outputs": self._from_examples(inputs)}


def export_half_plus_two(base_path: str, version: int = 1) -> str:
    """Write the model to ``base_path/version``; returns that directory."""
    module = HalfPlusTwo()
    export_dir = os.path.join(base_path, str(version))
    tf.saved_model.save(module, export_dir, signatures={
        "serving_default": module.predict,
        "classify_x_to_y": module.classify,
        "regress_x_to_y": module.regress,
    })
    return export_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", help="where to create half_plus_two/1")
    args = parser.parse_args()
    path = os.path.join(args.directory, "half_plus_two")
    if os.path.isdir(os.path.join(path, "1")):
        print(f"{path} already exists")
        return
    print("exported", export_half_plus_two(path))


if __name__ == "__main__":
    main()
