#!/usr/bin/env python3
"""What the Redis transport's signatures cost per step: the caller signs the request, the worker checks
it and seals the result, the caller opens the result (`executors/redis_queue/signing.py`).

Times those four calls on the envelopes of a benchmark step (a LAYERED step: three inputs, an empty
context, the one-line script) and, for scale, of a step whose context holds 64 KiB. Prints one JSON
line per envelope size: CPU time in µs per step (the least of --repeat timings), each call and their sum.

    python benchmarks/bench_signing.py
    python benchmarks/bench_signing.py --context-kib 0 --context-kib 1024
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dags

from dagrun.contract.envelope import encode_request, encode_result
from dagrun.contract.executor import StepRequest, StepResult, script_hash
from executors.redis_queue.connection import Keys
from executors.redis_queue.signing import Signer

CALLS_PER_TIMING = 5000


def step_calls(context_kib: int) -> dict[str, Callable[[], object]]:
    """The four signature calls of one step, on its real request and result envelopes."""
    keys = Keys()
    signer = Signer.from_token("bench-token-0123456789abcdef", who="the benchmark")
    stream, reply_stream = keys.requests("default"), keys.replies("host-4242-0a1b2c3d").encode()
    request_id = b"r-5f3a9c2e1b7d4a60/l7_42#1/1234"
    context = {"blob": "x" * (context_kib * 1024)} if context_kib else {}
    inputs = {"l6_41": 120, "l6_42": 121, "l6_43": 122}
    script = dags.STEP_SCRIPT
    request = StepRequest("r-5f3a9c2e1b7d4a60", "l7_42", 1, script, script_hash(script), inputs, context)
    envelope = encode_request(request)
    result = encode_result(StepResult(ok=True, outputs={"v": 364}, elapsed_ms=0.4, worker_id="host:4243"))
    fields = signer.request_fields(stream, request_id, reply_stream, envelope)
    entry = dict(zip(fields[::2], fields[1::2], strict=True))
    sealed = signer.seal_result(reply_stream, request_id, result)
    return {
        "sign_request": lambda: signer.request_fields(stream, request_id, reply_stream, envelope),
        "check_request": lambda: signer.request_problem(stream, entry),
        "seal_result": lambda: signer.seal_result(reply_stream, request_id, result),
        "open_result": lambda: signer.open_result(reply_stream, request_id, sealed),
    }


def time_us(call: Callable[[], object], repeat: int) -> float:
    """A call's CPU time in µs: the least of `repeat` timings (as timeit advises: the others measure how much
    other processes on the machine disturbed it, not the call)."""
    timings = timeit.repeat(call, number=CALLS_PER_TIMING, repeat=repeat, timer=time.process_time)
    return min(timings) / CALLS_PER_TIMING * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context-kib", type=int, action="append", help="context sizes to time (default 0, 64)")
    parser.add_argument("--repeat", type=int, default=25)
    args = parser.parse_args()
    for context_kib in args.context_kib or [0, 64]:
        calls = step_calls(context_kib)
        figures = {name: round(time_us(call, args.repeat), 2) for name, call in calls.items()}
        line = {"context_kib": context_kib, "us_per_step": round(sum(figures.values()), 2), **figures}
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
