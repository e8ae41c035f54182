"""The one schema of the `rerank` service: every request parameter, every cap, every refusal reason.

Pure Python, imported by each end: the server's parser (`mmrerank.serving.contract`), this
client's request builder, the rerank API front's request shapes, and the launcher and the model
configs (`python -m mmrerank.launch.configs` writes the caps below into every `.pbtxt`, and a test
proves the files hold them). Adding a parameter or changing a cap is one edit here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

MODEL = "rerank"
OUTPUTS = ("scores", "num_tokens", "truncated", "exit_layer")

# The longest deadline a request may ask for: a day.
MAX_DEADLINE_MS = 86_400_000


@dataclass(frozen=True)
class Parameter:
    """One request parameter: its type, its bounds, its default, and where the API front accepts it.

    `bound` names how the server checks the value: "exit_layer" and "head_width" (one of the
    checkpoint's), "shallower_exit_layer" (an exit above `layer`), "pair_tokens" (from the pair
    template's minimum to the server's `max_tokens_per_pair`), "range" (`minimum` to `maximum`),
    or "" for a boolean. `default` is the value when it is not sent; None means the server decides
    (named in `doc`).
    """

    name: str
    kind: type
    doc: str
    bound: str = ""
    default: int | bool | None = None
    minimum: int | None = None
    maximum: int | None = None
    cascade: bool = False  # one of the prefilter parameters, given all together
    every_route: bool = True  # the API front passes it through on every route (else a route defines it)


PARAMETERS: tuple[Parameter, ...] = (
    Parameter("layer", int, "exit layer; default the checkpoint's", "exit_layer"),
    Parameter("dim", int, "head width; default the checkpoint's", "head_width"),
    Parameter("normalize", bool, "sigmoid scores in [0, 1] (false: raw logits)", default=True),
    Parameter("max_length", int, "tokens per pair, special tokens included; default the server's cap", "pair_tokens"),
    Parameter(
        "truncate", bool, "cut long documents to max_length (false: refuse them)", default=True, every_route=False
    ),
    Parameter("prefilter_layer", int, "cascade: the shallower exit that scores every document", "shallower_exit_layer",
              cascade=True),
    Parameter("prefilter_dim", int, "cascade: the prefilter exit's width; default `dim`", "head_width", cascade=True),
    Parameter("prefilter_top_k", int, "cascade: documents continued to `layer`", "range", minimum=1, cascade=True),
    Parameter("deadline_ms", int, "milliseconds the client waits; past them the server stops the work; "
              "default the server's default_deadline_ms", "range", minimum=1, maximum=MAX_DEADLINE_MS),
)  # fmt: skip
PARAMETER_NAMES = tuple(parameter.name for parameter in PARAMETERS)
CASCADE_PARAMETERS = tuple(parameter.name for parameter in PARAMETERS if parameter.cascade)
BY_NAME = {parameter.name: parameter for parameter in PARAMETERS}


@dataclass(frozen=True)
class Prefilter:
    """A cascade's cheap stage: every document at (layer, dim), the best `top_k` continue to the request's exit."""

    layer: int
    dim: int
    top_k: int


@dataclass(frozen=True)
class Caps:
    """A deployment's limits, as the tokenizer step enforces them (the reranker too, when called directly)."""

    max_documents: int = 1000  # documents per request
    max_tokens_per_pair: int = 32768  # tokens of one pair (never past the checkpoint's positions)
    max_text_bytes: int = 4 * 2**20  # UTF-8 bytes of the query or of one document
    max_request_tokens: int = 262_144  # tokens of all of a request's pairs after truncation
    max_request_bytes: int = 32 * 2**20  # UTF-8 bytes of all of a request's texts
    default_deadline_ms: int = 60_000  # a request's deadline when it sends none; 0: none

    def parameters(self, names: tuple[str, ...] | None = None) -> dict[str, str]:
        """The caps (those named, else all) as config.pbtxt string parameters."""
        return {field.name: str(getattr(self, field.name)) for field in fields(self)
                if names is None or field.name in names}  # fmt: skip


