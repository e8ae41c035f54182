"""The model repository as served: a copy whose `rerank` config carries the served checkpoint's facts.

Any Triton client reads them with the model-configuration API (`GET /v2/models/rerank/config`,
gRPC `ModelConfig`), the typed client with `describe()`: exit layers, head widths, defaults, the
token and document caps, and the checkpoint's name. The launcher writes them when it starts, so
they always describe the checkpoint actually served.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from mmrerank.launch.configs import ConfigError, config_parameters, served_caps, set_parameters
from mmrerank.layout import CheckpointLayout
from mmrerank_client.schema import PARAMETER_NAMES, pair_token_cap

PUBLIC_MODEL = "rerank"


class RepositoryError(ValueError):
    """The model repository lacks what the launcher needs, or already defines a fact it would write."""


def served_caps_or_error(repository: Path, config_name: str | None) -> dict[str, str]:
    """The caps Triton will load (`configs.served_caps`), a disagreement between the steps as a RepositoryError."""
    try:
        return served_caps(repository, config_name)
    except ConfigError as error:
        raise RepositoryError(str(error)) from error


def served_facts(layout: CheckpointLayout, caps: dict[str, str]) -> dict[str, str]:
    """What a client may want to know about the served checkpoint, as string parameters."""
    spec = layout.spec
    return {
        "checkpoint": spec.model_name or layout.directory.name,
        "layer_indices": ",".join(str(layer) for layer in spec.layer_indices),
        "dim_indices": ",".join(str(dim) for dim in spec.dim_indices),
        "default_layer": str(spec.default_layer),
        "default_dim": str(spec.default_dim),
        "max_tokens_per_pair": str(
            pair_token_cap(int(caps["max_tokens_per_pair"]), layout.encoder_config.max_position_embeddings)
        ),
        "max_documents": caps["max_documents"],
        "max_request_tokens": caps["max_request_tokens"],
        "request_parameters": ",".join(PARAMETER_NAMES),
    }


def materialize(
    source: Path,
    layout: CheckpointLayout,
    target: Path,
    config_name: str | None,
    reranker_parameters: Mapping[str, str] | None = None,
) -> Path:
    """Copy `source` to `target` and append the served checkpoint's facts to the `rerank` config.

    The reranker's configs get `reranker_parameters` (the launcher's --attention, --max-batch-tokens
    and --precision). The caps stay as the configs hold them: the tokenizer's and the reranker's
    must agree, and the launcher refuses to start when they do not.
    """
    config = source / PUBLIC_MODEL / "config.pbtxt"
    if not config.is_file():
        raise RepositoryError(f"{source} has no {PUBLIC_MODEL}/config.pbtxt")
    facts = served_facts(layout, served_caps_or_error(source, config_name))
    already = sorted(set(config_parameters(config.read_text())) & set(facts))
    if already:
        raise RepositoryError(f"{config} already sets {', '.join(already)}; the launcher writes these itself")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    entries = ",\n".join(f'  {{ key: "{key}" value: {{ string_value: "{value}" }} }}' for key, value in facts.items())
    served = target / PUBLIC_MODEL / "config.pbtxt"
    served.write_text(f"{served.read_text().rstrip()}\n# Written by the launcher: the served checkpoint.\n"
                      f"parameters [\n{entries}\n]\n")  # fmt: skip
    reranker = target / "reranker"
    for path in [reranker / "config.pbtxt", *sorted((reranker / "configs").glob("*.pbtxt"))]:
        try:
            set_parameters(path, reranker_parameters or {})
        except ConfigError as error:
            raise RepositoryError(str(error)) from error
    return target
