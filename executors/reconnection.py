"""The reconnect window of the WebSocket and HTTP clients: a worker that answered and then went away is
likely restarting, so connecting to it is retried with backoff for `reconnect_s` before a call fails.

Invariant: the window opens once per loss (when the worker had answered since the last one) and
closes when it answers again; a worker never reached, or still away once the window has passed, fails
a call at once, so a step on a dead worker spends its attempts as fast as its retry policy says.
URL option of both transports: ``?reconnect_s=5``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from dagrun.errors import WorkerUnavailable

T = TypeVar("T")

RECONNECT_S = 5.0  # how long a client tries to reconnect to a worker that went away
RECONNECT_FIRST_DELAY_S = 0.05  # the first wait between tries, doubling up to RECONNECT_MAX_DELAY_S
RECONNECT_MAX_DELAY_S = 1.0


class Reconnection:
    """Whether the worker is reached, and until when connecting to it is retried after it went away."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._is_reached = False
        self._until = 0.0  # time.monotonic() until which a failed connect is tried again

    def lost(self) -> None:
        """The worker went away (a connection dropped, or it refused a new one, or it is stopping): open
        the window, unless it was already away."""
        if self._is_reached:
            self._is_reached = False
            self._until = time.monotonic() + self.window_s

    async def connect(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """What `attempt()` returns; while it raises WorkerUnavailable and the window is open, it is
        tried again with backoff. The last WorkerUnavailable once the window has passed (at once when
        the worker never answered, or has not since the window last passed)."""
        delay_s = RECONNECT_FIRST_DELAY_S
        while True:
            try:
                result = await attempt()
            except WorkerUnavailable:
                self.lost()
                if time.monotonic() + delay_s > self._until:
                    raise
                await asyncio.sleep(delay_s)  # reconnect backoff, not a poll
                delay_s = min(delay_s * 2, RECONNECT_MAX_DELAY_S)
                continue
            self._is_reached = True
            return result
