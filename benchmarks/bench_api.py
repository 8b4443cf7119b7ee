#!/usr/bin/env python3
"""Loopback load test of the REST API: many runs submitted at once, each watched to its end by its own
event stream, against a server process that drives them (as `dagrun serve api --orchestrate`), or
(``--split``) an API process and an orchestrator process sharing the store (as `dagrun serve api` plus
`dagrun orchestrator`).

Every run is a 10-step flow (a root, 8 parallel steps, a join). It is checked from its stream: every
step went `queued`, `running` then `succeeded`, once, and the run `succeeded`; then its outputs are checked over
REST. Prints one JSON line per store: runs/s, steps/s, the p50/p99 latency from a run's POST to its
terminal event at the client and of the POST alone, and the server processes' CPU per run (from /proc).

    python benchmarks/bench_api.py                          # 500 runs, a temporary sqlite store
    python benchmarks/bench_api.py --store sqlite --store redis --runs 200 --split

``--store redis`` starts its own redis-server (127.0.0.1, a free port, no persistence). The servers run in
process groups of their own, killed in `finally`; the whole invocation stops after --time-limit seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dags

BENCH_DIR = Path(__file__).resolve().parent
DAG = {"root": [], **{f"w{i}": ["root"] for i in range(8)}, "join": [f"w{i}" for i in range(8)]}
READY = re.compile(r"READY (\S+)")
READY_TIMEOUT_S = 60.0
TIME_LIMIT_S = 300.0
POLL_S = 0.25
T = TypeVar("T")
Bounded = Callable[[Awaitable[tuple[str, float, float]]], Awaitable[tuple[str, float, float]]]


# --- the server processes (this script, run with --serve ROLE) -------------------------------------------


async def serve(role: str, store_url: str, token_file: str, processes: int | None, max_streams: int) -> None:
    """Serve until SIGTERM: the API ('api'), the orchestrator ('orchestrator'), or both ('both')."""
    from dagrun.api import ApiServer, ApiSettings
    from dagrun.engine.control import RunControl
    from dagrun.engine.orchestrator import Orchestrator
    from dagrun.store import open_store

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    token = Path(token_file).read_text().strip()
    async with open_store(store_url) as store, contextlib.AsyncExitStack() as stack:
        orchestrator = None
        if role in ("orchestrator", "both"):
            orchestrator = await stack.enter_async_context(Orchestrator(store, processes=processes))
            serving = asyncio.create_task(orchestrator.serve(stop))
        url = "-"
        if role in ("api", "both"):
            control = orchestrator.control if orchestrator else RunControl(store)
            settings = ApiSettings(port=0, max_streams=max_streams)
            server = await stack.enter_async_context(
                ApiServer(control, token=token, orchestrator=orchestrator, settings=settings)
            )
            url = server.url
        print(f"READY {url}", flush=True)
        await stop.wait()
        if orchestrator is not None:
            await serving


# --- the client ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    run_id: str
    submit_s: float  # the POST's round trip
    ended_at: float  # time.time() of the run's terminal event: its arrival (stream), or its time (poll)
    done_s: float  # from the POST to then


async def submit(client: aiohttp.ClientSession, document: dict[str, Any]) -> tuple[str, float, float]:
    """POST the run: its id, when the POST started (time.time(), which the server's events use too) and
    how long it took."""
    started, clock = time.time(), time.perf_counter()
    async with client.post("/v1/runs", json={"flow": document}) as response:
        body = await response.json()
        if response.status != 201:
            raise SystemExit(f"submit refused: {response.status} {body}")
    return body["run_id"], started, time.perf_counter() - clock


async def streamed_run(client: aiohttp.ClientSession, document: dict[str, Any]) -> Outcome:
    """Submit, then follow the run's event stream to its end and check what it carried."""
    run_id, started, submit_s = await submit(client, document)
    events = []
    async with client.get(f"/v1/runs/{run_id}/events/stream") as response:
        if response.status != 200:
            raise SystemExit(f"run {run_id}: event stream refused: {response.status} {await response.text()}")
        async for line in response.content:
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:]))
    ended_at = time.time()
    check_events(run_id, events)
    return Outcome(run_id, submit_s, ended_at, ended_at - started)


