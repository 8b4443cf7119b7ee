#!/usr/bin/env python3
"""End-to-end throughput of dagrun on one machine: sandboxed local executor, SQLite store.

Each timed run covers validating the generated flow (networkx, RestrictedPython), creating the run,
dispatching every step to the warm sandbox pool, persisting every state change and output, and the
final flush; the pool is warmed once before timing. Prints one JSON line per run, and, when dask is
installed (``pip install -e '.[bench]'``), runs the same shapes on dask's threaded scheduler in the
same process and prints the ratio.

    python benchmarks/bench_local.py                     # WIDE, CHAIN, LAYERED, 3 runs each
    python benchmarks/bench_local.py --scaling           # WIDE at 1k, 10k, 100k steps: is µs/step flat?
    python benchmarks/bench_local.py --store memory://   # without persistence, for comparison
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dags

from dagrun import Orchestrator, RunStatus, open_store, parse_flow


async def run_dagrun(args: argparse.Namespace, plan: list[tuple[str, int | None]]) -> list[dict[str, Any]]:
    lines = []
    with tempfile.TemporaryDirectory(prefix="dagrun-bench-") as tmp:
        store_url = args.store or tmp
        async with open_store(store_url) as store, Orchestrator(store, processes=args.processes) as orchestrator:
            warm = parse_flow(dags.flow_document("warm", dags.wide(200)))
            await orchestrator.run(warm, max_parallel=args.max_parallel)
            for shape, size in plan:
                dag = dags.build(shape, size)
                document = orjson.dumps(dags.flow_document(shape.lower(), dag))  # as read from a flow file
                for _ in range(args.repeat):
                    started = dags.now()
                    flow = parse_flow(document)
                    result = await orchestrator.run(flow, max_parallel=args.max_parallel)
                    wall_s = dags.now() - started
                    if result.status != RunStatus.SUCCEEDED:
                        raise SystemExit(f"{shape}: run {result.run_id} ended {result.status}")
                    dags.check(dag, {s: result.steps[s].outputs.get("v") for s in dags.sinks(dag)})
                    mode = "local+" + ("memory" if store_url.startswith("memory") else "sqlite")
                    lines.append(dags.emit("dagrun", mode, shape, len(dag), wall_s, processes=args.processes))
    return lines


def run_dask(plan: list[tuple[str, int | None]], repeat: int) -> list[dict[str, Any]]:
    """dask's threaded scheduler on a plain task dict: the fastest peer row of PERFORMANCE.md."""
    import dask.threaded

    def step(*deps: dict[str, int]) -> dict[str, int]:
        return {"v": 1 + sum(d["v"] for d in deps)}

    lines = []
    for shape, size in plan:
        dag = dags.build(shape, size)
        sinks = dags.sinks(dag)
        for rep in range(repeat):
            started = dags.now()
            graph = {f"{rep}-{name}": (step, *[f"{rep}-{d}" for d in deps]) for name, deps in dag.items()}
            out = dask.threaded.get(graph, [f"{rep}-{s}" for s in sinks], num_workers=2)
            wall_s = dags.now() - started
            dags.check(dag, {s: r["v"] for s, r in zip(sinks, out, strict=True)})
            lines.append(dags.emit("dask", "threaded-graphdict", shape, len(dag), wall_s))
    return lines


def median_by_shape(lines: list[dict[str, Any]]) -> dict[str, float]:
    shapes: dict[str, list[float]] = {}
    for line in lines:
        shapes.setdefault(f"{line['shape']}:{line['steps']}", []).append(line["us_per_step"])
    return {key: statistics.median(values) for key, values in shapes.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(dags.SHAPES))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scaling", action="store_true", help="WIDE at 1k, 10k and 100k steps instead")
    parser.add_argument("--store", default=None, help="store URL (default: SQLite in a temporary directory)")
    parser.add_argument("--processes", type=int, default=None, help="sandbox processes (default: one per core)")
    parser.add_argument("--max-parallel", type=int, default=128)
    parser.add_argument("--no-peer", action="store_true", help="skip dask even when it is installed")
    args = parser.parse_args()

    if args.scaling:
        plan: list[tuple[str, int | None]] = [("WIDE", 1_000), ("WIDE", 10_000), ("WIDE", 100_000)]
    else:
        plan = [(shape.strip().upper(), None) for shape in args.shapes.split(",") if shape.strip()]
    ours = median_by_shape(asyncio.run(run_dagrun(args, plan)))
    if args.no_peer:
        return
    try:
        peer = median_by_shape(run_dask(plan, args.repeat))
    except ImportError:
        print('{"note": "dask is not installed; pip install -e \'.[bench]\' to compare"}', flush=True)
        return
    for key, us in ours.items():
        print(f'{{"ratio": "dagrun/dask", "shape": "{key}", "speed_ratio": {round(peer[key] / us, 2)}}}', flush=True)


if __name__ == "__main__":
    main()
