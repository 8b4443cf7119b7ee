"""Cancelling tasks for sure: on Python 3.11, asyncio.wait_for (redis-py sends every command through it)
loses a cancellation that arrives just as its inner call finishes (CPython gh-86296), and the task then
runs on as if never cancelled. So a cancel that matters is repeated until the task has ended."""

from __future__ import annotations

import asyncio
from typing import Any

CANCEL_RETRY_S = 0.1


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel `tasks` and return once each has ended, cancelling again those that have not. All are
    cancelled at once, so that they wind down side by side."""
    pending = {task for task in tasks if not task.done()}
    try:
        while pending:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=CANCEL_RETRY_S)  # a deadline for the cancel, not a poll
    except asyncio.CancelledError:
        for task in pending:
            task.cancel()
        raise
