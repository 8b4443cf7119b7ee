"""The local transport: steps run in this machine's warm pool of sandbox child processes.

URL: ``local`` or ``local://?processes=4&memory_mb=256`` (any integer field of SandboxSettings).
The pool starts on the first call, so an executor that is configured but unused costs nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from dagrun.contract.dispatch import Dispatch
from dagrun.contract.executor import ExecutorOptions, StepRequest, StepResult
from dagrun.errors import ExecutorSetupError
from dagrun.sandbox import SandboxPool, SandboxSettings
from dagrun.worker.script_worker import ScriptWorker


class LocalExecutor:
    def __init__(self, settings: SandboxSettings, options: ExecutorOptions) -> None:
        self._pool = SandboxPool(settings, functions=options.functions)
        self._started: asyncio.Task[None] | None = None

    async def call(self, request: StepRequest, dispatch: Dispatch | None = None) -> StepResult:
        if self._started is None:
            self._started = asyncio.ensure_future(self._pool.start())
        if not self._started.done():
            await asyncio.shield(self._started)  # concurrent first calls wait for the same start
        self._started.result()  # a start that failed fails every call with its ExecutorError
        return await self._pool.run(request, dispatch)

    async def aclose(self) -> None:
        await self._pool.aclose()  # stops a start still under way, once
        if self._started is not None:
            await asyncio.gather(self._started, return_exceptions=True)


def settings_from_url(url: str, options: ExecutorOptions) -> SandboxSettings:
    """SandboxSettings from ``local://?field=value``; ExecutorError names unknown or bad fields."""
    settings = SandboxSettings()
    if options.processes is not None:
        settings = dataclasses.replace(settings, processes=options.processes)
    integer_fields = {f.name for f in dataclasses.fields(SandboxSettings) if f.type in ("int", int)}
    text_fields = {"trust_domain"}
    changes: dict[str, Any] = {}
    for name, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if name in text_fields:
            changes[name] = value or None
            continue
        if name not in integer_fields:
            known = ", ".join(sorted(integer_fields | text_fields))
            raise ExecutorSetupError(f"{url!r}: unknown setting {name!r}; known: {known}")
        try:
            changes[name] = int(value)
        except ValueError:
            raise ExecutorSetupError(f"{url!r}: {name} must be an integer, not {value!r}") from None
    try:
        return dataclasses.replace(settings, **changes)
    except ValueError as exc:
        raise ExecutorSetupError(f"{url!r}: {exc}") from None


class LocalTransport:
    queues_by_context = False  # a worker runs whatever it is sent

    def open_executor(self, url: str, options: ExecutorOptions) -> LocalExecutor:
        return LocalExecutor(settings_from_url(url, options), options)

    async def serve_worker(self, worker: ScriptWorker, stop: asyncio.Event) -> None:
        raise ExecutorSetupError(
            "the local executor has no worker server; start one with `dagrun worker redis|ws|http`"
        )

    async def list_workers(self, url: str, options: ExecutorOptions) -> None:
        """None: no workers; the sandbox processes live in the process that drives each run."""
        return None


transport = LocalTransport()
