"""What a worker server holds at once, as it announces it to its clients (handshake headers, /health).

A worker runs as many requests at once as its sandbox children hold, admits QUEUE_FACTOR times that (the
rest wait for a pool slot), and accepts request envelopes up to its message limit. A client keeps no
more requests in flight than the capacity announced, and sends none over the size announced.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from dagrun.errors import ExecutorError
from dagrun.worker.script_worker import WorkerSettings

LIMITS_HEADER_PREFIX = "Dagrun-"  # handshake response headers announcing a worker's Limits
QUEUE_FACTOR = 2  # a worker admits QUEUE_FACTOR x what its pool holds: the rest wait for a pool slot


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """How much a worker server holds at once, as it announces it (handshake headers, /health)."""

    running: int  # requests handed to the sandbox pool at once: what its children hold
    pipeline_depth: int  # requests one child holds, one running: a step may wait behind depth - 1 others
    capacity: int  # requests admitted at once; a client keeps no more in flight
    max_message_bytes: int  # the largest request envelope accepted

    @classmethod
    def of(cls, settings: WorkerSettings) -> Limits:
        sandbox = settings.pool_settings
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
