"""A run's command log as its driver reads it: in order, each command once, one reader at a time. The
first read replays the whole log (a run taken over may have many commands); later reads, prompted by a
notice, a lease renewal or a local `RunControl`, see only what was sent since."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from dagrun.store.base import Command, Store


class CommandLog:
    def __init__(self, store: Store, run_id: str) -> None:
        self._store = store
        self._run_id = run_id
        self._seen = 0  # the seq of the last command applied
        self._lock = asyncio.Lock()  # a command is applied whole before the next read starts

    async def apply_new(self, apply: Callable[[Command], Awaitable[None]]) -> None:
        """`apply` each command sent since the last call, in order."""
        async with self._lock:
            for command in await self._store.get_commands(self._run_id, after_seq=self._seen):
                self._seen = command.seq
                await apply(command)
