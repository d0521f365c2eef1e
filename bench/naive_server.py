"""BASELINE, NOT PYSERVING: the Predict server a user would write without a model server.

    .venv/bin/python bench/naive_server.py MODEL_VERSION_DIR [--port 8500] [--threads 10]

It loads the SavedModel once with ``tf.saved_model.load``, and per request converts the
inputs with ``tf.make_ndarray``, calls the ``serving_default`` signature eagerly, and converts
the outputs with ``tf.make_tensor_proto``: the code of TensorFlow's own tutorials, behind a
sync ``grpc.server`` with a ThreadPoolExecutor as in gRPC's Python examples (10 workers).
No batching, no validation, no versions. bench/batching_throughput.py measures pyserving
against it.
"""

from __future__ import annotations

import argparse
from concurrent import futures

import grpc
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

DEFAULT_THREADS = 10  # gRPC's Python examples use ThreadPoolExecutor(max_workers=10)


class NaivePredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, model_dir: str) -> None:
        self.model = tf.saved_model.load(model_dir)
        self.signature = self.model.signatures["serving_default"]

    def Predict(self, request, context):
        inputs = {name: tf.constant(tf.make_ndarray(proto))
                  for name, proto in request.inputs.items()}
        outputs = self.signature(**inputs)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        for name, tensor in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(tensor.numpy()))
        return response


def serve(model_dir: str, address: str, threads: int = DEFAULT_THREADS) -> tuple[grpc.Server, int]:
    """Start the server on ``address`` ("host:port", port 0 for a free one)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=[
        ("grpc.max_send_message_length", 2**31 - 1),
        ("grpc.max_receive_message_length", 2**31 - 1),
    ])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        NaivePredictionService(model_dir), server)
    port = server.add_insecure_port(address)
    server.start()
    return server, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="one SavedModel (a version directory)")
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    args = parser.parse_args()
    server, port = serve(args.model_dir, f"127.0.0.1:{args.port}", args.threads)
    print(f"serving {args.model_dir} on port {port}")
    server.wait_for_termination()


if __name__ == "__main__":
    main()
