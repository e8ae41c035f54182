"""Start a real `tritonserver` on this project's model repository, wait until ready, stop it cleanly.

Uses the `tritonserver` on PATH when there is one (the NVIDIA and ROCm containers); otherwise the
server binary that the `nvidia-pytriton` wheel ships, wired to the Python backend stub matching
this interpreter. With no checkpoint it serves the trained demo checkpoint in `demo/checkpoint/`.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import logging
import os
import shlex
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mmrerank.launch.repository import RepositoryError, materialize
from mmrerank.launch.supervisor import Companion, LaunchError, Supervisor
from mmrerank.layout import CheckpointError, CheckpointLayout
from mmrerank.serving.core_share import CPU_SHARE_ENV, CPU_SHARE_OFF, CoreShare
from mmrerank.serving.deadlines import CANCEL_DIRECTORY_ENV, SHUTDOWN_NOTICE_ENV, ShutdownNotice
from mmrerank.serving.settings import CHECKPOINT_ENV, PRECISIONS
from mmrerank_client.schema import FRONT

LOGGER = logging.getLogger("mmrerank.serve")
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_REPOSITORY = REPO_ROOT / "model_repository"
DEFAULT_DEMO_CHECKPOINT = REPO_ROOT / "demo" / "checkpoint"
EXIT_TIMEOUT_SECONDS = 30
# On SIGTERM, work still running this long before the exit timeout is stopped and answered UNAVAILABLE,
# so every client hears back before tritonserver would cut its connection.
ANSWER_MARGIN_SECONDS = 5
API_KEY_ENV = "MMRERANK_API_KEY"
API_KEY_HEADER = "x-api-key"
# Behind the key when one is set; health and metadata stay open for probes and load balancers.
RESTRICTED_APIS = "inference,model-config,model-repository,shared-memory,statistics,trace,logging"


@dataclass
class ServerCommand:
    """The tritonserver command line and the environment it needs."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def shell(self, secret: str | None = None) -> str:
        """The command as one shell line, environment first; `secret` shows as a reference to its variable."""
        assignments = [f"{key}={shlex.quote(value)}" for key, value in sorted(self.env.items())]
        words = [shlex.quote(arg) for arg in self.argv]
        if secret:
            words = [word.replace(secret, f"'\"${{{API_KEY_ENV}}}\"'") for word in words]
        return " ".join(assignments + words)


def gpu_available() -> bool:
    """Whether this host exposes a GPU: an NVIDIA device node, or AMD's compute interface (ROCm)."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or Path("/dev/kfd").exists()


def _pytriton_root() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise LaunchError(
            "no tritonserver on PATH and the nvidia-pytriton wheel is not installed; "
            "run scripts/serve (it installs it) or use the NVIDIA/ROCm Triton container"
        )
    return Path(spec.origin).parent


def prepare_wheel_backends(target: Path) -> Path:
    """A backend directory holding the wheel's Python backend and the stub for this interpreter."""
    root = _pytriton_root() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise LaunchError(f"the nvidia-pytriton wheel has no Python backend stub for Python {version}")
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for item in (root / "backends" / "python").iterdir():
        if item.is_file():
            shutil.copy2(item, python_dir / item.name)
    shutil.copy2(stub, python_dir / stub.name)
    return target


def served_config_name(args: argparse.Namespace) -> str | None:
    """The configs/NAME.pbtxt Triton loads: the one asked for, else `cpu` on a CPU-only host, else the default."""
    if args.model_config_name is None and (args.device == "cpu" or (args.device == "auto" and not gpu_available())):
        return "cpu"
    return args.model_config_name


# Several reranker instances share the CPU cores. OpenMP threads that spin while idle starve the
# busy instance (4 concurrent requests ran at 0.31x in-process speed instead of 1.10x), so they
# sleep; but a lone request spread over every core (the CPU share) wakes its threads at each of the
# encoder's many small parallel regions, and from sleep that cost 1.4-1.7x on short documents. A short
# spin (30,000 rounds) keeps them awake within a forward pass and asleep between requests.
OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "30000"}


