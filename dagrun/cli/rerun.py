"""`dagrun rerun`: run an ended run's flow again here, reusing what succeeded (`engine.rerun`)."""

from __future__ import annotations

import argparse
import asyncio

from dagrun.cli.run_ids import add_run_argument


def rerun(args: argparse.Namespace) -> int:
    from dagrun.cli.commands import drive_here, opened_store, parse_inputs  # here: the parser loads neither
    from dagrun.engine.stored_flow import flow_of

    inputs = parse_inputs(args.input)
    from_steps = args.from_steps or []

    async def rerun_here() -> int:
        async with opened_store(args) as store:
            origin = await store.get_run(args.run)
            return await drive_here(
                args,
                store,
                flow_of(origin),
                lambda orchestrator, listener: orchestrator.rerun(
                    origin.run_id, from_steps=from_steps, inputs=inputs, listener=listener
                ),
                rerun_of=origin.run_id,
            )

    return asyncio.run(rerun_here())


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_argument(p)  # it must have ended
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--from-failed",
        action="store_true",
        help="run again the steps that failed or were cancelled, and what depends on them (the default)",
    )
    which.add_argument(
        "--from",
        dest="from_steps",
        nargs="+",
        metavar="STEP",
        help="also run again these steps and every step that depends on them",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document with the outcome, nothing else")
