"""The `dagrun` command: argument parsing, configuration from the environment, and error reporting.

Every DagrunError becomes its message on stderr and a non-zero exit; a traceback is a bug (set
DAGRUN_DEBUG=1 to see one). Only this package reads environment variables or prints to a terminal.
Its modules import the flow model, the sandbox, the engine's orchestrator and the servers inside the
commands that use them, so that `dagrun --help` and the commands that only read a store start fast
(tests/test_layout.py checks what building the parser loads).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from dagrun.contract.states import RunStatus
from dagrun.engine.defaults import DEFAULT_LEASE_S, DEFAULT_MAX_MAP_ITEMS, DEFAULT_MAX_PARALLEL
from dagrun.errors import (
    BadInput,
    ControlError,
    DagrunError,
    FlowError,
    InsecureFile,
    RunNotFound,
    StoreNotFound,
    redact,
)
from dagrun.store import DEFAULT_STORE

EXIT_BAD_INPUT, EXIT_ENVIRONMENT, EXIT_INTERRUPTED = 2, 3, 130
# They log where they serve and each run or step they take up: their INFO lines show without -v.
LONG_RUNNING = ("orchestrator", "serve", "worker")
OWN_LOGGERS = ("dagrun", "executors")

Command = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    from dagrun.cli import completion, rerun, serve, starter, worker
    from dagrun.cli.flow_options import add_flow_arguments
    from dagrun.cli.run_ids import add_run_argument

    commands, control, logs = _Later("commands"), _Later("control"), _Later("logs")
    parser = argparse.ArgumentParser(prog="dagrun", description="Run DAGs of sandboxed Python scripts.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")
    parser.add_argument("--version", action=_Version, help="show the installed version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Command, help_: str, *, store: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(handler=handler)
        if store:
            p.add_argument(
                "--store",
                default=os.environ.get("DAGRUN_STORE", DEFAULT_STORE),
                help="store URL or directory (default: $DAGRUN_STORE or .dagrun)",
            )
        return p

    p = command("validate", commands.validate, "check a flow file and print every problem")
    add_flow_arguments(p)

    p = command("run", commands.run, "run a flow and wait for it to end", store=True)
    add_flow_arguments(p)
    _add_input_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON document with the outcome, nothing else")
    _add_orchestrator_arguments(p)

    p = command(
        "rerun", rerun.rerun, "run an ended run again here, reusing the outputs of the steps that succeeded", store=True
    )
    rerun.add_arguments(p)
    _add_input_arguments(p)
    _add_orchestrator_arguments(p)

    p = command("submit", control.submit, "record a run for an orchestrator; print its id last", store=True)
    add_flow_arguments(p)
    _add_input_arguments(p)

    p = command("orchestrator", control.orchestrator, "drive the runs submitted to a store, until SIGTERM", store=True)
    _add_orchestrator_arguments(p)

    p = command("runs", commands.runs, "list runs, newest first", store=True)
    p.add_argument("--status", choices=[s.value for s in RunStatus])
    p.add_argument("--flow", help="only runs of this flow name")
    p.add_argument("--limit", type=_positive_int, default=50)
    p.add_argument("--json", action="store_true")

    serve.add_serve_parser(sub)

    p = command("status", commands.status, "show a run and its steps", store=True)
    add_run_argument(p)
    p.add_argument("--json", action="store_true", help="one JSON document, context included")

    for name, handler, help_ in (
        ("pause", control.pause, "start no new step of a run until it is resumed"),
        ("cancel", control.cancel, "end a run cancelled: drop its queued steps, stop its running ones"),
    ):
        p = command(name, handler, help_, store=True)
        add_run_argument(p)

    p = command("resume", control.resume, "undo pause; drive the run here if nobody does (crash recovery)", store=True)
    add_run_argument(p)
    p.add_argument("--detach", action="store_true", help="only send the command; do not drive the run here")
    _add_orchestrator_arguments(p)

    p = command("signal", control.signal_step, "complete a step that waits for a signal", store=True)
    add_run_argument(p)
    p.add_argument("step", help="the waiting step's id")
    p.add_argument("values", nargs="+", metavar="KEY=VALUE", help="its fields (VALUE read as JSON when it parses)")

    p = command("wait", control.wait, "wait for a run to end: exit 0 if it succeeded, 1 if not", store=True)
    add_run_argument(p)
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="give up after S seconds (exit 124)")

    for name, handler, help_ in (
        ("errors", control.errors, "show the errors of a run's failed steps"),
        ("metrics", control.metrics, "show a run's durations, attempts, retries and queue waits"),
        ("pending", control.pending, "show the steps of a run that have not ended"),
        ("checkpoint", control.checkpoint, "print the persisted state a run resumes from, as JSON"),
    ):
        p = command(name, handler, help_, store=True)
        add_run_argument(p)
        if name != "checkpoint":
            p.add_argument("--json", action="store_true", help="one JSON document")

    p = command("outputs", commands.outputs, "print the outputs of a run's steps as JSON", store=True)
    add_run_argument(p)
    p.add_argument("step", nargs="?", help="only this step's outputs")

    p = command("logs", logs.logs, "print what each attempt of a run's steps printed (log() and print)", store=True)
    p.add_argument("run", help="run id")
    p.add_argument("step", nargs="?", help="only this step's logs")
    p.add_argument("--attempt", type=_positive_int, metavar="N", help="only the logs of attempt N")
    p.add_argument(
        "--follow", "-f", action="store_true",
        help="then print each attempt's logs as it ends, until the run ends (lines arrive at attempt end)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="one JSON object per attempt per line")
    p.epilog = (
        "Lines are STEP#ATTEMPT (WORKER) | LINE, in the order the attempts ended. A step's lines reach the store "
        "with its result: an attempt's appear when it ends, not while it runs."
    )

    p = command("events", commands.events, "print a run's event log", store=True)
    add_run_argument(p)
    p.add_argument("--after", type=int, default=0, metavar="SEQ", help="only events after this sequence number")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing events as they come, until the run ends")
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = command("graph", commands.graph, "export a flow's DAG", store=False)
    add_flow_arguments(p, limits=False)  # a flow's shape can be drawn whatever it asks for
    p.add_argument("--format", choices=["dot", "mermaid"], default="dot")

    command("schema", commands.schema, "print the JSON Schema of flow files (YAML ones too)")

    p = command("init", starter.init, "write a starter flow NAME.yaml (or NAME.json) and the NAME.py it runs")
    starter.add_arguments(p)

    p = command("completion", completion.print_completion, "print a shell completion script for dagrun")
    completion.add_arguments(p)

    p = command("worker", worker.run_worker, "serve steps for remote orchestrators (redis, ws, http)")
    worker.add_arguments(p)

    p = command("workers", worker.list_workers, "list live remote workers")
    worker.add_list_arguments(p)
    return parser


class _Later:
    """A CLI module whose commands load it when they run: building the parser loads none of what `commands`,
    `control` and `logs` need (rich, asyncio, the stores, the engine); the other modules the parser uses
    are light themselves."""

    def __init__(self, module: str) -> None:
        self._module = module

    def __getattr__(self, name: str) -> LaterCommand:
        return LaterCommand(self._module, name)


class LaterCommand:
    """The command `name` of the CLI module `module`, imported when called."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def resolve(self) -> Command:
        found: Command = getattr(importlib.import_module(f"{__name__}.{self.module}"), self.name)
        return found

    def __call__(self, args: argparse.Namespace) -> int:
        return self.resolve()(args)


