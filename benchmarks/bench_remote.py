#!/usr/bin/env python3
"""End-to-end throughput of dagrun through its remote transports: Redis (2 worker processes), WebSocket, HTTP.

Starts its own redis-server (127.0.0.1, a free port, no persistence, in a temporary directory) and its own
workers, warms each transport up with one run, then times WIDE, CHAIN and LAYERED as bench_local.py does:
parsing the flow, running it, persisting every state change in SQLite and the final flush. Prints one
JSON line per timed run, then summary lines: CHAIN dispatch overhead over the local executor (measured in
the same invocation), which Redis worker concurrency did better, the issue's targets and, when celery is
installed (``pip install -e '.[bench]'``), the ratio to Celery with a Redis broker and result backend,
each task submitted as soon as its dependencies have finished (celery_peer.py).

    python benchmarks/bench_remote.py                           # redis, ws, http and celery; 3 runs each
    python benchmarks/bench_remote.py --transports redis --shapes CHAIN --repeat 5
    python benchmarks/bench_remote.py --redis-concurrency 1 --no-peer

Every process started here runs in its own process group, stopped in `finally` (SIGTERM and Ctrl-C
included); a watchdog process kills those groups if this script dies without doing it (even by SIGKILL)
and stops the whole invocation after --time-limit seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dags

from dagrun import Orchestrator, RunResult, RunStatus, open_store, parse_flow

BENCH_DIR = Path(__file__).resolve().parent
TRANSPORTS = ("redis", "ws", "http")
READY_TIMEOUT_S = 60.0  # a server or worker must log that it is ready within this
STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL to the whole group after this
RUN_TIMEOUT_S = 120.0  # one run (warm-up or timed); far above any expected figure
TIME_LIMIT_S = 570.0  # the whole invocation; the watchdog enforces it
MAX_PARALLEL = 128  # steps in flight per run, as bench_local's default
WARM_STEPS = 200  # the warm-up run per transport: WIDE with this many steps
CHAIN_OVERHEAD_TARGET_US = 1000.0
WIDE_TARGET_STEPS_PER_S = 3000.0
CELERY_TARGET_RATIO = 3.0

# Runs as its own process, in its own session: Ctrl-C and this script's death do not reach it. It learns
# which process groups exist ("+PGID" / "-PGID" lines on stdin); when its stdin closes (this script ended,
# however) it kills those still listed and, unless the script said it cleaned up ("=" line), removes the
# temporary directory; past the time limit it sends this script SIGTERM, then SIGKILL.
WATCHDOG = r"""
import os, select, shutil, signal, sys, time
parent, limit_s, directory = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
groups, clean = set(), []
signal.signal(signal.SIGINT, signal.SIG_IGN)

def follow(timeout_s):
    deadline, pending = time.monotonic() + timeout_s, b""
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([0], [], [], left)[0]:
            continue
        data = os.read(0, 4096)
        if not data:
            return True
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            if line == b"=":
                clean.append(True)
            else:
                (groups.add if line[:1] == b"+" else groups.discard)(int(line[1:]))
    return False

def signal_parent(signum):
    try:
        os.kill(parent, signum)
    except OSError:
        pass

if not follow(limit_s):
    sys.stderr.write(f"bench_remote watchdog: time limit of {limit_s:g} s reached, stopping\n")
    signal_parent(signal.SIGTERM)
    if not follow(30):
        signal_parent(signal.SIGKILL)
for group in groups:
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
if not clean:
    shutil.rmtree(directory, ignore_errors=True)
