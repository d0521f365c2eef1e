"""The single import point of the protobuf modules the server uses.

The TF Serving API comes through the client's generated modules (``pyserving.client.apis``),
whose descriptors are byte-identical to TensorFlow's, so the server and the client share one
set of message classes. Only TensorFlow's session ConfigProto is taken from TensorFlow.
"""

from tensorflow.core.protobuf import config_pb2  # noqa: F401

from pyserving.client.apis import (  # noqa: F401
    classification_pb2,
    example_pb2,
    feature_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    input_pb2,
    meta_graph_pb2,
    model_management_pb2,
    model_pb2,
    model_server_config_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
    status_pb2,
    tensor_pb2,
    types_pb2,
)
