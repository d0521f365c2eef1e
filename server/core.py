"""The serving core: the calls every transport (gRPC and REST) makes.

Each call takes and returns TF Serving's request/response protos, resolves the ModelSpec
through the manager and hands the servable to the request kind's runner. Calls that run the
model are admitted first: past its in-flight limit a model fails fast with UNAVAILABLE.

Predict, Classify and Regress are written once, as ``Steps`` (servable.py) that yield their
TensorFlow call: ``predict`` etc. drive them in the caller's thread through the configured
runner; an event-loop transport (grpc_aio.py) drives ``predict_steps`` etc. itself, awaiting
each call through its own runner.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

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
    status_pb2,
)
from pyserving.server.configurator import AppliedObserver, ModelConfigurator
from pyserving.server.errors import ServingError, invalid_argument, not_found
from pyserving.server.example_inference import ExampleInference
from pyserving.server.manager import ModelManager
from pyserving.server.predict import OutputArray, Predictor
from pyserving.server.rollout.plan import Target
from pyserving.server.rollout.router import Outputs, Route, Router, target_spec
from pyserving.server.rollout.shadow import response_outputs
from pyserving.server.servable import Runner, Servable, Steps, acquire, run_steps
from pyserving.server.tracing import Tracing

log = logging.getLogger(__name__)

SIGNATURE_DEF_FIELD = "signature_def"
# read(servable) -> (signature name, input arrays by alias), for that very version
ReadInputs = Callable[[Servable], tuple[str, Mapping[str, np.ndarray]]]
Request = TypeVar("Request", classification_pb2.ClassificationRequest,
                  regression_pb2.RegressionRequest)
Response = TypeVar("Response", classification_pb2.ClassificationResponse,
                   regression_pb2.RegressionResponse)


@dataclass(frozen=True, slots=True)
class Answer:
    """What an answer observer hears: the API, the version that answered, the request (a
    proto; for the array entry, its ModelSpec) and the response (a proto; for the array
    entry, the (alias, array, DataType) outputs). The array entry also gives the signature
    it ran and its input arrays by alias (the request log rebuilds the PredictRequest)."""

    api: str
    model: str
    version: int
    request: Any
    response: Any
    signature_name: str = ""
    inputs: Mapping[str, np.ndarray] | None = None


AnswerObserver = Callable[[Answer], None]


class ServingCore:
    """Prediction and model-status calls over a ModelManager; ``on_reload`` hears of each
    config a ReloadConfig request applied, before the request returns; ``metric_value`` reads
    the metrics a ReloadConfig request names."""

    def __init__(self, manager: ModelManager, configurator: ModelConfigurator,
                 predictor: Predictor, inference: ExampleInference,
                 max_in_flight_per_model: int = 0,
                 on_reload: AppliedObserver | None = None,
                 metric_value: Callable[[str], int] = lambda name: 0,
                 router: Router | None = None, tracing: Tracing | None = None) -> None:
        self.manager = manager
        self.tracing = tracing  # with --enable_tracing: admission is a span
        self.router = router if router is not None else Router(manager)
        self._metric_value = metric_value
        self.in_flight = InFlightLimit(max_in_flight_per_model)
        self._configurator = configurator
        self._on_reload = on_reload
        self._predictor = predictor
        self._inference = inference
        self._rollouts = self.router.rollouts
        self._observers: list[AnswerObserver] = []

    def servable_for(self, spec: model_pb2.ModelSpec) -> Servable:
        """The servable the spec names, counted in: use it as ``with ... as servable``."""
        return acquire(self.manager, spec)

    def add_answer_observer(self, observer: AnswerObserver) -> None:
        """Call ``observer`` after each answered Predict/Classify/Regress/MultiInference
        (request logging, tracing); with none added, a request visits no observer code.
        Adding one already there changes nothing."""
        if observer not in self._observers:
            # A new list, not an append: requests iterate the one they read, unlocked.
            self._observers = [*self._observers, observer]

    def remove_answer_observer(self, observer: AnswerObserver) -> None:
        self._observers = [known for known in self._observers if known != observer]

    def _admit(self, spec: model_pb2.ModelSpec) -> _Admitted:
        """The servable a prediction request's spec names, counted in and admitted. Only a
        request naming no version of a model that has a rollout enters the rollout package,
        which decides its arm and whether to mirror it, once."""
        routed = self._rollouts.models
        if routed and spec.WhichOneof("version_choice") is None:
            rollout = routed.get(spec.name)
            if rollout is not None:
                return _Admitted(*self.router.route(spec, rollout), self.in_flight,
                                 self.router)
        return _Admitted(acquire(self.manager, spec), None, self.in_flight)

    def _serving(self, request: Any) -> _Admitted:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        if self.tracing is not None:
            return self.tracing.admission(self._admit, request.model_spec)
        return self._admit(request.model_spec)

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        return run_steps(self.predict_steps(request), self._predictor.runner)

    def predict_steps(self, request: predict_pb2.PredictRequest
                      ) -> Steps[predict_pb2.PredictResponse]:
        """Predict as Steps: resolve, admit, decode, (TensorFlow call), encode, answered."""
        admitted = self._serving(request)
        with admitted as servable:
            response = yield from self._predictor.predict_steps(servable, request)
        if admitted.route is not None or self._observers:
            self._answered("Predict", admitted, request, response,
                           self._predictor.predict_steps, self._predictor.runner)
        return response

    def predict_arrays(self, spec: model_pb2.ModelSpec, read: ReadInputs,
                       output_filter: Sequence[str] = ()) -> list[OutputArray]:
        """``predict_arrays_steps`` driven in this thread."""
        return run_steps(self.predict_arrays_steps(spec, read, output_filter),
                         self._predictor.runner)

    def predict_arrays_steps(self, spec: model_pb2.ModelSpec, read: ReadInputs,
                             output_filter: Sequence[str] = ()) -> Steps[list[OutputArray]]:
        """Predict for a transport that decodes its own wire format (REST JSON, V2): the spec
        is resolved once, ``read(servable)`` gives (signature name, input arrays by alias) for
        that very version, and the outputs (those of ``output_filter``, default all) come back
        as (alias, array, tensorflow DataType), no protos between. The same steps as
        ``predict_steps``, driven by the caller: ``run_steps`` or ``run_steps_async``."""
        admitted = self._admit(spec) if self.tracing is None else \
            self.tracing.admission(self._admit, spec)
        with admitted as servable:
            signature_name, inputs = read(servable)
            outputs = yield from self._predictor.array_steps(
                servable, spec.name, signature_name, inputs, output_filter)
        if admitted.route is not None or self._observers:
            self._arrays_answered(admitted, spec, read, output_filter, outputs,
                                  signature_name, inputs)
        return outputs

    def classify(self, request: classification_pb2.ClassificationRequest
                 ) -> classification_pb2.ClassificationResponse:
        return run_steps(self.classify_steps(request), self._inference.runner)

    def regress(self, request: regression_pb2.RegressionRequest
                ) -> regression_pb2.RegressionResponse:
        return run_steps(self.regress_steps(request), self._inference.runner)

    def classify_steps(self, request: classification_pb2.ClassificationRequest
                       ) -> Steps[classification_pb2.ClassificationResponse]:
        return self._inference_steps("Classify", request, self._inference.classify_steps)

    def regress_steps(self, request: regression_pb2.RegressionRequest
                      ) -> Steps[regression_pb2.RegressionResponse]:
        return self._inference_steps("Regress", request, self._inference.regress_steps)

    def _inference_steps(self, api: str, request: Request,
                         steps: Callable[[Servable, Request], Steps[Response]]
                         ) -> Steps[Response]:
        admitted = self._serving(request)
        with admitted as servable:
            response = yield from steps(servable, request)
        if admitted.route is not None or self._observers:
            self._answered(api, admitted, request, response, steps, self._inference.runner)
        return response

    # -- after the answer: the one place a rollout's mirror and answer observers run --------

    def _answered(self, api: str, admitted: _Admitted, request: Any, response: Any,
                  steps: Callable[[Servable, Any], Steps[Any]], runner: Runner) -> None:
        if admitted.route is not None and admitted.route.mirror:
            def shadow(spec: model_pb2.ModelSpec) -> Outputs:
                copy = type(request)()
                copy.CopyFrom(request)
                _retarget(copy.model_spec, spec)
                with self.servable_for(spec) as servable:
                    return response_outputs(run_steps(steps(servable, copy), runner))

            self._mirror(admitted.route, lambda: response_outputs(response), shadow)
        if self._observers:
            self._observe(Answer(api, admitted.model, admitted.version, request, response))

    def _arrays_answered(self, admitted: _Admitted, spec: model_pb2.ModelSpec,
                         read: ReadInputs, output_filter: Sequence[str],
                         outputs: list[OutputArray], signature_name: str,
                         inputs: Mapping[str, np.ndarray]) -> None:
        if admitted.route is not None and admitted.route.mirror:
            def shadow(shadow_spec: model_pb2.ModelSpec) -> Outputs:
                with self.servable_for(shadow_spec) as servable:
                    name, arrays = read(servable)
                    return _by_alias(run_steps(self._predictor.array_steps(
                        servable, spec.name, name, arrays, output_filter),
                        self._predictor.runner))

            self._mirror(admitted.route, lambda: _by_alias(outputs), shadow)
        if self._observers:
            self._observe(Answer("Predict", admitted.model, admitted.version, spec, outputs,
                                 signature_name, inputs))

    def _mirror(self, route: Route, primary: Callable[[], Outputs],
                shadow: Callable[[model_pb2.ModelSpec], Outputs]) -> None:
        """Offer a routed request's copy to its model's shadow (``shadow(spec)`` reruns it
        there, by the same steps); its outputs are compared with ``primary()``'s."""
        self.router.mirror(route, primary, shadow)

    def _observe(self, answer: Answer) -> None:
        for observer in self._observers:
            try:
                observer(answer)
            except Exception:  # an observer's bug must not fail the answered request
                log.exception("answer observer %r failed", observer)

    def multi_inference(self, request: inference_pb2.MultiInferenceRequest
                        ) -> inference_pb2.MultiInferenceResponse:
        spec = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
        with _Admitted(self.servable_for(spec), None, self.in_flight) as servable:
            response = self._inference.multi_inference(servable, request)
        if self._observers:
            self._observe(Answer("MultiInference", servable.name, servable.version, request,
                                 response))
        return response

    def rollout_status(self, model_name: str) -> dict[str, Any]:
        """The rollout of a model as ``GET /v1/models/{m}/rollout`` shows it; NOT_FOUND when
        the model has none."""
        rollout = self._rollouts.models.get(model_name)
        if rollout is None:
            raise not_found(f"Model {model_name} has no rollout (--rollout_config_file)")
        return rollout.status(lambda target: self._version_of(model_name, target))

    def _version_of(self, model_name: str, target: Target) -> int | None:
        try:
            with self.servable_for(target_spec(model_name, target)) as servable:
                return servable.version
        except ServingError:
            return target.version

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
            # VersionState and grpc.StatusCode name their values as the proto enums do; TF
            # Serving always sets the status: error_code OK when healthy.
            error = status.error
            response.model_version_status.append(get_model_status_pb2.ModelVersionStatus(
                version=status.version, state=status.state.name,
                status=status_pb2.StatusProto() if error is None else status_pb2.StatusProto(
                    error_code=error.code.name, error_message=error.message)))
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


