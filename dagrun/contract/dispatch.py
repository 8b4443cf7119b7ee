"""A call's link with its caller while its step waits to start: the executor says when the step started,
and the caller may take back a step no worker has taken yet (a pause does, for its run's queued steps).

`Withdrawn` ends a call whose step was taken back unrun. `acquire_unless_withdrawn` is how anything that
makes a step wait for a place (a client's window on its worker, a worker's pool slots) lets it be
taken back meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from dagrun.cancellation import cancel_and_wait


class Withdrawn(Exception):
    """`call` gave its step back unrun: its caller withdrew it (`Dispatch.withdraw`) before a worker took it."""


class Dispatch:
    """One call's link with its caller while the step waits to start.

    The executor says `started()` when a worker or sandbox process starts the step (its queue wait ends
    there). Until a worker takes the step, the executor offers a way to take it back (`offer_withdrawal`);
    `withdraw()` uses it, at once or as soon as it is offered: the call then ends with Withdrawn, or, when
    a worker took the step meanwhile, runs on and returns its result as usual. A step is taken when a
    worker holds it (a Redis worker read it, a sandbox process has it in its pipe, a WebSocket or HTTP
    worker admitted it), which may be a little before it starts."""

    __slots__ = ("_on_started", "_withdrawer", "is_wanted_back", "started_at")

    def __init__(self, on_started: Callable[[float], None] | None = None) -> None:
        self._on_started = on_started
        self._withdrawer: Callable[[], None] | None = None
        self.is_wanted_back = False  # its caller asked for it back (see `give_back_if_wanted`)
        self.started_at: float | None = None  # time.time() by the caller's clock, once started

    def started(self, at: float | None = None) -> None:
        """The step started (at `at`, else now); once only, and it can no longer be withdrawn."""
        if self.started_at is None:
            self.started_at = time.time() if at is None else at
            self._withdrawer = None
            if self._on_started is not None:
                self._on_started(self.started_at)

    def offer_withdrawal(self, withdrawer: Callable[[], None] | None) -> None:
        """The executor's way to take the step back (None: it cannot be, a worker has it). Used at once
        when the caller already asked for the step back."""
        self._withdrawer = None if self.started_at is not None else withdrawer
        if self.is_wanted_back:
            self.withdraw()

    def give_back_if_wanted(self) -> None:
        """Withdrawn, when the caller wants back a step that was refused unrun (a busy worker, a dropped
        connection) and has not started: the executor gives it back instead of sending it again."""
        if self.is_wanted_back and self.started_at is None:
            raise Withdrawn

    def withdraw(self) -> None:
        """Ask for the step back: now if the executor offers a way, else as soon as it does."""
        self.is_wanted_back = True
        withdrawer, self._withdrawer = self._withdrawer, None
        if withdrawer is not None:
            withdrawer()


async def acquire_unless_withdrawn(semaphore: asyncio.Semaphore, dispatch: Dispatch | None) -> None:
    """Acquire `semaphore` for a step, or raise Withdrawn if `dispatch` takes it back first."""
    if dispatch is None or not semaphore.locked():
        await semaphore.acquire()
        return
    withdrawn: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def withdraw() -> None:
        if not withdrawn.done():
            withdrawn.set_result(None)

    dispatch.offer_withdrawal(withdraw)
    acquiring = asyncio.ensure_future(semaphore.acquire())
    try:
        await asyncio.wait((acquiring, withdrawn), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        dispatch.offer_withdrawal(None)
        await _give_back(acquiring, semaphore)
        raise
    dispatch.offer_withdrawal(None)
    if not acquiring.done():
        await _give_back(acquiring, semaphore)
        raise Withdrawn


async def _give_back(acquiring: asyncio.Task[bool], semaphore: asyncio.Semaphore) -> None:
    """Stop waiting for a place; give it back if it was got meanwhile."""
    await cancel_and_wait(acquiring)
    if not acquiring.cancelled():
        semaphore.release()
