"""What each `dagrun` sub-command does; parsing and error handling are in `dagrun.cli`.

Each command takes the parsed arguments and returns the process exit code. Exit codes: 0 success,
1 the run failed or was cancelled, 2 bad input (invalid flow, unknown run, no store to read), 3 the
environment failed (store or executor, or a store that lost the run being driven). Commands that only
read open the store read-only, and load neither the flow model nor the sandbox nor the orchestrator: the
commands that need them import them inside.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shlex
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import orjson

from dagrun.cli import EXIT_INTERRUPTED, render
from dagrun.cli.flow_options import read_flow
from dagrun.cli.interrupt import handing_back_on_interrupt, how_to_resume
from dagrun.cli.run_ids import resolve_run_id
from dagrun.cli.run_report import DurableSteps, StepsSeen, failures_of, not_persisted
from dagrun.cli.worker import read_token_file
from dagrun.contract.states import RunStatus
from dagrun.engine.control import RunControl
from dagrun.engine.defaults import DEFAULT_LEASE_S, DEFAULT_MAX_MAP_ITEMS, DEFAULT_MAX_PARALLEL
from dagrun.engine.views import event_json, run_json
from dagrun.errors import FlowError, Problem, RunHandedBack, RunLost, StoreError, redact
from dagrun.store import DEFAULT_STORE, open_store
from dagrun.store.base import Event, StepRecord, Store

if TYPE_CHECKING:
    from rich.console import Console

    from dagrun.contract.executor import Executor
    from dagrun.engine.orchestrator import Orchestrator, RunResult, StepListener
    from dagrun.flow.model import Flow

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

stdout = render.console()
stderr = render.console(stderr=True)


def print_json(document: Any) -> None:
    sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")


@asynccontextmanager
async def opened_store(args: argparse.Namespace, *, read_only: bool = False) -> AsyncIterator[Store]:
    """The --store, closed on exit; `read_only` for commands that only read (they create no store). A command's
    `run` argument becomes there the whole id of the run it names (a prefix, `last`: see `run_ids`)."""
    store = open_store(args.store, read_only=read_only)
    try:
        if getattr(args, "run", None) is not None:
            args.run = await resolve_run_id(store, args.run, where=args.store)
        yield store
    finally:
        await store.aclose()


def store_option(args: argparse.Namespace) -> str:
    """The `--store` option that names this command's store in a command printed for the user to run
    from the same shell ("" for the store it would find by itself); credentials are hidden."""
    if args.store == os.environ.get("DAGRUN_STORE", DEFAULT_STORE):
        return ""
    return f" --store {shlex.quote(redact(args.store))}"


def parse_inputs(pairs: list[str], *, option: str = "--input") -> dict[str, Any]:
    """``k=v`` pairs; a value that parses as JSON is taken as that value (3, true, [1]), else as text."""
    inputs: dict[str, Any] = {}
    problems = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            problems.append(Problem(option, f"{pair!r} is not KEY=VALUE"))
            continue
        try:
            inputs[key] = orjson.loads(value)
        except orjson.JSONDecodeError:
            inputs[key] = value
    if problems:
        raise FlowError(problems, source="command line")
    return inputs


def parse_executors(pairs: list[str]) -> dict[str, Executor | str]:
    """``NAME=URL`` pairs from --executor; FlowError for a malformed one."""
    executors: dict[str, Executor | str] = {}
    for pair in pairs:
        name, sep, url = pair.partition("=")
        if not sep or not name or not url:
            raise FlowError([Problem("--executor", f"{redact(pair)!r} is not NAME=URL")], source="command line")
        executors[name] = url
    return executors


def orchestrator_from_args(args: argparse.Namespace, store: Store, *, token_file: str | None) -> Orchestrator:
    """The orchestrator `run`, `resume`, `orchestrator` and `serve api --orchestrate` configure from the same
    options; `token_file` holds the remote workers' token (each command names that option its own way)."""
    from dagrun.engine.orchestrator import Orchestrator

    orchestrator = Orchestrator(
        store,
        executors=parse_executors(args.executor),
        processes=args.processes,
        token=read_token_file(token_file) if token_file else None,
        lease_s=DEFAULT_LEASE_S if args.lease_s is None else args.lease_s,
        max_parallel=DEFAULT_MAX_PARALLEL if args.max_parallel is None else args.max_parallel,
        fail_fast=args.fail_fast,
        max_map_items=DEFAULT_MAX_MAP_ITEMS if args.max_map_items is None else args.max_map_items,
    )
    orchestrator.executors.open_all()  # a malformed --executor URL is refused even when no step uses it
    return orchestrator


