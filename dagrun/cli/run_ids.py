"""Run ids as people type them: a whole id, a prefix of one that no other id shares (MIN_PREFIX characters at
least), or `last`, the newest run in the store that is not a sub-flow's child run.

Every command with a `run` argument (`add_run_argument`) has it resolved where its store is opened
(`commands.opened_store`), so a new command whose argument is named `run` takes the same forms. The REST API
takes whole ids only.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from dagrun.errors import BadInput, RunNotFound

if TYPE_CHECKING:
    from dagrun.store.base import RunReader

LAST = "last"
MIN_PREFIX = 6  # shorter prefixes name too many runs to be worth a lookup
SHOWN_CANDIDATES = 10  # the runs an ambiguous prefix lists
COUNTED_CANDIDATES = 1000  # the runs an ambiguous prefix counts; past that it says "at least"
LAST_LOOKS_AT = 100  # the newest runs `last` looks through for one that is not a sub-flow's child


def add_run_argument(parser: argparse.ArgumentParser) -> None:
    """The `run` argument, resolved by `resolve_run_id` when the command opens its store."""
    parser.add_argument(
        "run",
        help=f"run id, or a prefix of one that no other shares ({MIN_PREFIX}+ characters), or {LAST!r}: the newest run",
    )


async def resolve_run_id(store: RunReader, typed: str, *, where: str) -> str:
    """The whole id of the one run `typed` names, in one lookup; `where` names the store in messages.
    RunNotFound when no run has that id or prefix; BadInput for a prefix too short or shared by several runs
    (it lists them), or for `last` in a store without runs."""
    if typed == LAST:
        newest = await store.list_runs(limit=LAST_LOOKS_AT)
        if not newest:
            raise BadInput(f"there are no runs in the store at {where}, so {LAST!r} names none")
        # the run someone started, not the child runs its sub-flow steps made after it
        return next((run.run_id for run in newest if run.parent is None), newest[0].run_id)
    is_short = len(typed) < MIN_PREFIX
    found = await store.find_run_ids(typed, limit=1 if is_short else COUNTED_CANDIDATES)
    if found[:1] == [typed]:  # a whole id sorts before every longer id it starts
        return typed
    if is_short:
        raise BadInput(f"no run with id {typed!r}, and a prefix of one needs {MIN_PREFIX} characters at least")
    if not found:
        raise RunNotFound(typed)
    if len(found) > 1:
        raise BadInput(await _candidates(store, typed, found))
    return found[0]


async def _candidates(store: RunReader, typed: str, found: list[str]) -> str:
    """What an ambiguous prefix says: how many runs it names, then the first ones, a line each."""
    runs = [await store.get_run(run_id) for run_id in found[:SHOWN_CANDIDATES]]
    from dagrun.cli.render import clock  # here: the parser adds the run argument without loading rich

    rows = [(run.run_id, run.flow_name, str(run.status), clock(run.created_at)) for run in runs]
    widths = [max(len(cell) for cell in column) for column in zip(*rows, strict=True)]
    at_least = "at least " if len(found) >= COUNTED_CANDIDATES else ""
    lines = [f"run id prefix {typed!r} names {at_least}{len(found)} runs; type more of the id:"]
    lines += ["  " + "  ".join(map(str.ljust, row, widths)).rstrip() for row in rows]
    if len(found) > len(runs):
        lines.append(f"  and {at_least}{len(found) - len(runs)} more")
    return "\n".join(lines)
