"""Check a machine before the bundle's gpu-check runs there, and say plainly what is missing and how to supply it.

Run by the bundle's `run` (scripts/gpu-bundle) with the same options as gpu-check. Checks the
Python version, PyTorch and numpy, a visible GPU (unless `--device cpu`), which attention kernels
PyTorch offers there, and the shared libraries the Triton server and its Python backend stub link
(notably `libpython X.Y`, which a Python built without `--enable-shared` lacks). Findings go to
stderr; stdout gets the shell lines the run sources (a library directory to add, when one is
found beside this interpreter). Exits 2 when something is missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path


def say(message: str) -> None:
    """One line of findings on stderr."""
    print(f"[preflight] {message}", file=sys.stderr, flush=True)


def missing_libraries(binary: Path, library_path: str) -> list[str]:
    """The shared libraries `binary` links that the loader cannot find with this LD_LIBRARY_PATH."""
    if shutil.which("ldd") is None:
        say(f"ldd is not installed: cannot check the libraries {binary.name} links")
        return []
    result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True,
                            env={**os.environ, "LD_LIBRARY_PATH": library_path})  # fmt: skip
    return [line.split()[0] for line in result.stdout.splitlines() if "not found" in line]


def libpython_directory() -> Path | None:
    """The directory holding this interpreter's shared libpython, if it has one."""
    name = (
        sysconfig.get_config_var("INSTSONAME") or f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"
    )
    for directory in (sysconfig.get_config_var("LIBDIR"), Path(sys.base_prefix) / "lib"):
        if directory and (Path(directory) / name).is_file():
            return Path(directory)
    return None


def check_server(site: Path, python: str, problems: list[str], exports: list[str]) -> None:
    """Tritonserver and the Python backend stub for `python` find every library they link."""
    server = site / "pytriton" / "tritonserver"
    library_path = os.pathsep.join(
        filter(None, [str(site / "nvidia_pytriton.libs"), os.environ.get("LD_LIBRARY_PATH")])
    )
    stub = server / "python_backend_stubs" / python / "triton_python_backend_stub"
    for binary in (server / "bin" / "tritonserver", stub):
        missing = missing_libraries(binary, library_path)
        libpython = [name for name in missing if name.startswith("libpython")]
        found = libpython_directory() if libpython else None
        if found is not None:
            say(f"{binary.name} links {libpython[0]}: using the one beside this interpreter, in {found}")
            exports.append(f'export LD_LIBRARY_PATH="{found}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"')
            library_path = os.pathsep.join([str(found), library_path])
            missing = missing_libraries(binary, library_path)
        for name in missing:
            if name.startswith("libpython"):
                problems.append(
                    f"the Python backend stub links {name}, which this Python lacks (built without --enable-shared): "
                    f"install your distribution's libpython{python} package (Debian/Ubuntu: apt-get install "
                    f"libpython{python}), or set LD_LIBRARY_PATH to a directory holding {name}"
                )
            else:
                problems.append(
                    f"{binary.name} links {name}, which the loader cannot find: install it or add its directory "
                    "to LD_LIBRARY_PATH"
                )


def check_python_packages(device: str, problems: list[str]) -> None:
    """PyTorch and numpy importable; on a GPU, which attention kernels run there."""
    try:
        import numpy
        import torch
    except ImportError as error:
        problems.append(
            f"{error.name} is not installed for {sys.executable}: the bundle brings everything but "
            "PyTorch and numpy; install them (the machine's own CUDA or ROCm build of PyTorch)"
        )
        return
    bundled = (
        " (the bundle's: Triton 2.51's Python backend stub needs numpy<2)" if "/site/numpy" in numpy.__file__ else ""
    )
    say(f"torch {torch.__version__}, numpy {numpy.__version__}{bundled}")
    if device == "cpu":
        return
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        problems.append(
            f"torch {torch.__version__} sees no GPU (CUDA_VISIBLE_DEVICES={visible}): check the driver with "
            "nvidia-smi or rocm-smi, or pass --device cpu --quick for a dry run"
        )
        return
    from mmrerank.model.kernels import KERNELS

    say(f"GPU: {torch.cuda.get_device_name(0)}")
    for name, kernel in KERNELS.items():
        reason = kernel.unavailable_reason(torch.device("cuda"), torch.bfloat16)
        say(f"attention {name}: {'runs here' if reason is None else 'not here, ' + reason}")


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m benchmarks.gpu_preflight --python X.Y --site DIR [gpu-check options]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", required=True, help="the Python version the bundle was built for")
    parser.add_argument("--site", type=Path, required=True, help="where the bundle's packages were unpacked")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None)
    args, _ = parser.parse_known_args(argv)
    problems: list[str] = []
    exports: list[str] = []
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if running != args.python:
        problems.append(
            f"this bundle was built for Python {args.python}, but {sys.executable} is {running}: set PYTHON "
            f"to a Python {args.python}, or rebuild with scripts/gpu-bundle DIR --python {running}"
        )
    else:
        check_server(args.site, args.python, problems, exports)
    check_python_packages(args.device or "cuda", problems)
    for problem in problems:
        say(f"MISSING: {problem}")
    if problems:
        return 2
    say("ready")
    print("\n".join(exports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
