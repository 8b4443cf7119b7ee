"""Terminal output of the CLI: the live progress view, tables and plain lines (rich only here).

On a terminal, a run shows one live status line and a summary table; elsewhere (pipes, CI logs) it
prints one plain line per step that ends, so logs stay greppable. On a terminal, lines wrap at its width;
elsewhere at $COLUMNS when it is set, else never: a script reading the output gets whole lines and whole
ids, not rich's 80 columns.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections import Counter
from collections.abc import Collection, Mapping
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from dagrun.contract.states import RunStatus, StepStatus
from dagrun.engine.views import StepFailure, parent_step
from dagrun.store.base import Event, RunRecord, StepRecord

if TYPE_CHECKING:
    from rich.live import Live

    from dagrun.contract.transport import WorkerStatus
    from dagrun.engine.outcome import RunResult

MAX_TABLE_ROWS = 40
LOG_TAIL_LINES = 5  # of a failed step's log, shown with its error
MAX_FAILURES_SHOWN = 5  # failed steps detailed after a run; `dagrun errors` shows them all
UNWRAPPED_WIDTH = 100_000  # no line of ours is this long: outside a terminal, a line stays one line

_STYLE = {
    "succeeded": "green",
    "reused": "green dim",
    "failed": "bold red",
    "cancelled": "yellow",
    "skipped": "dim",
    "running": "cyan",
    "queued": "blue",
    "waiting": "magenta",
    "ready": "blue",
    "pending": "dim",
    "paused": "yellow",
}


def console(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr) that wraps as the module says."""
    found = Console(stderr=stderr, highlight=False)
    if not found.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
        found.width = UNWRAPPED_WIDTH  # else rich takes the width of a terminal on stdin, or 80
    return found


def styled(status: str) -> Text:
    return Text(status, style=_STYLE.get(status, ""))


def clock(at: float | None) -> str:
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S") if at else "-"


def duration(started_at: float | None, finished_at: float | None) -> str:
    if started_at is None or finished_at is None:
        return "-"
    seconds = finished_at - started_at
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


class RunProgress:
    """Listens to a run's step records; shows a live line on a terminal, plain lines elsewhere. Either way
    it says the run's id when its first step moves, and once per waiting step the command that signals
    it (`waiting_for`: the fields each `wait_for` step needs; `store_option`: what names the store in it).
    The instances of a mapped step (`ID[i]`: not among `step_ids`) are counted apart, as items."""

    def __init__(
        self,
        console: Console,
        flow_name: str,
        step_ids: Collection[str],
        waiting_for: Mapping[str, tuple[str, ...]] | None = None,
        store_option: str = "",
        rerun_of: str | None = None,
    ) -> None:
        self._console = console
        self._flow_name = flow_name
        self._step_ids = frozenset(step_ids)
        self._total = len(self._step_ids)
        self._items_done = 0
        self._waiting_for = waiting_for or {}
        self._store_option = store_option
        self._heading = f"flow {flow_name}, {self._total} steps" + (f", a rerun of run {rerun_of}" if rerun_of else "")
        self._run_id: str | None = None
        self._ended: Counter[str] = Counter()
        self._queued: set[str] = set()
        self._running: set[str] = set()
        self._waiting: set[str] = set()
        self._told_to_signal: set[str] = set()
        self._started = time.monotonic()
        self._live: Live | None = None

    def __enter__(self) -> RunProgress:
        if self._console.is_terminal:
            from rich.live import Live  # here: the commands that only read load no live display

            self._live = Live(console=self._console, refresh_per_second=8, transient=True, get_renderable=self._line)
            self._live.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.__exit__(kind, exc, tb)

    def on_step(self, record: StepRecord) -> None:
        if self._run_id is None:
            self._run_id = record.run_id
            self._say(f"run {record.run_id}: {self._heading}")
        for under_way in (self._queued, self._running, self._waiting):
            under_way.discard(record.step_id)
        if record.status == StepStatus.WAITING:
            self._waiting.add(record.step_id)
            self._tell_how_to_signal(record.step_id)
            return
        if record.status == StepStatus.QUEUED:
            self._queued.add(record.step_id)
            return
        if record.status == StepStatus.RUNNING:
            self._running.add(record.step_id)
            return
        if record.status == StepStatus.PENDING:  # withdrawn by a pause
            return
        if record.status.is_terminal and record.step_id in self._step_ids:
            self._ended[record.status] += 1
        elif record.status.is_terminal:
            self._items_done += 1
        if self._live is None:
            self._console.print(plain_step_line(record), highlight=False, soft_wrap=True)

    def _line(self) -> Text:
        done = sum(self._ended.values())
        line = Text(f"{self._flow_name}  {done}/{self._total} done  ", style="bold")
        line.append(f"{len(self._running)} running  ", style="cyan")
        if self._items_done:
            line.append(f"{self._items_done} items done  ")
        if self._queued:
            line.append(f"{len(self._queued)} queued  ", style="blue")
        if self._waiting:
            line.append(f"{len(self._waiting)} waiting  ", style="magenta")
        for status in ("succeeded", "reused", "failed", "skipped", "cancelled"):
            if self._ended[status]:
                line.append(f"{self._ended[status]} {status}  ", style=_STYLE[status])
        line.append(f"{time.monotonic() - self._started:.1f} s", style="dim")
        return line

    def _tell_how_to_signal(self, step_id: str) -> None:
        if step_id in self._told_to_signal:
            return
        self._told_to_signal.add(step_id)
        fields = " ".join(f"{field}=VALUE" for field in self._waiting_for.get(step_id, ()))
        command = f"dagrun signal {self._run_id} {step_id} {fields}{self._store_option}"
        self._say(f"step {step_id} waits for a signal: {command}")

    def _say(self, line: str) -> None:
        self._console.print(line, highlight=False, soft_wrap=True)


