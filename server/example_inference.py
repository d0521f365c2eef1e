"""Classify, Regress and MultiInference over tf.Example inputs.

Follows TF Serving's classifier.cc, regressor.cc and multi_inference.cc: the examples are fed
serialized, as one DT_STRING vector, to the signature's single input.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import grpc
import numpy as np
from google.protobuf import text_format

from pyserving.client.tensors import DTYPE_NAMES, dtype_enum_for
from pyserving.server.apis import classification_pb2, inference_pb2, regression_pb2
from pyserving.server.errors import ServingError, invalid_argument
from pyserving.server.predict import CLASSIFY_METHOD, DEFAULT_SIGNATURE, REGRESS_METHOD
from pyserving.server.servable import (
    EncodeObserver,
    Runner,
    RuntimeObserver,
    Servable,
    SignatureDef,
    Steps,
    run_steps,
    run_unbatched,
)

API_NAMES = {CLASSIFY_METHOD: "Classify", REGRESS_METHOD: "Regress"}
ExamplesObserver = Callable[[str, int], None]  # model name, examples in a MultiInference
Response = TypeVar("Response", classification_pb2.ClassificationResponse,
                   regression_pb2.RegressionResponse)


def _debug_string(signature: SignatureDef) -> str:
    return text_format.MessageToString(signature)


def _shape_string(array: np.ndarray) -> str:
    return "[" + ",".join(str(d) for d in array.shape) + "]"


def _dtype_name(array: np.ndarray) -> str:
    try:
        return "DT_" + DTYPE_NAMES[dtype_enum_for(array)].upper()
    except (KeyError, TypeError):
        return str(array.dtype)


def serialized_examples(request_input: Any) -> np.ndarray:
    """The Input proto as a vector of serialized tf.Examples (context prepended to each)."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        values = [e.SerializeToString() for e in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        listed = request_input.example_list_with_context
        context = listed.context.SerializeToString()
        values = [context + e.SerializeToString() for e in listed.examples]
    else:
        values = []
    if not values:
        raise invalid_argument("Input is empty.")
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


class _Task:
    """One signature to evaluate: its input tensor and the outputs it reads."""

    def __init__(self, signature: SignatureDef, method: str) -> None:
        self.signature = signature
        self.method = method
        if len(signature.inputs) != 1:
            raise invalid_argument("Expected one input Tensor.")
        if method == CLASSIFY_METHOD:
            self._check_classify()
        else:
            self._check_regress()

    def _check_classify(self) -> None:
        signature = self.signature
        if len(signature.outputs) not in (1, 2):
            raise invalid_argument(
                f"Expected one or two output Tensors, found {len(signature.outputs)}")
        if "inputs" not in signature.inputs:
            raise invalid_argument("No classification inputs found in SignatureDef: "
                                   + _debug_string(signature))
        self.input_name = signature.inputs["inputs"].name
        names = [signature.outputs[key].name for key in ("classes", "scores")
                 if key in signature.outputs]
        if not names:
            raise invalid_argument(
                'Expected classification signature outputs to contain at least one of '
                '"classes" or "scores". Signature was: ' + _debug_string(signature))
        self.output_names = names

    def _check_regress(self) -> None:
        signature = self.signature
        if len(signature.outputs) != 1:
            raise invalid_argument("Expected one output Tensor.")
        if "inputs" not in signature.inputs:
            raise invalid_argument("No regression inputs found in SignatureDef: "
                                   + _debug_string(signature))
        self.input_name = signature.inputs["inputs"].name
        if "outputs" not in signature.outputs:
            raise invalid_argument("No regression outputs found in SignatureDef: "
                                   + _debug_string(signature))
        self.output_names = [signature.outputs["outputs"].name]

    def fill(self, num_examples: int, outputs: dict[str, np.ndarray], result: Any) -> None:
        if self.method == CLASSIFY_METHOD:
            _fill_classifications(self.signature, num_examples, outputs, result)
        else:
            _fill_regressions(self.signature, num_examples, outputs, result)


