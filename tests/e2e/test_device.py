"""Device placement and GPU memory options, exercised on whatever devices this machine has."""

import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from pyserving.server import ServerOptions
from pyserving.server.device import session_config
from pyserving.server.errors import ServingError


def _predict_x(stub, value: float) -> float:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(value)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    return stub.Predict(request, 10).outputs["y"].float_val[0]


def test_default_config_grows_gpu_memory_on_demand():
    config = session_config(ServerOptions())
    assert config.allow_soft_placement
    assert config.gpu_options.allow_growth
    assert config.gpu_options.per_process_gpu_memory_fraction == 0


def test_memory_fraction_and_thread_flags_reach_the_session():
    config = session_config(ServerOptions(per_process_gpu_memory_fraction=0.25,
                                          tensorflow_intra_op_parallelism=2,
                                          tensorflow_inter_op_parallelism=3))
    assert config.gpu_options.per_process_gpu_memory_fraction == pytest.approx(0.25)
    assert not config.gpu_options.allow_growth
    assert (config.intra_op_parallelism_threads, config.inter_op_parallelism_threads) == (2, 3)


def test_memory_fraction_out_of_range_is_rejected():
    with pytest.raises(ServingError, match="per_process_gpu_memory_fraction"):
        session_config(ServerOptions(per_process_gpu_memory_fraction=1.5))


def test_session_config_file_is_merged(tmp_path):
    path = tmp_path / "session.pbtxt"
    path.write_text("intra_op_parallelism_threads: 1\nlog_device_placement: false\n")
    config = session_config(ServerOptions(tensorflow_session_config_file=str(path)))
    assert config.intra_op_parallelism_threads == 1
    assert config.allow_soft_placement


def test_gpu_pinned_model_serves_through_soft_placement(testdata_model, serve, channel_to):
    """TF Serving's GPU test model pins variables to /device:GPU:0; without a GPU it still runs."""
    server = serve(model_base_path=testdata_model("saved_model_half_plus_two_gpu"),
                   per_process_gpu_memory_fraction=0.5, tensorflow_intra_op_parallelism=1,
                   tensorflow_inter_op_parallelism=1)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel_to(server.grpc_target))
    assert _predict_x(stub, 2.0) == 3.0


def test_session_and_per_pool_parallelism_together_are_rejected():
    with pytest.raises(ServingError, match=r"You cannot configure all\."):
        session_config(ServerOptions(tensorflow_session_parallelism=2,
                                     tensorflow_intra_op_parallelism=2,
                                     tensorflow_inter_op_parallelism=2))