async def check_executors_here(args: argparse.Namespace, orchestrator: Orchestrator, flow: Flow) -> None:
    """Before a run of `flow` is recorded: ExecutorError (exit 3) for a remote executor its steps use that
    cannot be reached or refuses the token; a warning for a context no live worker serves, and for an
    --executor no step names (most likely a typo in a step's `executor` or here)."""
    for line in await orchestrator.executors.unserved_contexts(flow):
        stderr.print(f"dagrun: warning: {line}", soft_wrap=True)
    used = sorted({step.executor for _, step in flow.script_steps()})
    for name in parse_executors(args.executor):
        if name not in used:
            stderr.print(
                f"dagrun: warning: --executor {name} is used by no step of flow {flow.name!r} "
                f"(its steps use: {', '.join(used) or 'none'})",
                soft_wrap=True,
            )


def validate(args: argparse.Namespace) -> int:
    flow = read_flow(args)
    stdout.print(f"{args.flow}: valid flow {flow.name!r} with {len(flow.steps)} steps")
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    flow = read_flow(args)
    inputs = parse_inputs(args.input)
    # The flow lives as long as the process: keep its objects out of the cyclic GC's full passes, which
    # otherwise rescan them over and over (measured on a 100k-step flow: about a fifth of its time).
    gc.freeze()
    return asyncio.run(_run(args, flow, inputs))


async def _run(args: argparse.Namespace, flow: Flow, inputs: dict[str, Any]) -> int:
    async with opened_store(args) as store:
        return await drive_here(
            args, store, flow, lambda orchestrator, listener: orchestrator.run(flow, inputs=inputs, listener=listener)
        )


async def drive_here(
    args: argparse.Namespace,
    store: Store,
    flow: Flow,
    begin: Callable[[Orchestrator, StepListener], Awaitable[RunResult]],
    *,
    rerun_of: str | None = None,
) -> int:
    """Run `flow` here to its end as `begin` starts it, with progress and summary: `dagrun run`, `rerun`."""
    console = stderr if args.json else stdout
    started = time.monotonic()
    async with orchestrator_from_args(args, store, token_file=args.token_file) as orchestrator:
        await check_executors_here(args, orchestrator, flow)
        progress = _progress(args, flow, console, rerun_of)
        durable = DurableSteps(store, None if args.json else progress.on_step)
        seen = StepsSeen(durable.on_step)
        shown: AbstractContextManager[object] = nullcontext() if args.json else progress
        with handing_back_on_interrupt(orchestrator) as interruption:
            try:
                with shown:
                    try:
                        result = await begin(orchestrator, seen.on_step)
                    finally:
                        unconfirmed = await durable.drain()
            except RunHandedBack as exc:
                if not interruption.happened:
                    raise
                stderr.print(how_to_resume(exc.run_id, store_option(args)), soft_wrap=True)
                return EXIT_INTERRUPTED
            except RunLost as exc:
                error = StoreError(f"store {redact(args.store)}: {exc}")
                if args.json:  # the promised document: the run as this process last knew it
                    print_json(seen.result(flow, exc.run_id).to_json() | {"error": str(error)})
                raise error from exc
            except StoreError:
                if unconfirmed:
                    sys.stderr.write(f"dagrun: {not_persisted(unconfirmed)}\n")
                raise
        await _report(args, store, console, result, started)
    return EXIT_OK if result.status == RunStatus.SUCCEEDED else EXIT_FAILED


