"""How a worker server tells a remote caller that its step started: only for a step still running
STARTED_NOTICE_AFTER_S after its sandbox process started it. A quicker step's result says it all, and
costs no message: on a chain of short steps a notice per step would put a round trip on every step."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from dagrun.contract.dispatch import Dispatch

STARTED_NOTICE_AFTER_S = 0.05


class StartedNotice:
    """The `dispatch` to run a step with; `announce` is called once it has run STARTED_NOTICE_AFTER_S,
    unless `cancel` (called when the step ended, however) came first."""

    def __init__(self, announce: Callable[[], None]) -> None:
        self._announce = announce
        self._timer: asyncio.TimerHandle | None = None
        self.dispatch = Dispatch(self._started)

    def _started(self, at: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(STARTED_NOTICE_AFTER_S, self._announce)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
