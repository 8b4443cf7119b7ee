"""HostCalls: the parent's side of the host functions a pool's scripts call (`child.make_host_function`).

A call arrives as a child's {"t": "call"} message while its step runs; the function runs on the loop (a
coroutine function) or in a thread, and its JSON value or its error's message (never a host traceback)
goes back as the reply. Invariant: a reply reaches only the step that asked: a child whose step ended
meanwhile (cancelled, timed out) gets nothing, and a call out of turn is a protocol breach.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Mapping
from typing import Any

import orjson

from dagrun.contract.executor import HostFunction
from dagrun.sandbox.policy import check_function_names
from dagrun.sandbox.process import ChildProcess, Job
from dagrun.sandbox.runner import cap_text
from dagrun.sandbox.scope import JSON_OPTIONS


class HostCalls:
    def __init__(self, functions: Mapping[str, HostFunction], *, max_error_bytes: int) -> None:
        """ValueError for a function name a script could not call or that hides a sandbox name."""
        self.functions = dict(functions)
        check_function_names(self.functions)
        self._is_async = {name: inspect.iscoroutinefunction(fn) for name, fn in self.functions.items()}
        self._max_error_bytes = max_error_bytes
        self.tasks: set[asyncio.Task[None]] = set()  # calls being served

    def on_call(self, child: ChildProcess, message: dict[str, Any]) -> str | None:
        """Serve a call message of `child`; the breach to fail its step for, if it called out of turn."""
        job = child.jobs[0] if child.jobs else None
        if job is None or child.call_task is not None:
            return "sandbox child called a host function out of turn"
        name, args, kwargs = message.get("fn"), message.get("args"), message.get("kwargs")
        if type(name) is not str or name not in self.functions or type(args) is not list or type(kwargs) is not dict:
            child.write(_reply_error(f"no host function {name!r}"))
        elif job.future.done():
            child.write(_reply_error("the step was cancelled"))
        else:
            task = asyncio.ensure_future(self._serve(child, job, name, args, kwargs))
            child.call_task = task
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            task.add_done_callback(lambda _: _clear_call(child, task))
        return None

    async def _serve(self, child: ChildProcess, job: Job, name: str, args: list[Any], kwargs: dict[str, Any]) -> None:
        function = self.functions[name]
        try:
            if self._is_async[name]:
                value = await function(*args, **kwargs)
            else:
                value = await asyncio.to_thread(function, *args, **kwargs)
        except Exception as exc:  # becomes an exception in the script: message only, no host traceback
            reply = _reply_error(
                cap_text(f"host function {name!r} failed: {type(exc).__name__}: {exc}", self._max_error_bytes)
            )
        else:
            try:
                reply = orjson.dumps({"t": "reply", "ok": True, "value": value}, option=JSON_OPTIONS) + b"\n"
            except TypeError as exc:
                reply = _reply_error(f"host function {name!r} returned a value that is not JSON: {exc}")
        if child.jobs and child.jobs[0] is job:
            child.write(reply)


def _reply_error(message: str) -> bytes:
    return orjson.dumps({"t": "reply", "ok": False, "error": message}) + b"\n"


def _clear_call(child: ChildProcess, task: asyncio.Task[None]) -> None:
    if child.call_task is task:
        child.call_task = None
