#!/usr/bin/env python3
"""Fairness on a shared Redis queue: how long a small run takes beside big runs on the same workers.

Starts its own redis-server (127.0.0.1, a free port, no persistence) and `--workers` worker processes
(one sandbox process each), as bench_remote.py does. Times a small run (`--small` steps: a root, the
steps between, a join) alone, then beside 1 and then 3 (`--big-runs`) WIDE runs of `--big` steps
submitted one second before it, all driven by one orchestrator with the default `max_parallel`: each
run keeps at most that many steps queued or running, so the small run's steps wait behind at most
`max_parallel` steps of each big run, not behind all of them. The big runs are cancelled once the small
one has ended. Prints one JSON line per measurement, medians of `--repeat`:

    python benchmarks/bench_fairness.py                   # 10 steps beside 1 and 3 runs of 10,000
    python benchmarks/bench_fairness.py --big-runs 1 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_remote
import dags

from dagrun import ControlError, Orchestrator, RunStatus, open_store, parse_flow
from dagrun.engine.orchestrator import DEFAULT_MAX_PARALLEL
from dagrun.flow.model import Flow

HEAD_START_S = 1.0  # the big runs are submitted this long before the small one, as in issue 17


def flow(name: str, steps: int) -> Flow:
    """A root, `steps - 2` steps that depend on it, a join; every step a trivial script on the workers."""
    return parse_flow(bench_remote.flow_document(name, dags.wide(steps - 2), remote=True))


async def small_run_s(orchestrator: Orchestrator, small: Flow) -> float:
    started = time.perf_counter()
    result = await orchestrator.run(small)
    if result.status != RunStatus.SUCCEEDED:
        raise SystemExit(f"the small run ended {result.status}")
    return time.perf_counter() - started


async def beside_big_runs(orchestrator: Orchestrator, small: Flow, big: Flow, count: int) -> float:
    """The small run's time, submitted HEAD_START_S after `count` big runs; the big runs are cancelled after."""
    big_ids = [await orchestrator.start_run(big) for _ in range(count)]
    await asyncio.sleep(HEAD_START_S)
    try:
        took_s = await small_run_s(orchestrator, small)
    finally:
        for run_id in big_ids:
            with contextlib.suppress(ControlError):  # a big run may have ended first: then it was not fair
                await orchestrator.control.cancel(run_id)
        for run_id in big_ids:
            await orchestrator.control.wait_for_completion(run_id, timeout_s=bench_remote.RUN_TIMEOUT_S)
    for run_id in big_ids:
        if (await orchestrator.control.status(run_id)).run.status != RunStatus.CANCELLED:
            bench_remote.print_line(note=f"big run {run_id} ended before the small one")
    return took_s


async def measure(args: argparse.Namespace, url: str, token: str, store_dir: Path) -> None:
    small, big = flow("small", args.small), flow("big", args.big)
    async with (
        open_store(str(store_dir)) as store,
        Orchestrator(store, executors={"remote": url}, token=token) as orchestrator,
    ):
        await orchestrator.run(flow("warm-up", 200))
        alone = statistics.median([await small_run_s(orchestrator, small) for _ in range(args.repeat)])
        bench_remote.print_line(bench="fairness", small_steps=args.small, big_runs=0, small_run_s=round(alone, 3))
        for count in args.big_runs:
            times = [await beside_big_runs(orchestrator, small, big, count) for _ in range(args.repeat)]
            beside = statistics.median(times)
            bench_remote.print_line(
                bench="fairness", small_steps=args.small, big_runs=count, big_steps=args.big,
                max_parallel=DEFAULT_MAX_PARALLEL, small_run_s=round(beside, 3), alone_s=round(alone, 3),
                ratio=round(beside / alone, 2), runs_s=[round(t, 3) for t in times],
            )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=10, help="steps of the small run (default 10)")
    parser.add_argument("--big", type=int, default=10_000, help="steps of each big run (default 10,000)")
    parser.add_argument("--big-runs", type=lambda text: [int(n) for n in text.split(",")], default=[1, 3])
    parser.add_argument("--workers", type=int, default=2, help="redis worker processes (default 2)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    bench_remote.print_line(host={"cores": os.cpu_count(), "loadavg_1m_before": round(os.getloadavg()[0], 2)})
    with (
        tempfile.TemporaryDirectory(prefix="dagrun-bench-fairness-") as tmp,
        bench_remote.Processes(Path(tmp), time_limit_s=bench_remote.TIME_LIMIT_S) as processes,
    ):
        server = bench_remote.start_redis(processes)
        token = secrets.token_urlsafe(24)
        token_file = processes.directory / "token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        planned = bench_remote.Mode("redis", "redis", None, args.workers, 1, token)
        mode, _ = bench_remote.start_workers(processes, planned, redis_url=server.url(0), token_file=token_file)
        assert mode.url is not None
        asyncio.run(measure(args, mode.url, token, processes.directory / "store"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
