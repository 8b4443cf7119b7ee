"""How the Redis transport reaches Redis and names its keys: QueueSettings from the URL, Keys, backoff.

Every key name is built by `Keys` (the layout is drawn in the package docstring). dagrun's own URL query
parameters are taken out of the URL before redis-py sees it; the rest (``?socket_timeout=``,
``ssl_cert_reqs=`` ...) is redis-py's, as are credentials and TLS (``rediss://``). The commands sent for
every step go over a `DedicatedConnection` each; the rest go through the client's pool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import hiredis
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from dagrun.errors import ExecutorError, ExecutorSetupError, redact
from dagrun.redis_timing import blocking_read_s

logger = logging.getLogger(__name__)

GROUP = "workers"  # the consumer group of every request stream
DEFAULT_PREFIX = "dagrun:"
CONNECT_TIMEOUT_S = 5.0  # unless the URL sets socket_connect_timeout
# No socket timeout unless the URL sets one: redis-py's costs a task per command sent and a timer per reply
# read (half of a pipelined XADD's CPU). TCP tells a dead peer instead: keepalive probes after 5 s of
# silence, and TCP_USER_TIMEOUT for data sent and never acknowledged.
_TCP_OPTIONS = {"TCP_KEEPIDLE": 5, "TCP_KEEPINTVL": 2, "TCP_KEEPCNT": 3, "TCP_USER_TIMEOUT": 15_000}
KEEPALIVE_OPTIONS = {getattr(socket, name): value for name, value in _TCP_OPTIONS.items() if hasattr(socket, name)}
MAX_BLOCK_MS = 5000  # the longest blocking read; shorter when the socket timeout is short

# What a Redis restart or a network fault raises (BusyLoadingError, while Redis loads its AOF, is one).
CONNECTION_ERRORS: tuple[type[Exception], ...] = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# ... and what a clean-up that ran past its deadline raises.
CLEANUP_ERRORS: tuple[type[Exception], ...] = (*CONNECTION_ERRORS, TimeoutError)

Argument = bytes | str | int  # of a command sent over a DedicatedConnection


@dataclass(frozen=True, slots=True)
class Keys:
    """The one place key names are built; `prefix` namespaces them all."""

    prefix: str = DEFAULT_PREFIX

    def requests(self, context_id: str) -> str:
        return f"{self.prefix}q:{context_id}"

    def replies(self, caller_id: str) -> str:
        return f"{self.prefix}r:{caller_id}"

    def is_reply_stream(self, key: bytes | str) -> bool:
        """Workers only write replies here, whatever an entry asks for."""
        text = key.decode(errors="replace") if isinstance(key, bytes) else key
        return text.startswith(f"{self.prefix}r:")

    def heartbeat(self, worker_id: str) -> str:
        return f"{self.prefix}w:{worker_id}"

    def cancels(self, context_id: str) -> str:
        return f"{self.prefix}c:{context_id}"

    def heartbeat_pattern(self) -> str:
        """A SCAN pattern matching every heartbeat key and nothing else."""
        escaped = "".join(f"\\{char}" if char in "*?[]\\" else char for char in self.prefix)
        return f"{escaped}w:*"


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """The transport's knobs, read from the URL's query (``redis://host/0?prefix=app:&queue_timeout_s=10``).

    Workers and callers of one queue must agree on `prefix`; `visibility_timeout_s` and the heartbeat
    settings matter on the worker side, `queue_timeout_s` and `reconnect_timeout_s` on the caller side."""

    redis_url: str  # the URL redis-py sees: dagrun's parameters removed
    prefix: str = DEFAULT_PREFIX
    queue_timeout_s: float = 30.0  # a caller fails a step after this long without a live worker for it
    visibility_timeout_s: float = 60.0  # a pending entry idle this long is claimed even if its worker beats
    heartbeat_s: float = 1.0  # how often a worker refreshes its heartbeat and looks for work to claim
    heartbeat_ttl_s: float = 5.0  # a worker whose heartbeat is this old is dead: its entries are claimed
    reconnect_timeout_s: float = 60.0  # how long a caller keeps retrying an unreachable Redis
    prefetch: int = 8  # entries a worker reads ahead of its free sandbox processes while its steps are quick

    @classmethod
    def from_url(cls, url: str) -> QueueSettings:
        """Settings from a ``redis://`` or ``rediss://`` URL; ExecutorError (credentials hidden) when bad."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            # said in words: the CLI redacts whole messages, which would mangle a USER:PASSWORD@ template
            expected = "a Redis URL: redis://HOST[:PORT][/DB] (a user and password go before HOST), rediss:// for TLS"
            raise ExecutorSetupError(f"{redact(url)!r} is not {expected}" if url else f"needs {expected}")
        ours = {f.name for f in dataclasses.fields(cls)} - {"redis_url"}
        values: dict[str, Any] = {}  # checked by _parse
        theirs: list[tuple[str, str]] = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name in ours:
                values[name] = _parse(url, name, value)
            else:
                theirs.append((name, value))
        redis_url = urlunsplit(parts._replace(query=urlencode(theirs)))
        settings = dataclasses.replace(cls(redis_url), **values)
        if settings.heartbeat_ttl_s <= settings.heartbeat_s:
            raise ExecutorSetupError(f"{redact(url)!r}: heartbeat_ttl_s must be longer than heartbeat_s")
        return settings

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix)

    @property
    def where(self) -> str:
        """The server, for messages and logs: no credentials, no query."""
        parts = urlsplit(self.redis_url)
        return redact(urlunsplit(parts._replace(query="")))


