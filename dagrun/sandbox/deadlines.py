"""Deadlines: the timeout of the job each child is running, counted from when it started there (not while
it waited in a queue).

One timer per child, moved only when a new deadline is earlier than it: most steps end long before their
timeout, so a timer that fires finds the deadline moved on and re-arms itself for it, instead of being
cancelled and re-created for every job. `on_timeout` is called once the running job's deadline has passed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from dagrun.sandbox.process import ChildProcess


class Deadlines:
    def __init__(self, on_timeout: Callable[[ChildProcess], None]) -> None:
        self._on_timeout = on_timeout

    def start(self, child: ChildProcess) -> None:
        """The child's first job starts running now: time it."""
        loop = asyncio.get_running_loop()
        job = child.jobs[0]
        job.started_at = loop.time()
        child.deadline = job.started_at + job.request.timeout_s
        if child.timer is not None and child.timer.when() <= child.deadline:
            return  # fires early, finds the deadline moved on, and re-arms itself for it
        if child.timer is not None:
            child.timer.cancel()
        child.timer = loop.call_at(child.deadline, self._fire, child)

    def _fire(self, child: ChildProcess) -> None:
        child.timer = None
        if child.is_retired or not child.jobs:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < child.deadline:
            child.timer = loop.call_at(child.deadline, self._fire, child)
            return
        self._on_timeout(child)
