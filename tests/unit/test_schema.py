"""The schema is the one list of request parameters, caps and refusal reasons: every end reads it."""

from __future__ import annotations

import pytest

from mmrerank.api.shapes import CohereRequest, Passthrough, TeiRequest
from mmrerank.layout import MatryoshkaSpec
from mmrerank.serving.contract import RequestRefused, parse_options
from mmrerank_client import errors
from mmrerank_client._core import CALL_PARAMETERS, RerankOptions, ScoreOptions, build_request
from mmrerank_client.schema import PARAMETER_NAMES, PARAMETERS, REASONS, tagged, untagged

SPEC = MatryoshkaSpec(layer_indices=(2, 4), dim_indices=(8, 16))
# What a call takes besides the schema's parameters: how to wait, shape the answer and name the request.
CALL_ONLY = {"timeout", "top_n", "return_documents", "request_id"}


def test_the_clients_typed_options_are_the_schemas_parameters_and_the_call_options():
    typed = RerankOptions.__optional_keys__
    assert typed - CALL_ONLY == {parameter.name for parameter in CALL_PARAMETERS}
    assert set(ScoreOptions.__optional_keys__) <= typed
    assert {parameter.name for parameter in CALL_PARAMETERS} == set(PARAMETER_NAMES) - {"deadline_ms"}


def test_every_route_of_the_front_accepts_every_parameter_of_the_schema():
    assert set(Passthrough.model_fields) == {parameter.name for parameter in PARAMETERS if parameter.every_route}
    for shape in (CohereRequest, TeiRequest):  # each defines `truncate`, with its own default
        assert set(PARAMETER_NAMES) <= set(shape.model_fields), shape.__name__


@pytest.mark.parametrize("parameter", PARAMETERS, ids=lambda parameter: parameter.name)
def test_each_end_refuses_a_value_of_the_wrong_type_for_each_parameter(parameter):
    wrong = 1 if parameter.kind is bool else True
    with pytest.raises(RequestRefused, match=f"'{parameter.name}' must be") as refused:
        parse_options({parameter.name: wrong}, SPEC, max_length_cap=64, min_max_length=4)
    assert refused.value.reason == "parameter_type"
    if parameter.name != "deadline_ms":  # the client sends its timeout as the deadline
        with pytest.raises(errors.InvalidRequestError, match=f"'{parameter.name}' must be"):
            build_request("q", ["d"], {parameter.name: wrong})
    body = {"query": "q", "texts": ["d"], parameter.name: wrong}
    with pytest.raises(ValueError, match=parameter.name):
        TeiRequest.model_validate(body)


def test_the_fixed_bounds_of_the_schema_hold_at_the_server_and_the_front():
    for name, value in (("prefilter_top_k", 0), ("deadline_ms", 0), ("deadline_ms", 86_400_001)):
        parameters = {name: value, **({"prefilter_layer": 2} if name.startswith("prefilter") else {})}
        with pytest.raises(RequestRefused, match=f"'{name}' must be"):
            parse_options(parameters, SPEC, max_length_cap=64, min_max_length=4)
        with pytest.raises(ValueError, match=name):
            TeiRequest.model_validate({"query": "q", "texts": ["d"], name: value})


def test_a_refusal_carries_its_reason_whatever_its_wording():
    for reason in REASONS:
        assert untagged(tagged(reason, "any words [at all]")) == (reason, "any words [at all]")
    assert untagged("[not_a_reason] text") == (None, "[not_a_reason] text")
    assert untagged("no tag") == (None, "no tag")
    with pytest.raises(ValueError, match="unknown refusal reason"):
        RequestRefused("text", "made_up")


@pytest.mark.parametrize(
    ("reason", "kind"),
    [("pair_too_long", errors.PairTooLongError), ("parameter_value", errors.InvalidRequestError),
     ("deadline", errors.RerankTimeoutError), ("shutdown", errors.ServerUnavailableError)],
)  # fmt: skip
def test_the_client_classifies_by_reason_code_not_by_message(reason, kind):
    class Refusal(Exception):
        def status(self) -> str:
            return "StatusCode.INVALID_ARGUMENT"

        def message(self) -> str:
            return "in ensemble 'rerank', " + tagged(reason, "timed out, unavailable, not ready")

    error = errors.translate(Refusal())
    assert type(error) is kind and error.reason == reason
    assert str(error) == "timed out, unavailable, not ready"
