"""The lobby of a server: its connections that have not yet presented the token.

A connection enters the lobby when it is accepted and leaves it once a request on it carries the token,
or when it closes. Invariants: the lobby holds at most `max_unauthenticated` connections, and one that
waits for a request's headers longer than `header_timeout_s` (counted from its acceptance, or from its
last answer, such as a /health) is closed. When the lobby is full a newcomer still gets in: the
connection that has waited longest for its headers is closed to make room; a newcomer is refused only
when every connection in the lobby is being answered. So idle or trickling sockets cost a bounded
lobby and cannot lock out a client that sends its request at once; authenticated connections,
keep-alive ones included, are not counted. Plain asyncio: each server reports its connections' events
(`dagrun.serving.lobby_site` for the aiohttp servers; the WebSocket worker's connection class), and decides
with `is_authorized`, the one token check of every server, when a connection leaves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

DEFAULT_HEADER_TIMEOUT_S = 5.0
DEFAULT_MAX_UNAUTHENTICATED = 1024  # room for a burst of clients (500 runs submitted at once) before eviction
WARN_EVERY_S = 60.0  # a full lobby is logged once per this, not once per connection of a flood
AUTHORIZATION = "Authorization"


def is_authorized(values: list[str], token: str) -> bool:
    """True when `values` (every Authorization header of a request) is exactly one ``Bearer <token>``;
    the comparison takes the same time wherever the presented token first differs."""
    if len(values) != 1:
        return False
    scheme, _, presented = values[0].partition(" ")
    return scheme.lower() == "bearer" and token_matches(presented, token)


def token_matches(presented: str, token: str) -> bool:
    """Whether `presented` (surrounding blanks aside) is `token`, in the same time wherever they first differ."""
    # compare_digest on bytes: on str it raises TypeError for non-ASCII input instead of saying no. A value
    # that is not UTF-8 comes decoded with surrogate escapes: encoded back to its bytes, it is refused too.
    return hmac.compare_digest(presented.strip().encode(errors="surrogateescape"), token.encode())


@dataclasses.dataclass(frozen=True, slots=True)
class LobbySettings:
    """How long a connection without the token may take to send a request's headers, and how many such
    connections a server holds at once."""

    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    max_unauthenticated: int = DEFAULT_MAX_UNAUTHENTICATED

    def __post_init__(self) -> None:
        if not self.header_timeout_s > 0 or self.max_unauthenticated < 1:
            raise ValueError(f"unusable lobby settings: {self}")


class Lobby:
    """The connections of one server not yet authenticated, keyed by their transport."""

    def __init__(self, settings: LobbySettings, *, name: str) -> None:
        self.settings = settings
        self._name = name  # who logs: "api", "worker w-1"
        self._members: set[asyncio.Transport] = set()
        # the members waiting for a request's headers, longest first, with the timer that closes them
        self._waiting: dict[asyncio.Transport, asyncio.TimerHandle] = {}
        self._warned_at = -math.inf

    def __len__(self) -> int:
        return len(self._members)

    def enter(self, transport: asyncio.Transport) -> bool:
        """Take an accepted connection in, closing the one that has waited longest for its headers when
        the lobby is full; False (the caller closes it) when every member is being answered."""
        if len(self._members) >= self.settings.max_unauthenticated:
            self._warn_full()
            if not self._waiting:
                return False
            self._close(next(iter(self._waiting)), "closed to make room for a new connection")
        self._members.add(transport)
        self._wait_for_headers(transport)
        return True

    def leave(self, transport: asyncio.Transport | None) -> None:
        """The connection authenticated, or closed (None: the request's connection is gone): it no longer
        counts. Harmless for a non-member."""
        if transport is not None:
            self._members.discard(transport)
            self._stop_waiting(transport)

    @contextmanager
    def serving(self, transport: asyncio.Transport | None) -> Iterator[None]:
        """Around the answer to a request whose headers are in: a member does not wait for headers while
        it is answered, and waits again (with a new deadline) after, unless it authenticated meanwhile."""
        if transport is None or transport not in self._members:
            yield
            return
        self._stop_waiting(transport)
        try:
            yield
        finally:
            if transport in self._members and not transport.is_closing():
                self._wait_for_headers(transport)

    def _wait_for_headers(self, transport: asyncio.Transport) -> None:
        timeout_s = self.settings.header_timeout_s
        why = f"no request headers within {timeout_s:g} s"
        self._waiting[transport] = asyncio.get_running_loop().call_later(timeout_s, self._close, transport, why)

    def _stop_waiting(self, transport: asyncio.Transport) -> None:
        timer = self._waiting.pop(transport, None)
        if timer is not None:
            timer.cancel()

    def _close(self, transport: asyncio.Transport, why: str) -> None:
        self.leave(transport)
        logger.debug("%s: closed a connection from %s: %s", self._name, _peer(transport), why)
        transport.abort()  # nothing is owed to a peer that sent no request: no flush, no TLS goodbye

    def _warn_full(self) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            logger.warning(
                "%s: %d connections without a token at once (the --max-unauthenticated limit); "
                "closing the longest idle ones to make room",
                self._name,
                len(self._members),
            )


def _peer(transport: asyncio.Transport) -> str:
    address = transport.get_extra_info("peername")
    return f"{address[0]}:{address[1]}" if address else "?"
