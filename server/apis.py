"""The single import point of the TF Serving and TensorFlow protobuf modules the server uses."""

from tensorflow.core.example import example_pb2, feature_pb2  # noqa: F401
from tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: F401
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2  # noqa: F401
from tensorflow_serving.apis import (  # noqa: F401
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    input_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
    status_pb2,
)
from tensorflow_serving.config import model_server_config_pb2  # noqa: F401