def plain_step_line(record: StepRecord) -> str:
    when = datetime.fromtimestamp(record.finished_at or time.time()).strftime("%H:%M:%S")
    line = f"{when} step {record.step_id} {record.status}"
    if record.attempt:
        line += f" (attempt {record.attempt}, {duration(record.started_at, record.finished_at)})"
    if record.error is not None:
        line += f": {record.error}"
    return line


def run_summary(
    console: Console, result: RunResult, records: list[StepRecord], failures: list[StepFailure], elapsed_s: float
) -> None:
    """The table after a run (every step when few, else the ones that did not succeed), what went wrong in
    its failed steps (`failures`, the first few), and a last line with the outcome."""
    counts = Counter(outcome.status.value for outcome in result.steps.values())
    shown = records if len(records) <= MAX_TABLE_ROWS else [r for r in records if not r.status.has_outputs]
    if shown:
        console.print(steps_table(shown[:MAX_TABLE_ROWS]))
    if len(shown) > MAX_TABLE_ROWS:
        console.print(f"... and {len(shown) - MAX_TABLE_ROWS} more steps (see `dagrun status {result.run_id}`)")
    step_failures(console, failures[:MAX_FAILURES_SHOWN])
    if len(failures) > MAX_FAILURES_SHOWN:
        console.print(
            f"... and {len(failures) - MAX_FAILURES_SHOWN} more failed steps (see `dagrun errors {result.run_id}`)"
        )
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    line = Text(f"run {result.run_id} ")
    line.append(result.status.value, style=_STYLE.get(result.status.value, "") + " bold")
    line.append(f" in {elapsed_s:.2f} s: {tally}")
    console.print(line)


def step_failures(console: Console, failures: list[StepFailure]) -> None:
    """Each failed step's error, the script line it names as written, and the last lines of its log: plain
    lines (the same on a terminal and in a pipe), user text never read as markup."""
    for failure in failures:
        error = failure.error
        worker = f" on {failure.worker_id}" if failure.worker_id else ""
        attempt = f"attempt {failure.attempt}" if failure.attempt else "no attempt"  # e.g. its condition failed
        head = f"step {failure.step_id} failed ({attempt}{worker}): {error.kind} error {error.type}: "
        console.print(Text(head + error.message, style="red"), soft_wrap=True)
        if error.line is not None:
            console.print(Text(f"  script line {error.line}: {failure.source_line or '?'}"), soft_wrap=True)
        logged = failure.logs.splitlines()
        if logged:
            tail = logged[-LOG_TAIL_LINES:]
            cut = f" (its last {len(tail)} of {len(logged)} lines)" if len(tail) < len(logged) else ""
            console.print(Text(f"  log{cut}:"), soft_wrap=True)
            for line in log_lines(failure.step_id, failure.attempt, failure.worker_id, tail):
                console.print(Text(f"    {line}"), soft_wrap=True)


