"""The serving core: the calls every transport (gRPC now, REST later) makes.

Each call takes and returns TF Serving's request/response protos, resolves the ModelSpec
through the manager and hands the servable to the request kind's runner. Calls that run the
model are admitted first: past its in-flight limit a model fails fast with UNAVAILABLE.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from pyserving.server.admission import InFlightLimit
from pyserving.server.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
)
from pyserving.server.configurator import AppliedObserver, ModelConfigurator
from pyserving.server.errors import ERROR_CODE_NUMBERS, invalid_argument
from pyserving.server.inference import ExampleInference
from pyserving.server.manager import ModelManager
from pyserving.server.predict import CLASSIFY_METHOD, REGRESS_METHOD, Predictor
from pyserving.server.servable import AsyncRunner, Servable

SIGNATURE_DEF_FIELD = "signature_def"


class ServingCore:
    """Prediction and model-status calls over a ModelManager; ``on_reload`` hears of each
    config a ReloadConfig request applied, before the request returns; ``metric_value`` reads
    the metrics a ReloadConfig request names."""

    def __init__(self, manager: ModelManager, configurator: ModelConfigurator,
                 predictor: Predictor, inference: ExampleInference,
                 max_in_flight_per_model: int = 0,
                 on_reload: AppliedObserver | None = None,
                 metric_value: Callable[[str], int] = lambda name: 0) -> None:
        self.manager = manager
        self._metric_value = metric_value
        self.in_flight = InFlightLimit(max_in_flight_per_model)
        self._configurator = configurator
        self._on_reload = on_reload
        self._predictor = predictor
        self._inference = inference

    def servable_for(self, spec: model_pb2.ModelSpec) -> Servable:
        """The servable the spec names, counted in: use it as ``with ... as servable``."""
        choice = spec.WhichOneof("version_choice")
        if choice == "version":
            return self.manager.acquire(spec.name, version=spec.version.value)
        if choice == "version_label":
            return self.manager.acquire(spec.name, label=spec.version_label)
        return self.manager.acquire(spec.name)

    def _serving(self, request: Any) -> "_Admitted":
        """The servable a Predict/Classify/Regress request names, counted in and admitted."""
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        return _Admitted(self.servable_for(request.model_spec), self.in_flight)

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        with self._serving(request) as servable:
            return self._predictor.predict(servable, request)

    def predict_arrays(self, spec: model_pb2.ModelSpec,
                       read: Callable[[Servable], tuple[str, Mapping[str, np.ndarray]]]
                       ) -> list[tuple[str, np.ndarray, int]]:
        """Predict for a transport that decodes its own tensors against the signature: the
        spec is resolved once, ``read(servable)`` gives (signature name, input arrays) for
        that very version, and the outputs come back as (alias, array, DataType)."""
        with _Admitted(self.servable_for(spec), self.in_flight) as servable:
            signature_name, inputs = read(servable)
            return self._predictor.predict_arrays(servable, spec.name, signature_name, inputs)

    def classify(self, request: classification_pb2.ClassificationRequest
                 ) -> classification_pb2.ClassificationResponse:
        with self._serving(request) as servable:
            return self._inference.classify(servable, request)

    def regress(self, request: regression_pb2.RegressionRequest
                ) -> regression_pb2.RegressionResponse:
        with self._serving(request) as servable:
            return self._inference.regress(servable, request)

    async def predict_async(self, request: predict_pb2.PredictRequest,
                            run: AsyncRunner) -> predict_pb2.PredictResponse:
        """``predict`` for an event loop: the TensorFlow call is awaited through ``run``."""
        with self._serving(request) as servable:
            return await self._predictor.predict_async(servable, request, run)

    async def classify_async(self, request: classification_pb2.ClassificationRequest,
                             run: AsyncRunner) -> classification_pb2.ClassificationResponse:
        return await self._infer_async(request, run, CLASSIFY_METHOD,
                                       classification_pb2.ClassificationResponse())

    async def regress_async(self, request: regression_pb2.RegressionRequest,
                            run: AsyncRunner) -> regression_pb2.RegressionResponse:
        return await self._infer_async(request, run, REGRESS_METHOD,
                                       regression_pb2.RegressionResponse())

    async def _infer_async(self, request: Any, run: AsyncRunner, method: str,
                           response: Any) -> Any:
        with self._serving(request) as servable:
            return await self._inference.single_async(servable, request, method, response, run)

    def multi_inference(self, request: inference_pb2.MultiInferenceRequest
                        ) -> inference_pb2.MultiInferenceResponse:
        spec = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
        with _Admitted(self.servable_for(spec), self.in_flight) as servable:
            return self._inference.multi_inference(servable, request)

    def model_metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest
                       ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        if not request.metadata_field:
            raise invalid_argument(
                "GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF_FIELD:
                raise invalid_argument(f"Metadata field {field} is not supported")
        with self.servable_for(request.model_spec) as servable:
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            signatures = get_model_metadata_pb2.SignatureDefMap()
            for name, signature in servable.signatures.items():
                signatures.signature_def[name].CopyFrom(signature)
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signatures)
        return response

    def model_status(self, request: get_model_status_pb2.GetModelStatusRequest
                     ) -> get_model_status_pb2.GetModelStatusResponse:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in self.manager.version_statuses(spec.name, version):
            entry = response.model_version_status.add()
            entry.version = status.version
            entry.state = int(status.state)
            entry.status.SetInParent()  # TF Serving always sets it: error_code OK when healthy
            if status.error is not None:
                entry.status.error_code = ERROR_CODE_NUMBERS[status.error.code]
                entry.status.error_message = status.error.message
        return response

    def reload_config(self, request: model_management_pb2.ReloadConfigRequest
                      ) -> model_management_pb2.ReloadConfigResponse:
        if request.config.WhichOneof("config") != "model_config_list":
            raise invalid_argument("ServerModelConfig type not supported by "
                                   "HandleReloadConfigRequest. Only ModelConfigList is "
                                   "currently supported")
        before = {name: self._metric_value(name) for name in request.metric_names}
        self._configurator.apply(request.config, on_applied=self._on_reload)
        response = model_management_pb2.ReloadConfigResponse()
        response.status.SetInParent()  # error_code OK, as TF Serving's ToStatusProto sets it
        for name in dict.fromkeys(request.metric_names):
            response.metric.add(name=name,
                                int64_value_increase=self._metric_value(name) - before[name])
        return response


class _Admitted:
    """``with``: an acquired servable plus its model's in-flight slot; both are freed on exit
    (the servable also when admission fails)."""

    __slots__ = ("_servable", "_limit", "_slot")

    def __init__(self, servable: Servable, limit: InFlightLimit) -> None:
        self._servable = servable
        self._limit = limit
        try:
            self._slot = limit.admit(servable.name)
        except BaseException:
            servable.release()
            raise

    def __enter__(self) -> Servable:
        return self._servable

    def __exit__(self, *exc_info: object) -> None:
        self._limit.release(self._slot)
        self._servable.release()
