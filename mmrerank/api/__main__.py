"""Run the rerank API front: `python -m mmrerank.api --triton-grpc HOST:PORT [--host H] [--port P]`.

The API key comes from $MMRERANK_API_KEY, never from the command line, so it is not visible in
process listings; the launcher starts this beside tritonserver, with $MMRERANK_CANCEL_DIR naming
where it tells the models about clients that went away.
"""

from __future__ import annotations

import argparse
import os
import sys

import uvicorn

from mmrerank.api.app import create_app
from mmrerank.api.protocol import GuardedHttpToolsProtocol
from mmrerank.api.triton import TritonReranker
from mmrerank.serving.deadlines import CANCEL_DIRECTORY_ENV, CancelNotices
from mmrerank_client.schema import FRONT

API_KEY_ENV = "MMRERANK_API_KEY"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="mmrerank-api", description=__doc__.splitlines()[0])
    parser.add_argument("--triton-grpc", required=True, help="host:port of Triton's gRPC endpoint")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--timeout", type=float, default=FRONT.timeout_seconds, help="seconds per rerank request (then 504)"
    )
    parser.add_argument(
        "--max-body-bytes", type=int, default=FRONT.max_body_bytes, help="larger request bodies get 413"
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=FRONT.max_connections,
        help="open connections (and requests) at most; more get 503",
    )
    parser.add_argument("--graceful-seconds", type=float, default=30.0, help="in-flight requests' time on SIGTERM")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or Ctrl-C; in-flight requests finish first."""
    args = parse_args(argv)
    api_key = os.environ.get(API_KEY_ENV) or None
    try:
        cancels = CancelNotices.from_environment()
    except NotADirectoryError as error:
        print(f"mmrerank-api: {error}; it must be the directory the models read", file=sys.stderr)  # noqa: T201
        return 2
    if not cancels.enabled:
        print(  # noqa: T201 - a start-up warning, before the server logs
            f"mmrerank-api: {CANCEL_DIRECTORY_ENV} is not set: when a client goes away, its request runs on "
            "until its deadline (scripts/serve sets it; the front must share that directory with the models)",
            file=sys.stderr,
        )
    triton = TritonReranker(args.triton_grpc, api_key, args.timeout)
    app = create_app(triton, api_key, args.max_body_bytes, cancels)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=int(args.graceful_seconds),
        timeout_keep_alive=5,  # an idle keep-alive connection closes after 5 s
        http=GuardedHttpToolsProtocol,  # bounded headers (431) and read timeouts (408)
        limit_concurrency=args.max_connections,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
