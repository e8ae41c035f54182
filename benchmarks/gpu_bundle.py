"""Pack what a GPU machine without network needs to run scripts/gpu-check: `scripts/gpu-bundle DIR [--python X.Y]`.

The machine is expected to have Python X.Y with PyTorch and numpy. DIR gets:
- `payload.tar.xz`: one tree to unpack, holding `site/` (the Triton 2.51 server of the
  `nvidia-pytriton` wheel with only the Python backend stub for X.Y, and the wheels a stock
  PyTorch image lacks, unpacked) and `project/` (this repository's tracked files);
- `run`: `DIR/run [gpu-check options]` unpacks it into a temporary directory, checks what the
  server and the check depend on (benchmarks/gpu_preflight.py), then runs scripts/gpu-check;
- `MANIFEST.json`: the Python version, the packages and the sizes.

Wheels are fetched for X.Y and manylinux x86-64 at the versions of requirements.lock; the
server comes from the `nvidia-pytriton` wheel installed here (scripts/test and scripts/serve install it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_LIMIT_BYTES = 48 * 2**20
# What gpu-check needs beyond PyTorch: the gRPC client (tritonclient imports rapidjson, ml_dtypes
# and packaging), the tokenizer, the checkpoint reader, and numpy 1.x: Triton 2.51's Python backend
# stub loads under numpy 2 but dies on the first request that passes it a tensor (measured with
# numpy 2.4.6; numpy 1.26.4 serves), and stock PyTorch images ship numpy 2.
PACKAGES = (
    "tritonclient", "grpcio", "protobuf", "python-rapidjson", "ml_dtypes", "packaging", "tokenizers", "safetensors",
    "numpy",
)  # fmt: skip
# Never imported while serving or measuring: left out to keep the bundle small.
UNUSED = ("numpy/**/tests", "numpy/f2py", "numpy/distutils")
# Shared objects shipped with their symbol tables; stripping them saves about 2 MB of the compressed payload.
STRIPPED = ("pytriton/tritonserver/bin/tritonserver", "nvidia_pytriton.libs/*.so*", "numpy.libs/*.so*")
MANYLINUX = ("manylinux2014_x86_64", *(f"manylinux_2_{minor}_x86_64" for minor in (17, 24, 27, 28, 31, 34, 35)))


def progress(message: str) -> None:
    """One line of progress on stderr."""
    print(f"[gpu-bundle] {message}", file=sys.stderr, flush=True)


def locked_versions(packages: tuple[str, ...]) -> list[str]:
    """`name==version` for each package, as pinned in requirements.lock."""
    normalise = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
    pins = {}
    for line in (REPO_ROOT / "requirements.lock").read_text().splitlines():
        name, _, version = line.partition("==")
        if version:
            pins[normalise(name)] = version.strip()
    missing = [name for name in packages if normalise(name) not in pins]
    if missing:
        raise SystemExit(f"requirements.lock pins no version of {', '.join(missing)}")
    return [f"{name}=={pins[normalise(name)]}" for name in packages]


def download_wheels(python: str, target: Path) -> list[Path]:
    """Binary wheels of PACKAGES for CPython `python` on manylinux x86-64 (needs the package index)."""
    platforms = [argument for platform in MANYLINUX for argument in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", python, "--implementation", "cp", *platforms, "--dest", str(target),
               *locked_versions(PACKAGES)]  # fmt: skip
    subprocess.run(command, check=True)
    return sorted(target.glob("*.whl"))


def unpack_wheel(wheel: Path, site: Path) -> None:
    """Install a wheel into `site` the way `pip install --target` would: its files, `.data` libraries moved up."""
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            parts = Path(member.filename).parts
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue  # scripts and headers: nothing gpu-check runs
                parts = parts[2:]
            destination = site.joinpath(*parts)
            if member.is_dir():
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, destination.open("wb") as out:
                shutil.copyfileobj(source, out)
            mode = member.external_attr >> 16
            if mode & 0o111:
                destination.chmod(0o755)


def stage_server(python: str, site: Path) -> None:
    """The installed nvidia-pytriton wheel's tritonserver, with only the Python backend stub for `python`."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise SystemExit("the nvidia-pytriton wheel is not installed here: run scripts/test or scripts/serve once")
    wheel_root = Path(spec.origin).parent
    server = wheel_root / "tritonserver"
    stub = server / "python_backend_stubs" / python
    if not (stub / "triton_python_backend_stub").is_file():
        available = sorted(path.name for path in (server / "python_backend_stubs").iterdir())
        raise SystemExit(f"the nvidia-pytriton wheel has no Python backend stub for {python} (it has {available})")
    target = site / "pytriton"
    (target / "tritonserver").mkdir(parents=True)
    (target / "__init__.py").write_text(
        '"""The nvidia-pytriton wheel\'s tritonserver, repacked by scripts/gpu-bundle."""\n'
    )
    for name in ("bin", "caches"):
        shutil.copytree(server / name, target / "tritonserver" / name)
    shutil.copytree(
        server / "backends", target / "tritonserver" / "backends", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(stub, target / "tritonserver" / "python_backend_stubs" / python)
    # The wheel's own libpython (for its 3.13 stub) is left out: the stub for X.Y links the machine's.
    shutil.copytree(wheel_root.parent / "nvidia_pytriton.libs", site / "nvidia_pytriton.libs",
                    ignore=shutil.ignore_patterns("libpython*"))  # fmt: skip


def slim(site: Path) -> None:
    """Leave out what is never imported (UNUSED) and strip the symbol tables of STRIPPED, where `strip` exists."""
    for pattern in UNUSED:
        for path in sorted(site.glob(pattern), reverse=True):
            shutil.rmtree(path, ignore_errors=True)
    if shutil.which("strip") is None:
        progress("no strip command here: the shared objects keep their symbol tables")
        return
    for pattern in STRIPPED:
        for path in site.glob(pattern):
            subprocess.run(["strip", "--strip-unneeded", str(path)], check=True)


def stage_project(target: Path) -> None:
    """Copy the repository's files (tracked, and untracked ones git does not ignore) into `target`."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)


RUN_SCRIPT = """#!/usr/bin/env bash
# Run scripts/gpu-check from this bundle, without network: DIR/run [gpu-check options]
# Built for Python {python}; the machine needs that Python (PYTHON, else python3) with PyTorch and numpy.
# Reports go to $GPU_CHECK_REPORTS, else ./reports under the directory this is started from.
set -euo pipefail
BUNDLE="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
PYTHON="${{PYTHON:-python3}}"
REPORTS="${{GPU_CHECK_REPORTS:-$PWD/reports}}"
if ! command -v "$PYTHON" >/dev/null; then
  echo "[gpu-bundle] no '$PYTHON' found: set PYTHON to a Python {python} that has PyTorch and numpy" >&2
  exit 2
fi
WORK="$(mktemp -d "${{TMPDIR:-/tmp}}/mmrerank-gpu-bundle-XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
echo "[gpu-bundle] unpacking into $WORK" >&2
tar -xJf "$BUNDLE/payload.tar.xz" -C "$WORK"
# A virtual environment that sees the bundle first, then this Python's own packages (PyTorch, numpy):
# the Python backend stubs find their interpreter through PATH; PYTHONPATH did not reach them (Triton 2.51).
"$PYTHON" -m venv --without-pip "$WORK/venv"
"$PYTHON" - "$WORK" <<'PATHS'
import pathlib, sys
work = pathlib.Path(sys.argv[1])
own = [entry for entry in sys.path if entry.endswith(("site-packages", "dist-packages"))]
paths = [work / "site", work / "project", work / "project" / "client", *own]
target = next((work / "venv" / "lib").glob("python*/site-packages"))
(target / "mmrerank-bundle.pth").write_text("".join(f"{{path}}\\n" for path in paths))
PATHS
PYTHON="$WORK/venv/bin/python"
export PIP_NO_INDEX=1 PYTHONDONTWRITEBYTECODE=1
cd "$WORK/project"
"$PYTHON" -m benchmarks.gpu_preflight --python {python} --site "$WORK/site" "$@" >"$WORK/environment.sh"
source "$WORK/environment.sh"
"$PYTHON" -m benchmarks.gpu_check --out "$REPORTS" "$@"
"""


def build(target: Path, python: str) -> dict[str, object]:
    """Write the bundle into `target` (emptied first); returns its manifest."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="gpu-bundle-") as scratch:
        staging, wheels = Path(scratch) / "payload", Path(scratch) / "wheels"
        progress(f"downloading wheels for Python {python}: {', '.join(locked_versions(PACKAGES))}")
        downloaded = download_wheels(python, wheels)
        for wheel in downloaded:
            unpack_wheel(wheel, staging / "site")
        progress(f"repacking the nvidia-pytriton wheel's tritonserver with the stub for Python {python}")
        stage_server(python, staging / "site")
        slim(staging / "site")
        stage_project(staging / "project")
        progress("compressing (xz, a minute or two)")
        with tarfile.open(target / "payload.tar.xz", "w:xz", preset=6) as archive:
            for child in sorted(staging.iterdir()):
                archive.add(child, arcname=child.name)
    run = target / "run"
    run.write_text(RUN_SCRIPT.format(python=python))
    run.chmod(0o755)
    manifest: dict[str, object] = {
        "python": python,
        "wheels": [wheel.name for wheel in downloaded],
        "payload_bytes": (target / "payload.tar.xz").stat().st_size,
    }
    (target / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    manifest["bundle_bytes"] = sum(path.stat().st_size for path in target.iterdir())
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Command line: `scripts/gpu-bundle DIR [--python X.Y]`."""
    parser = argparse.ArgumentParser(prog="gpu-bundle", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="where to write the bundle (replaced if it exists)")
    parser.add_argument(
        "--python",
        default=f"{sys.version_info.major}.{sys.version_info.minor}",
        help="the GPU machine's Python version, X.Y (default: this one)",
    )
    args = parser.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python):
        parser.error(f"--python takes a version like 3.12, got {args.python!r}")
    manifest = build(args.directory.resolve(), args.python)
    size = int(manifest["bundle_bytes"])  # type: ignore[call-overload]
    progress(f"wrote {args.directory}: {size / 2**20:.1f} MiB (limit {BUNDLE_LIMIT_BYTES / 2**20:.0f} MiB)")
    progress(f"on the GPU machine: {args.directory}/run   (add --device cpu --quick for a dry run)")
    if size > BUNDLE_LIMIT_BYTES:
        progress("the bundle is over its size limit")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
