"""The single import point of the protobuf modules the server uses.

The TF Serving API and TensorFlow's ConfigProto come through the client's generated modules
(``pyserving.client.protos``), whose descriptors are byte-identical to TensorFlow's: in one
process both register the same message classes, so the server and TensorFlow share them and
importing this module does not import TensorFlow.
"""

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

# The Open Inference Protocol (KServe V2): Triton's grpc_service.proto (server/v2/).
from pyserving.client.protos.inference import (  # noqa: F401
    grpc_service_pb2,
    grpc_service_pb2_grpc,
)
from pyserving.client.protos.tensorflow.core.protobuf import config_pb2  # noqa: F401
