"""What the WebSocket and HTTP transports share: the token, TLS, client URLs, limits and admission.

The shared token travels as ``Authorization: Bearer <token>``; servers compare it in constant time
(`dagrun.serving.lobby.is_authorized`) before they read anything else of a request, and it never reaches a log line
or an error message (`hide_authorization` masks it in the wire libraries' debug logs).
Both worker servers answer ``GET /health`` (token required) with `health_document`: the worker's
status, its Limits and whether it is stopping.
A worker server hands its sandbox pool as many requests as the pool's children hold (`Limits.running`:
processes x pipeline_depth, so the pool stays fed) and admits twice that (`Limits.capacity`); an
admitted request that gets no pool slot within MAX_QUEUE_WAIT_S is refused as busy and sent again by
the client, which keeps no more than `capacity` requests in flight. A client gives up on a result at
`Window.deadline_s`: the wait for a slot, plus the steps the request may queue behind on its sandbox
child, plus its own timeout, plus GRACE_S.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections.abc import Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from dagrun.contract.executor import ErrorKind, ExecutorOptions, StepRequest, StepResult
from dagrun.contract.transport import WorkerStatus
from dagrun.errors import ExecutorError, redact
from dagrun.sandbox import SandboxSettings
from dagrun.serving.listening import cannot_listen, is_loopback
from dagrun.serving.lobby import AUTHORIZATION
from dagrun.worker.script_worker import ScriptWorker, WorkerSettings

logger = logging.getLogger(__name__)
T = TypeVar("T")

LIMITS_HEADER_PREFIX = "Dagrun-"  # handshake response headers announcing a worker's Limits

QUEUE_FACTOR = 2  # a worker admits QUEUE_FACTOR x what its pool holds: the rest wait for a pool slot
MAX_QUEUE_WAIT_S = 5.0  # an admitted request that cannot start by then is refused as busy
GRACE_S = 10.0  # how late a result may come after the step's timeout before the client gives up
MAX_RESENDS = 3  # a request whose connection dropped is sent again at most this many times
BUSY_FIRST_DELAY_S = 0.02  # a busy refusal is retried after this, doubling up to BUSY_MAX_DELAY_S
BUSY_MAX_DELAY_S = 1.0


def bearer_header(token: str) -> dict[str, str]:
    return {AUTHORIZATION: f"Bearer {token}"}


def require_server_token(settings: WorkerSettings, kind: str) -> str:
    """The token a worker server checks; ExecutorError when there is none."""
    if not settings.token:
        raise ExecutorError(
            f"worker {settings.worker_id}: a {kind} worker needs a shared token; "
            "start it with --token-file FILE (the same token as the orchestrator's)"
        )
    return settings.token


def server_ssl_context(settings: WorkerSettings) -> ssl.SSLContext | None:
    """The TLS context of a worker server, or None for plain text; ExecutorError when unusable."""
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if cert is None:
        if key is not None:
            raise ExecutorError(f"worker {settings.worker_id}: --tls-key needs --tls-cert")
        if not is_loopback(settings.host):
            logger.warning(
                "worker %s: serving without TLS on %s: the token crosses the network in clear text; "
                "use --tls-cert and --tls-key",
                settings.worker_id,
                settings.host,
            )
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror or str(exc)
        raise ExecutorError(f"worker {settings.worker_id}: cannot load TLS certificate {cert!r}: {reason}") from exc
    return context


def listen_error(settings: WorkerSettings, exc: OSError) -> ExecutorError:
    return ExecutorError(cannot_listen(settings.host, settings.port, exc))


class AuthorizationFilter(logging.Filter):
    """Masks the value of an Authorization header in records like ``"> %s: %s" % (name, value)``,
    which is how websockets logs handshake headers at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and str(args[0]).lower() == AUTHORIZATION.lower():
            record.args = (args[0], "***")
        return True


def hide_authorization(wire_logger: logging.Logger) -> logging.Logger:
    """`wire_logger`, masking the token in what a wire library logs through it."""
    wire_logger.addFilter(AuthorizationFilter())
    return wire_logger


# --- the client side ------------------------------------------------------------------------------


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
        raise ExecutorError(f"{safe_url!r}: credentials in the URL are not used; give the token with --token-file")
    if not parts.hostname:
        raise ExecutorError(f"{safe_url!r}: no host; expected {parts.scheme}://HOST:PORT")
    values = dict(known)
    ca_file: str | None = None
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "ca_file":
            ca_file = value
            continue
        if name not in values:
            raise ExecutorError(
                f"{safe_url!r}: unknown option {name!r}; known: {', '.join(sorted([*values, 'ca_file']))}"
            )
        try:
            values[name] = float(value)
        except ValueError:
            raise ExecutorError(f"{safe_url!r}: option {name} must be a number, not {value!r}") from None
        if values[name] <= 0:
            raise ExecutorError(f"{safe_url!r}: option {name} must be positive, not {value!r}")
    if not options.token:
        raise ExecutorError(
            f"{safe_url!r}: no token for this worker; give the shared token with --token-file FILE "
            "(token= in the embedding API)"
        )
    secure = parts.scheme.lower() in ("wss", "https")
    if ca_file is not None and not secure:
        raise ExecutorError(f"{safe_url!r}: ca_file needs a TLS scheme (wss://, https://)")
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


