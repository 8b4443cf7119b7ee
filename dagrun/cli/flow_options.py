"""The options of the commands that take flows: the limits a flow's numbers must keep, and whether its
scripts may live outside the flow file's directory.

The defaults are `FlowLimits`' own; a value below a limit's floor is a usage error (exit 2).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import fields
from typing import TYPE_CHECKING

from dagrun.flow.limits import DEFAULT_LIMITS, FLOORS, FlowLimits, bounded_fields, option_name

if TYPE_CHECKING:
    from dagrun.flow.model import Flow


def add_flow_arguments(parser: argparse.ArgumentParser, *, limits: bool = True) -> None:
    """The flow file, --allow-outside-scripts and, with `limits`, the limit options."""
    parser.add_argument("flow", help="flow file: JSON, or YAML if it ends in .yaml or .yml")
    parser.add_argument(
        "--allow-outside-scripts",
        action="store_true",
        help="read a step's script_file even from outside the flow file's directory "
        "(an absolute path, '..', or a symbolic link out of it)",
    )
    if limits:
        add_limit_arguments(parser)


def read_flow(args: argparse.Namespace) -> Flow:
    """The flow file the options name, validated against the limits they set, its scripts against the sandbox
    policy."""
    from dagrun.flow.loader import load_flow  # here: the parser offers these options without the flow model
    from dagrun.sandbox.policy import check_script

    return load_flow(
        args.flow,
        check_script=check_script,
        limits=flow_limits(args),
        allow_outside_scripts=args.allow_outside_scripts,
    )


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """--max-timeout-s, --max-attempts, --max-backoff-s and --max-wait-s, in a group of their own."""
    group = parser.add_argument_group("flow limits (a flow asking for more is invalid)")
    for field in fields(FlowLimits):
        default, floor = getattr(DEFAULT_LIMITS, field.name), FLOORS[field.name]
        is_count = isinstance(default, int)
        group.add_argument(
            option_name(field.name),
            type=_at_least(floor, int if is_count else float),
            default=default,
            metavar="N" if is_count else "S",
            help=f"the largest {' and '.join(bounded_fields(field.name))} a flow may write "
            f"(default {default:.15g}, at least {floor:g}{'' if is_count else '; inf: no limit'})",
        )


def flow_limits(args: argparse.Namespace) -> FlowLimits:
    """The limits the options set."""
    return FlowLimits(**{field.name: getattr(args, field.name) for field in fields(FlowLimits)})


def _at_least(floor: float, kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if not value >= floor:  # NaN too
            raise argparse.ArgumentTypeError(f"must be at least {floor:g}, not {text}")
        return value

    return parse
