"""Precisions: what `auto` picks for a processor, int8's exactness and batch invariance, every exit at each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mmrerank.launch.launcher import DEFAULT_DEMO_CHECKPOINT
from mmrerank.model import MatryoshkaReranker
from mmrerank.model.precision import (
    ACTIVATION_LEVELS,
    Int8Linear,
    choose_precision,
    cpu_features,
    int8_unavailable_reason,
)
from mmrerank.serving.settings import cpu_threads_per_instance

CPU = torch.device("cpu")
ZEN3 = frozenset({"sse4_2", "avx", "avx2", "fma"})
SAPPHIRE_RAPIDS = ZEN3 | {"avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}
INT8_RUNS = int8_unavailable_reason(CPU, cpu_features()) is None
needs_int8 = pytest.mark.skipif(not INT8_RUNS, reason="this host cannot run int8 GEMMs (no AVX2 or no fbgemm)")

# How far a pair's score may move when other pairs share its micro-batch, per precision, and why.
BATCH_TOLERANCE = {
    "fp32": 5e-5,  # the GEMMs sum in another order for another number of rows
    "int8": 1e-5,  # integer GEMMs are exact and each token has its own scale: only the fp32 parts reorder
    # bf16 keeps 8 significant bits: the GEMMs' other summation order for another number of rows
    # moves roundings of the hidden states, measured up to 0.026 here.
    "bf16": 0.1,
}


@pytest.mark.parametrize(
    ("device", "features", "expected"),
    [
        ("cpu", ZEN3, "int8"),
        ("cpu", SAPPHIRE_RAPIDS, "int8"),
        ("cpu", frozenset({"avx512_bf16"}), "bf16"),
        ("cpu", frozenset({"sse4_2", "avx"}), "fp32"),
        ("cpu", frozenset(), "fp32"),
        ("cuda", SAPPHIRE_RAPIDS, "bf16"),
    ],
)
def test_auto_picks_by_device_and_processor_features(device, features, expected):
    chosen = choose_precision("auto", torch.device(device), features)
    assert chosen.name == expected
    assert chosen.reason.startswith("auto: ")


def test_auto_says_whether_the_int8_units_have_vnni():
    assert "without VNNI" in choose_precision("auto", CPU, ZEN3).reason
    assert "with VNNI" in choose_precision("auto", CPU, SAPPHIRE_RAPIDS).reason


def test_an_explicit_precision_is_kept_and_int8_where_it_cannot_run_is_refused():
    assert choose_precision("bf16", CPU, frozenset()).name == "bf16"
    with pytest.raises(ValueError, match="AVX2"):
        choose_precision("int8", CPU, frozenset({"avx"}))
    with pytest.raises(ValueError, match="CPU only"):
        choose_precision("int8", torch.device("cuda"), SAPPHIRE_RAPIDS)
    with pytest.raises(ValueError, match="one of"):
        choose_precision("float32", CPU, ZEN3)


def test_cpu_features_reads_the_flags_line(tmp_path: Path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse avx2 avx512_vnni\n\n")
    assert cpu_features(cpuinfo) == {"fpu", "sse", "avx2", "avx512_vnni"}
    assert cpu_features(tmp_path / "missing") == frozenset()


def test_cpu_instances_share_the_cores():
    two_instances = {"instance_group": [{"kind": "KIND_CPU", "count": 2}]}
    assert cpu_threads_per_instance(two_instances, 2) == 1
    assert cpu_threads_per_instance(two_instances, 16) == 8
    assert cpu_threads_per_instance({"instance_group": [{"kind": "KIND_CPU", "count": 4}]}, 2) == 1
    assert cpu_threads_per_instance({}, 2) == 2


@needs_int8
def test_int8_linear_computes_the_exact_integer_product():
    """Per-token 7-bit activations times per-channel int8 weights, with no saturation, whatever the processor."""
    generator = torch.Generator().manual_seed(0)
    linear = nn.Linear(768, 512, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(512, 768, generator=generator) * 0.05)
    rows = torch.randn(37, 768, generator=generator) * 4
    rows[3] *= 100  # a token far louder than the others costs its neighbours no precision
    quantized = Int8Linear(linear).requires_grad_(False)
    stored, _ = torch.ops.quantized.linear_unpack(quantized._packed)
    weight_scale, weight_levels = stored.q_per_channel_scales(), stored.int_repr().double()
    token_scale = rows.abs().amax(dim=1, keepdim=True) / ACTIVATION_LEVELS
    exact = (torch.round(rows / token_scale).double() @ weight_levels.T) * weight_scale.double() * token_scale.double()
    with torch.no_grad():
        np.testing.assert_allclose(quantized(rows).double().numpy(), exact.numpy(), rtol=1e-5, atol=1e-4)
    alone = quantized(rows[5:6])
    assert torch.equal(alone, quantized(rows)[5:6])


def _neighbours(vocab: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(7)
    rows = [rng.integers(5, vocab, size=length) for length in (12, 900, 3, 260, 12, 100)]
    for row in rows:
        row[0] = 2
    return rows, [len(row) for row in rows]


@pytest.mark.parametrize("precision", ["fp32", pytest.param("int8", marks=needs_int8), "bf16"])
def test_a_pairs_score_does_not_depend_on_its_neighbours(tiny_checkpoint, precision):
    reranker = MatryoshkaReranker.from_pretrained(tiny_checkpoint, device="cpu", precision=precision)
    rows, lengths = _neighbours(reranker.config.vocab_size)
    for layer in reranker.spec.layer_indices:
        dims = [reranker.spec.dim_indices[i % len(reranker.spec.dim_indices)] for i in range(len(rows))]
        packed = reranker.logits(np.concatenate(rows), lengths, layer, dims)
        for i, row in enumerate(rows):
            alone = reranker.logits(row, [len(row)], layer, [dims[i]])
            np.testing.assert_allclose(packed[i], alone[0], atol=BATCH_TOLERANCE[precision], rtol=0)


@needs_int8
def test_an_int8_cascade_resumes_from_its_stored_hidden_states_unchanged(tiny_checkpoint):
    reranker = MatryoshkaReranker.from_pretrained(tiny_checkpoint, device="cpu", precision="int8")
    rows, lengths = _neighbours(reranker.config.vocab_size)
    ids = np.concatenate(rows)
    cheap, hidden = reranker.prefilter(ids, lengths, 2, [16] * len(rows))
    np.testing.assert_allclose(cheap, reranker.logits(ids, lengths, 2, [16] * len(rows)), atol=1e-5, rtol=0)
    kept = [hidden[i] for i in (3, 0)]  # resumed in another order and company
    deep = reranker.continue_logits(kept, 2, 6, [128, 64])
    expected = [reranker.logits(rows[3], [lengths[3]], 6, [128])[0], reranker.logits(rows[0], [lengths[0]], 6, [64])[0]]
    np.testing.assert_allclose(deep, expected, atol=1e-5, rtol=0)


@needs_int8
def test_int8_quantises_only_the_encoders_linear_layers(tiny_checkpoint):
    reranker = MatryoshkaReranker.from_pretrained(tiny_checkpoint, device="cpu", precision="int8")
    kinds = {type(module).__name__ for module in reranker.encoder.modules()}
    assert "Int8Linear" in kinds and "Linear" not in kinds
    assert reranker.encoder.embeddings.tok_embeddings.weight.dtype == torch.float32
    assert all(parameter.dtype == torch.float32 for parameter in reranker.heads.parameters())


@needs_int8
def test_int8_stays_near_fp32_on_the_trained_demo_at_every_exit():
    """The trained demo's scores move by at most 0.024 (measured); 0.06 leaves room for other processors."""
    from mmrerank.serving.pair_tokenizer import PairTokenizer

    fp32 = MatryoshkaReranker.from_pretrained(DEFAULT_DEMO_CHECKPOINT, device="cpu", precision="fp32")
    int8 = MatryoshkaReranker.from_pretrained(DEFAULT_DEMO_CHECKPOINT, device="cpu", precision="int8")
    tokenizer = PairTokenizer.from_file(Path(DEFAULT_DEMO_CHECKPOINT) / "tokenizer.json")
    documents = [
        "The river of Avenmoor reaches the sea at the northern delta.",
        "Der Fluss von Avenmoor fließt in den See im Süden.",
        "A recipe for bread with flour, water and salt.",
        "The harbour of Avenmoor was built in the year 1820 by fishermen.",
    ]
    encoded = tokenizer.encode("where does the river of Avenmoor reach the sea?", documents, 512)
    for layer in fp32.spec.layer_indices:
        for dim in fp32.spec.dim_indices:
            dims = [dim] * len(documents)
            exact = 1 / (1 + np.exp(-fp32.logits(encoded.input_ids, encoded.lengths, layer, dims)))
            close = 1 / (1 + np.exp(-int8.logits(encoded.input_ids, encoded.lengths, layer, dims)))
            assert np.abs(exact - close).max() < 0.06, (layer, dim)