# --- limits: what a worker announces, what a client derives from them -----------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """How much a worker server holds at once, as it announces it (handshake headers, /health)."""

    running: int  # requests handed to the sandbox pool at once: what its children hold
    pipeline_depth: int  # requests one child holds, one running: a step may wait behind depth - 1 others
    capacity: int  # requests admitted at once; a client keeps no more in flight
    max_message_bytes: int  # the largest request envelope accepted

    @classmethod
    def of(cls, settings: WorkerSettings) -> Limits:
        sandbox = settings.sandbox or SandboxSettings(processes=settings.concurrency)  # as ScriptWorker does
        running = sandbox.processes * sandbox.pipeline_depth
        return cls(running, sandbox.pipeline_depth, running * QUEUE_FACTOR, settings.max_message_bytes)

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: Mapping[str, object]) -> Limits:
        """Limits from announced values; ExecutorError when one is missing or not a positive integer."""
        try:
            numbers = {name: int(str(values[name])) for name in _LIMIT_NAMES}
        except (KeyError, ValueError) as exc:
            raise ExecutorError(f"the worker announced no usable limits ({exc}); is it a dagrun worker?") from None
        if min(numbers.values()) < 1:
            raise ExecutorError(f"the worker announced limits below 1: {numbers}")
        return cls(**numbers)

    def to_headers(self) -> dict[str, str]:
        return {_header_name(name): str(value) for name, value in self.to_json().items()}

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Limits:
        return cls.from_json({name: headers.get(_header_name(name)) for name in _LIMIT_NAMES})


_LIMIT_NAMES = tuple(f.name for f in dataclasses.fields(Limits))


def _header_name(name: str) -> str:
    return LIMITS_HEADER_PREFIX + name.replace("_", "-")  # Dagrun-max-message-bytes


class Window:
    """A client's side of its worker's Limits: requests in flight, request size, result deadlines."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.in_flight = asyncio.Semaphore(limits.capacity)
        self._longest_s = 0.0  # the longest step timeout this client sent: what a request may queue behind

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


# --- admission control (servers) ----------------------------------------------------------------


class Busy(Exception):
    """No pool slot freed up within MAX_QUEUE_WAIT_S: nothing ran; the client may send it again."""


class Stopping(Exception):
    """The worker is stopping: nothing ran; the client should go elsewhere or wait for a restart."""


class Admission:
    """Bounds what a worker server holds: `admit` a request at once or not, `run` it when a pool slot
    frees up (Busy, Stopping when none does), `release` it when done, whatever happened to it."""

    def __init__(self, worker: ScriptWorker, *, max_queue_wait_s: float = MAX_QUEUE_WAIT_S) -> None:
        self.worker = worker
        self.limits = Limits.of(worker.settings)
        self.max_queue_wait_s = min(max_queue_wait_s, MAX_QUEUE_WAIT_S)  # clients count on no more
        self._running = asyncio.Semaphore(self.limits.running)
        self._held = 0
        self._waiting: set[asyncio.Timeout] = set()  # deadlines of requests queued for a pool slot
        self._idle = asyncio.Event()
        self._idle.set()
        self.is_closed = False

    def admit(self) -> bool:
        """Take the request if there is room and the server is not stopping."""
        if self.is_closed or self._held >= self.limits.capacity:
            return False
        self._held += 1
        self._idle.clear()
        return True

    def release(self) -> None:
        self._held -= 1
        if self._held == 0:
            self._idle.set()

    async def run(self, request: StepRequest) -> StepResult:
        """Run an admitted request once a pool slot is free; Busy after max_queue_wait_s, Stopping once
        the server stops. Anything else that goes wrong becomes a failed result."""
        await self._acquire()
        try:
            return await self.worker.run(request)
        except Exception as exc:  # a worker bug or a closed pool: it becomes the step's failure
            logger.exception("worker %s: %s: %s", self.worker.settings.worker_id, describe(request), exc)
            return StepResult.failure(ErrorKind.WORKER, type(exc).__name__, str(exc))
        finally:
            self._running.release()

    async def _acquire(self) -> None:
        if self.is_closed:
            raise Stopping
        if self._running.locked():
            try:
                async with asyncio.timeout(self.max_queue_wait_s) as deadline:
                    self._waiting.add(deadline)
                    try:
                        await self._running.acquire()
                    finally:
                        self._waiting.discard(deadline)
            except TimeoutError:
                raise (Stopping if self.is_closed else Busy) from None
        else:
            await self._running.acquire()  # free: returns at once
        if self.is_closed:
            self._running.release()
            raise Stopping

    async def stop(self) -> None:
        """Take no new work (the worker's `stopping`; queued requests get Stopping now) and wait up to
        the worker's grace_s for the running ones."""
        settings = self.worker.settings
        self.worker.stopping = True
        self.is_closed = True
        now = asyncio.get_running_loop().time()
        for deadline in list(self._waiting):
            deadline.reschedule(now)
        try:
            async with asyncio.timeout(settings.grace_s):
                await self._idle.wait()
        except TimeoutError:
            logger.warning(
                "worker %s: %d requests still held after the %.0f s grace period; cancelling them",
                settings.worker_id,
                self._held,
                settings.grace_s,
            )


def health_document(worker: ScriptWorker, limits: Limits) -> dict[str, Any]:
    """What ``GET /health`` answers on a WebSocket or HTTP worker (JSON)."""
    document = dataclasses.asdict(worker.status())
    document.update(limits=limits.to_json(), stopping=worker.stopping)
    return document


def status_from_health(document: Mapping[str, Any]) -> WorkerStatus:
    """The WorkerStatus in a `health_document`; KeyError or TypeError when it is not one."""
    fields = {name: document[name] for name in WorkerStatus.__dataclass_fields__}
    fields["contexts"], fields["current"] = tuple(fields["contexts"]), tuple(fields["current"])
    return WorkerStatus(**fields)
