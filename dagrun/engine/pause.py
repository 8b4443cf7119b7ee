"""A run's pause gate: while it is closed no step starts and no retry begins. A paused run holds its
TaskGroup open with a task that waits for the gate to open, so that a run with nothing running waits for
`resume` rather than ending."""

from __future__ import annotations

import asyncio


class PauseGate:
    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()

    @property
    def is_closed(self) -> bool:
        return not self._open.is_set()

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    async def wait_open(self) -> None:
        await self._open.wait()

    def hold(self, task_group: asyncio.TaskGroup) -> None:
        """Keep `task_group` open until the gate opens."""
        task_group.create_task(self._open.wait())
