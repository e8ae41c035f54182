"""The model repository as served: a copy whose `rerank` config carries the served checkpoint's facts.

Any Triton client reads them with the model-configuration API (`GET /v2/models/rerank/config`,
gRPC `ModelConfig`), the typed client with `describe()`: exit layers, head widths, defaults, the
token and document caps, and the checkpoint's name. The launcher writes them when it starts, so
they always describe the checkpoint actually served.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from mmrerank.layout import CheckpointLayout
from mmrerank_client.contract import PARAMETERS, pair_token_cap

PUBLIC_MODEL = "rerank"
# The tokenizer's caps the launcher hands to the reranker, for requests sent to it directly.
DIRECT_CALL_CAPS = ("max_documents", "max_request_tokens", "default_deadline_ms")
# `{ key: "name" value: { string_value: "text" } }` entries of a config's parameters block.
PARAMETER_ENTRY = re.compile(r'key:\s*"(?P<key>[^"]+)"\s*value:\s*\{\s*string_value:\s*"(?P<value>[^"]*)"\s*\}')


class RepositoryError(ValueError):
    """The model repository lacks what the launcher needs, or already defines a fact it would write."""


def config_parameters(config_text: str) -> dict[str, str]:
    """The string parameters of a config.pbtxt, by key."""
    return {match["key"]: match["value"] for match in PARAMETER_ENTRY.finditer(config_text)}


def tokenizer_settings(repository: Path, config_name: str | None) -> dict[str, str]:
    """The tokenizer's parameters from the config Triton will load (configs/NAME.pbtxt when it exists)."""
    variant = repository / "tokenizer" / "configs" / f"{config_name}.pbtxt"
    path = variant if config_name and variant.is_file() else repository / "tokenizer" / "config.pbtxt"
    settings = config_parameters(path.read_text())
    missing = [key for key in ("max_tokens_per_pair", *DIRECT_CALL_CAPS) if key not in settings]
    if missing:
        raise RepositoryError(f"{path} lacks the parameter(s) {', '.join(missing)}")
    return settings


def served_facts(layout: CheckpointLayout, tokenizer: dict[str, str]) -> dict[str, str]:
    """What a client may want to know about the served checkpoint, as string parameters."""
    spec = layout.spec
    return {
        "checkpoint": spec.model_name or layout.directory.name,
        "layer_indices": ",".join(str(layer) for layer in spec.layer_indices),
        "dim_indices": ",".join(str(dim) for dim in spec.dim_indices),
        "default_layer": str(spec.default_layer),
        "default_dim": str(spec.default_dim),
        "max_tokens_per_pair": str(
            pair_token_cap(int(tokenizer["max_tokens_per_pair"]), layout.encoder_config.max_position_embeddings)
        ),
        "max_documents": tokenizer["max_documents"],
        "max_request_tokens": tokenizer["max_request_tokens"],
        "request_parameters": ",".join(PARAMETERS),
    }


def set_reranker_parameters(repository: Path, values: Mapping[str, str]) -> None:
    """Set string parameters in every reranker config of a served copy, so whichever variant Triton loads has them."""
    reranker = repository / "reranker"
    for path in [reranker / "config.pbtxt", *sorted((reranker / "configs").glob("*.pbtxt"))]:
        text = path.read_text()
        for key, value in values.items():
            entry = re.compile(rf'(key:\s*"{re.escape(key)}"\s*value:\s*\{{\s*string_value:\s*")[^"]*(")')
            text, count = entry.subn(lambda match, value=value: f"{match[1]}{value}{match[2]}", text)
            if count != 1:
                raise RepositoryError(f"{path} has no parameter {key!r} to set")
        path.write_text(text)


def materialize(
    source: Path,
    layout: CheckpointLayout,
    target: Path,
    config_name: str | None,
    reranker_parameters: Mapping[str, str] | None = None,
) -> Path:
    """Copy `source` to `target` and append the served checkpoint's facts to the `rerank` config.

    The reranker's configs get the tokenizer's caps (DIRECT_CALL_CAPS) and `reranker_parameters`
    (the launcher's --attention, --max-batch-tokens and --precision).
    """
    config = source / PUBLIC_MODEL / "config.pbtxt"
    if not config.is_file():
        raise RepositoryError(f"{source} has no {PUBLIC_MODEL}/config.pbtxt")
    facts = served_facts(layout, tokenizer_settings(source, config_name))
    already = sorted(set(config_parameters(config.read_text())) & set(facts))
    if already:
        raise RepositoryError(f"{config} already sets {', '.join(already)}; the launcher writes these itself")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    entries = ",\n".join(f'  {{ key: "{key}" value: {{ string_value: "{value}" }} }}' for key, value in facts.items())
    served = target / PUBLIC_MODEL / "config.pbtxt"
    served.write_text(f"{served.read_text().rstrip()}\n# Written by the launcher: the served checkpoint.\n"
                      f"parameters [\n{entries}\n]\n")  # fmt: skip
    # The reranker enforces the same caps as the tokenizer step when it is called directly.
    caps = {key: tokenizer_settings(source, config_name)[key] for key in DIRECT_CALL_CAPS}
    set_reranker_parameters(target, {**caps, **(reranker_parameters or {})})
    return target
