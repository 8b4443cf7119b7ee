"""HostCalls: the parent's side of the host functions a pool's scripts call (`child.make_host_function`).

A call arrives as a child's call message while its step runs (its ChildProcess hands it here); the function
runs on the loop (a coroutine function) or in a thread, and its JSON value or its error's message (never a
host traceback) goes back as the reply. Invariant: a reply reaches only the step that asked: a child whose
step ended meanwhile (cancelled, timed out) gets nothing, and a call out of turn is a protocol breach.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Mapping

from dagrun.contract.executor import HostFunction
from dagrun.sandbox import protocol
from dagrun.sandbox.policy import check_function_names
from dagrun.sandbox.process import ChildProcess, Job
from dagrun.sandbox.protocol import HostCall, Message, ProtocolError
from dagrun.sandbox.runner import cap_text


class HostCalls:
    """`on_call` for every child of a pool; `aclose` waits for the calls being served (a killed child's
    call is cancelled with it)."""

    def __init__(self, functions: Mapping[str, HostFunction], *, max_error_bytes: int) -> None:
        """ValueError for a function name a script could not call or that hides a sandbox name."""
        self.functions = dict(functions)
        check_function_names(self.functions)
        self._is_async = {name: inspect.iscoroutinefunction(fn) for name, fn in self.functions.items()}
        self._max_error_bytes = max_error_bytes
        self._tasks: set[asyncio.Task[None]] = set()  # calls being served

    def on_call(self, child: ChildProcess, message: Message) -> str | None:
        """Serve a call message of `child`; the breach to fail its step for, if it called out of turn."""
        job = child.jobs[0] if child.jobs else None
        if job is None or child.call_task is not None:
            return "sandbox child called a host function out of turn"
        try:
            call = protocol.parse_call(message, self.functions)
        except ProtocolError as exc:
            child.write(protocol.encode_reply_error(str(exc)))
            return None
        if job.future.done():
            child.write(protocol.encode_reply_error("the step was cancelled"))
            return None
        task = asyncio.ensure_future(self._serve(child, job, call))
        child.call_task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: _clear_call(child, task))
        return None

    async def aclose(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, child: ChildProcess, job: Job, call: HostCall) -> None:
        name = call.name
        try:
            if self._is_async[name]:
                value = await self.functions[name](*call.args, **call.kwargs)
            else:
                value = await asyncio.to_thread(self.functions[name], *call.args, **call.kwargs)
        except Exception as exc:  # becomes an exception in the script: message only, no host traceback
            text = cap_text(f"host function {name!r} failed: {type(exc).__name__}: {exc}", self._max_error_bytes)
            reply = protocol.encode_reply_error(text)
        else:
            try:
                reply = protocol.encode_reply(value)
            except TypeError as exc:
                reply = protocol.encode_reply_error(f"host function {name!r} returned a value that is not JSON: {exc}")
        if child.jobs and child.jobs[0] is job:
            child.write(reply)


def _clear_call(child: ChildProcess, task: asyncio.Task[None]) -> None:
    if child.call_task is task:
        child.call_task = None