# Which caps each model's configs hold: the tokenizer enforces them all; the reranker those that
# apply to a request sent to it directly (its pairs arrive as token ids).
MODEL_CAPS = {
    "tokenizer": tuple(field.name for field in fields(Caps)),
    "reranker": ("max_documents", "max_tokens_per_pair", "max_request_tokens", "default_deadline_ms"),
}
# The caps of each model config variant (configs/NAME.pbtxt; None: config.pbtxt). A CPU takes
# longer over the same request, so it waits longer for it.
VARIANT_CAPS: dict[str | None, Caps] = {None: Caps(), "gpu-2x": Caps(), "cpu": Caps(default_deadline_ms=120_000)}


@dataclass(frozen=True)
class FrontLimits:
    """The rerank API front's own limits (its command-line defaults, which the launcher passes on)."""

    timeout_seconds: float = 60.0  # per request, then 504; also the request's deadline
    max_body_bytes: int = 64 * 2**20  # larger bodies get 413
    max_header_bytes: int = 64 * 1024  # URL and headers of one request; more get 431
    max_connections: int = 1000  # open connections; more get 503
    cohere_max_tokens_per_doc: int = 4096  # Cohere's default `max_tokens_per_doc`


FRONT = FrontLimits()

# Why the server refused a request: the code it puts in front of its message, and what each means.
# The client turns a code into its exception class and the front into an HTTP status; neither reads
# the wording after the code.
REASONS = {
    "unknown_parameter": "a parameter this service does not know",
    "parameter_type": "a parameter of the wrong type",
    "parameter_value": "a parameter outside its bounds",
    "document_count": "no documents, or more than max_documents",
    "text_size": "the query or a document over max_text_bytes",
    "request_bytes": "the texts together over max_request_bytes",
    "request_tokens": "the pairs together over max_request_tokens",
    "not_utf8": "a text that is not UTF-8",
    "query_too_long": "a query that leaves no room for a document",
    "pair_too_long": "a pair over max_length with truncate=false",
    "bad_tensor": "input tensors that disagree (a direct call of an internal model)",
    "bad_parameters": "request parameters that are not a JSON object",
    "deadline": "the request passed its deadline; the server stopped its work",
    "cancelled": "the client went away; the server stopped its work",
    "shutdown": "the server is shutting down; retry on another replica",
}
REASON_TAG = re.compile(r"^\[(?P<reason>[a-z0-9_]+)\] ")


def tagged(reason: str, message: str) -> str:
    """A refusal's message as the server sends it: `[reason] message`."""
    if reason not in REASONS:
        raise ValueError(f"unknown refusal reason {reason!r}")
    return f"[{reason}] {message}"


def untagged(message: str) -> tuple[str | None, str]:
    """The reason code and the bare message of a server's refusal (None when it carries no code)."""
    match = REASON_TAG.match(message)
    if match is None or match["reason"] not in REASONS:
        return None, message
    return match["reason"], message[match.end() :]


def pair_token_cap(configured: int, positions: int) -> int:
    """Tokens one pair may hold, special tokens included: the configured cap, never past the model's positions."""
    return min(configured, positions)


def range_problem(name: str, value: int) -> str | None:
    """Why `value` is outside the fixed bounds of the parameter `name`, or None when it is within them."""
    parameter = BY_NAME[name]
    low, high = parameter.minimum, parameter.maximum
    if (low is None or value >= low) and (high is None or value <= high):
        return None
    if high is None:
        return f"parameter '{name}' must be at least {low}, got {value}"
    return f"parameter '{name}' must be between {low} and {high}, got {value}"


def deadline_ms(timeout_seconds: float) -> int:
    """A wait in seconds as the `deadline_ms` parameter: whole milliseconds, 1 to MAX_DEADLINE_MS."""
    return min(MAX_DEADLINE_MS, max(1, math.ceil(timeout_seconds * 1000)))
