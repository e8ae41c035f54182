"""Triton adapter of the reranker step: requests join a pool scored one shared micro-batch at a time.

`execute` validates each request, hands it to the scoring thread and returns; the thread answers
each request through its response sender once its pairs are scored (Triton's non-decoupled
response-sender mode: exactly one final response per request), so the instance takes new
requests while earlier ones run.
"""

import json
import os
import time
import traceback

import torch
import triton_python_backend_utils as pb_utils

from mmrerank.layout import CheckpointLayout
from mmrerank.model import MatryoshkaReranker
from mmrerank.serving.contract import RequestOptions, RequestRefused, parse_parameters
from mmrerank.serving.core_share import CoreShare
from mmrerank.serving.deadlines import NO_DEADLINE, CancelNotices, ShutdownNotice
from mmrerank.serving.metrics import SIZE_CLASSES, Metrics, size_class
from mmrerank.serving.pair_tokenizer import PairTokenizer
from mmrerank.serving.reranker_step import DirectCaps, RerankerStep
from mmrerank.serving.scoring_loop import ScoringLoop
from mmrerank.serving.settings import (
    PRECISIONS,
    SettingsError,
    checkpoint_location,
    cpu_threads_per_instance,
    integer_setting,
    model_parameters,
)
from mmrerank_client.schema import tagged


def _device(args):
    if args["model_instance_kind"] == "GPU":
        return torch.device("cuda", int(args["model_instance_device_id"]))
    return torch.device("cpu")


def _precision(name):
    if name not in PRECISIONS:
        raise SettingsError(f"model config parameter 'precision' must be one of {list(PRECISIONS)}, got {name!r}")
    return name


