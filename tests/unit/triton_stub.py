"""A stand-in for `triton_python_backend_utils` and helpers to drive the model.py adapters without a server."""

from __future__ import annotations

import importlib.util
import json
import threading
import types
from pathlib import Path

import numpy as np
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class TritonError:
    INTERNAL, INVALID_ARG, CANCELLED = "INTERNAL", "INVALID_ARG", "CANCELLED"

    def __init__(self, message: str, code: str = "INTERNAL") -> None:
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> str:
        return self._code


class InferenceResponse:
    def __init__(self, output_tensors=(), error: TritonError | None = None) -> None:
        self.output_tensors, self.error = list(output_tensors), error

    def output(self, name: str) -> np.ndarray:
        return next(t.as_numpy() for t in self.output_tensors if t.name() == name)


FINAL_FLAG = 1


class ResponseSender:
    """Keeps the one final response a non-decoupled model sends through `get_response_sender()`."""

    def __init__(self) -> None:
        self.response: InferenceResponse | None = None
        self.sent = threading.Event()

    def send(self, response: InferenceResponse, flags: int = 0) -> None:
        assert flags == FINAL_FLAG and not self.sent.is_set(), "exactly one final response per request"
        self.response = response
        self.sent.set()


class FakeRequest:
    def __init__(
        self, tensors: dict[str, np.ndarray], parameters: dict | None = None, cancelled: bool = False, request_id=""
    ):
        self.tensors, self._parameters, self._cancelled, self._id = tensors, parameters or {}, cancelled, request_id
        self.sender = ResponseSender()

    def get_response_sender(self) -> ResponseSender:
        return self.sender

    def request_id(self) -> str:
        return self._id

    def parameters(self) -> str:
        return json.dumps(self._parameters)

    def is_cancelled(self) -> bool:
        return self._cancelled


class MetricFamily:
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"
    values: dict[tuple[str, tuple], float] = {}

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name = name

    def Metric(self, labels: dict[str, str], buckets: list[float] | None = None):  # noqa: N802 - the backend's spelling
        family, key = self, (self.name, tuple(sorted(labels.items())))

        class Metric:
            def increment(self, value: float) -> None:
                MetricFamily.values[key] = MetricFamily.values.get(key, 0.0) + value

            def set(self, value: float) -> None:
                MetricFamily.values[key] = value

            def observe(self, value: float) -> None:
                MetricFamily.values[key] = MetricFamily.values.get(key, 0.0) + 1  # counts observations

        del family
        return Metric()


def stub_module() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = Tensor
    module.TritonError = TritonError
    module.InferenceResponse = InferenceResponse
    module.MetricFamily = MetricFamily
    module.TRITONSERVER_RESPONSE_COMPLETE_FINAL = FINAL_FLAG
    module.Logger = types.SimpleNamespace(log_info=lambda message: None, log_error=lambda message: None)
    module.get_input_tensor_by_name = lambda request, name: (
        Tensor(name, request.tensors[name]) if name in request.tensors else None
    )
    return module


def model_args(model: str, config_file: str = "config.pbtxt", kind: str = "CPU") -> dict[str, str]:
    """The `args` Triton passes to initialize(), with the model config as Triton's JSON."""
    config = text_format.Parse((REPOSITORY / model / config_file).read_text(), model_config_pb2.ModelConfig())
    as_json = json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True))
    return {"model_config": as_json, "model_instance_kind": kind, "model_instance_device_id": "0"}


def load_adapter(model: str):
    """Import model_repository/<model>/1/model.py as a fresh module."""
    spec = importlib.util.spec_from_file_location(f"adapter_{model}", REPOSITORY / model / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TritonPythonModel()


def answers(model, requests: list[FakeRequest], timeout: float = 60) -> list[InferenceResponse]:
    """The responses of one `execute`: returned, or (response-sender mode) sent from the model's thread."""
    returned = model.execute(requests)
    if returned is not None:
        return returned
    for request in requests:
        assert request.sender.sent.wait(timeout), "the model never answered a request"
    return [request.sender.response for request in requests]
