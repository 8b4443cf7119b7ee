"""The client side of a WebSocket or HTTP worker: where it is, how much to send it, when to give up.

A client reads the worker's URL into a `WorkerTarget` (its token goes as ``Authorization: Bearer
<token>``, `bearer_header`, and never into a message), learns the worker's `Limits` (handshake headers or
/health) and keeps to them with a `Window`: no more requests in flight than the worker's capacity, none
over its size limit, and a result deadline (`Window.deadline_s`) of the wait for a pool slot, plus the
steps the request may queue behind on its sandbox child, plus its own timeout, plus GRACE_S. A request
refused as busy is sent again after a backoff (BUSY_FIRST_DELAY_S doubling to BUSY_MAX_DELAY_S); one
whose connection dropped at most MAX_RESENDS times.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from dagrun.contract.dispatch import Dispatch, acquire_unless_withdrawn
from dagrun.contract.executor import ExecutorOptions, StepRequest
from dagrun.contract.transport import WorkerStatus
from dagrun.errors import ExecutorError, ExecutorSetupError, redact
from dagrun.serving.lobby import AUTHORIZATION
from dagrun.worker.admission import MAX_QUEUE_WAIT_S
from dagrun.worker.limits import Limits

T = TypeVar("T")

GRACE_S = 10.0  # how late a result may come after the step's timeout before the client gives up
MAX_RESENDS = 3  # a request whose connection dropped is sent again at most this many times
BUSY_FIRST_DELAY_S = 0.02  # a busy refusal is retried after this, doubling up to BUSY_MAX_DELAY_S
BUSY_MAX_DELAY_S = 1.0


def bearer_header(token: str) -> dict[str, str]:
    return {AUTHORIZATION: f"Bearer {token}"}


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerTarget:
    """Where a client sends steps: the URL without the client's own query options, and those options."""

    url: str  # what the client connects to
    safe_url: str  # what messages name: no credentials, no query
    token: str
    ssl: ssl.SSLContext | None
    options: dict[str, float] = dataclasses.field(default_factory=dict)


def parse_target(url: str, options: ExecutorOptions, *, known: Mapping[str, float]) -> WorkerTarget:
    """Read ``ws[s]://`` or ``http[s]://HOST:PORT/PATH?option=value``; `known` maps each numeric option
    to its default, and ``ca_file`` (a CA bundle for TLS) is always known. ExecutorError names what is
    wrong: no host, credentials in the URL, an unknown or bad option, no token."""
    parts = urlsplit(url)
    safe_url = redact(urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")))
    if parts.username or parts.password:
        raise ExecutorSetupError(f"{safe_url!r}: credentials in the URL are not used; give the token with --token-file")
    if not parts.hostname:
        raise ExecutorSetupError(f"{safe_url!r}: no host; expected {parts.scheme}://HOST:PORT")
    values = dict(known)
    ca_file: str | None = None
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "ca_file":
            ca_file = value
            continue
        if name not in values:
            raise ExecutorSetupError(
                f"{safe_url!r}: unknown option {name!r}; known: {', '.join(sorted([*values, 'ca_file']))}"
            )
        try:
            values[name] = float(value)
        except ValueError:
            raise ExecutorSetupError(f"{safe_url!r}: option {name} must be a number, not {value!r}") from None
        if values[name] <= 0:
            raise ExecutorSetupError(f"{safe_url!r}: option {name} must be positive, not {value!r}")
    if not options.token:
        raise ExecutorSetupError(
            f"{safe_url!r}: no token for this worker; give the shared token with --token-file FILE "
            "(token= in the embedding API)"
        )
    secure = parts.scheme.lower() in ("wss", "https")
    if ca_file is not None and not secure:
        raise ExecutorSetupError(f"{safe_url!r}: ca_file needs a TLS scheme (wss://, https://)")
    context = ssl.create_default_context(cafile=ca_file) if secure else None
    plain_url = urlunsplit((parts.scheme, parts.netloc, parts.path or "/", "", ""))
    return WorkerTarget(plain_url, safe_url, options.token, context, values)


async def await_shared(task: asyncio.Task[T], url: str) -> T:
    """Await a task several callers share (a connect, a probe) without cancelling it for the others;
    ExecutorError when `aclose` cancelled it under a caller that was not itself cancelled."""
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if task.cancelled() and current is not None and not current.cancelling():
            raise ExecutorError(f"{url}: the executor was closed") from None
        raise


def describe(request: StepRequest) -> str:
    return f"run {request.run_id} step {request.step_id} attempt {request.attempt}"


class Window:
    """A client's side of its worker's Limits: requests in flight, request size, result deadlines."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.in_flight = asyncio.Semaphore(limits.capacity)
        self._longest_s = 0.0  # the longest step timeout this client sent: what a request may queue behind

    @contextlib.asynccontextmanager
    async def place(self, dispatch: Dispatch | None) -> AsyncIterator[None]:
        """One of the worker's places for a request, held until the block ends. Withdrawn when `dispatch`
        takes the step back while it waits for one."""
        await acquire_unless_withdrawn(self.in_flight, dispatch)
        try:
            yield
        finally:
            self.in_flight.release()

    def check_size(self, size: int, url: str, request: StepRequest) -> None:
        """ExecutorError when a request of `size` bytes is over the worker's limit: it would be refused."""
        if size > self.limits.max_message_bytes:
            limit = self.limits.max_message_bytes
            raise ExecutorError(
                f"{url}: {describe(request)}: request of {size} bytes is over the worker's {limit}-byte limit"
            )

    def deadline_s(self, timeout_s: float) -> float:
        """How long to wait for a result after sending: a pool slot (MAX_QUEUE_WAIT_S), the steps ahead on
        the sandbox child (assumed no longer than the longest this client sent), this step, and GRACE_S."""
        self._longest_s = max(self._longest_s, timeout_s)
        return MAX_QUEUE_WAIT_S + (self.limits.pipeline_depth - 1) * self._longest_s + timeout_s + GRACE_S


def status_from_health(document: Mapping[str, Any]) -> WorkerStatus:
    """The WorkerStatus in a `health_document`; KeyError or TypeError when it is not one."""
    fields = {name: document[name] for name in WorkerStatus.__dataclass_fields__}
    fields["contexts"], fields["current"] = tuple(fields["contexts"]), tuple(fields["current"])
    return WorkerStatus(**fields)
