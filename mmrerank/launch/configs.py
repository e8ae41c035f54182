"""The caps in the model configs, written from the schema and checked against it.

`mmrerank_client.schema` holds every cap (`VARIANT_CAPS`) and which model's configs carry which
(`MODEL_CAPS`). This module writes them into each `config.pbtxt` and `configs/NAME.pbtxt` of a
model repository, and says where a repository disagrees with the schema or with itself, so a plain
`tritonserver` on the repository serves the documented limits:

    python -m mmrerank.launch.configs            # rewrite the caps of model_repository/
    python -m mmrerank.launch.configs --check    # exit 1, naming each difference
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from mmrerank_client.schema import MODEL_CAPS, VARIANT_CAPS

DEFAULT_REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
# `{ key: "name" value: { string_value: "text" } }` entries of a config's parameters block.
PARAMETER_ENTRY = re.compile(r'key:\s*"(?P<key>[^"]+)"\s*value:\s*\{\s*string_value:\s*"(?P<value>[^"]*)"\s*\}')


class ConfigError(ValueError):
    """A model config lacks a parameter, or its caps disagree with the schema or with another config."""


def config_parameters(config_text: str) -> dict[str, str]:
    """The string parameters of a config.pbtxt, by key."""
    return {match["key"]: match["value"] for match in PARAMETER_ENTRY.finditer(config_text)}


def set_parameters(path: Path, values: Mapping[str, str]) -> None:
    """Set string parameters that `path` already declares; a parameter it lacks is an error naming it."""
    text = path.read_text()
    for key, value in values.items():
        entry = re.compile(rf'(key:\s*"{re.escape(key)}"\s*value:\s*\{{\s*string_value:\s*")[^"]*(")')
        text, count = entry.subn(lambda match, value=value: f"{match[1]}{value}{match[2]}", text)
        if count != 1:
            raise ConfigError(f"{path} has no parameter {key!r} to set")
    path.write_text(text)


def config_files(repository: Path, model: str) -> Iterator[tuple[str | None, Path]]:
    """Each config of `model` with its variant name: (None, config.pbtxt), then (NAME, configs/NAME.pbtxt)."""
    yield None, repository / model / "config.pbtxt"
    for path in sorted((repository / model / "configs").glob("*.pbtxt")):
        yield path.stem, path


def schema_caps(model: str, variant: str | None) -> dict[str, str]:
    """The caps `model`'s config for `variant` holds, by the schema (an unknown variant gets the defaults')."""
    return VARIANT_CAPS.get(variant, VARIANT_CAPS[None]).parameters(MODEL_CAPS[model])


def write_caps(repository: Path) -> list[Path]:
    """Write the schema's caps into every config of the capped models; returns the files written."""
    written = []
    for model in MODEL_CAPS:
        for variant, path in config_files(repository, model):
            set_parameters(path, schema_caps(model, variant))
            written.append(path)
    return written


def caps_drift(repository: Path) -> list[str]:
    """Where the repository's caps differ from the schema's, one line per value."""
    problems = []
    for model in MODEL_CAPS:
        for variant, path in config_files(repository, model):
            held = config_parameters(path.read_text())
            for key, value in schema_caps(model, variant).items():
                if held.get(key) != value:
                    problems.append(f"{path}: {key} is {held.get(key)!r}, the schema says {value!r}")
    return problems


def served_caps(repository: Path, variant: str | None) -> dict[str, str]:
    """The caps Triton will load for `variant` (each model's configs/NAME.pbtxt, else its config.pbtxt).

    The tokenizer's and the reranker's must agree where both hold a cap (the reranker enforces them
    on direct calls); a ConfigError names both files otherwise.
    """
    caps: dict[str, str] = {}
    origin: dict[str, Path] = {}
    for model in MODEL_CAPS:
        path = repository / model / "configs" / f"{variant}.pbtxt"
        path = path if variant and path.is_file() else repository / model / "config.pbtxt"
        held = config_parameters(path.read_text())
        for key in MODEL_CAPS[model]:
            if key not in held:
                raise ConfigError(f"{path} lacks the parameter {key!r}")
            if key in caps and caps[key] != held[key]:
                raise ConfigError(
                    f"{key} is {caps[key]} in {origin[key]} but {held[key]} in {path}; the two steps must enforce "
                    "one cap (python -m mmrerank.launch.configs writes the schema's into both)"
                )
            caps[key], origin[key] = held[key], path
    return caps


def main(argv: list[str] | None = None) -> int:
    """Rewrite the caps of a repository's configs from the schema, or with --check report where they differ."""
    parser = argparse.ArgumentParser(prog="python -m mmrerank.launch.configs", description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a cap differs")
    args = parser.parse_args(argv)
    if args.check:
        problems = caps_drift(args.model_repository)
        print("\n".join(problems) or "every cap matches the schema")  # noqa: T201 - the command's output
        return 1 if problems else 0
    for path in write_caps(args.model_repository):
        print(f"wrote the caps of {path}")  # noqa: T201 - the command's output
    return 0


if __name__ == "__main__":
    sys.exit(main())
