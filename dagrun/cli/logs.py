"""`dagrun logs`: what each attempt of a run's steps printed (`log()` and `print`), every attempt's.

An attempt's lines reach the store with its result, so they appear when the attempt ends, not as it prints;
`--follow` prints each attempt's lines as it ends (driven by the run's events), until the run ends. Lines
are ``STEP#ATTEMPT (WORKER) | line`` in the order the attempts ended: greppable, and never read as markup;
a succeeded attempt's context writes follow its lines, one a line (``... | context: set extracted = 30``), and a
failed attempt's error with its script line (``... | error: ValueError: bad (script line 3: x = int(y))``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from dagrun.cli import render
from dagrun.cli.commands import EXIT_OK, opened_store, require_step
from dagrun.contract.context import ContextOp, ContextOpKind
from dagrun.engine.control import RunControl
from dagrun.engine.views import attempt_log_json, script_line
from dagrun.store.base import AttemptLog


def logs(args: argparse.Namespace) -> int:
    async def show() -> int:
        async with opened_store(args, read_only=True) as store:
            flow = (await store.get_run(args.run)).flow
            if args.step is not None:
                require_step(args.run, args.step, await store.get_steps(args.run))
            if args.follow:
                async for log in RunControl(store).follow_logs(args.run, step_id=args.step, attempt=args.attempt):
                    _print_log(log, flow, as_json=args.json)
                return EXIT_OK
            found = await store.get_logs(args.run, step_id=args.step, attempt=args.attempt)
        for log in found:
            _print_log(log, flow, as_json=args.json)
        if not found:
            sys.stderr.write(f"dagrun: run {args.run}: no logs{_which(args)} (an attempt's arrive when it ends)\n")
        return EXIT_OK

    return asyncio.run(show())


def _which(args: argparse.Namespace) -> str:
    step = f" of step {args.step}" if args.step is not None else ""
    return step + (f" in attempt {args.attempt}" if args.attempt is not None else "")


def _print_log(log: AttemptLog, flow: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(attempt_log_json(log, flow)).decode() + "\n")
    else:
        printed = [*log.text.splitlines(), *map(_context_line, log.context_ops), *_error_lines(log, flow)]
        lines = render.log_lines(log.step_id, log.attempt, log.worker_id, printed)
        sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()


def _error_lines(log: AttemptLog, flow: dict[str, Any]) -> list[str]:
    """A failed attempt's error after its lines: ``error: ValueError: bad (script line 3: x = int(y))``."""
    if log.error is None:
        return []
    source = script_line(flow, log.step_id, log.error.line)
    where = "" if log.error.line is None else f" (script line {log.error.line}{f': {source}' if source else ''})"
    return [f"error: {log.error.type}: {log.error.message}{where}"]


def _context_line(op: ContextOp) -> str:
    """One context write, its value as JSON: ``context: incr transformed by 3``."""
    value = orjson.dumps(op.value).decode()
    if op.kind == ContextOpKind.INCR:
        return f"context: incr {op.key} by {value}"
    if op.kind == ContextOpKind.APPEND:
        return f"context: append {value} to {op.key}"
    return f"context: set {op.key} = {value}"
