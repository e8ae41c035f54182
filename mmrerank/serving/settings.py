"""Settings of the Triton models: their config `parameters { }` block and the checkpoint location."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

CHECKPOINT_ENV = "MMRERANK_CHECKPOINT"
# The reranker's `precision` parameter (mmrerank.model.precision resolves them; the launcher, which
# imports no torch, offers them).
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")


class SettingsError(ValueError):
    """A model's configuration is missing or holds an unusable value."""


def model_parameters(model_config: Mapping[str, Any]) -> dict[str, str]:
    """The `parameters { key: ... value: { string_value: ... } }` block of a model config, flattened."""
    return {key: str(entry.get("string_value", "")) for key, entry in model_config.get("parameters", {}).items()}


def integer_setting(parameters: Mapping[str, str], key: str, minimum: int = 1) -> int:
    """A required integer of at least `minimum` from the parameters block; fails loudly, naming the key."""
    if key not in parameters:
        raise SettingsError(f"model config lacks the parameter {key!r}")
    try:
        value = int(parameters[key])
    except ValueError as error:
        raise SettingsError(f"model config parameter {key!r} must be an integer, got {parameters[key]!r}") from error
    if value < minimum:
        raise SettingsError(f"model config parameter {key!r} must be at least {minimum}, got {value}")
    return value


def checkpoint_location(parameters: Mapping[str, str]) -> str:
    """The `checkpoint` parameter if set, else the MMRERANK_CHECKPOINT environment variable."""
    location = parameters.get("checkpoint", "").strip() or os.environ.get(CHECKPOINT_ENV, "").strip()
    if not location:
        raise SettingsError(
            f"no checkpoint given: set the model config parameter 'checkpoint' or the {CHECKPOINT_ENV} "
            "environment variable to a checkpoint directory or hub id"
        )
    return location


def cpu_threads_per_instance(model_config: Mapping[str, Any], cores: int) -> int:
    """PyTorch threads for one CPU instance: the cores shared among the config's CPU instances, at least one.

    Left alone, every instance would start one thread per core and the instances would contend.
    """
    groups = model_config.get("instance_group", [])
    instances = sum(int(group.get("count", 1)) for group in groups if group.get("kind", "KIND_CPU") == "KIND_CPU")
    return max(1, cores // max(1, instances))