class TritonPythonModel:
    """Validates each request, scores it in the instance's pool, answers it when its pairs are done."""

    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        settings = model_parameters(model_config)
        device = _device(args)
        # CPU instances share the cores instead of each taking them all (here and on the scoring thread)
        cores = len(os.sched_getaffinity(0))
        threads = cpu_threads_per_instance(model_config, cores) if device.type == "cpu" else None
        if threads is not None:
            torch.set_num_threads(threads)
        layout = CheckpointLayout.open(checkpoint_location(settings))
        reranker = MatryoshkaReranker.from_pretrained(
            layout,
            device=device,
            precision=_precision(settings.get("precision", "auto") or "auto"),
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
                max_tokens_per_pair=integer_setting(settings, "max_tokens_per_pair"),
                min_pair_tokens=PairTokenizer.from_file(layout.tokenizer_file).min_max_length,
            ),
        )
        self.logger = pb_utils.Logger
        self.metrics = Metrics(pb_utils)
        self.instance = args.get("model_instance_name", "reranker")
        self._handing_over = 0
        self.loop = None  # the scoring thread starts after the warm-up
        self._report_in_flight()  # present before any request
        for size, _ in SIZE_CLASSES:
            self.metrics.declare("mmrerank_request_wait_seconds", size=size)
        started = time.perf_counter()
        warmed = self.step.warm_up()  # readiness means warm: Triton marks the model ready after initialize
        self.loop = ScoringLoop(
            self.step,
            max_in_flight=integer_setting(settings, "max_requests_in_flight"),
            threads=threads,
            share=CoreShare.from_environment(args.get("model_instance_name", ""), cores) if threads else None,
            on_batch=self._record_batch,
            on_failure=lambda error: self.logger.log_error(
                "scoring failed:\n" + "".join(traceback.format_exception(error))
            ),
        )
        self.logger.log_info(
            f"reranker ready on {reranker.device} ({torch.get_num_threads()} threads), precision "
            f"{reranker.precision.name} ({reranker.precision.reason}), {reranker.kernel.name} attention; exits: "
            f"layers {list(reranker.spec.layer_indices)} x widths {list(reranker.spec.dim_indices)}; "
            f"warmed up {warmed} exits in {time.perf_counter() - started:.2f} s"
        )

    def execute(self, requests):
        arrived = time.monotonic()  # a direct call's deadline counts from here
        # Requests of this call not yet in the pool: `submit` may wait for room, and they count as in flight.
        self._handing_over = len(requests)
        self._report_in_flight()
        for request in requests:
            self._hand_over(request, arrived)
            self._handing_over -= 1
            self._report_in_flight()
        return None

    def _hand_over(self, request, arrived):
        """Answer `request` at once if it cannot be scored, else submit it to the scoring thread."""
        sender = request.get_response_sender()
        if request.is_cancelled():  # the client gave up while this waited in the queue
            self.metrics.add("mmrerank_requests_cancelled_total", 1)
            _send(sender, _error(tagged("cancelled", "request cancelled"), pb_utils.TritonError.CANCELLED))
            return
        try:
            prepared = self._prepare(request, arrived)
        except RequestRefused as error:
            self.metrics.add("mmrerank_requests_rejected_total", 1, step="reranker", reason=error.reason)
            _send(sender, _error(error.wire_message(), pb_utils.TritonError.INVALID_ARG))
            return
        except Exception:  # noqa: BLE001 - this request alone fails; the others are still scored
            self.logger.log_error(f"reranker failed to read a request:\n{traceback.format_exc()}")
            _send(sender, _error("internal error while reading the request", pb_utils.TritonError.INTERNAL))
            return
        self.loop.submit(prepared, lambda outcome: self._answer(sender, prepared, outcome))

    def finalize(self):
        self.loop.stop()

    def _prepare(self, request, arrived):
        """The request's rows with the options the tokenizer step validated, or, called directly, its own."""
        ids = pb_utils.get_input_tensor_by_name(request, "_input_ids").as_numpy()
        lengths = pb_utils.get_input_tensor_by_name(request, "_lengths").as_numpy()
        options = pb_utils.get_input_tensor_by_name(request, "_options")
        if options is None:
            parameters = parse_parameters(request.parameters())
            chosen, deadline = self.step.direct_options(parameters, lengths.size, ids.size, arrived)
        else:
            chosen, deadline = RequestOptions.from_array(options.as_numpy().reshape(-1)), _deadline(request)
        return self.step.prepare(ids, lengths, chosen, deadline, request.request_id())

    def _answer(self, sender, request, outcome):
        """On the scoring thread: send the request's one response, then count it (metrics never change an answer)."""
        if outcome.abandoned:
            response = ABANDONED[outcome.abandoned]()
        else:
            response = pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor("scores", outcome.scores.reshape(1, -1)),
                    pb_utils.Tensor("exit_layer", outcome.exit_layers.reshape(1, -1)),
                ]
            )
        try:
            _send(sender, response)
        except Exception:  # noqa: BLE001 - a response that cannot be sent fails that request alone
            self.logger.log_error(f"reranker could not send a response:\n{traceback.format_exc()}")
        self._report_in_flight()
        tokens = sum(len(row) for row in request.rows)
        self.metrics.observe("mmrerank_request_wait_seconds", outcome.waited, size=size_class(tokens))
        if outcome.abandoned:
            self.metrics.add("mmrerank_requests_abandoned_total", 1, reason=outcome.abandoned)
            return
        exit_labels = {"layer": request.options.layer, "dim": request.options.dim}
        self.metrics.add("mmrerank_pairs_scored_total", len(request.rows), **exit_labels)
        self.metrics.add("mmrerank_tokens_scored_total", tokens, **exit_labels)

    def _record_batch(self, batch):
        self.metrics.add("mmrerank_tokens_processed_total", self.step.tokens_processed(batch))
        self.metrics.add("mmrerank_micro_batches_total", 1, layer=batch.layer)

    def _report_in_flight(self):
        """Requests this instance holds: in its pool, or in an `execute` that waits to hand them over."""
        in_pool = self.loop.in_flight if self.loop is not None else 0
        self.metrics.report_executing(in_pool + self._handing_over, step="reranker", instance=self.instance)


def _deadline(request):
    """The monotonic instant the tokenizer step set beside `_options` (none when absent)."""
    tensor = pb_utils.get_input_tensor_by_name(request, "_deadline")
    return NO_DEADLINE if tensor is None else float(tensor.as_numpy().reshape(-1)[0])


ABANDONED = {
    "deadline": lambda: _error(
        tagged(
            "deadline",
            "the request passed its deadline (deadline_ms) before it was scored; the server stopped its work",
        ),
        pb_utils.TritonError.CANCELLED,
    ),
    "cancelled": lambda: _error(
        tagged("cancelled", "the client went away before the request was scored; the server stopped its work"),
        pb_utils.TritonError.CANCELLED,
    ),
    "shutdown": lambda: _error(
        tagged(
            "shutdown",
            "the server is shutting down and stopped this request before it was scored; retry on another replica",
        ),
        pb_utils.TritonError.UNAVAILABLE,
    ),
    "error": lambda: _error("internal error while scoring", pb_utils.TritonError.INTERNAL),
}


def _error(message, code):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


def _send(sender, response):
    sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
