#!/usr/bin/env python3
"""A mapped step against the same number of static steps, and what a pending instance costs.

Throughput: a flow whose one step maps over N items (each instance a trivial script) against a flow of N
independent static steps running the same script (WIDE), on the sandboxed local executor with a SQLite
store, in the same process, taking turns; each run is timed from parsing the flow to the final flush, and
`max_parallel` is the same for both. Issue 14 asks for a map at 80% of the static throughput at least.

Memory: the orchestrator's memory (tracemalloc) once a map over N items has started with one instance
held, for two sizes of N; the difference over the extra items is what one pending instance costs,
the list's own item included (it is an output of the run, held anyway). Issue 14 asks for under 2 KiB.

    python benchmarks/bench_map.py                 # 10,000 items, 3 rounds; memory at 10,000 and 100,000
    python benchmarks/bench_map.py --items 1000 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dags

from dagrun import Orchestrator, RunStatus, open_store, parse_flow
from dagrun.contract.dispatch import Dispatch
from dagrun.contract.executor import StepRequest, StepResult
from dagrun.store import MemoryStore

SCRIPT = "outputs['v'] = inputs['item'] + 1"


def mapped(items: int) -> dict[str, Any]:
    return {
        "name": "mapped",
        "defaults": {"timeout_s": 60},
        "inputs": {"items": list(range(items))},
        "steps": [{"id": "each", "script": SCRIPT, "map": {"over": "${flow.items}"}, "outputs": ["v"]}],
    }


def static(items: int) -> dict[str, Any]:
    steps = [{"id": f"s{i}", "script": SCRIPT, "inputs": {"item": i}, "outputs": ["v"]} for i in range(items)]
    return {"name": "static", "defaults": {"timeout_s": 60}, "steps": steps}


async def throughput(items: int, rounds: int, max_parallel: int) -> dict[str, list[float]]:
    walls: dict[str, list[float]] = {"map": [], "static": []}
    with tempfile.TemporaryDirectory(prefix="dagrun-bench-") as tmp:
        async with open_store(tmp) as store, Orchestrator(store) as orchestrator:
            await orchestrator.run(parse_flow(dags.flow_document("warm", dags.wide(200))))
            for _ in range(rounds):
                for shape, document in (("map", mapped(items)), ("static", static(items))):
                    started = time.perf_counter()
                    result = await orchestrator.run(parse_flow(document), max_parallel=max_parallel)
                    walls[shape].append(time.perf_counter() - started)
                    if result.status != RunStatus.SUCCEEDED:
                        raise SystemExit(f"{shape}: run {result.run_id} ended {result.status}")
    return walls


class Held:
    """An executor whose first call is held until released; the map starts no other (max_parallel 1)."""

    def __init__(self) -> None:
        self.called = asyncio.Event()
        self.release = asyncio.Event()

    async def call(self, request: StepRequest, dispatch: Dispatch | None = None) -> StepResult:
        self.called.set()
        await self.release.wait()
        return StepResult(ok=True, outputs={"v": 0})

    async def aclose(self) -> None:
        pass


async def memory_with_one_instance_held(items: int) -> int:
    """tracemalloc's current bytes once the map over `items` has started its first instance."""
    document = mapped(items)
    document["steps"][0]["map"]["max_parallel"] = 1
    flow = parse_flow(document)
    executor = Held()
    async with MemoryStore() as store, Orchestrator(store, executors={"local": executor}) as orchestrator:
        tracemalloc.start()
        task = asyncio.create_task(orchestrator.run(flow))
        await executor.called.wait()
        current, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return current


async def main(args: argparse.Namespace) -> None:
    walls = await throughput(args.items, args.rounds, args.max_parallel)
    medians = {shape: statistics.median(values) for shape, values in walls.items()}
    ratio = medians["static"] / medians["map"]
    print(f"{args.items} items, max_parallel {args.max_parallel}, medians of {args.rounds} (rounds: {walls})")
    for shape, median in medians.items():
        print(f"  {shape:<7} {median:.2f} s  {args.items / median:,.0f} steps/s")
    print(f"  map throughput / static throughput: {ratio:.2f}")
    small, large = args.memory_sizes
    grown = await memory_with_one_instance_held(large) - await memory_with_one_instance_held(small)
    print(f"memory per pending instance: {grown / (large - small):,.0f} bytes ({small:,} vs {large:,} items)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-parallel", type=int, default=128)
    parser.add_argument("--memory-sizes", type=int, nargs=2, default=(10_000, 100_000), metavar=("SMALL", "LARGE"))
    asyncio.run(main(parser.parse_args()))