def _fill_classifications(signature: SignatureDef, num_examples: int,
                          outputs: dict[str, np.ndarray], result: Any) -> None:
    classes = outputs.get(signature.outputs["classes"].name) if "classes" in signature.outputs \
        else None
    scores = outputs.get(signature.outputs["scores"].name) if "scores" in signature.outputs \
        else None
    for tensor, kind, dtype_name in ((classes, "classes", "DT_STRING"),
                                     (scores, "scores", "DT_FLOAT")):
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise invalid_argument("Expected Tensor shape: [batch_size num_classes] but got "
                                   + _shape_string(tensor))
        if _dtype_name(tensor) != dtype_name:
            raise invalid_argument(f"Expected {kind} Tensor of {dtype_name}. Got: "
                                   + _dtype_name(tensor))
        if tensor.shape[0] != num_examples:
            raise invalid_argument(f"Expected {kind} output batch size of {num_examples}. "
                                   f"Got: {tensor.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid_argument("Tensors class and score should match in dim_size(1). Got "
                               f"{classes.shape[1]} vs. {scores.shape[1]}")
    present = classes if classes is not None else scores
    assert present is not None, "_Task requires classes or scores"
    num_classes = present.shape[1]
    class_rows = classes.tolist() if classes is not None else None
    score_rows = scores.tolist() if scores is not None else None
    for i in range(num_examples):
        classifications = result.classifications.add()
        for c in range(num_classes):
            entry = classifications.classes.add()
            if class_rows is not None:
                entry.label = class_rows[i][c].decode("utf-8", "replace") \
                    if isinstance(class_rows[i][c], bytes) else str(class_rows[i][c])
            if score_rows is not None:
                entry.score = score_rows[i][c]


def _fill_regressions(signature: SignatureDef, num_examples: int,
                      outputs: dict[str, np.ndarray], result: Any) -> None:
    tensor = outputs.get(signature.outputs["outputs"].name)
    if tensor is None:
        raise invalid_argument(
            f"Could not find output tensor '{signature.outputs['outputs'].name}'")
    if not (tensor.ndim == 1 or (tensor.ndim == 2 and tensor.shape[1] == 1)):
        raise invalid_argument("Expected output Tensor shape to be either [batch_size] or "
                               "[batch_size, 1] but got " + _shape_string(tensor))
    if tensor.shape[0] != num_examples:
        raise invalid_argument("Input batch size did not match output batch size: "
                               f"{num_examples} vs. {tensor.shape[0]}")
    if tensor.dtype != np.float32:
        raise invalid_argument("Expected output Tensor of DT_FLOAT.  Got: "
                               + _dtype_name(tensor))
    for value in tensor.reshape(-1).tolist():
        result.regressions.add().value = value


def _signature(servable: Servable, signature_name: str, *, missing: str) -> SignatureDef:
    name = signature_name or DEFAULT_SIGNATURE
    signature = servable.signatures.get(name)
    if signature is None:
        raise invalid_argument(f"{missing}{name}")
    return signature


def _check_method(signature: SignatureDef, method: str, check_method_name: bool) -> None:
    if check_method_name and signature.method_name != method:
        kind = "classification" if method == CLASSIFY_METHOD else "regression"
        raise invalid_argument(f"Expected {kind} signature method_name to be {method}. "
                               f"Was: {signature.method_name}")


class InferencePlan(NamedTuple):
    """Validated example-input signatures: what to feed and fetch for them."""
    tasks: list[_Task]
    num_examples: int
    feeds: list[tuple[str, np.ndarray]]
    fetches: list[str]


def _plan_tasks(tasks: list[_Task], request_input: Any) -> InferencePlan:
    examples = serialized_examples(request_input)
    input_names = sorted({task.input_name for task in tasks})
    fetches = sorted({name for task in tasks for name in task.output_names})
    return InferencePlan(tasks, len(examples), [(name, examples) for name in input_names],
                         fetches)


def _set_model_spec(spec: Any, name: str, signature_name: str, version: int) -> None:
    spec.name = name
    spec.signature_name = signature_name or DEFAULT_SIGNATURE
    spec.version.value = version


