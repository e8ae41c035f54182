"""The loader: both head formats, and a clear error for every way a checkpoint can be wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mmrerank.layout import CheckpointError, CheckpointLayout
from mmrerank.model import MatryoshkaReranker
from mmrerank.model.weights import load_checkpoint


@pytest.fixture()
def copy(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    target = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, target)
    return target


def test_loads_the_published_layout(tiny_checkpoint):
    checkpoint = load_checkpoint(tiny_checkpoint)
    assert checkpoint.spec.layer_indices == (1, 2, 4, 6)
    assert checkpoint.spec.dim_indices == (8, 16, 32, 64, 128)
    assert checkpoint.encoder_config.local_rope_theta == 160_000.0
    assert all(t.dtype == torch.bfloat16 for t in checkpoint.encoder_state.values())
    assert all(t.dtype == torch.float32 for t in checkpoint.head_state.values())


def test_safetensors_heads_score_like_pickled_heads(copy, reranker):
    heads = torch.load(copy / "classification_heads.pt", weights_only=True)
    (copy / "classification_heads.pt").unlink()
    save_file(heads, str(copy / "classification_heads.safetensors"))
    other = MatryoshkaReranker.from_pretrained(copy, device="cpu")
    ids, lengths = np.array([2, 40, 50, 1, 60, 70, 1]), [7]
    for layer in reranker.spec.layer_indices:
        assert other.logits(ids, lengths, layer, [32]) == pytest.approx(reranker.logits(ids, lengths, layer, [32]))


def test_heads_with_a_training_prefix_are_accepted(copy):
    heads = torch.load(copy / "classification_heads.pt", weights_only=True)
    torch.save({"layer_heads." + k: v for k, v in heads.items()}, copy / "classification_heads.pt")
    assert load_checkpoint(copy).head_state.keys() == heads.keys()


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "matryoshka_config.json", "tokenizer.json"])
def test_a_missing_file_is_named(copy, name):
    (copy / name).unlink()
    with pytest.raises(CheckpointError, match=f"lacks {name}"):
        load_checkpoint(copy)


def test_missing_heads_are_reported(copy):
    (copy / "classification_heads.pt").unlink()
    with pytest.raises(CheckpointError, match="it lacks classification_heads.safetensors or classification_heads.pt"):
        load_checkpoint(copy)


def test_a_wrong_shaped_encoder_tensor_is_named(copy):
    state = load_file(str(copy / "model.safetensors"))
    state["layers.2.mlp.Wo.weight"] = state["layers.2.mlp.Wo.weight"][:, :10].contiguous()
    save_file(state, str(copy / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"'layers.2.mlp.Wo.weight' has shape \(128, 10\), expected \(128, 192\)"):
        load_checkpoint(copy)


def test_a_missing_encoder_tensor_is_named(copy):
    state = load_file(str(copy / "model.safetensors"))
    del state["final_norm.weight"]
    save_file(state, str(copy / "model.safetensors"))
    with pytest.raises(CheckpointError, match="lacks 1 tensor.*'final_norm.weight'"):
        load_checkpoint(copy)


def test_a_wrong_shaped_head_is_named(copy):
    heads = torch.load(copy / "classification_heads.pt", weights_only=True)
    heads["4.32.0.weight"] = torch.zeros(16, 31)
    torch.save(heads, copy / "classification_heads.pt")
    with pytest.raises(CheckpointError, match=r"'4.32.0.weight' has shape \(16, 31\), expected \(16, 32\)"):
        load_checkpoint(copy)


@pytest.mark.parametrize("key", ["layer_indices", "dim_indices"])
def test_a_config_without_matryoshka_lists_is_refused(copy, key):
    path = copy / "matryoshka_config.json"
    config = json.loads(path.read_text())
    del config[key]
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"must list '{key}'"):
        load_checkpoint(copy)


def test_exit_layers_beyond_the_encoder_are_refused(copy):
    path = copy / "matryoshka_config.json"
    path.write_text(json.dumps({"layer_indices": [2, 9], "dim_indices": [8]}))
    with pytest.raises(CheckpointError, match=r"layer_indices \[9\] are outside 1..6"):
        load_checkpoint(copy)


def edit_json(path: Path, **changes) -> None:
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_rope_scaling_is_refused(copy):
    edit_json(copy / "config.json", rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(CheckpointError, match="rope_scaling is set, but this reranker was trained with plain RoPE"):
        load_checkpoint(copy)


@pytest.mark.parametrize(
    ("rope_parameters", "named"),
    [
        ({"full_attention": {"rope_type": "default", "rope_theta": 160000.0},
          "sliding_attention": {"rope_type": "yarn", "rope_theta": 160000.0, "factor": 4.0}}, "sliding_attention"),
        ({"rope_type": "yarn", "rope_theta": 160000.0, "factor": 4.0}, "rope_parameters"),
    ],
)  # fmt: skip
def test_yarn_in_the_transformers_5_form_is_refused(copy, rope_parameters, named):
    edit_json(copy / "config.json", rope_parameters=rope_parameters)
    with pytest.raises(CheckpointError, match=f"config.json: {named} has rope_type 'yarn'.*plain RoPE"):
        CheckpointLayout.open(copy)


def test_default_rope_parameters_in_the_transformers_5_form_are_read(copy):
    edit_json(
        copy / "config.json",
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 80000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 20000.0}},
    )  # fmt: skip
    config = CheckpointLayout.open(copy).encoder_config
    assert (config.global_rope_theta, config.local_rope_theta) == (80000.0, 20000.0)


@pytest.mark.parametrize(
    ("key", "value", "needs"),
    [("pooling_strategy", "mean", "'cls'"), ("has_final_norm", False, "True"), ("num_layers", 22, "6"),
     ("hidden_size", 768, "128")],
)  # fmt: skip
def test_matryoshka_fields_must_agree_with_the_encoder(copy, key, value, needs):
    edit_json(copy / "matryoshka_config.json", **{key: value})
    with pytest.raises(CheckpointError, match=f"matryoshka_config.json: {key} is .*, but the encoder in config.json "
                       f"needs {needs}"):  # fmt: skip
        CheckpointLayout.open(copy)


def test_the_layout_reads_the_checkpoints_name_and_files(tiny_checkpoint):
    layout = CheckpointLayout.open(str(tiny_checkpoint))
    assert layout.directory == tiny_checkpoint.resolve()
    assert layout.heads_file.name == "classification_heads.pt"
    assert layout.tokenizer_file == layout.directory / "tokenizer.json"
    assert layout.spec.model_name == "demo-tiny"


def test_a_config_without_local_theta_uses_the_global_one(copy):
    path = copy / "config.json"
    config = json.loads(path.read_text())
    del config["local_rope_theta"]
    path.write_text(json.dumps(config))
    assert load_checkpoint(copy).encoder_config.local_rope_theta == 160_000.0


def test_a_missing_directory_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_an_unreachable_hub_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="could not fetch 'example-org/no-such-model'.*local directory") as error:
        load_checkpoint("example-org/no-such-model")
    assert "\n" not in str(error.value)