async def polled_runs(
    client: aiohttp.ClientSession, document: dict[str, Any], runs: int, bounded: Bounded
) -> list[Outcome]:
    """Submit every run, wait until the run list shows them all ended, then read and check each event log;
    a run is done at its terminal event's time. Without an event stream per run, this measures the API and
    the orchestrator rather than the store's waits."""
    submitted = await asyncio.gather(*(bounded(submit(client, document)) for _ in range(runs)))
    pending = {run_id for run_id, _, _ in submitted}
    while pending:
        await asyncio.sleep(POLL_S)  # the client's poll; the figures come from the events' times
        async with client.get("/v1/runs", params={"flow": document["name"], "limit": "1000"}) as response:
            listed = (await response.json())["runs"]
        pending -= {run["run_id"] for run in listed if run["status"] in ("succeeded", "failed", "cancelled")}
    outcomes = []
    for run_id, started, submit_s in submitted:
        async with client.get(f"/v1/runs/{run_id}/events") as response:
            events = (await response.json())["events"]
        check_events(run_id, events)
        outcomes.append(Outcome(run_id, submit_s, events[-1]["at"], events[-1]["at"] - started))
    return outcomes


STEP_STATES = ["queued", "running", "succeeded"]  # what every step of a run goes through, once each


def check_events(run_id: str, events: list[dict[str, Any]]) -> None:
    """Every step `queued`, `running` then `succeeded`, once; the run `running` then `succeeded`; seqs gap-free."""
    by_step: dict[str | None, list[str]] = {}
    for event in events:
        by_step.setdefault(event["step_id"], []).append(event["status"])
    wrong = {step: seen for step, seen in by_step.items() if step is not None and seen != STEP_STATES}
    if wrong or set(by_step) - {None} != set(DAG) or by_step.get(None) != ["running", "succeeded"]:
        shown = "\n".join(json.dumps(event) for event in events)
        raise SystemExit(f"run {run_id}: wrong events: steps {wrong or by_step}; its events:\n{shown}")
    if [event["seq"] for event in events] != list(range(1, len(events) + 1)):
        raise SystemExit(f"run {run_id}: event seqs are not 1..{len(events)}")


async def check_outputs(client: aiohttp.ClientSession, run_id: str) -> None:
    async with client.get(f"/v1/runs/{run_id}/outputs") as response:
        body = await response.json()
        if response.status != 200:
            raise SystemExit(f"run {run_id}: outputs refused: {response.status} {body}")
    outputs = body["outputs"]
    dags.check(DAG, {step: values.get("v") for step, values in outputs.items()})


async def load(url: str, token: str, args: argparse.Namespace, servers: list[int]) -> dict[str, Any]:
    document = dags.flow_document("api-bench", DAG)
    in_flight = asyncio.Semaphore(args.concurrency or args.runs)

    async def bounded(run: Awaitable[T]) -> T:
        async with in_flight:
            return await run

    connector = aiohttp.TCPConnector(limit=0)  # one connection per stream: they are all open at once
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector, timeout=timeout) as client:
        await check_outputs(client, (await streamed_run(client, document)).run_id)  # warm-up: pool, caches
        cpu_before = cpu_s(servers)
        started = time.time()
        if args.watch == "stream":
            outcomes = await asyncio.gather(*(bounded(streamed_run(client, document)) for _ in range(args.runs)))
        else:
            outcomes = await polled_runs(client, document, args.runs, bounded)
        wall_s = max(outcome.ended_at for outcome in outcomes) - started  # to the last run's end
        server_cpu_s = cpu_s(servers) - cpu_before
        await asyncio.gather(*(bounded(check_outputs(client, outcome.run_id)) for outcome in outcomes))
    checked = "each step queued, running then succeeded once; outputs"
    cpu = {"server_cpu_ms_per_run": round(server_cpu_s * 1000 / len(outcomes), 2)} if server_cpu_s >= 0 else {}
    extra = {"watch": args.watch, "concurrency": args.concurrency, "checked": checked}
    return figures(outcomes, wall_s) | cpu | extra


def figures(outcomes: list[Outcome], wall_s: float) -> dict[str, Any]:
    done_ms = [outcome.done_s * 1000 for outcome in outcomes]
    submit_ms = [outcome.submit_s * 1000 for outcome in outcomes]
    return {
        "runs": len(outcomes),
        "steps_per_run": len(DAG),
        "wall_s": round(wall_s, 3),
        "runs_per_s": round(len(outcomes) / wall_s, 1),
        "steps_per_s": round(len(outcomes) * len(DAG) / wall_s, 1),
        "done_p50_ms": round(statistics.median(done_ms), 1),
        "done_p99_ms": round(percentile(done_ms, 99), 1),
        "submit_p50_ms": round(statistics.median(submit_ms), 1),
        "submit_p99_ms": round(percentile(submit_ms, 99), 1),
    }


