"""Cancelling a task for sure: on Python 3.11, asyncio.wait_for (redis-py sends every command through it)
loses a cancellation that arrives just as its inner call finishes (CPython gh-86296), and the task then
runs on as if never cancelled. So a cancel that matters is repeated until the task has ended."""

from __future__ import annotations

import asyncio
from typing import Any

CANCEL_RETRY_S = 0.1


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and return once it has ended, cancelling again while it has not."""
    try:
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=CANCEL_RETRY_S)  # a deadline for the cancel, not a poll
    except asyncio.CancelledError:
        task.cancel()
        raise