def _parse(url: str, name: str, value: str) -> str | int | float:
    if name == "prefix":
        return value
    if name == "prefetch":
        if not value.isdigit():
            raise ExecutorSetupError(f"{redact(url)!r}: prefetch must be a whole number >= 0, not {value!r}")
        return int(value)
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not 0 < number < float("inf"):
        raise ExecutorSetupError(f"{redact(url)!r}: {name} must be a positive number of seconds, not {value!r}")
    return number


def open_redis(settings: QueueSettings) -> aioredis.Redis:
    """A client (no connection yet). redis-py retries a command once on a fresh connection (a pooled one
    may be stale after a Redis restart); longer outages are retried by the callers' loops with Backoff."""
    try:
        return aioredis.Redis.from_url(
            settings.redis_url,
            retry=Retry(NoBackoff(), 1),
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=None,
            socket_keepalive=True,
            socket_keepalive_options=KEEPALIVE_OPTIONS,
            decode_responses=False,
        )
    except ValueError as exc:
        raise ExecutorSetupError(f"{settings.where}: {redact(str(exc))}") from exc


def block_ms(client: aioredis.Redis) -> int:
    """How long a blocking read may wait: well inside the socket timeout if the URL sets one, so that a
    quiet stream never looks like a dead connection."""
    block_s = blocking_read_s(client.connection_pool.connection_kwargs, longest_s=MAX_BLOCK_MS / 1000)
    return max(1, int(block_s * 1000))


async def check_connection(client: aioredis.Redis, settings: QueueSettings) -> None:
    """PING once; ExecutorError saying where and why (never with credentials) when it fails."""
    try:
        await client.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        raise ExecutorError(f"cannot connect to redis at {settings.where}: {redact(str(exc))}") from exc


async def let_others_run(max_turns: int = 16) -> None:
    """Yield to the event loop until nothing else is ready to run (at most `max_turns` times): a task about
    to send a blocking read that is not needed yet calls this so that the work it just made ready (a step
    to start, a caller to answer, the next request to send) goes first. Without asyncio's ready queue
    (another loop implementation) it yields once."""
    ready = getattr(asyncio.get_running_loop(), "_ready", None)
    for _ in range(max_turns if ready is not None else 1):
        await asyncio.sleep(0)
        if not ready:
            return


class Backoff:
    """Exponential backoff with jitter between retries of a failed Redis call (not a poll)."""

    def __init__(self, first_s: float = 0.05, max_s: float = 2.0) -> None:
        self._first_s = first_s
        self._max_s = max_s
        self._next_s = first_s
        self.failures = 0

    async def wait(self) -> None:
        self.failures += 1
        await asyncio.sleep(self._next_s * random.uniform(0.5, 1.0))
        self._next_s = min(self._next_s * 2, self._max_s)

    def reset(self) -> None:
        self._next_s = self._first_s
        self.failures = 0


class DedicatedConnection:
    """A connection of its own for one task's per-step commands (a blocking read, the XADDs of requests,
    a reply script): `await connection.execute("XADD", key, "*", *fields)` returns Redis's raw reply.

    Why: the pooled client spends about as much CPU around a command as the connection spends sending it
    and reading the reply (taking and returning a pooled connection, the retry wrapper, response callbacks,
    observability hooks), and redis-py's asyncio connection packs commands in Python, 5-7x slower than
    hiredis's `pack_command` (which redis-py's sync connection uses); per step, that was a third of the
    transport's CPU.

    One task uses it at a time. It connects on first use with the pool's settings (credentials, TLS,
    keepalive, timeouts). A reply Redis refused (ResponseError) leaves it usable; any other failure or a
    cancellation disconnects it (a cancelled blocking read must not leave its reply to be read as the next
    command's) and the next command connects again: the caller's loop decides when, with its Backoff."""

    def __init__(self, client: aioredis.Redis) -> None:
        pool = client.connection_pool
        self._connection: AbstractConnection = pool.connection_class(**pool.connection_kwargs)

    async def execute(self, *args: Argument) -> Any:
        """The reply; ResponseError when Redis refused the command."""
        (reply,) = await self.execute_many([args])
        if isinstance(reply, redis.exceptions.ResponseError):
            raise reply
        return reply

    async def execute_many(self, commands: Sequence[Sequence[Argument]]) -> list[Any]:
        """Send `commands` in one write; their replies in order, each refused one as its ResponseError."""
        if not commands:
            return []
        connection = self._connection
        try:
            # hiredis's stub types the argument as a 1-tuple
            packed = b"".join(hiredis.pack_command(tuple(command)) for command in commands)  # type: ignore[arg-type]
            await connection.send_packed_command(packed, check_health=False)
            return [await self._read_reply() for _ in commands]
        except BaseException:
            await connection.disconnect(nowait=True)
            raise

    async def _read_reply(self) -> Any:
        try:
            return await self._connection.read_response()
        except redis.exceptions.ResponseError as exc:  # a whole reply, read: the connection stays in step
            return exc

    async def aclose(self) -> None:
        """Disconnect; safe twice (the next `execute` would connect again)."""
        await self._connection.disconnect()


def stream_entries(response: Any) -> Iterator[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]:
    """(stream, [(entry id, fields), ...]) per stream of a raw XREAD or XREADGROUP reply: nothing for a
    timeout (None), RESP2's list of pairs or RESP3's map. An entry deleted since it was delivered has no fields."""
    for stream, entries in response.items() if isinstance(response, dict) else response or ():
        yield stream, [(entry_id, _pairs(fields)) for entry_id, fields in entries]


def _pairs(fields: list[bytes] | None) -> dict[bytes, bytes]:
    values = iter(fields or ())
    return dict(zip(values, values, strict=False))
