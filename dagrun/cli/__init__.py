"""The `dagrun` command: argument parsing, configuration from the environment, and error reporting.

Every DagrunError becomes its message on stderr and a non-zero exit; a traceback is a bug (set
DAGRUN_DEBUG=1 to see one). Only this package reads environment variables or prints to a terminal.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from dagrun.errors import DagrunError, FlowError, RunNotFound, redact
from dagrun.orchestrator import DEFAULT_MAX_PARALLEL
from dagrun.states import RunStatus

EXIT_BAD_INPUT, EXIT_ENVIRONMENT, EXIT_INTERRUPTED = 2, 3, 130
DEFAULT_STORE = ".dagrun"

Command = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    from dagrun.cli import commands, worker

    parser = argparse.ArgumentParser(prog="dagrun", description="Run DAGs of sandboxed Python scripts.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")
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
    p.add_argument("flow", help="flow JSON file")

    p = command("run", commands.run, "run a flow and wait for it to end", store=True)
    p.add_argument("flow", help="flow JSON file")
    p.add_argument(
        "--input",
        "-i",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a flow input (VALUE is read as JSON when it parses, else as text)",
    )
    p.add_argument(
        "--max-parallel",
        type=_positive_int,
        default=DEFAULT_MAX_PARALLEL,
        metavar="N",
        help=f"steps running at once (default {DEFAULT_MAX_PARALLEL})",
    )
    p.add_argument("--fail-fast", action="store_true", help="cancel the rest of the run at the first failure")
    p.add_argument("--json", action="store_true", help="print one JSON document with the outcome, nothing else")
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
    p.add_argument("--token-file", help="file holding the shared token of ws/http workers")

    p = command("runs", commands.runs, "list runs, newest first", store=True)
    p.add_argument("--status", choices=[s.value for s in RunStatus])
    p.add_argument("--flow", help="only runs of this flow name")
    p.add_argument("--limit", type=_positive_int, default=50)
    p.add_argument("--json", action="store_true")

    p = command("status", commands.status, "show a run and its steps", store=True)
    p.add_argument("run", help="run id")
    p.add_argument("--json", action="store_true", help="one JSON document, context included")

    p = command("outputs", commands.outputs, "print the outputs of a run's steps as JSON", store=True)
    p.add_argument("run", help="run id")
    p.add_argument("step", nargs="?", help="only this step's outputs")

    p = command("events", commands.events, "print a run's event log", store=True)
    p.add_argument("run", help="run id")
    p.add_argument("--after", type=int, default=0, metavar="SEQ", help="only events after this sequence number")
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = command("graph", commands.graph, "export a flow's DAG", store=False)
    p.add_argument("flow", help="flow JSON file")
    p.add_argument("--format", choices=["dot", "mermaid"], default="dot")

    command("schema", commands.schema, "print the JSON Schema of flow files")

    p = command("worker", worker.run_worker, "serve steps for remote orchestrators (redis, ws, http)")
    worker.add_arguments(p)

    p = command("workers", worker.list_workers, "list live remote workers")
    worker.add_list_arguments(p)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbosity = args.verbose + (1 if args.command == "worker" else 0)  # a worker logs each step it runs
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbosity, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args))
    except FlowError as exc:
        sys.stderr.write(redact(exc.render()) + "\n")
        count = len(exc.problems)
        sys.stderr.write(f"dagrun: {count} problem{'s' if count != 1 else ''} found\n")
        return EXIT_BAD_INPUT
    except RunNotFound as exc:
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


def _complain(message: str) -> None:
    sys.stderr.write(f"dagrun: {redact(message)}\n")


def entry_point() -> None:
    sys.exit(main())
