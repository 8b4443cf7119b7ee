"""Signals for human-input steps: a mailbox per run, so a signal may come before or while its step waits.

The first signal for a step counts; later ones are ignored (a run taken over replays every signal in
the command log, so this is also what makes replay idempotent).
"""

from __future__ import annotations

import asyncio
from typing import Any


class SignalBox:
    def __init__(self) -> None:
        self._kept: dict[str, dict[str, Any]] = {}  # signals that came before their step waited
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def deliver(self, step_id: str, values: dict[str, Any]) -> None:
        waiter = self._waiting.get(step_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(values)
        else:
            self._kept.setdefault(step_id, values)

    async def receive(self, step_id: str, *, timeout_s: float | None) -> dict[str, Any]:
        """The step's signal values, waiting up to `timeout_s` (forever when None); TimeoutError after."""
        kept = self._kept.pop(step_id, None)
        if kept is not None:
            return kept
        waiter = self._waiting[step_id] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout_s):
                values: dict[str, Any] = await waiter
                return values
        finally:
            del self._waiting[step_id]
