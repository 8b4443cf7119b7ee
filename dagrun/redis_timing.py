"""How long a blocking Redis read may block: shared by the Redis store and the Redis transport, which both
wait on streams with XREAD BLOCK."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def blocking_read_s(connection_kwargs: Mapping[str, Any], *, longest_s: float) -> float:
    """How long one blocking read (XREAD BLOCK) may block on a connection made with `connection_kwargs`: at
    most `longest_s`, and half the socket timeout when there is one (the URL's ``socket_timeout``, else redis-py's
    default: 5 s from redis-py 8, none before), so that a quiet stream never reads as a dead connection."""
    socket_timeout = connection_kwargs.get("socket_timeout")
    if not socket_timeout:
        return longest_s
    return max(0.001, min(longest_s, float(socket_timeout) / 2))
