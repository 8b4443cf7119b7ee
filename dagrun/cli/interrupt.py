"""Ctrl-C is not the end of a run: a run driven by a command is handed back, to be resumed, not cancelled.

The first Ctrl-C stops the orchestrator's drivers (`Orchestrator.hand_back`): what they drive stays
unfinished in the store, its lease given up, and the command says how to continue it. A second Ctrl-C
interrupts at once, as Python does.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dagrun.engine.orchestrator import Orchestrator


@dataclass
class Interruption:
    happened: bool = False


@contextmanager
def handing_back_on_interrupt(orchestrator: Orchestrator) -> Iterator[Interruption]:
    """While inside, Ctrl-C hands back the runs `orchestrator` drives; `happened` says whether it did."""
    loop = asyncio.get_running_loop()
    interruption = Interruption()

    def interrupted() -> None:
        interruption.happened = True
        loop.remove_signal_handler(signal.SIGINT)  # the next Ctrl-C is Python's KeyboardInterrupt
        orchestrator.hand_back()

    loop.add_signal_handler(signal.SIGINT, interrupted)
    try:
        yield interruption
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def how_to_resume(run_id: str, store_option: str) -> str:
    return (
        f"interrupted: run {run_id} is left unfinished, with no driver; an orchestrator serving its store "
        f"takes it up, or continue it here with: dagrun resume {run_id}{store_option}"
    )
