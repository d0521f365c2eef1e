"""The single import point of the generated TF Serving protobuf modules the client uses.

They come from ``pyserving.client.protos`` (``make protos``), need only protobuf and grpcio,
and register the same descriptors as TensorFlow's and TF Serving's own modules, so both sets
import into one process and their messages are interchangeable.
"""

from pyserving.client.protos.tensorflow.core.example import (  # noqa: F401
    example_pb2,
    feature_pb2,
)
from pyserving.client.protos.tensorflow.core.framework import (  # noqa: F401
    tensor_pb2,
    tensor_shape_pb2,
    types_pb2,
)
from pyserving.client.protos.tensorflow.core.protobuf import (  # noqa: F401
    error_codes_pb2,
    meta_graph_pb2,
)
from pyserving.client.protos.tensorflow_serving.apis import (  # noqa: F401
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
from pyserving.client.protos.tensorflow_serving.config import (  # noqa: F401
    model_server_config_pb2,
)
