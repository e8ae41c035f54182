"""Triton adapter of the tokenizer step: `query` + `documents` -> ragged token tensors, per-request errors."""

import json
import time
import traceback

import numpy as np
import triton_python_backend_utils as pb_utils

from mmrerank.layout import CheckpointLayout
from mmrerank.serving.contract import RequestRefused, parse_parameters
from mmrerank.serving.deadlines import CancelNotices
from mmrerank.serving.metrics import Metrics
from mmrerank.serving.settings import checkpoint_location, integer_setting, model_parameters
from mmrerank.serving.tokenizer_step import TokenizerStep
from mmrerank_client.schema import tagged


class TritonPythonModel:
    """Encodes each request on its own; a bad request gets INVALID_ARG, the others are unaffected."""

    def initialize(self, args):
        settings = model_parameters(json.loads(args["model_config"]))
        self.step = TokenizerStep(
            CheckpointLayout.open(checkpoint_location(settings)),
            max_documents=integer_setting(settings, "max_documents"),
            max_tokens_per_pair=integer_setting(settings, "max_tokens_per_pair"),
            max_text_bytes=integer_setting(settings, "max_text_bytes"),
            max_request_tokens=integer_setting(settings, "max_request_tokens"),
            max_request_bytes=integer_setting(settings, "max_request_bytes"),
            default_deadline_ms=integer_setting(settings, "default_deadline_ms", minimum=0) or None,
        )
        self.cancels = CancelNotices.from_environment()
        self.logger = pb_utils.Logger
        self.metrics = Metrics(pb_utils)
        self.instance = args.get("model_instance_name", "tokenizer")
        self.metrics.report_executing(0, step="tokenizer", instance=self.instance)  # present before any request

    def execute(self, requests):
        arrived = time.monotonic()  # deadlines count from here
        with self.metrics.executing(len(requests), step="tokenizer", instance=self.instance):
            return [self._respond(request, arrived) for request in requests]

    def _respond(self, request, arrived):
        if self.cancels.cancelled(request.request_id()):  # the front's client left while this waited
            self.cancels.forget(request.request_id())  # it ends here: the reranker never sees it
            self.metrics.add("mmrerank_requests_abandoned_total", 1, reason="cancelled")
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(tagged("cancelled", "the client went away before the request was tokenized"),
                                           pb_utils.TritonError.CANCELLED)
            )  # fmt: skip
        try:
            tokenized = self.step.run(
                pb_utils.get_input_tensor_by_name(request, "query").as_numpy(),
                pb_utils.get_input_tensor_by_name(request, "documents").as_numpy(),
                parse_parameters(request.parameters()),
                arrived,
            )
        except RequestRefused as error:
            self.metrics.add("mmrerank_requests_rejected_total", 1, step="tokenizer", reason=error.reason)
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(error.wire_message(), pb_utils.TritonError.INVALID_ARG)
            )
        except Exception:  # noqa: BLE001 - one request's failure must not fail the batch
            self.logger.log_error(f"tokenizer failed on a request:\n{traceback.format_exc()}")
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError("internal error while tokenizing", pb_utils.TritonError.INTERNAL)
            )
        encoded = tokenized.pairs
        self.metrics.add("mmrerank_documents_truncated_total", int(encoded.truncated.sum()))
        # One batch row per request: all pairs' ids end to end, the length of each pair, the deadline,
        # and the options as validated here (the reranker trusts them and parses nothing again).
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("_input_ids", encoded.input_ids.reshape(1, -1)),
                pb_utils.Tensor("_lengths", encoded.lengths.reshape(1, -1)),
                pb_utils.Tensor("_deadline", np.array([[tokenized.deadline]], dtype=np.float64)),
                pb_utils.Tensor("_options", tokenized.options.to_array().reshape(1, -1)),
                pb_utils.Tensor("num_tokens", encoded.lengths),
                pb_utils.Tensor("truncated", encoded.truncated),
            ]
        )
