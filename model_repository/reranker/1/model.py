"""Triton adapter of the reranker step: every pair of every request in one plan, per-request errors."""

import json
import time
import traceback

import torch
import triton_python_backend_utils as pb_utils

from mmrerank.layout import CheckpointLayout
from mmrerank.model import MatryoshkaReranker
from mmrerank.serving.contract import InvalidRequestError, RerankOptions, parse_parameters
from mmrerank.serving.deadlines import NO_DEADLINE, CancelNotices, ShutdownNotice
from mmrerank.serving.metrics import Metrics
from mmrerank.serving.reranker_step import DirectCaps, RerankerStep
from mmrerank.serving.settings import SettingsError, checkpoint_location, integer_setting, model_parameters

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _device(args):
    if args["model_instance_kind"] == "GPU":
        return torch.device("cuda", int(args["model_instance_device_id"]))
    return torch.device("cpu")


def _dtype(name):
    if name in ("", "auto"):
        return None
    if name not in DTYPES:
        raise SettingsError(f"model config parameter 'dtype' must be auto or one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


class TritonPythonModel:
    """Validates each request, scores all valid ones together, answers every request."""

    def initialize(self, args):
        settings = model_parameters(json.loads(args["model_config"]))
        reranker = MatryoshkaReranker.from_pretrained(
            CheckpointLayout.open(checkpoint_location(settings)),
            device=_device(args),
            dtype=_dtype(settings.get("dtype", "auto")),
            attention=settings.get("attention", "auto") or "auto",
        )
        self.step = RerankerStep(
            reranker,
            max_batch_tokens=integer_setting(settings, "max_batch_tokens"),
            shutdown=ShutdownNotice.from_environment(),
            cancels=CancelNotices.from_environment(),
            caps=DirectCaps(
                max_documents=integer_setting(settings, "max_documents"),
                max_request_tokens=integer_setting(settings, "max_request_tokens"),
                default_deadline_ms=integer_setting(settings, "default_deadline_ms", minimum=0) or None,
            ),
        )
        self.logger = pb_utils.Logger
        self.metrics = Metrics(pb_utils)
        self.instance = args.get("model_instance_name", "reranker")
        self.metrics.report_executing(0, step="reranker", instance=self.instance)  # present before any request
        started = time.perf_counter()
        warmed = self.step.warm_up()  # readiness means warm: Triton marks the model ready after initialize
        self.logger.log_info(
            f"reranker ready on {reranker.device} ({reranker.dtype}, {reranker.kernel.name} attention); exits: "
            f"layers {list(reranker.spec.layer_indices)} x widths {list(reranker.spec.dim_indices)}; "
            f"warmed up {warmed} exits in {time.perf_counter() - started:.2f} s"
        )

    def execute(self, requests):
        with self.metrics.executing(len(requests), step="reranker", instance=self.instance):
            return self._answer(requests)

    def _answer(self, requests):
        arrived = time.monotonic()  # a direct call's deadline counts from here
        responses = [None] * len(requests)
        accepted, prepared = [], []
        for position, request in enumerate(requests):
            if request.is_cancelled():  # the client gave up while this waited in the queue
                self.metrics.add("mmrerank_requests_cancelled_total", 1)
                responses[position] = _error("request cancelled", pb_utils.TritonError.CANCELLED)
                continue
            try:
                prepared.append(self._prepare(request, arrived))
                accepted.append(position)
            except InvalidRequestError as error:
                self.metrics.add("mmrerank_requests_rejected_total", 1, step="reranker", reason=error.reason)
                responses[position] = _error(str(error), pb_utils.TritonError.INVALID_ARG)
            except Exception:  # noqa: BLE001 - this request alone fails; the others are still scored
                self.logger.log_error(f"reranker failed to read a request:\n{traceback.format_exc()}")
                responses[position] = _error("internal error while reading the request", pb_utils.TritonError.INTERNAL)
        if not prepared:
            return responses
        try:
            scored = self.step.score(prepared)
        except Exception:  # noqa: BLE001 - answer every request rather than fail the batch
            self.logger.log_error(f"scoring failed:\n{traceback.format_exc()}")
            for position in accepted:
                responses[position] = _error("internal error while scoring", pb_utils.TritonError.INTERNAL)
            return responses
        for index, position in enumerate(accepted):
            if index in scored.abandoned:
                responses[position] = ABANDONED[scored.abandoned[index]]()
                continue
            responses[position] = pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor("scores", scored.scores[index].reshape(1, -1)),
                    pb_utils.Tensor("exit_layer", scored.exit_layers[index].reshape(1, -1)),
                ]
            )
        self._record(prepared, scored)
        return responses

    def _prepare(self, request, arrived):
        """The request's rows with the options the tokenizer step validated, or, called directly, its own."""
        ids = pb_utils.get_input_tensor_by_name(request, "_input_ids").as_numpy()
        lengths = pb_utils.get_input_tensor_by_name(request, "_lengths").as_numpy()
        options = pb_utils.get_input_tensor_by_name(request, "_options")
        if options is None:
            parameters = parse_parameters(request.parameters())
            chosen, deadline = self.step.direct_options(parameters, lengths.size, ids.size, arrived)
        else:
            chosen, deadline = RerankOptions.from_array(options.as_numpy().reshape(-1)), _deadline(request)
        return self.step.prepare(ids, lengths, chosen, deadline, request.request_id())

    def _record(self, prepared, scored):
        """Metrics after the answers are built (each update is best effort: it never changes an answer)."""
        for index, request in enumerate(prepared):
            if index in scored.abandoned:
                continue
            exit_labels = {"layer": request.options.layer, "dim": request.options.dim}
            self.metrics.add("mmrerank_pairs_scored_total", len(request.rows), **exit_labels)
            self.metrics.add("mmrerank_tokens_scored_total", sum(len(row) for row in request.rows), **exit_labels)
        self.metrics.add("mmrerank_tokens_processed_total", scored.tokens_processed)
        for reason in scored.abandoned.values():
            self.metrics.add("mmrerank_requests_abandoned_total", 1, reason=reason)
        for batch in scored.batches:
            self.metrics.add("mmrerank_micro_batches_total", 1, layer=batch.layer)


def _deadline(request):
    """The monotonic instant the tokenizer step set beside `_options` (none when absent)."""
    tensor = pb_utils.get_input_tensor_by_name(request, "_deadline")
    return NO_DEADLINE if tensor is None else float(tensor.as_numpy().reshape(-1)[0])


ABANDONED = {
    "deadline": lambda: _error(
        "the request passed its deadline (deadline_ms) before it was scored; the server stopped its work",
        pb_utils.TritonError.CANCELLED,
    ),
    "cancelled": lambda: _error(
        "the client went away before the request was scored; the server stopped its work",
        pb_utils.TritonError.CANCELLED,
    ),
    "shutdown": lambda: _error(
        "the server is shutting down and stopped this request before it was scored; retry on another replica",
        pb_utils.TritonError.UNAVAILABLE,
    ),
}


def _error(message, code):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