"""


@dataclass(frozen=True, slots=True)
class Started:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


class Processes:
    """The processes this script starts, each the leader of its own process group, and their watchdog."""

    def __init__(self, directory: Path, *, time_limit_s: float) -> None:
        self.directory = directory
        self._started: list[Started] = []
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", WATCHDOG, str(os.getpid()), str(time_limit_s), str(directory)],
            stdin=subprocess.PIPE,
            start_new_session=True,
        )

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self, name: str, argv: list[str], *, env: dict[str, str] | None = None) -> Started:
        """Start `argv` in a new session (its own process group), output to a log file in `directory`."""
        log_path = self.directory / f"{name}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        started = Started(name, process, log_path)
        self._started.append(started)
        self._tell(f"+{process.pid}")
        return started

    def wait_ready(self, started: Started, pattern: str, *, timeout_s: float = READY_TIMEOUT_S) -> re.Match[str]:
        """The first match of `pattern` in the process's log; SystemExit if it exits or times out first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = re.search(pattern, started.log_path.read_text(errors="replace"))
            if match:
                return match
            if started.process.poll() is not None:
                raise SystemExit(f"{started.name} exited ({started.process.returncode}):\n{started.log_tail()}")
            time.sleep(0.05)  # startup only: the log line is the one readiness signal these processes give
        raise SystemExit(f"{started.name} not ready after {timeout_s:g} s:\n{started.log_tail()}")

    def stop(self, started: Started, *, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the group (workers drain), then SIGKILL whatever of it is left (celery's pool children).
        dagrun's sandbox children run in sessions of their own and die with their worker (PDEATHSIG)."""
        process = started.process
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            print_line(note=f"{started.name} ignored SIGTERM for {grace_s:g} s; killed")
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()
        self._started.remove(started)
        self._tell(f"-{process.pid}")

    def kill_all(self) -> None:
        """SIGKILL every group at once, without waiting (safe in a signal handler); `stop` reaps them."""
        for started in self._started:
            _signal_group(started.process.pid, signal.SIGKILL)

    def close(self) -> None:
        for started in reversed(list(self._started)):
            self.stop(started, grace_s=2.0)
        self._tell("=")  # every group is stopped and the caller removes the directory
        if self._watchdog.stdin:
            self._watchdog.stdin.close()  # the watchdog exits
        self._watchdog.wait(10)

    def _tell(self, line: str) -> None:
        assert self._watchdog.stdin is not None
        try:
            self._watchdog.stdin.write(f"{line}\n".encode())
            self._watchdog.stdin.flush()
        except BrokenPipeError:
            pass  # the watchdog is gone (killed by hand): `finally` still stops every group


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group has exited already
        os.killpg(pgid, signum)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class RedisServer:
    port: int
    started: Started

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


def start_redis(processes: Processes) -> RedisServer:
    port = free_port()
    data_dir = processes.directory / "redis"
    data_dir.mkdir()
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    started = processes.start("redis-server", [*argv, "--dir", str(data_dir), "--protected-mode", "yes"])
    processes.wait_ready(started, r"Ready to accept connections")
    return RedisServer(port, started)


class CpuMeter:
    """CPU time used so far by this process (all its threads) and by named process trees (a worker with
    its sandbox children, which run in sessions of their own; redis-server ...), read from /proc between
    runs; {} where there is no /proc."""

    def __init__(self, roots: dict[str, list[int]]) -> None:
        self._roots = roots
        self._enabled = Path("/proc/self/stat").exists()

    def read(self) -> dict[str, float]:
        if not self._enabled:
            return {}
        children: dict[int, list[int]] = {}
        cpu_s: dict[int, float] = {}
        tick_s = 1 / os.sysconf("SC_CLK_TCK")
        for entry in os.scandir("/proc") if self._roots else ():
            if entry.name.isdigit():
                try:
                    fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue  # it just exited (its time is lost: runs are measured one by one)
                children.setdefault(int(fields[1]), []).append(int(entry.name))
                cpu_s[int(entry.name)] = (int(fields[11]) + int(fields[12])) * tick_s  # utime + stime
        return {
            "caller": time.process_time(),
            **{name: _tree_cpu_s(pids, children, cpu_s) for name, pids in self._roots.items()},
        }

    def per_step_us(self, before: dict[str, float], steps: int) -> dict[str, Any]:
        if not before:
            return {}
        after = self.read()
        return {"cpu_us_per_step": {name: round((after[name] - before[name]) / steps * 1e6) for name in before}}


def _tree_cpu_s(roots: list[int], children: dict[int, list[int]], cpu_s: dict[int, float]) -> float:
    total, pending = 0.0, list(roots)
    while pending:
        pid = pending.pop()
        total += cpu_s.get(pid, 0.0)
        pending.extend(children.get(pid, ()))
    return total


# --- dagrun ---


@dataclass(frozen=True, slots=True)
class Mode:
    """One way of running the shapes: a name for the JSON lines and the executor URL (None: local)."""

    name: str
    transport: str
    url: str | None = None
    workers: int = 0
    concurrency: int | None = None
    token: str | None = None  # the workers' shared token

    def extra(self) -> dict[str, Any]:
        return {"workers": self.workers, "concurrency": self.concurrency} if self.workers else {}


def flow_document(name: str, dag: dict[str, list[str]], *, remote: bool) -> dict[str, Any]:
    document = dags.flow_document(name, dag)
    if remote:
        document["defaults"]["executor"] = "remote"
    return document


async def run_checked(orchestrator: Orchestrator, document: bytes, dag: dict[str, list[str]], shape: str) -> float:
    """Parse and run one flow, check its sinks; the wall time in seconds."""
    started = dags.now()
    flow = parse_flow(document)
    async with asyncio.timeout(RUN_TIMEOUT_S):
        result: RunResult = await orchestrator.run(flow, max_parallel=MAX_PARALLEL)
    wall_s = dags.now() - started
    if result.status != RunStatus.SUCCEEDED:
        failed = next((s for s, o in result.steps.items() if o.error), None)
        error = result.steps[failed].error if failed else None
        raise SystemExit(f"{shape}: run {result.run_id} ended {result.status}; {failed}: {error}")
    dags.check(dag, {s: result.steps[s].outputs.get("v") for s in dags.sinks(dag)})
    return wall_s


async def time_dagrun(mode: Mode, shapes: list[str], *, repeat: int, store_dir: Path, meter: CpuMeter) -> list[dict]:
    """A warm-up run, then `repeat` timed runs per shape; one JSON line each."""
    remote = mode.url is not None
    lines = []
    store_dir.mkdir()
    async with (
        open_store(str(store_dir)) as store,
        Orchestrator(store, executors={"remote": mode.url} if mode.url else {}, token=mode.token) as orchestrator,
    ):
        warm = dags.wide(WARM_STEPS)
        await run_checked(orchestrator, orjson.dumps(flow_document("warm", warm, remote=remote)), warm, "warm-up")
        for shape in shapes:
            dag = dags.build(shape)
            document = orjson.dumps(flow_document(shape.lower(), dag, remote=remote))  # as read from a flow file
            for _ in range(repeat):
                before = meter.read()
                wall_s = await run_checked(orchestrator, document, dag, shape)
                cpu = meter.per_step_us(before, len(dag))
                lines.append(dags.emit("dagrun", mode.name, shape, len(dag), wall_s, **mode.extra(), **cpu))
    return lines


def start_workers(processes: Processes, mode: Mode, *, redis_url: str, token_file: Path) -> tuple[Mode, list[Started]]:
    """Start the mode's workers and wait until they serve; the mode with its executor URL filled in."""
    base = [sys.executable, "-m", "dagrun", "worker", mode.transport]
    options = ["--concurrency", str(mode.concurrency), "--token-file", str(token_file)]
    if mode.transport == "redis":
        argv = [*base, redis_url, "--context", "default", *options]
        workers = [processes.start(f"{mode.name}-{i}", argv) for i in range(mode.workers)]
        for worker in workers:
            processes.wait_ready(worker, r"serving contexts")
        return dataclasses.replace(mode, url=redis_url), workers
    argv = [*base, "--host", "127.0.0.1", "--port", "0", *options]
    worker = processes.start(mode.name, argv)
    url = processes.wait_ready(worker, r"listening on ((?:ws|http)s?://\S+)").group(1)
    return dataclasses.replace(mode, url=url), [worker]


def remote_modes(args: argparse.Namespace, *, token: str) -> list[Mode]:
    """Redis: `--workers` processes for each `--redis-concurrency`; ws, http: one worker, one step per core."""
    modes = []
    for transport in args.transports:
        if transport == "redis":
            for concurrency in args.redis_concurrency:
                suffix = "" if concurrency == 1 else f"-c{concurrency}"
                name = f"redis-{args.workers}-workers{suffix}"
                modes.append(Mode(name, "redis", None, args.workers, concurrency, token))
        else:
            modes.append(Mode(f"{transport}-1-worker", transport, None, 1, os.cpu_count() or 1, token))
    return modes


def run_dagrun_modes(processes: Processes, args: argparse.Namespace, *, server: RedisServer) -> list[dict]:
    """The local CHAIN baseline, then every remote mode with its own workers and SQLite store."""
    token = secrets.token_urlsafe(24)
    token_file = processes.directory / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    lines = []
    if "CHAIN" in args.shapes:
        local, meter = Mode("local+sqlite", "local"), CpuMeter({})
        lines += asyncio.run(
            time_dagrun(local, ["CHAIN"], repeat=args.repeat, store_dir=_fresh(processes), meter=meter)
        )
    for planned in remote_modes(args, token=token):
        mode, workers = start_workers(processes, planned, redis_url=server.url(0), token_file=token_file)
        roots = {"workers": [worker.process.pid for worker in workers]}
        if mode.transport == "redis":
            roots["redis"] = [server.started.process.pid]
        meter = CpuMeter(roots)
        try:
            run = time_dagrun(mode, args.shapes, repeat=args.repeat, store_dir=_fresh(processes), meter=meter)
            lines += asyncio.run(run)
        finally:
            for worker in workers:
                processes.stop(worker)
        if mode.transport == "redis":
            with redis.Redis(port=server.port) as client:
                client.flushdb()  # the next mode starts from empty streams and groups
    return lines


def _fresh(processes: Processes) -> Path:
    return processes.directory / f"store-{secrets.token_hex(3)}"


# --- celery ---


def run_celery(processes: Processes, args: argparse.Namespace, *, server: RedisServer) -> list[dict]:
    """Celery prefork -c 2 on the same redis-server (broker db 1, results db 2): warm-up, then the shapes."""
    import celery_peer

    broker_url, backend_url = server.url(1), server.url(2)
    queue = f"dagrun-bench-{secrets.token_hex(3)}"
    celery_peer.configure(broker_url=broker_url, backend_url=backend_url)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")]))}
    argv = celery_peer.worker_argv(broker_url=broker_url, backend_url=backend_url, queue=queue)
    worker = processes.start("celery-worker", argv, env=env)
    meter = CpuMeter({"workers": [worker.process.pid], "redis": [server.started.process.pid]})
    lines = []
    try:
        celery_peer.DagDriver(dags.wide(WARM_STEPS), queue=queue).run(timeout_s=READY_TIMEOUT_S)  # waits for startup
        for shape in args.shapes:
            dag = dags.build(shape)
            for _ in range(args.repeat):
                before = meter.read()
                started = dags.now()
                values = celery_peer.DagDriver(dag, queue=queue).run(timeout_s=RUN_TIMEOUT_S)
                wall_s = dags.now() - started
                dags.check(dag, {s: values[s]["v"] for s in dags.sinks(dag)})
                cpu = meter.per_step_us(before, len(dag))
                lines.append(
                    dags.emit("celery", "prefork-c2-redis", shape, len(dag), wall_s, workers=1, concurrency=2, **cpu)
                )
    finally:
        processes.stop(worker)
        celery_peer.app.close()
    return lines


# --- summary ---


def medians(lines: list[dict]) -> dict[tuple[str, str], dict[str, float]]:
    """(mode, shape) -> median us_per_step and steps_per_s."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for line in lines:
        runs.setdefault((line["mode"], line["shape"]), []).append(line)
    return {
        key: {
            "us_per_step": statistics.median(r["us_per_step"] for r in found),
            "steps_per_s": statistics.median(r["steps_per_s"] for r in found),
        }
        for key, found in runs.items()
    }


def print_line(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def summarize(ours: list[dict], peer: list[dict]) -> None:
    got = medians(ours)
    remote = [mode for mode in dict.fromkeys(line["mode"] for line in ours) if mode != "local+sqlite"]
    print_chain_overhead(got, remote)
    print_redis_concurrency(got, remote)
    print_targets(got, remote)
    celery = medians(peer)
    for mode in remote:
        transport = mode.split("-", 1)[0]
        for (_, shape), figures in celery.items():
            if (mode, shape) not in got:
                continue
            ratio = round(figures["us_per_step"] / got[mode, shape]["us_per_step"], 2)
            print_line(ratio=f"dagrun-{transport}/celery", mode=mode, shape=shape, speed_ratio=ratio)
            if transport == "redis":
                target = f"{mode} {shape} >= {CELERY_TARGET_RATIO:g}x celery's steps/s"
                print_line(target=target, value=ratio, met=ratio >= CELERY_TARGET_RATIO)


def print_chain_overhead(got: dict[tuple[str, str], dict[str, float]], remote: list[str]) -> None:
    """CHAIN runs one step at a time, so its µs/step is the latency of a step. The dispatch overhead is
    what a transport adds to it: remote CHAIN µs/step minus local CHAIN µs/step, both medians of this
    invocation and both including parsing, the sandbox's own time and SQLite persistence."""
    local = got.get(("local+sqlite", "CHAIN"))
    for mode in remote:
        if (mode, "CHAIN") not in got:
            continue
        us = got[mode, "CHAIN"]["us_per_step"]
        overhead = round(us - local["us_per_step"], 1) if local else None
        local_us = local["us_per_step"] if local else None
        print_line(
            overhead=mode, shape="CHAIN", us_per_step=us, local_us_per_step=local_us, dispatch_overhead_us=overhead
        )


def print_redis_concurrency(got: dict[tuple[str, str], dict[str, float]], remote: list[str]) -> None:
    redis_modes = [mode for mode in remote if mode.startswith("redis-")]
    if len(redis_modes) < 2:
        return
    shapes = sorted({shape for mode, shape in got if mode in redis_modes})
    for shape in shapes:
        found = {mode: got[mode, shape]["us_per_step"] for mode in redis_modes if (mode, shape) in got}
        print_line(better="redis worker concurrency", shape=shape, us_per_step=found, best=min(found, key=found.get))


def print_targets(got: dict[tuple[str, str], dict[str, float]], remote: list[str]) -> None:
    local = got.get(("local+sqlite", "CHAIN"))
    for mode in (m for m in remote if m.startswith("redis-")):
        if (mode, "WIDE") in got:
            value = got[mode, "WIDE"]["steps_per_s"]
            print_line(
                target=f"{mode} WIDE >= {WIDE_TARGET_STEPS_PER_S:g} steps/s",
                value=value,
                met=value >= WIDE_TARGET_STEPS_PER_S,
            )
        if (mode, "CHAIN") in got and local:
            value = round(got[mode, "CHAIN"]["us_per_step"] - local["us_per_step"], 1)
            print_line(
                target=f"{mode} CHAIN dispatch overhead <= {CHAIN_OVERHEAD_TARGET_US:g} us/step",
                value=value,
                met=value <= CHAIN_OVERHEAD_TARGET_US,
            )


# --- entry point ---


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transports", default=",".join(TRANSPORTS), help="comma-separated: redis,ws,http")
    parser.add_argument("--shapes", default=",".join(dags.SHAPES))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="redis worker processes (default 2)")
    parser.add_argument("--redis-concurrency", default="1,2", help="--concurrency of each redis worker, each tried")
    parser.add_argument("--no-peer", action="store_true", help="skip celery even when it is installed")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT_S, help="seconds for the whole invocation")
    args = parser.parse_args()
    args.transports = _names(args.transports, TRANSPORTS)
    args.shapes = [shape.upper() for shape in _names(args.shapes.upper(), dags.SHAPES)]
    args.redis_concurrency = [int(n) for n in args.redis_concurrency.split(",") if n.strip()]
    return args