def _progress(args: argparse.Namespace, flow: Flow, console: Console, rerun_of: str | None) -> render.RunProgress:
    waiting_for = {step.id: step.wait_for.fields for step in flow.steps if step.wait_for is not None}
    step_ids = [step.id for step in flow.steps]
    return render.RunProgress(console, flow.name, step_ids, waiting_for, store_option(args), rerun_of)


async def _report(args: argparse.Namespace, store: Store, console: Console, result: RunResult, started: float) -> None:
    """What `dagrun run` prints once the run has ended: the --json document, or the summary."""
    if args.json:
        print_json(result.to_json())
    else:
        records = await store.get_steps(result.run_id)
        failures = await failures_of(store, result)
        render.run_summary(console, result, records, failures, time.monotonic() - started)


def runs(args: argparse.Namespace) -> int:
    async def list_runs() -> int:
        async with opened_store(args, read_only=True) as store:
            status = RunStatus(args.status) if args.status else None
            found = await store.list_runs(status=status, flow_name=args.flow, limit=args.limit)
        if args.json:
            print_json([run_json(run) for run in found])
        elif found:
            stdout.print(render.runs_table(found))
        else:
            stdout.print("no runs")
        return EXIT_OK

    return asyncio.run(list_runs())


def status(args: argparse.Namespace) -> int:
    async def show() -> int:
        async with opened_store(args, read_only=True) as store:
            view = await RunControl(store).status(args.run)
        if args.json:
            print_json(view.to_json())
        else:
            render.run_header(stdout, view.run, driver=view.driver)
            stdout.print(render.steps_table(list(view.steps)))
            stdout.print(render.steps_tally(list(view.steps)))
        return EXIT_OK if view.run.status != RunStatus.FAILED else EXIT_FAILED

    return asyncio.run(show())


def outputs(args: argparse.Namespace) -> int:
    async def show() -> int:
        async with opened_store(args, read_only=True) as store:
            steps = await store.get_steps(args.run)
        if args.step is None:
            print_json({step.step_id: step.outputs for step in steps})
            return EXIT_OK
        print_json(require_step(args.run, args.step, steps).outputs)
        return EXIT_OK

    return asyncio.run(show())


def require_step(run_id: str, step_id: str, steps: list[StepRecord]) -> StepRecord:
    """The run's step `step_id`; a FlowError (exit 2) naming the run's steps when it has none."""
    for step in steps:
        if step.step_id == step_id:
            return step
    known = ", ".join(step.step_id for step in steps[:20])
    raise FlowError(
        [Problem(step_id, f"run {run_id!r} has no step {step_id!r} (steps: {known})")], source="command line"
    )


def events(args: argparse.Namespace) -> int:
    async def show() -> int:
        async with opened_store(args, read_only=True) as store:
            if args.follow:
                async for event in RunControl(store).follow_events(args.run, after_seq=args.after):
                    _print_event(event, as_json=args.json)
            else:
                for event in await store.get_events(args.run, after_seq=args.after):
                    _print_event(event, as_json=args.json)
        return EXIT_OK

    return asyncio.run(show())


def graph(args: argparse.Namespace) -> int:
    from dagrun.flow.drawing import to_dot, to_mermaid
    from dagrun.flow.limits import NO_LIMITS
    from dagrun.flow.loader import load_flow
    from dagrun.sandbox.policy import check_script

    flow = load_flow(
        args.flow, check_script=check_script, limits=NO_LIMITS, allow_outside_scripts=args.allow_outside_scripts
    )
    sys.stdout.write((to_dot(flow) if args.format == "dot" else to_mermaid(flow)) + "\n")
    return EXIT_OK


def schema(args: argparse.Namespace) -> int:
    from dagrun.flow.schema import flow_json_schema

    print_json(flow_json_schema())
    return EXIT_OK


def _print_event(event: Event, *, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(event_json(event)).decode() + "\n")
        sys.stdout.flush()
    else:
        stdout.print(render.event_line(event), soft_wrap=True)
