"""A straightforward reference scorer: transformers' ModernBERT, `output_hidden_states`, docs/checkpoint.md.

It shares no code with the library's fast path: it tokenizes with transformers' tokenizer and
runs the full encoder one pair at a time.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import ModernBertConfig, ModernBertModel, PreTrainedTokenizerFast


class ReferenceScorer:
    """Scores (query, document) pairs exactly as the training code defines them, one at a time."""

    def __init__(self, checkpoint_dir: Path) -> None:
        config = ModernBertConfig.from_pretrained(checkpoint_dir)
        config.tie_last_hidden_states = False
        config._attn_implementation = "eager"
        self.encoder = ModernBertModel.from_pretrained(checkpoint_dir, config=config, dtype=torch.float32).eval()
        self.num_layers = config.num_hidden_layers
        raw_heads = torch.load(checkpoint_dir / "classification_heads.pt", weights_only=True)
        self.heads = {key: value.float() for key, value in raw_heads.items()}
        self.tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(checkpoint_dir / "tokenizer.json"))
        self.matryoshka = json.loads((checkpoint_dir / "matryoshka_config.json").read_text())

    def token_ids(self, query: str, document: str) -> list[int]:
        """`<bos> query <eos> document <eos>` through the tokenizer's own pair template."""
        return self.tokenizer(query, document)["input_ids"]

    @torch.no_grad()
    def logit_of_ids(self, ids: list[int], layer: int, dim: int) -> float:
        """The raw logit of head (layer, dim) for one unpadded pair of token ids."""
        output = self.encoder(input_ids=torch.tensor([ids]), output_hidden_states=True)
        cls = output.hidden_states[layer][0, 0]
        if layer < self.num_layers:
            cls = self.encoder.final_norm(cls)
        x = cls[:dim].float()
        prefix = f"{layer}.{dim}."
        x = torch.nn.functional.linear(x, self.heads[prefix + "0.weight"], self.heads[prefix + "0.bias"])
        x = torch.nn.functional.gelu(x)
        x = torch.nn.functional.linear(x, self.heads[prefix + "3.weight"], self.heads[prefix + "3.bias"])
        return float(x[0])

    def logit(self, query: str, document: str, layer: int, dim: int) -> float:
        """The raw logit of head (layer, dim) for one pair of texts."""
        return self.logit_of_ids(self.token_ids(query, document), layer, dim)