def _names(text: str, known: tuple[str, ...]) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown {unknown!r}; choose from {', '.join(known)}")
    return names


def main() -> int:
    args = parse_args()
    # Other processes on the machine skew the absolute figures (not so much the ratios): say how busy it was.
    print_line(host={"cores": os.cpu_count(), "loadavg_1m_before": round(os.getloadavg()[0], 2)})
    with (
        tempfile.TemporaryDirectory(prefix="dagrun-bench-remote-") as tmp,
        Processes(Path(tmp), time_limit_s=args.time_limit) as processes,
    ):
        received: list[int] = []

        def stop_now(signum: int, frame: object) -> None:
            # Kill first: a run waiting on a dead worker, or a cancellation swallowed on the way out of
            # asyncio.run, must not keep anything alive. Then unwind: `finally` blocks reap and clean up.
            received.append(signum)
            processes.kill_all()
            raise KeyboardInterrupt

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, stop_now)
        try:
            server = start_redis(processes)
            ours = run_dagrun_modes(processes, args, server=server)
            peer = [] if args.no_peer else run_peer(processes, args, server=server)
        except KeyboardInterrupt:
            signum = received[0] if received else signal.SIGINT
            print_line(note=f"{signal.Signals(signum).name}: every process started here was stopped")
            return 128 + signum
    summarize(ours, peer)
    return 0


def run_peer(processes: Processes, args: argparse.Namespace, *, server: RedisServer) -> list[dict]:
    try:
        import celery  # noqa: F401
    except ImportError:
        print('{"note": "celery is not installed; pip install -e \'.[bench]\' to compare"}', flush=True)
        return []
    return run_celery(processes, args, server=server)


if __name__ == "__main__":
    sys.exit(main())