def server_command(
    args: argparse.Namespace, checkpoint: Path, backend_dir: Path | None, repository: Path | None = None
) -> ServerCommand:
    """Build the tritonserver invocation for these options (the containers use the same one).

    `repository` is the served copy of the model repository (default: `--model-repository` itself).
    """
    env = {CHECKPOINT_ENV: str(checkpoint)}
    env.update({name: os.environ.get(name, value) for name, value in OPENMP_DEFAULTS.items()})
    binary = shutil.which("tritonserver")
    if binary is None:
        root = _pytriton_root()
        binary = str(root / "tritonserver" / "bin" / "tritonserver")
        libs = root.parent / "nvidia_pytriton.libs"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libs), os.environ.get("LD_LIBRARY_PATH", "")]))
        # The Python backend stub finds this virtual environment's interpreter through PATH.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env["PATH"] = os.pathsep.join(dict.fromkeys(env["PATH"].split(os.pathsep)))
    argv = [
        binary,
        f"--model-repository={repository or args.model_repository}",
        f"--http-address={args.host}",
        f"--http-port={args.http_port}",
        f"--grpc-address={args.host}",
        f"--grpc-port={args.grpc_port}",
        f"--metrics-address={args.host}",
        f"--metrics-port={args.metrics_port}",
        "--disable-auto-complete-config",
        f"--exit-timeout-secs={EXIT_TIMEOUT_SECONDS}",
        # Triton otherwise keeps up to 8 gRPC request objects for reuse, each holding the memory of the
        # largest request it carried: ten 200 MB requests left 1.1 GB held; without reuse, about 0.2 GB.
        "--grpc-infer-allocation-pool-size=0",
        f"--log-verbose={args.log_verbose}",
    ]
    if backend_dir is not None:
        argv.append(f"--backend-directory={backend_dir}")
    api_key = os.environ.get(API_KEY_ENV, "")
    if api_key:
        argv.append(f"--http-restricted-api={RESTRICTED_APIS}:{API_KEY_HEADER}={api_key}")
        argv.append(f"--grpc-restricted-protocol={RESTRICTED_APIS}:{API_KEY_HEADER}={api_key}")
    config_name = served_config_name(args)
    if config_name:
        argv.append(f"--model-config-name={config_name}")
    return ServerCommand(argv + list(args.extra), env)


def resolve_checkpoint(requested: str | None) -> CheckpointLayout:
    """The checkpoint to serve, checked and resolved once (a hub id becomes its local snapshot).

    Without one, the trained demo checkpoint that ships in `demo/checkpoint/`. The Triton models
    then receive a local directory through MMRERANK_CHECKPOINT.
    """
    try:
        return CheckpointLayout.open(requested or DEFAULT_DEMO_CHECKPOINT)
    except CheckpointError as error:
        raise LaunchError(str(error)) from error