def log_lines(step_id: str, attempt: int, worker_id: str, lines: list[str]) -> list[str]:
    """An attempt's log lines as `dagrun logs` prints them, ``STEP#ATTEMPT (WORKER) | line``: each line says
    whose it is, so they can be grepped and sorted."""
    prefix = f"{step_id}#{attempt}" + (f" ({worker_id})" if worker_id else "") + " | "
    return [prefix + line for line in lines]


def steps_table(records: list[StepRecord]) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    for column in ("step", "status", "attempts", "duration", "outputs / error"):
        table.add_column(column, overflow="fold")
    for record in records:
        detail = str(record.error) if record.error else _short(record.outputs)
        table.add_row(
            record.step_id,
            styled(record.status),
            str(record.attempt),
            duration(record.started_at, record.finished_at),
            detail,
        )
    return table


def steps_tally(records: list[StepRecord]) -> Text:
    """How many steps are in each state, in the order a step goes through them: `queued` apart from
    `running`."""
    counts = Counter(record.status for record in records)
    line = Text("steps: ")
    parts = [(status, counts[status]) for status in StepStatus if counts[status]]
    for number, (status, count) in enumerate(parts):
        line.append(f"{count} ")
        line.append(status.value, style=_STYLE.get(status.value, ""))
        if number < len(parts) - 1:
            line.append(", ")
    return line


def runs_table(runs: list[RunRecord]) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    for column in ("run", "flow", "status", "created", "duration"):
        table.add_column(column, overflow="fold")  # an id cut short with an ellipsis is of no use
    for run in runs:
        table.add_row(
            run.run_id,
            run.flow_name,
            styled(run.status),
            clock(run.created_at),
            duration(run.started_at, run.finished_at),
        )
    return table


def run_header(console: Console, run: RunRecord, *, driver: str | None = None) -> None:
    line = Text(f"run {run.run_id}  flow {run.flow_name}  ")
    line.append(run.status.value, style=_STYLE.get(run.status.value, "") + " bold")
    line.append(f"  created {clock(run.created_at)}  duration {duration(run.started_at, run.finished_at)}")
    if driver is not None:
        line.append(f"  driven by {driver}", style="dim")
    elif not run.status.is_terminal and run.status != RunStatus.PENDING:
        line.append("  no driver: `dagrun resume` continues it", style="yellow")
    if run.rerun_of is not None:
        line.append(f"  rerun of {run.rerun_of}")
    parent = parent_step(run)
    if parent is not None:
        line.append(f"  child of {parent[0]} step {parent[1]}")
    console.print(line)
    if run.error and run.status != RunStatus.SUCCEEDED:
        console.print(Text(run.error, style="red"))


def event_line(event: Event) -> str:
    when = datetime.fromtimestamp(event.at).strftime("%H:%M:%S.%f")[:-3]
    subject = f"step {event.step_id}" if event.step_id else "run"
    attempt = f" attempt {event.attempt}" if event.attempt else ""
    message = f": {event.message}" if event.message else ""
    return f"{event.seq:>6} {when} {subject} {event.status}{attempt}{message}"


def _short(value: dict[str, Any], limit: int = 80) -> str:
    text = orjson.dumps(value).decode() if value else ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def workers(found: list[WorkerStatus], *, as_json: bool) -> None:
    """`dagrun workers`: one row per live worker, or one JSON document."""
    if as_json:
        sys.stdout.write(
            orjson.dumps([dataclasses.asdict(status) for status in found], option=orjson.OPT_INDENT_2).decode() + "\n"
        )
        return
    out = console()
    if not found:
        out.print("no live workers")
        return
    table = Table(show_edge=False, pad_edge=False)
    for column in ("worker", "host", "contexts", "current", "done", "errors", "heartbeat"):
        table.add_column(column, overflow="fold")
    now = time.time()
    for status in found:
        table.add_row(
            status.worker_id,
            status.host,
            ", ".join(status.contexts),
            ", ".join(status.current) or "-",
            str(status.steps_done),
            str(status.errors),
            f"{max(0.0, now - status.heartbeat_at):.1f} s ago",
        )
    out.print(table)
