#!/usr/bin/env python3
"""How long the `dagrun` command takes to start: the median of --repeat cold starts (new processes) of
`dagrun --help`, `dagrun status RUN` and `dagrun runs`, against `python -c pass` timed in the same run.

The commands run as `python -m dagrun` in this checkout (whatever is installed), on a SQLite store in a temporary
directory that holds one finished run (a one-step flow run first). Each command runs once untimed, so
that bytecode caches exist (even where $PYTHONDONTWRITEBYTECODE is set); then the commands take turns,
so that a busy moment of the machine falls on all of them alike. Prints a table: each command's median
and how much longer it takes than Python alone.

    python benchmarks/bench_startup.py
    python benchmarks/bench_startup.py --repeat 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOW = {"name": "tiny", "steps": [{"id": "one", "script": "outputs['n'] = 1"}]}


def environment(store: Path) -> dict[str, str]:
    """This checkout's dagrun, whatever is installed, and the benchmark's store (the commands also run in
    this checkout: `python -m` looks in the current directory first)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DAGRUN_STORE": str(store)}
    env.pop("DAGRUN_DEBUG", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a start-up reads bytecode caches; compiling is not what we time
    return env


def finished_run(directory: Path, env: dict[str, str]) -> str:
    """The id of a run of the one-step flow, run to its end in the benchmark's store."""
    flow = directory / "tiny.json"
    flow.write_text(json.dumps(FLOW))
    ran = subprocess.run(
        [sys.executable, "-m", "dagrun", "run", str(flow), "--json"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if ran.returncode != 0:
        raise SystemExit(f"the run the benchmark reads failed: {ran.stderr.strip()}")
    return str(json.loads(ran.stdout)["run_id"])


def start_s(command: list[str], env: dict[str, str]) -> float:
    """Wall time of one process running `command` to its end (output into a pipe, as a script reads it)."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True)
    elapsed_s = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}: {done.stderr.decode().strip()}")
    return elapsed_s


def medians(commands: dict[str, list[str]], env: dict[str, str], repeat: int) -> dict[str, float]:
    for command in commands.values():
        start_s(command, env)  # untimed: writes the bytecode caches
    timings: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, command in commands.items():
            timings[name].append(start_s(command, env))
    return {name: statistics.median(found) for name, found in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=10, help="cold starts of each command (default 10)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dagrun-bench-") as tmp:
        env = environment(Path(tmp) / "store")
        run_id = finished_run(Path(tmp), env)
        dagrun = [sys.executable, "-m", "dagrun"]
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "dagrun --help": [*dagrun, "--help"],
            "dagrun status RUN": [*dagrun, "status", run_id],
            "dagrun runs": [*dagrun, "runs"],
        }
        found = medians(commands, env, args.repeat)
    baseline = found["python -c pass"]
    print(f"{'command':<20}{'median':>10}{'over python':>14}   ({args.repeat} cold starts each)")
    for name, median_s in found.items():
        print(f"{name:<20}{median_s:>9.3f}s{median_s - baseline:>+13.3f}s")


if __name__ == "__main__":
    main()
