"""Each client call as an RPC, its request and the decoder of its response.

The sync and asyncio clients differ only in how they send a Call, so both build them here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyserving.client import requests, results
from pyserving.client.examples import ExampleLike

PREDICTION_SERVICE = "prediction"
MODEL_SERVICE = "model"

# Request message -> (service, RPC), for sending a ready-made request.
_RPCS = {
    "tensorflow.serving.PredictRequest": (PREDICTION_SERVICE, "Predict"),
    "tensorflow.serving.ClassificationRequest": (PREDICTION_SERVICE, "Classify"),
    "tensorflow.serving.RegressionRequest": (PREDICTION_SERVICE, "Regress"),
    "tensorflow.serving.MultiInferenceRequest": (PREDICTION_SERVICE, "MultiInference"),
    "tensorflow.serving.GetModelMetadataRequest": (PREDICTION_SERVICE, "GetModelMetadata"),
    "tensorflow.serving.GetModelStatusRequest": (MODEL_SERVICE, "GetModelStatus"),
    "tensorflow.serving.ReloadConfigRequest": (MODEL_SERVICE, "HandleReloadConfigRequest"),
}


@dataclass(frozen=True)
class Call:
    service: str  # PREDICTION_SERVICE or MODEL_SERVICE
    method: str  # the RPC's name, e.g. "Predict"
    request: Any
    decode: Callable[[Any], Any]


def _keep(response: Any) -> Any:
    return response


def raw(request: Any) -> Call:
    """Send a ready-made request proto; the response proto comes back as it is."""
    try:
        service, method = _RPCS[request.DESCRIPTOR.full_name]
    except (AttributeError, KeyError):
        raise TypeError(f"not a TF Serving request: {type(request).__name__}") from None
    return Call(service, method, request, _keep)


def predict(model: str, inputs: requests.Inputs, *, version: int | None,
            label: str | None, signature: str | None,
            output_filter: Sequence[str] | None) -> Call:
    request = requests.predict_request(model, inputs, version=version, label=label,
                                       signature=signature, output_filter=output_filter)
    return Call(PREDICTION_SERVICE, "Predict", request, results.outputs_of)


def classify(model: str, examples: Iterable[ExampleLike], *, context: ExampleLike | None,
             version: int | None, label: str | None, signature: str | None) -> Call:
    request = requests.classification_request(model, examples, context=context,
                                              version=version, label=label,
                                              signature=signature)
    return Call(PREDICTION_SERVICE, "Classify", request,
                lambda response: results.classifications_of(response.result))


def regress(model: str, examples: Iterable[ExampleLike], *, context: ExampleLike | None,
            version: int | None, label: str | None, signature: str | None) -> Call:
    request = requests.regression_request(model, examples, context=context, version=version,
                                          label=label, signature=signature)
    return Call(PREDICTION_SERVICE, "Regress", request,
                lambda response: results.regressions_of(response.result))


def multi_inference(model: str, examples: Iterable[ExampleLike], tasks: Mapping[str, str], *,
                    context: ExampleLike | None, version: int | None,
                    label: str | None) -> Call:
    request = requests.multi_inference_request(model, examples, tasks, context=context,
                                               version=version, label=label)
    return Call(PREDICTION_SERVICE, "MultiInference", request,
                results.multi_inference_results)


def metadata(model: str, *, version: int | None, label: str | None) -> Call:
    request = requests.metadata_request(model, version=version, label=label)
    return Call(PREDICTION_SERVICE, "GetModelMetadata", request, results.metadata_of)


def status(model: str, *, version: int | None) -> Call:
    request = requests.status_request(model, version=version)
    return Call(MODEL_SERVICE, "GetModelStatus", request, results.statuses_of)


def reload_config(config: requests.ServerConfig) -> Call:
    request = requests.reload_config_request(config)
    return Call(MODEL_SERVICE, "HandleReloadConfigRequest", request, lambda response: None)