def _retarget(spec: model_pb2.ModelSpec, target: model_pb2.ModelSpec) -> None:
    """Point a request's ModelSpec at the version ``target`` names, keeping its signature."""
    signature_name = spec.signature_name
    spec.CopyFrom(target)
    spec.signature_name = signature_name


class _Admitted:
    """``with``: an acquired servable plus its model's in-flight slot; both are freed on exit
    (the servable also when admission fails), and a routed request counts for its arm."""

    __slots__ = ("_limit", "_router", "_servable", "_slot", "route")

    def __init__(self, servable: Servable, route: Route | None, limit: InFlightLimit,
                 router: Router | None = None) -> None:
        self._servable = servable
        self.route = route
        self._limit = limit
        self._router = router
        try:
            self._slot = limit.admit(servable.name)
        except BaseException as error:
            servable.release()
            if route is not None and router is not None:
                router.finish(route, error)
            raise

    @property
    def model(self) -> str:
        return self._servable.name

    @property
    def version(self) -> int:
        return self._servable.version

    def __enter__(self) -> Servable:
        return self._servable

    def __exit__(self, kind: type | None, error: BaseException | None, *_: object) -> None:
        self._limit.release(self._slot)
        self._servable.release()
        if self.route is not None and self._router is not None:
            self._router.finish(self.route, error)


def _by_alias(outputs: list[OutputArray]) -> Outputs:
    return {alias: array for alias, array, _ in outputs}
