"""The in-process API: the model card's `Matryoshka2DReranker` on the packed, early-exit library.

Code written for the card migrates by changing one import:

    from mmrerank.model import Matryoshka2DReranker     # was: from train_rerank import Matryoshka2DReranker

    model = Matryoshka2DReranker.from_pretrained("path/or/hub-id")
    scores = model.compute_score(pairs, tokenizer, layer_idx=11, dim_idx=256, normalize=True)
    top = model.rerank(query, passages, top_k=2)

Scores equal the served ones for the same checkpoint, exit and precision: the same pair tokenizer (the
checkpoint's own, cutting the document and never the query) and the same `MatryoshkaReranker`. A
pair is capped at the encoder's full context unless `max_length` says otherwise (the card's code cut
at 512 tokens). Pairs run in micro-batches the server's planner cuts under a token budget, so 32
pairs of 32K tokens never share one forward pass.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

import numpy as np
import torch

from mmrerank.layout import CheckpointLayout
from mmrerank.model.heads import sigmoid
from mmrerank.model.precision import choose_precision
from mmrerank.model.reranker import MatryoshkaReranker, default_precision
from mmrerank.model.weights import Checkpoint, load_checkpoint
from mmrerank.serving.pair_tokenizer import PairTokenizer
from mmrerank.serving.planner import plan_micro_batches

# Tokens per micro-batch, padding included where the kernel pads (the GPU config's budget).
DEFAULT_BATCH_TOKENS = 65536


class Matryoshka2DReranker:
    """One checkpoint (tokenizer included) with the card's `compute_score` and `rerank`."""

    def __init__(self, layout: CheckpointLayout, reranker: MatryoshkaReranker, attention: str) -> None:
        self.layout = layout
        self.reranker = reranker
        self.attention = attention
        self.tokenizer = PairTokenizer.from_file(layout.tokenizer_file)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        device: str | torch.device | None = None,
        precision: str | None = None,
        attention: str = "auto",
    ) -> Matryoshka2DReranker:
        """Load a checkpoint directory or hub id: bf16 on a GPU, fp32 on the CPU unless `precision` says otherwise."""
        layout = CheckpointLayout.open(name_or_path)
        return cls(layout, MatryoshkaReranker.from_pretrained(layout, device, precision, attention), attention)

    @property
    def device(self) -> torch.device:
        """Where the encoder runs."""
        return self.reranker.device

    def eval(self) -> Matryoshka2DReranker:
        """The card calls it; inference is the only mode here."""
        return self

    def to(self, device: str | torch.device) -> Matryoshka2DReranker:
        """The same checkpoint on `device`, in that device's default precision when it changes.

        fp32 weights (the CPU default) move as they are; weights held at a lower precision are read
        from the checkpoint again, so the move never compounds their rounding.
        """
        target = torch.device(device)
        if target == self.device:
            return self
        reranker = self.reranker
        if reranker.precision.name == "fp32":
            checkpoint = Checkpoint(self.layout, reranker.encoder.state_dict(), reranker.heads.state_dict())
        else:
            checkpoint = load_checkpoint(self.layout)
        precision = choose_precision(default_precision(target), target)
        return Matryoshka2DReranker(
            self.layout, MatryoshkaReranker(checkpoint, target, precision, self.attention), self.attention
        )

    def compute_score(
        self,
        pairs: Sequence[tuple[str, str]] | Sequence[list[str]],
        tokenizer: object = None,
        layer_idx: int | None = None,
        dim_idx: int | None = None,
        normalize: bool = True,
        batch_size: int = 32,
        max_length: int | None = None,
        max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
    ) -> list[float]:
        """A score per (query, document) pair, in input order: sigmoid scores, or raw logits without `normalize`.

        `layer_idx` / `dim_idx` pick the exit (default: the deepest layer, the widest head). The
        `tokenizer` the card passes is accepted and not needed: the checkpoint's own encodes the pairs.
        Pairs run in micro-batches of at most `batch_size` pairs and `max_batch_tokens` tokens (a
        longer pair runs alone), cut as the server's planner cuts them.
        """
        spec = self.reranker.spec
        layer = spec.default_layer if layer_idx is None else layer_idx
        dim = spec.default_dim if dim_idx is None else dim_idx
        if dim not in spec.dim_indices:
            raise ValueError(f"dim_idx {dim} is not one of {list(spec.dim_indices)}")
        if batch_size < 1 or max_batch_tokens < 1:
            raise ValueError("batch_size and max_batch_tokens must be at least 1")
        rows = self._encode(pairs, max_length or self.reranker.config.max_position_embeddings)
        logits = np.empty(len(rows), dtype=np.float32)
        lengths = [len(row) for row in rows]
        planned = plan_micro_batches(lengths, [layer] * len(rows), max_batch_tokens, self.reranker.kernel.pads)
        for batch in planned:
            for start in range(0, len(batch.indices), batch_size):
                chosen = list(batch.indices[start : start + batch_size])
                ids = np.concatenate([rows[index] for index in chosen])
                logits[chosen] = self.reranker.logits(ids, [lengths[i] for i in chosen], layer, [dim] * len(chosen))
        scores = sigmoid(logits) if normalize else logits
        return [float(score) for score in scores]

    def rerank(
        self,
        query: str,
        passages: Sequence[str],
        top_k: int = 10,
        layer_idx: int | None = None,
        dim_idx: int | None = None,
    ) -> list[tuple[str, float]]:
        """The card's pipeline: the `top_k` passages with their sigmoid scores, best first."""
        scores = self.compute_score([(query, passage) for passage in passages], layer_idx=layer_idx, dim_idx=dim_idx)
        ranked = sorted(zip(passages, scores, strict=True), key=lambda pair: pair[1], reverse=True)
        return ranked[:top_k]

    def _encode(self, pairs: Sequence[Sequence[str]], max_length: int) -> list[np.ndarray]:
        """Token rows of every pair; consecutive pairs with one query are encoded together."""
        rows: list[np.ndarray] = []
        for query, group in itertools.groupby(pairs, key=lambda pair: pair[0]):
            rows += self.tokenizer.encode(query, [pair[1] for pair in group], max_length).rows()
        return rows