def api_front(args: argparse.Namespace, host: str, env: dict[str, str] | None = None) -> Companion:
    """The rerank API front as a supervised companion, talking to this server's gRPC port.

    It reads the API key from the environment it inherits, never from its command line; `env` adds
    to that environment (the cancellation directory it shares with the reranker).
    """
    argv = [
        sys.executable, "-m", "mmrerank.api", "--triton-grpc", f"{host}:{args.grpc_port}",
        "--host", args.host, "--port", str(args.api_port), "--graceful-seconds", str(EXIT_TIMEOUT_SECONDS),
        "--timeout", str(args.api_timeout), "--max-body-bytes", str(args.api_max_body_bytes),
        "--max-connections", str(args.api_max_connections),
    ]  # fmt: skip
    return Companion(
        "rerank API front", argv, {**os.environ, **(env or {})}, f"http://{host}:{args.api_port}/openapi.json"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; anything after `--` goes to tritonserver unchanged."""
    parser = argparse.ArgumentParser(prog="serve", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", help="checkpoint directory or hub id (default: the trained demo in demo/checkpoint/)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument(
        "--api-port", type=int, default=8080, help="the rerank API front (Cohere/Jina and TEI routes); 0 turns it off"
    )
    parser.add_argument(
        "--api-timeout",
        type=float,
        default=FRONT.timeout_seconds,
        help="seconds the rerank API front waits for one request (then 504); also that request's deadline",
    )
    parser.add_argument(
        "--api-max-body-bytes",
        type=int,
        default=FRONT.max_body_bytes,
        help="larger request bodies get 413 from the API front",
    )
    parser.add_argument(
        "--api-max-connections",
        type=int,
        default=FRONT.max_connections,
        help="open connections the API front takes; more get 503",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="gpu: the GPU config; cpu: reranker/configs/cpu.pbtxt; auto: gpu when the host exposes one",
    )
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_MODEL_REPOSITORY)
    parser.add_argument("--model-config-name", help="a configs/NAME.pbtxt to use (default: cpu without a GPU)")
    parser.add_argument(
        "--attention",
        help="the reranker's attention kernel, overriding its config (auto, padded, packed-sdpa, varlen, flash)",
    )
    parser.add_argument(
        "--max-batch-tokens", type=int, help="the reranker's tokens per micro-batch, overriding its config"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="the reranker's precision, overriding its config (auto: by the device and the processor's features)",
    )
    parser.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for readiness")
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument(
        "--print-command",
        action="store_true",
        help="print the tritonserver command line (environment included) and exit",
    )
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then extra tritonserver options")
    args = parser.parse_args(argv)
    args.extra = [arg for arg in args.extra if arg != "--"]
    args.model_repository = args.model_repository.resolve()
    return args


def run(args: argparse.Namespace) -> int:
    """Start the server, report where it serves, and forward Ctrl-C / SIGTERM to it."""
    layout = resolve_checkpoint(args.checkpoint)
    with tempfile.TemporaryDirectory(prefix="mmrerank-serve-") as scratch:
        backend_dir = None if shutil.which("tritonserver") else prepare_wheel_backends(Path(scratch) / "backends")
        if args.print_command:
            command = server_command(args, layout.directory, backend_dir)
            print(command.shell(secret=os.environ.get(API_KEY_ENV)))  # noqa: T201 - this is the command's output
            return 0
        try:
            overrides = {
                "attention": args.attention,
                "max_batch_tokens": args.max_batch_tokens,
                "precision": args.precision,
            }
            repository = materialize(
                args.model_repository, layout, Path(scratch) / "model_repository", served_config_name(args),
                {key: str(value) for key, value in overrides.items() if value is not None},
            )  # fmt: skip
        except RepositoryError as error:
            raise LaunchError(str(error)) from error
        command = server_command(args, layout.directory, backend_dir, repository)
        notice = ShutdownNotice(Path(scratch) / "shutting-down")
        command.env[SHUTDOWN_NOTICE_ENV] = str(notice.path)
        # Where the rerank API front names requests whose clients went away; the models look there.
        cancelled = Path(scratch) / "cancelled"
        cancelled.mkdir()
        command.env[CANCEL_DIRECTORY_ENV] = str(cancelled)
        # CPU reranker instances size their threads to how many of them are scoring (a lone request: every core).
        if os.environ.get(CPU_SHARE_ENV) != CPU_SHARE_OFF:
            command.env[CPU_SHARE_ENV] = str(CoreShare.create(Path(scratch) / "cpu-share"))
        LOGGER.info("serving checkpoint %s (exits: layers %s x widths %s)", layout.directory,
                    list(layout.spec.layer_indices), list(layout.spec.dim_indices))  # fmt: skip
        if os.environ.get(API_KEY_ENV):
            LOGGER.info("inference and admin APIs require the %s header (key from $%s)", API_KEY_HEADER, API_KEY_ENV)
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        supervisor = Supervisor(
            command.argv,
            {**os.environ, **command.env},
            ready_url=f"http://{host}:{args.http_port}/v2/health/ready",
            ready_timeout=args.ready_timeout,
            exit_timeout=EXIT_TIMEOUT_SECONDS + 10,
            shutdown=(notice, EXIT_TIMEOUT_SECONDS - ANSWER_MARGIN_SECONDS),
            http_port=args.http_port,
            metrics_url=f"http://{host}:{args.metrics_port}/metrics",
            companions=[api_front(args, host, {CANCEL_DIRECTORY_ENV: str(cancelled)})] if args.api_port else [],
        )
        signal.signal(signal.SIGTERM, supervisor.stop)
        signal.signal(signal.SIGINT, supervisor.stop)
        try:
            supervisor.start()
            if not supervisor.stopping:  # a SIGTERM during start-up goes straight to draining
                LOGGER.info(
                    "ready: HTTP http://%s:%d  gRPC %s:%d  metrics http://%s:%d/metrics  (model 'rerank')",
                    host, args.http_port, host, args.grpc_port, host, args.metrics_port,
                )  # fmt: skip
                if args.api_port:
                    LOGGER.info(
                        "rerank API: http://%s:%d/v1/rerank, /v2/rerank, /rerank (docs at /docs)", host, args.api_port
                    )
            status = supervisor.supervise()
            supervisor.finish(grace=EXIT_TIMEOUT_SECONDS)
            return status
        except LaunchError:
            if supervisor.stopping:
                return 0
            raise
        finally:
            supervisor.kill_if_running()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `scripts/serve`."""
    logging.basicConfig(level=logging.INFO, format="[serve] %(message)s", stream=sys.stderr)
    try:
        return run(parse_args(argv))
    except LaunchError as error:
        LOGGER.error("%s", error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
