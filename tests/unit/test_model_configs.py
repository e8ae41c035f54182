"""The Triton model configs parse as ModelConfig protobufs and agree with each other and the library."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from mmrerank.launch.configs import config_files, schema_caps
from mmrerank_client.schema import MODEL_CAPS, PARAMETER_NAMES, VARIANT_CAPS

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
RERANKER_VARIANTS = sorted((REPOSITORY / "reranker" / "configs").glob("*.pbtxt"))


def load(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_every_model_has_a_loadable_version():
    for model in ("rerank", "tokenizer", "reranker"):
        assert load(REPOSITORY / model / "config.pbtxt").name == model
        assert (REPOSITORY / model / "1").is_dir()
    assert (REPOSITORY / "rerank" / "1" / ".gitkeep").is_file()


def test_the_ensemble_wires_the_public_contract():
    ensemble = load(REPOSITORY / "rerank" / "config.pbtxt")
    assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.input] == [
        ("query", model_config_pb2.TYPE_STRING, [1]),
        ("documents", model_config_pb2.TYPE_STRING, [-1]),
    ]
    assert [(t.name, list(t.dims)) for t in ensemble.output] == [
        ("scores", [-1]),
        ("num_tokens", [-1]),
        ("truncated", [-1]),
        ("exit_layer", [-1]),
    ]
    steps = [step.model_name for step in ensemble.ensemble_scheduling.step]
    assert steps == ["tokenizer", "reranker"]


def test_token_ids_travel_ragged_between_the_steps():
    tokenizer = load(REPOSITORY / "tokenizer" / "config.pbtxt")
    produced = {t.name: list(t.dims) for t in tokenizer.output}
    assert produced["_input_ids"] == [1, -1] and produced["_lengths"] == [1, -1]
    assert produced["_deadline"] == [1, 1] and produced["_options"] == [1, 8]
    for path in [REPOSITORY / "reranker" / "config.pbtxt", *RERANKER_VARIANTS]:
        reranker = load(path)
        assert [(t.name, list(t.dims), t.allow_ragged_batch, t.optional) for t in reranker.input] == [
            ("_input_ids", [-1], True, False),
            ("_lengths", [-1], True, False),
            ("_deadline", [1], False, True),  # optional: a direct caller need not set one
            ("_options", [8], False, True),  # optional: a direct caller sends parameters instead
        ], path.name
    ensemble = load(REPOSITORY / "rerank" / "config.pbtxt")
    tokens, scoring = ensemble.ensemble_scheduling.step
    assert set(tokens.output_map) >= {"_input_ids", "_lengths", "_deadline", "_options"}
    assert set(scoring.input_map) == {"_input_ids", "_lengths", "_deadline", "_options"}


def test_every_config_holds_the_schemas_caps_so_a_plain_tritonserver_serves_them():
    """Read with Triton's own config parser: what a `tritonserver` on this repository would serve."""
    for model, names in MODEL_CAPS.items():
        for variant, path in config_files(REPOSITORY, model):
            held = {key: load(path).parameters[key].string_value for key in names}
            assert held == schema_caps(model, variant), path
    assert 0 < VARIANT_CAPS[None].default_deadline_ms < VARIANT_CAPS["cpu"].default_deadline_ms


def test_the_tokenizer_variants_differ_only_in_the_default_deadline():
    default, cpu = (
        load(REPOSITORY / "tokenizer" / "config.pbtxt"),
        load(REPOSITORY / "tokenizer" / "configs" / "cpu.pbtxt"),
    )
    for config in (default, cpu):
        config.parameters["default_deadline_ms"].string_value = ""
    assert default == cpu


def test_every_model_config_parameter_is_documented():
    table = (REPOSITORY.parent / "docs" / "configuration.md").read_text()
    configs = [path for model in ("tokenizer", "reranker") for path in (REPOSITORY / model).rglob("*.pbtxt")]
    keys = {key for path in configs for key in load(path).parameters}
    assert keys >= {"checkpoint", "max_documents", "max_batch_tokens", "attention"}
    for key in sorted(keys):
        assert f"| `{key}` |" in table, f"docs/configuration.md lacks the config parameter {key!r}"


@pytest.mark.parametrize("variant", RERANKER_VARIANTS, ids=lambda p: p.stem)
def test_reranker_variants_differ_only_in_placement_and_budget(variant):
    default, other = load(REPOSITORY / "reranker" / "config.pbtxt"), load(variant)
    for config in (default, other):
        config.ClearField("instance_group")
        config.parameters["max_batch_tokens"].string_value = ""
        config.parameters["default_deadline_ms"].string_value = ""
    assert default == other


def test_reranker_batches_dynamically_with_a_bounded_queue():
    config = load(REPOSITORY / "reranker" / "config.pbtxt")
    assert config.max_batch_size >= 64
    assert config.dynamic_batching.default_queue_policy.max_queue_size > 0
    assert config.dynamic_batching.default_queue_policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
    assert config.input[0].allow_ragged_batch
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    cpu = load(REPOSITORY / "reranker" / "configs" / "cpu.pbtxt")
    assert cpu.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_the_tokenizer_runs_on_cpu_and_documents_every_parameter():
    tokenizer = load(REPOSITORY / "tokenizer" / "config.pbtxt")
    assert all(group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU for group in tokenizer.instance_group)
    readme = (REPOSITORY.parent / "README.md").read_text()
    for parameter in PARAMETER_NAMES:
        assert f"| `{parameter}` |" in readme
