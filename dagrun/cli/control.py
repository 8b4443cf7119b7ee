"""The control-plane commands: `orchestrator`, `submit`, `pause`, `resume`, `cancel`, `signal`, `wait`,
`errors`, `metrics`, `pending`, `checkpoint`.

They work from any machine that reaches the store. `submit` records a run for an `orchestrator` to
drive; `resume` also drives a run itself when nobody does (its orchestrator died). Exit codes as in
`dagrun.cli.commands`, plus 124 when `wait` times out.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from rich.table import Table

from dagrun.cli import EXIT_INTERRUPTED, render
from dagrun.cli.commands import (
    EXIT_FAILED,
    EXIT_OK,
    opened_store,
    orchestrator_from_args,
    parse_inputs,
    print_json,
    stderr,
    stdout,
    store_option,
)
from dagrun.cli.flow_options import read_flow
from dagrun.cli.interrupt import handing_back_on_interrupt, how_to_resume
from dagrun.cli.run_report import failures_of
from dagrun.cli.worker import stop_on_signals
from dagrun.contract.states import RunStatus
from dagrun.engine.control import RunControl
from dagrun.engine.signals import wait_for_fields
from dagrun.errors import redact
from dagrun.store.base import Command

logger = logging.getLogger(__name__)

EXIT_TIMEOUT = 124  # as timeout(1)


def orchestrator(args: argparse.Namespace) -> int:
    async def serve() -> int:
        async with opened_store(args) as store:
            orchestrator = orchestrator_from_args(args, store, token_file=args.token_file)
            stop = stop_on_signals(f"orchestrator {orchestrator.owner}", "handing its runs back")
            await orchestrator.serve(stop, where=redact(args.store))
        return EXIT_OK

    return asyncio.run(serve())


PICKUP_WAIT_S = 1.0  # how long `submit` waits for an orchestrator to take its run up


def submit(args: argparse.Namespace) -> int:
    flow = read_flow(args)
    inputs = parse_inputs(args.input)

    async def record() -> int:
        async with opened_store(args) as store:
            run_id = await RunControl(store).submit(flow, inputs=inputs)
            # A serving orchestrator takes a submitted run up at once (the notice wakes it): no event soon
            # means that none runs on this store.
            if not await store.wait_events(run_id, after_seq=0, timeout_s=PICKUP_WAIT_S):
                stderr.print(
                    f"dagrun: warning: no orchestrator took run {run_id} up within {PICKUP_WAIT_S:g} s: nothing "
                    f"drives it until one serves this store (dagrun orchestrator{store_option(args)}), or "
                    f"`dagrun resume {run_id}{store_option(args)}` drives it here",
                    soft_wrap=True,
                )
        print(run_id)  # the last line, for scripts: RUN=$(dagrun submit flow.json | tail -1)
        return EXIT_OK

    return asyncio.run(record())


def pause(args: argparse.Namespace) -> int:
    return _send(args, RunControl.pause)


def cancel(args: argparse.Namespace) -> int:
    return _send(args, RunControl.cancel)


def _send(args: argparse.Namespace, command_of: Callable[[RunControl, str], Awaitable[Command]]) -> int:
    async def send() -> int:
        async with opened_store(args) as store:
            command = await command_of(RunControl(store), args.run)
            run = await store.get_run(args.run)
        stdout.print(f"run {args.run}: {command.kind} sent (command {command.seq}); the run is {run.status}")
        return EXIT_OK

    return asyncio.run(send())


def resume(args: argparse.Namespace) -> int:
    async def resume_here() -> int:
        async with (
            opened_store(args) as store,
            orchestrator_from_args(args, store, token_file=args.token_file) as orchestrator,
        ):
            if args.detach:
                await orchestrator.control.resume(args.run)
                stdout.print(f"run {args.run}: resume sent")
                return EXIT_OK
            run = await store.get_run(args.run)
            lease = await store.get_lease(args.run)
            if lease is not None:
                stdout.print(f"run {args.run}: {lease.owner} holds it; sending resume, waiting for an answer")
            progress = render.RunProgress(
                stdout, run.flow_name, [str(step.get("id")) for step in run.flow.get("steps", [])],
                waiting_for=wait_for_fields(run), store_option=store_option(args),
            )  # fmt: skip
            started = time.monotonic()
            with progress, handing_back_on_interrupt(orchestrator) as interruption:
                result = await orchestrator.resume(args.run, listener=progress.on_step)
            if interruption.happened:
                stderr.print(how_to_resume(args.run, store_option(args)), soft_wrap=True)
                return EXIT_INTERRUPTED
            if result is None:
                holder = await store.get_lease(args.run)
                driver = holder.owner if holder is not None else "another orchestrator"
                stdout.print(f"run {args.run}: resume sent; it is driven by {driver}")
                return EXIT_OK
            records = await store.get_steps(args.run)
            failures = await failures_of(store, result)
            render.run_summary(stdout, result, records, failures, time.monotonic() - started)
            return EXIT_OK if result.status == RunStatus.SUCCEEDED else EXIT_FAILED

    return asyncio.run(resume_here())


def signal_step(args: argparse.Namespace) -> int:
    values = parse_inputs(args.values, option="values")

    async def send() -> int:
        async with opened_store(args) as store:
            command = await RunControl(store).signal(args.run, args.step, values)
        stdout.print(f"run {args.run}: signal sent to step {args.step} (command {command.seq})")
        return EXIT_OK

    return asyncio.run(send())


def wait(args: argparse.Namespace) -> int:
    async def wait_here() -> int:
        async with opened_store(args, read_only=True) as store:
            run = await RunControl(store).wait_for_completion(args.run, timeout_s=args.timeout)
        if not run.status.is_terminal:
            stdout.print(f"run {args.run} is still {run.status} after {args.timeout:g} s")
            return EXIT_TIMEOUT
        stdout.print(f"run {args.run} {run.status}" + (f": {run.error}" if run.error else ""))
        return EXIT_OK if run.status == RunStatus.SUCCEEDED else EXIT_FAILED

    return asyncio.run(wait_here())


def errors(args: argparse.Namespace) -> int:
    async def show() -> int:
        async with opened_store(args, read_only=True) as store:
            found = await RunControl(store).errors(args.run)
        if args.json:
            print_json([failure.to_json() for failure in found])
        elif not found:
            stdout.print(f"run {args.run}: no errors")
        else:
            render.step_failures(stdout, found)
        return EXIT_OK

    return asyncio.run(show())


def metrics(args: argparse.Namespace) -> int:
    async def show() -> int:
        async with opened_store(args, read_only=True) as store:
            found = await RunControl(store).metrics(args.run)
        if args.json:
            print_json(found.to_json())
            return EXIT_OK
        table = _table("step", "status", "attempts", "duration", "ran", "queue wait")
        for step in found.steps[: render.MAX_TABLE_ROWS]:
            table.add_row(
                step.step_id, render.styled(step.status), str(step.attempts),
                _seconds(step.duration_s), _seconds(step.run_s), _seconds(step.queue_wait_s),
            )  # fmt: skip
        stdout.print(table)
        document = found.to_json()
        stdout.print(
            f"run {args.run} {found.status}: wall {_seconds(found.wall_s)}, {found.attempts} attempts "
            f"({found.retries} retries), steps {_seconds(document['step_s'])} in all, of which "
            f"{_seconds(document['run_s'])} running scripts and {_seconds(document['queue_wait_s'])} queued"
        )
        return EXIT_OK

    return asyncio.run(show())


def pending(args: argparse.Namespace) -> int:
    async def show() -> int:
        async with opened_store(args, read_only=True) as store:
            found = await RunControl(store).pending_work(args.run)
        if args.json:
            print_json([step.to_json() for step in found])
        elif not found:
            stdout.print(f"run {args.run}: no pending work")
        else:
            table = _table("step", "status", "attempt", "since", "waiting for")
            for step in found:
                table.add_row(
                    step.step_id, render.styled(step.status), str(step.attempt), render.clock(step.since),
                    ", ".join(step.waiting_for) or "-",
                )  # fmt: skip
            stdout.print(table)
        return EXIT_OK

    return asyncio.run(show())


def checkpoint(args: argparse.Namespace) -> int:
    async def show() -> int:
        async with opened_store(args, read_only=True) as store:
            found = await RunControl(store).checkpoint(args.run)
        print_json(found.to_json())
        return EXIT_OK

    return asyncio.run(show())


def _table(*columns: str) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _seconds(value: float | None) -> str:
    return "-" if value is None else render.duration(0.0, value)
