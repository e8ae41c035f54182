"""Request and response shapes of the rerank API front: Cohere/Jina (`/v1/rerank`, `/v2/rerank`) and TEI (`/rerank`).

Unknown fields are refused, as the Triton path refuses unknown parameters, and types are strict
as there ("2" is not an integer, "yes" not a boolean); integers are bounded to what a request
parameter can carry (64 bits) and text must be valid Unicode (no lone surrogates). The schema's
request parameters (`mmrerank_client.schema.PARAMETERS`) are optional fields of every route, made
from it, and pass through to the `rerank` model; `truncate` each route defines with its own default.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, field_validator

from mmrerank_client.schema import PARAMETERS, Parameter


def valid_unicode(text: str) -> str:
    """`text` when it encodes as UTF-8; JSON escapes of UTF-16 halves can carry lone surrogates, which do not."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"text is not valid Unicode (a lone surrogate at character {error.start})") from None
    return text


Text = Annotated[str, AfterValidator(valid_unicode)]
# A request parameter travels as a 64-bit integer; the server then checks the value itself.
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
STRICT = ConfigDict(extra="forbid", strict=True)


class Document(BaseModel):
    """A document given as an object (Cohere v1, Jina): its `text` is ranked; other fields (a title...) are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)
    text: Text


def passthrough_field(parameter: Parameter) -> tuple[Any, Any]:
    """A request parameter as an optional pydantic field: its schema type, its fixed bounds, its description."""
    if parameter.kind is bool:
        return bool | None, Field(default=None, description=parameter.doc)
    low = -(2**63) if parameter.minimum is None else parameter.minimum
    high = 2**63 - 1 if parameter.maximum is None else parameter.maximum
    return int | None, Field(default=None, ge=low, le=high, description=parameter.doc)


PASSTHROUGH = tuple(parameter.name for parameter in PARAMETERS if parameter.every_route)


class PassthroughBase(BaseModel):
    """What every route's request shares: the `rerank` model's request parameters (fields made from the schema)."""

    model_config = STRICT

    def parameters(self) -> dict[str, Any]:
        """The fields that were given, as Triton request parameters."""
        return {name: value for name in PASSTHROUGH if (value := getattr(self, name)) is not None}


Passthrough = create_model(
    "Passthrough",
    __base__=PassthroughBase,
    __doc__="The `rerank` model's own request parameters, accepted by every route.",
    **{parameter.name: passthrough_field(parameter) for parameter in PARAMETERS if parameter.every_route},
)


class CohereV2Request(Passthrough):
    """Cohere v2 (`ClientV2.rerank`): `{model, query, documents, top_n, max_tokens_per_doc}`."""

    model: Text | None = None
    query: Text
    documents: list[Text | Document] = Field(min_length=1)
    top_n: int | None = Field(default=None, ge=1, le=2**63 - 1)
    max_tokens_per_doc: int | None = Field(default=None, ge=1, le=2**63 - 1)
    rank_fields: list[str] | None = None  # Cohere v1 (structured documents); only "text" is meaningful here
    priority: Int64 | None = None  # Cohere's scheduling hint; accepted and not used
    truncate: bool | None = None

    @field_validator("rank_fields")
    @classmethod
    def _only_text(cls, value: list[str] | None) -> list[str] | None:
        if value not in (None, [], ["text"]):
            raise ValueError("only the 'text' field of a document is ranked")
        return value

    def texts(self) -> list[str]:
        """The documents as plain strings."""
        return [document if isinstance(document, str) else document.text for document in self.documents]


class CohereRequest(CohereV2Request):
    """Cohere v1 / Jina: the v2 shape plus `return_documents`."""

    return_documents: bool = False


class TeiRequest(Passthrough):
    """text-embeddings-inference: `{query, texts, raw_scores, return_text, truncate, truncation_direction}`."""

    query: Text
    texts: list[Text] = Field(min_length=1)
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool = False
    truncation_direction: str = "right"

    @field_validator("truncation_direction")
    @classmethod
    def _right_only(cls, value: str) -> str:
        if value.lower() != "right":
            raise ValueError("only 'right' is supported: the document is cut at its end, never the query")
        return value


class CohereResult(BaseModel):
    """One ranked document."""

    index: int
    relevance_score: float
    document: Document | None = None


class Usage(BaseModel):
    """Tokens scored (query and document of every pair, special tokens included)."""

    total_tokens: int


class CohereResponse(BaseModel):
    """Results by descending score, with usage and Cohere's `meta`."""

    id: str
    model: str
    results: list[CohereResult]
    usage: Usage
    meta: dict[str, Any]


class TeiResult(BaseModel):
    """One ranked text (TEI)."""

    index: int
    score: float
    text: str | None = None


class ModelCard(BaseModel):
    """One entry of `GET /v1/models`."""

    id: str
    object: str = "model"
    owned_by: str = "mmrerank"
    layer_indices: list[int]
    dim_indices: list[int]
    max_tokens_per_pair: int
    max_documents: int


class ModelList(BaseModel):
    """`GET /v1/models`."""

    object: str = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    """Every error: a message that says what was wrong."""

    message: str
