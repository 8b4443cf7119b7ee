"""`dagrun serve api`: the REST API over one store, until SIGTERM/SIGINT.

With --orchestrate the same process also drives every run submitted to the store (`Orchestrator.serve`);
without it, runs wait for an orchestrator elsewhere that shares the store (`dagrun orchestrator`). On the
first signal the API stops accepting and ends its event streams, then the orchestrator hands its runs back
(another one, or the next start, takes them over), then the store closes; a second signal exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import TYPE_CHECKING

from dagrun.api.settings import DEFAULT_MAX_BODY_BYTES, DEFAULT_PORT, ApiSettings
from dagrun.cli.flow_options import add_limit_arguments, flow_limits
from dagrun.cli.worker import add_lobby_arguments, lobby_problems, lobby_settings, read_token_file, stop_on_signals
from dagrun.engine.defaults import DEFAULT_LEASE_S, DEFAULT_MAX_MAP_ITEMS, DEFAULT_MAX_PARALLEL
from dagrun.errors import FlowError, Problem, redact
from dagrun.store import open_store

if TYPE_CHECKING:
    from dagrun.engine.orchestrator import Orchestrator

logger = logging.getLogger(__name__)


def add_serve_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`serve api` under the `dagrun` command's sub-commands (`serve` takes the service as its first
    argument, so that a dashboard can join it)."""
    serve = commands.add_parser("serve", help="serve the REST API", description="serve the REST API")
    services = serve.add_subparsers(dest="service", required=True, metavar="SERVICE")
    api = services.add_parser("api", help="the REST API over a store", description="the REST API over a store")
    api.set_defaults(handler=serve_api)
    add_api_arguments(api)


def add_api_arguments(parser: argparse.ArgumentParser) -> None:
    store = os.environ.get("DAGRUN_STORE")
    parser.add_argument(
        "--store", default=store, required=store is None, help="store URL or directory (default: $DAGRUN_STORE)"
    )
    parser.add_argument("--token-file", required=True, help="file holding the token clients send (16+ characters)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        metavar="N",
        help=f"refuse larger request bodies with 413 (default {DEFAULT_MAX_BODY_BYTES})",
    )
    add_lobby_arguments(parser)
    add_limit_arguments(parser)
    group = parser.add_argument_group("driving the runs here (--orchestrate)")
    group.add_argument("--orchestrate", action="store_true", help="also drive the submitted runs in this process")
    group.add_argument(
        "--executor",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="an executor steps can name, e.g. remote=redis://host:6379/0 (repeatable)",
    )
    group.add_argument("--processes", type=int, default=None, metavar="N", help="local sandbox processes")
    group.add_argument("--worker-token-file", help="file holding the shared token of remote (redis, ws, http) workers")
    group.add_argument(
        "--max-parallel", type=int, default=None, metavar="N", help=f"steps of a run at once ({DEFAULT_MAX_PARALLEL})"
    )
    group.add_argument("--fail-fast", action="store_true", help="cancel the rest of a run at its first failure")
    group.add_argument(
        "--max-map-items",
        type=int,
        default=None,
        metavar="N",
        help=f"items a mapped step may run ({DEFAULT_MAX_MAP_ITEMS})",
    )
    group.add_argument("--lease-s", type=float, default=None, metavar="S", help=f"run lease ({DEFAULT_LEASE_S:g} s)")


def serve_api(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT, then exit 0. DagrunError (one line) for an unusable token file, store or
    address; FlowError for orchestrator options without --orchestrate, or bad values."""
    check_options(args)
    token = read_token_file(args.token_file)
    settings = ApiSettings(
        host=args.host,
        port=args.port,
        max_body_bytes=args.max_body_bytes,
        lobby=lobby_settings(args),
        flow_limits=flow_limits(args),
    )
    return asyncio.run(_serve(args, token, settings))


def check_options(args: argparse.Namespace) -> None:
    orchestrator_options = {
        "--executor": args.executor,
        "--processes": args.processes,
        "--worker-token-file": args.worker_token_file,
        "--max-parallel": args.max_parallel,
        "--fail-fast": args.fail_fast,
        "--lease-s": args.lease_s,
        "--max-map-items": args.max_map_items,
    }
    problems = []
    if not args.orchestrate:
        given = [name for name, value in orchestrator_options.items() if value not in (None, False, [])]
        problems += [Problem(name, "only applies with --orchestrate") for name in given]
    counts = (
        ("--processes", args.processes),
        ("--max-parallel", args.max_parallel),
        ("--max-map-items", args.max_map_items),
    )
    for name, value in counts:
        if value is not None and value < 1:
            problems.append(Problem(name, f"must be at least 1, not {value}"))
    if args.lease_s is not None and args.lease_s <= 0:
        problems.append(Problem("--lease-s", f"must be positive, not {args.lease_s:g}"))
    if args.max_body_bytes < 1:
        problems.append(Problem("--max-body-bytes", f"must be at least 1, not {args.max_body_bytes}"))
    problems += lobby_problems(args)
    if problems:
        raise FlowError(problems, source="command line")
    from dagrun.cli.commands import parse_executors  # here: the parser offers `serve api` without rich or a store

    parse_executors(args.executor)  # FlowError for a malformed one, before anything starts


async def _serve(args: argparse.Namespace, token: str, settings: ApiSettings) -> int:
    from dagrun.api.server import ApiServer  # here: every other command starts without loading aiohttp
    from dagrun.cli.commands import orchestrator_from_args
    from dagrun.engine.control import RunControl

    stop = stop_on_signals("api", "stopping")
    async with open_store(args.store) as store:
        await store.list_runs(limit=1)  # a store that cannot be reached fails here, before listening
        logger.info("api: store %s", redact(args.store))
        if not args.orchestrate:
            async with ApiServer(RunControl(store), token=token, settings=settings):
                await stop.wait()
            return 0
        orchestrator = orchestrator_from_args(args, store, token_file=args.worker_token_file)
        await _serve_orchestrating(orchestrator, token, settings, stop)
    return 0


async def _serve_orchestrating(
    orchestrator: Orchestrator, token: str, settings: ApiSettings, stop: asyncio.Event
) -> None:
    """The API and the orchestrator; the API stops first, so that no run is submitted to a closing driver."""
    from dagrun.api.server import ApiServer

    async with orchestrator:
        halt = asyncio.Event()
        serving = asyncio.create_task(orchestrator.serve(halt), name="dagrun orchestrator")
        try:
            async with ApiServer(orchestrator.control, token=token, orchestrator=orchestrator, settings=settings):
                await stop.wait()
        finally:
            halt.set()
            await serving