def cpu_s(pids: list[int]) -> float:
    """CPU seconds the server processes have used (not their sandbox children), from /proc; -1 without it.
    On a shared machine wall time drifts with the neighbours' load, CPU per run much less."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return -1.0
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def percentile(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1] if len(values) > 1 else values[0]


# --- processes -----------------------------------------------------------------------------------------


class Processes:
    """Child processes in their own process groups, each killed (the whole group) on `close`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[tuple[str, subprocess.Popen[str]]] = []

    def start(self, name: str, argv: list[str], pattern: re.Pattern[str]) -> re.Match[str]:
        """Start `argv` and wait until a line of its output matches `pattern`."""
        log = (self.directory / f"{name}.log").open("w")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH_DIR.parent), os.environ.get("PYTHONPATH", "")])}
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True, env=env)
        self.started.append((name, process))
        assert process.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
            if found := pattern.search(line):
                return found
        tail = (self.directory / f"{name}.log").read_text()[-2000:]
        raise SystemExit(f"{name} did not start:\n{tail}")

    def close(self) -> None:
        for _, process in reversed(self.started):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for _, process in reversed(self.started):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@contextlib.contextmanager
def processes_in(directory: Path) -> Iterator[Processes]:
    started = Processes(directory)
    try:
        yield started
    finally:
        started.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def store_url(kind: str, processes: Processes) -> str:
    if kind == "sqlite":
        return str(processes.directory / "dagrun.db")
    if kind == "redis":
        port = free_port()
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
        processes.start("redis-server", [*argv, "--dir", str(processes.directory)], re.compile("Ready to accept"))
        return f"redis://127.0.0.1:{port}/0"
    return kind  # a URL or path given as is


def bench_store(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dagrun-bench-api-") as directory, processes_in(Path(directory)) as procs:
        token = secrets.token_hex(16)
        token_file = procs.directory / "token"
        token_file.write_text(token)
        url = store_url(kind, procs)
        serve_argv = [sys.executable, __file__, "--store", url, "--token-file", str(token_file)]
        serve_argv += ["--max-streams", str(args.max_streams or args.runs + 1)]
        if args.processes:
            serve_argv += ["--processes", str(args.processes)]
        if args.split:
            procs.start("orchestrator", [*serve_argv, "--serve", "orchestrator"], READY)
        api_url = procs.start("api", [*serve_argv, "--serve", "api" if args.split else "both"], READY).group(1)
        servers = [process.pid for name, process in procs.started if name in ("api", "orchestrator")]
        try:
            figures = asyncio.run(asyncio.wait_for(load(api_url, token, args, servers), args.time_limit))
        except BaseException:
            for name in ("api", "orchestrator"):
                if (log := procs.directory / f"{name}.log").exists():
                    sys.stderr.write(f"--- {name} log (tail) ---\n{log.read_text()[-4000:]}\n")
            raise
    mode = "api+orchestrator processes" if args.split else "one process (serve api --orchestrate)"
    return {"bench": "api", "store": kind, "mode": mode, "processes": args.processes or os.cpu_count(), **figures}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=500, help="runs submitted at once (default 500)")
    parser.add_argument(
        "--store", action="append", help="sqlite (a temporary file; the default), redis (its own server), or a URL"
    )
    parser.add_argument(
        "--watch",
        choices=["stream", "poll"],
        default="stream",
        help="see each run end by its event stream (default), or by listing runs now and then",
    )
    parser.add_argument(
        "--concurrency", type=int, default=None, help="runs submitted (and watched) at once (default: all)"
    )
    parser.add_argument(
        "--max-streams", type=int, default=None, help="the API's max_streams (default: more than --runs)"
    )
    parser.add_argument("--split", action="store_true", help="the API and the orchestrator in two processes")
    parser.add_argument("--processes", type=int, default=None, help="sandbox processes (default: one per core)")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT_S, help="per store, in seconds")
    parser.add_argument("--serve", choices=["api", "orchestrator", "both"], help=argparse.SUPPRESS)
    parser.add_argument("--token-file", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.serve:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        asyncio.run(serve(args.serve, args.store[0], args.token_file, args.processes, args.max_streams))
        return 0
    # SIGTERM (timeout(1), a CI limit) unwinds like Ctrl-C, so that `finally` stops the servers started here.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    for kind in args.store or ["sqlite"]:
        print(json.dumps(bench_store(kind, args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
