"""The GPU bundle: built here, at most 48 MiB, and its `run` works offline in a bare virtual environment.

The rehearsal is the command a GPU machine runs (`DIR/run`), with `--device cpu --quick`, in a
fresh virtual environment holding only PyTorch and numpy 2 (as stock PyTorch images do), pip
forbidden to use an index and nothing but the bundle on the way. Building the bundle fetches its
wheels for the target Python (that is what `scripts/gpu-bundle` does); the bare environment's
packages come from what the install step already has.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from benchmarks import gpu_preflight
from benchmarks.gpu_bundle import BUNDLE_LIMIT_BYTES
from mmrerank.dev.background import REPO_ROOT

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    target = tmp_path_factory.mktemp("bundle") / "gpu-bundle"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_bundle", str(target), "--python", PYTHON],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return target


def link_distribution(name: str, site: Path, linked: set[str]) -> None:
    """Symlink the installed files of distribution `name` and of what it requires into `site`."""
    try:
        distribution = metadata.distribution(name)
    except metadata.PackageNotFoundError:  # a requirement whose marker does not apply here
        return
    key = distribution.metadata["Name"].lower()
    if key in linked:
        return
    linked.add(key)
    for file in distribution.files or []:
        source = Path(distribution.locate_file(file))
        if str(file).startswith("..") or not source.is_file():  # console scripts live outside site-packages
            continue
        (site / file).parent.mkdir(parents=True, exist_ok=True)
        (site / file).symlink_to(source)
    for requirement in map(Requirement, distribution.requires or []):
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            link_distribution(requirement.name, site, linked)


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """A fresh virtual environment with only torch (CPU) and numpy 2, as stock PyTorch images have.

    Nothing is downloaded here: torch is this environment's own, linked in, and numpy 2 is the wheel
    scripts/test fetched when it set up (.venv/wheelhouse).
    """
    wheelhouse = Path(sys.prefix) / "wheelhouse"
    assert any(wheelhouse.glob("numpy-2.*.whl")), f"no numpy 2 wheel in {wheelhouse}: run scripts/test to set up"
    root = tmp_path_factory.mktemp("bare")
    # A directory named like a site directory: the bundle's `run` carries the machine's site directories over.
    venv, torch_site = root / "venv", root / "torch" / "site-packages"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    link_distribution("torch", torch_site, set())
    (next((venv / "lib").glob("python*/site-packages")) / "torch.pth").write_text(f"{torch_site}\n")
    install = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index", "--find-links",
               str(wheelhouse), "numpy>=2"]  # fmt: skip
    subprocess.run(install, check=True, timeout=300)
    return venv / "bin" / "python"


@pytest.mark.slow
def test_the_bundle_fits_and_holds_the_server_the_wheels_and_the_project(bundle):
    files = {path.name: path.stat().st_size for path in bundle.iterdir()}
    assert set(files) == {"run", "payload.tar.xz", "MANIFEST.json"}
    assert sum(files.values()) <= BUNDLE_LIMIT_BYTES, files
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    assert manifest["python"] == PYTHON
    assert any(wheel.startswith("numpy-1.") for wheel in manifest["wheels"])
    assert not any(wheel.startswith("torch") for wheel in manifest["wheels"])
    listing = subprocess.run(["tar", "-tJf", str(bundle / "payload.tar.xz")], capture_output=True, text=True).stdout
    stubs = {
        line.split("/")[4] for line in listing.splitlines() if "/python_backend_stubs/" in line and line.count("/") > 4
    }
    assert stubs == {PYTHON}
    assert "site/pytriton/tritonserver/bin/tritonserver" in listing and "project/scripts/gpu-check" in listing
    assert "libpython" not in listing and "/tests/" not in listing.replace("project/tests/", "")


@pytest.mark.slow
def test_the_bundle_runs_gpu_check_offline_in_a_bare_environment(bundle, bare_python, tmp_path):
    env = {"PATH": f"{bare_python.parent}:/usr/bin:/bin", "HOME": str(tmp_path), "PIP_NO_INDEX": "1",
           "PYTHON": str(bare_python)}  # fmt: skip
    result = subprocess.run(
        [str(bundle / "run"), "--device", "cpu", "--quick"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "[preflight] ready" in result.stderr
    assert "numpy 1.26.4 (the bundle's" in result.stderr
    report = json.loads((tmp_path / "reports" / "gpu-check.json").read_text())
    assert report["environment"]["python"].startswith(PYTHON)
    assert report["auto_kernel"] == "padded"
    for kernel in report["kernels"].values():
        assert kernel["parity"]["max_abs_score_diff"] <= 1e-4 and kernel["parity"]["top1_agreement"] == 1.0
    assert report["served"]["mfu"]["achieved_tflops"] > 0


def test_preflight_names_a_python_version_mismatch_and_how_to_fix_it(tmp_path, capsys):
    assert gpu_preflight.main(["--python", "3.0", "--site", str(tmp_path), "--device", "cpu"]) == 2
    message = capsys.readouterr().err
    assert f"this bundle was built for Python 3.0, but {sys.executable} is {PYTHON}" in message
    assert f"scripts/gpu-bundle DIR --python {PYTHON}" in message


def test_preflight_says_how_to_supply_a_missing_libpython(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gpu_preflight, "missing_libraries", lambda binary, path: [f"libpython{PYTHON}.so.1.0"])
    monkeypatch.setattr(gpu_preflight, "libpython_directory", lambda: None)
    assert gpu_preflight.main(["--python", PYTHON, "--site", str(tmp_path), "--device", "cpu"]) == 2
    message = capsys.readouterr().err
    assert f"MISSING: the Python backend stub links libpython{PYTHON}.so.1.0" in message
    assert f"apt-get install libpython{PYTHON}" in message and "LD_LIBRARY_PATH" in message


def test_preflight_adds_the_libpython_beside_the_interpreter(tmp_path, capsys, monkeypatch):
    missing = [[f"libpython{PYTHON}.so.1.0"], [], [f"libpython{PYTHON}.so.1.0"], []]
    monkeypatch.setattr(gpu_preflight, "missing_libraries", lambda binary, path: missing.pop(0))
    monkeypatch.setattr(gpu_preflight, "libpython_directory", lambda: tmp_path)
    assert gpu_preflight.main(["--python", PYTHON, "--site", str(tmp_path), "--device", "cpu"]) == 0
    assert f'export LD_LIBRARY_PATH="{tmp_path}' in capsys.readouterr().out