class ExampleInference:
    """Runs Classification, Regression and MultiInference requests. Classify and Regress are
    written once, as ``Steps`` (servable.py): ``runner`` makes their TensorFlow call in a
    thread; an event loop drives the same steps with its own runner."""

    def __init__(self, *, check_method_name: bool = False,
                 runner: Runner = run_unbatched, on_runtime: RuntimeObserver | None = None,
                 on_examples: ExamplesObserver | None = None,
                 on_encode: EncodeObserver | None = None) -> None:
        self._check_method_name = check_method_name
        self.runner = runner
        self._on_runtime = on_runtime
        self._on_encode = on_encode
        self._on_examples = on_examples

    def classify(self, servable: Servable, request: classification_pb2.ClassificationRequest
                 ) -> classification_pb2.ClassificationResponse:
        return run_steps(self.classify_steps(servable, request), self.runner)

    def regress(self, servable: Servable, request: regression_pb2.RegressionRequest
                ) -> regression_pb2.RegressionResponse:
        return run_steps(self.regress_steps(servable, request), self.runner)

    def classify_steps(self, servable: Servable,
                       request: classification_pb2.ClassificationRequest
                       ) -> Steps[classification_pb2.ClassificationResponse]:
        return self._single_steps(servable, request, CLASSIFY_METHOD,
                                  classification_pb2.ClassificationResponse())

    def regress_steps(self, servable: Servable, request: regression_pb2.RegressionRequest
                      ) -> Steps[regression_pb2.RegressionResponse]:
        return self._single_steps(servable, request, REGRESS_METHOD,
                                  regression_pb2.RegressionResponse())

    def plan(self, servable: Servable, request: Any, method: str) -> InferencePlan:
        """Validate a Classification/RegressionRequest and serialize its examples."""
        signature = _signature(servable, request.model_spec.signature_name,
                               missing="No signature was found with the name: ")
        _check_method(signature, method, self._check_method_name)
        return _plan_tasks([_Task(signature, method)], request.input)

    def respond(self, servable: Servable, request: Any, plan: InferencePlan,
                values: list[np.ndarray], response: Any) -> Any:
        """Fill ``response`` from the fetched values of a single-signature plan."""
        spec = request.model_spec
        _set_model_spec(response.model_spec, spec.name, spec.signature_name, servable.version)
        plan.tasks[0].fill(plan.num_examples, dict(zip(plan.fetches, values, strict=True)),
                           response.result)
        return response

    def _single_steps(self, servable: Servable, request: Any, method: str,
                      response: Response) -> Steps[Response]:
        """Classify (``method`` CLASSIFY_METHOD) or Regress into ``response``."""
        plan = self.plan(servable, request, method)
        started = time.monotonic()
        values = yield servable, plan.tasks[0].signature, plan.feeds, plan.fetches
        if self._on_runtime is not None:
            self._on_runtime(request.model_spec.name, API_NAMES[method],
                             time.monotonic() - started)
        started = time.monotonic()
        answer: Response = self.respond(servable, request, plan, values, response)
        if self._on_encode is not None:
            self._on_encode(request.model_spec.name, API_NAMES[method], started,
                            time.monotonic() - started)
        return answer

    def multi_inference(self, servable: Servable,
                        request: inference_pb2.MultiInferenceRequest
                        ) -> inference_pb2.MultiInferenceResponse:
        tasks = []
        model_name = ""
        seen: set[str] = set()
        for asked in request.tasks:
            spec = asked.model_spec
            if not spec.name:
                raise invalid_argument("Found ModelSpec with an empty model name.")
            if model_name and spec.name != model_name:
                raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access "
                                       "the same model name.")
            model_name = spec.name
            name = spec.signature_name or DEFAULT_SIGNATURE
            if name in seen:
                raise invalid_argument(f"Duplicate evaluation of signature: {name}")
            seen.add(name)
            signature = _signature(servable, name,
                                   missing="Requested signature not found in model graph: ")
            if asked.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                   f"Unsupported signature method_name: {asked.method_name}")
            _check_method(signature, asked.method_name, self._check_method_name)
            tasks.append(_Task(signature, asked.method_name))
        plan = _plan_tasks(tasks, request.input)
        run = self.runner if len(tasks) == 1 else run_unbatched
        outputs = dict(zip(plan.fetches, run(servable, tasks[0].signature, plan.feeds,
                                             plan.fetches), strict=False))
        num_examples = plan.num_examples
        if self._on_examples is not None:
            self._on_examples(model_name, num_examples)
        response = inference_pb2.MultiInferenceResponse()
        for task, request_task in zip(tasks, request.tasks, strict=False):
            result = response.results.add()
            if task.method == CLASSIFY_METHOD:
                task.fill(num_examples, outputs, result.classification_result)
            else:
                task.fill(num_examples, outputs, result.regression_result)
            _set_model_spec(result.model_spec, request_task.model_spec.name,
                            request_task.model_spec.signature_name, servable.version)
        return response