class _Version(argparse.Action):
    """--version: the installed distribution's version, looked up only when asked for (the lookup reads
    the metadata of every installed distribution: too slow for every start)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        import importlib.metadata

        sys.stdout.write(f"dagrun {importlib.metadata.version('dagrun')}\n")
        parser.exit()


def _add_input_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input",
        "-i",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a flow input (VALUE is read as JSON when it parses, else as text)",
    )


def _add_orchestrator_arguments(p: argparse.ArgumentParser) -> None:
    """What `run`, `resume` and `orchestrator` need to drive runs."""
    p.add_argument(
        "--max-parallel",
        type=_positive_int,
        default=DEFAULT_MAX_PARALLEL,
        metavar="N",
        help=f"steps of a run running at once (default {DEFAULT_MAX_PARALLEL})",
    )
    p.add_argument("--fail-fast", action="store_true", help="cancel the rest of a run at its first failure")
    p.add_argument(
        "--max-map-items",
        type=_positive_int,
        default=DEFAULT_MAX_MAP_ITEMS,
        metavar="N",
        help=f"items one mapped step may run; a longer list fails it (default {DEFAULT_MAX_MAP_ITEMS})",
    )
    p.add_argument(
        "--processes",
        type=_positive_int,
        default=None,
        metavar="N",
        help="local sandbox processes (default: one per core)",
    )
    p.add_argument(
        "--executor",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="an executor steps can name, e.g. remote=redis://host:6379/0 (repeatable)",
    )
    p.add_argument("--token-file", help="file holding the shared token of remote (redis, ws, http) workers")
    p.add_argument(
        "--lease-s",
        type=float,
        default=DEFAULT_LEASE_S,
        metavar="S",
        help=f"a run driven here is taken over by another orchestrator S seconds after this one dies "
        f"(default {DEFAULT_LEASE_S:g})",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args: argparse.Namespace | None = None
    try:
        args = build_parser().parse_args(argv)  # inside: Ctrl-C while the commands' modules load is no traceback
        _configure_logging(args)
        return int(args.handler(args))
    except FlowError as exc:
        sys.stderr.write(redact(exc.render()) + "\n")
        if len(exc.problems) > 1:  # one error is one line
            sys.stderr.write(f"dagrun: {len(exc.problems)} problems found\n")
        return EXIT_BAD_INPUT
    except RunNotFound as exc:  # which store was searched: the default one is easily the wrong one
        store = getattr(args, "store", None)
        _complain(f"{exc} in the store at {store}" if store else str(exc))
        return EXIT_BAD_INPUT
    except (BadInput, StoreNotFound, ControlError, InsecureFile) as exc:
        _complain(str(exc))
        return EXIT_BAD_INPUT
    except DagrunError as exc:
        _complain(str(exc))
        return EXIT_ENVIRONMENT
    except KeyboardInterrupt:
        _complain("interrupted (a run in progress was recorded as cancelled: see `dagrun runs`)")
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: say so in one line unless asked for the traceback
        if os.environ.get("DAGRUN_DEBUG"):
            raise
        _complain(f"internal error: {type(exc).__name__}: {exc} (set DAGRUN_DEBUG=1 for the traceback)")
        return 70


def _configure_logging(args: argparse.Namespace) -> None:
    """Warnings and errors; -v adds INFO lines, -vv debug ones. The long-running commands show dagrun's own
    INFO lines without -v (a library's INFO lines, such as aiohttp's, still need -v)."""
    levels = (logging.WARNING, logging.INFO, logging.DEBUG)
    logging.basicConfig(level=levels[min(args.verbose, 2)], format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command in LONG_RUNNING:
        for name in OWN_LOGGERS:
            logging.getLogger(name).setLevel(levels[min(args.verbose + 1, 2)])


def _complain(message: str) -> None:
    sys.stderr.write(f"dagrun: {redact(message)}\n")


def entry_point() -> None:
    sys.exit(main())
