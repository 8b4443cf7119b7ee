"""`dagrun worker KIND`: serve steps for remote orchestrators until SIGTERM/SIGINT.

The transport is found by KIND through the ``dagrun.executors`` entry points (redis, ws, http, or a
third-party one). The first signal stops taking work and drains in-flight steps within the grace
period; a second one exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
from typing import TYPE_CHECKING

from dagrun.errors import FlowError, Problem, UsageError
from dagrun.private_files import read_private_text
from dagrun.serving.lobby import DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_UNAUTHENTICATED, LobbySettings

if TYPE_CHECKING:
    from dagrun.worker.script_worker import WorkerSettings
    from dagrun.worker.transport import WorkerTransport

logger = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", help="transport: redis, ws or http (any installed dagrun.executors entry point)")
    parser.add_argument("url", nargs="?", default="", help="what to connect to (redis://HOST:6379/0 for redis)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (ws, http; default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (ws, http; default: any free one)")
    parser.add_argument("--token-file", help="file holding the shared token (required by redis, ws and http)")
    parser.add_argument("--tls-cert", help="certificate chain file: serve TLS (ws, http)")
    parser.add_argument("--tls-key", help="private key file of --tls-cert")
    parser.add_argument(
        "--context",
        action="append",
        dest="contexts",
        metavar="CTX",
        help="context to serve (repeatable; default: default)",
    )
    parser.add_argument("--concurrency", type=int, default=None, metavar="N", help="steps at once (default: cores)")
    parser.add_argument("--grace", type=float, default=30.0, metavar="S", help="drain time on shutdown (default 30)")
    parser.add_argument("--id", dest="worker_id", default=None, help="worker id (default HOST:PID)")
    add_lobby_arguments(parser, kinds="ws, http; ")


def add_lobby_arguments(parser: argparse.ArgumentParser, *, kinds: str = "") -> None:
    """The options of a server's lobby (`dagrun.serving.lobby`), shared by `dagrun worker` and `dagrun serve api`."""
    parser.add_argument(
        "--header-timeout-s",
        type=float,
        default=DEFAULT_HEADER_TIMEOUT_S,
        metavar="S",
        help=f"close a connection without the token whose request headers take longer ({kinds}"
        f"default {DEFAULT_HEADER_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--max-unauthenticated",
        type=int,
        default=DEFAULT_MAX_UNAUTHENTICATED,
        metavar="N",
        help=f"connections without the token held at once; the longest idle one makes room for a new one "
        f"({kinds}default {DEFAULT_MAX_UNAUTHENTICATED})",
    )


def lobby_problems(args: argparse.Namespace) -> list[Problem]:
    problems = []
    if not args.header_timeout_s > 0:
        problems.append(Problem("--header-timeout-s", f"must be positive, not {args.header_timeout_s:g}"))
    if args.max_unauthenticated < 1:
        problems.append(Problem("--max-unauthenticated", f"must be at least 1, not {args.max_unauthenticated}"))
    return problems


def lobby_settings(args: argparse.Namespace) -> LobbySettings:
    """The lobby options as settings; FlowError naming each unusable one."""
    problems = lobby_problems(args)
    if problems:
        raise FlowError(problems, source="command line")
    return LobbySettings(header_timeout_s=args.header_timeout_s, max_unauthenticated=args.max_unauthenticated)


def read_token_file(path: str) -> str:
    """The shared token in a file (surrounding whitespace ignored); InsecureFile when other users can read
    or write the file, ExecutorError when it is unusable otherwise."""
    try:
        token = read_private_text(path, what="token file").strip()
    except OSError as exc:
        raise UsageError(f"cannot read token file {path!r}: {exc.strerror}") from exc
    if len(token) < MIN_TOKEN_CHARS:
        raise UsageError(f"token file {path!r}: the token must be at least {MIN_TOKEN_CHARS} characters")
    return token


def settings_from_args(args: argparse.Namespace) -> WorkerSettings:
    from dagrun.worker.script_worker import WorkerSettings  # here: building the parser loads no sandbox

    settings = WorkerSettings(
        url=args.url,
        host=args.host,
        port=args.port,
        token=read_token_file(args.token_file) if args.token_file else None,
        contexts=tuple(args.contexts or ("default",)),
        grace_s=args.grace,
        tls_cert_file=args.tls_cert,
        tls_key_file=args.tls_key,
        lobby=lobby_settings(args),
    )
    if args.concurrency is not None:
        if args.concurrency < 1:
            raise UsageError(f"--concurrency must be at least 1, not {args.concurrency}")
        settings = dataclasses.replace(settings, concurrency=args.concurrency)
    if args.worker_id:
        settings = dataclasses.replace(settings, worker_id=args.worker_id)
    return settings


def add_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", nargs="?", help="where the workers register, e.g. redis://HOST:6379/0")
    parser.add_argument("--redis", metavar="URL", help="the same, as an option")
    parser.add_argument("--token-file", help="file holding the shared token (ws and http workers)")
    parser.add_argument("--json", action="store_true", help="one JSON document")


def list_workers(args: argparse.Namespace) -> int:
    from dagrun.contract.executor import ExecutorOptions
    from dagrun.contract.transport import find_transport

    url = args.redis or args.url
    if not url:
        raise UsageError("say where the workers register: dagrun workers redis://HOST:6379/0")
    scheme = url.split("://", 1)[0].lower()
    options = ExecutorOptions(token=read_token_file(args.token_file) if args.token_file else None)
    found = asyncio.run(find_transport(scheme).list_workers(url, options))
    if found is None:
        raise UsageError(f"the {scheme} executor has no workers to list; its sandbox processes live in each run")
    from dagrun.cli import render  # here: the parser offers the worker options without loading rich

    render.workers(found, as_json=args.json)
    return 0


def run_worker(args: argparse.Namespace) -> int:
    from dagrun.worker.transport import find_worker_transport

    transport = find_worker_transport(args.kind)
    settings = settings_from_args(args)
    return asyncio.run(_serve(transport, settings))


def stop_on_signals(who: str, then: str) -> asyncio.Event:
    """An event set by the first SIGTERM/SIGINT (logging `who` and what happens `then`); a second one
    exits at once."""
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            logger.warning("%s: second signal, exiting now", who)
            raise SystemExit(130)
        logger.warning("%s: %s received, %s", who, signal.Signals(signum).name, then)
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return stop


async def _serve(transport: WorkerTransport, settings: WorkerSettings) -> int:
    from dagrun.worker.script_worker import ScriptWorker

    stop = stop_on_signals(f"worker {settings.worker_id}", f"draining (grace {settings.grace_s:.0f} s)")
    async with ScriptWorker(settings) as worker:
        await transport.serve_worker(worker, stop)
    logger.info("worker %s stopped", settings.worker_id)
    return 0
