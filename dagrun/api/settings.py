"""Where and how the REST API serves: its settings and their defaults, apart from the aiohttp application,
so that the command line can offer them without loading aiohttp."""

from __future__ import annotations

import dataclasses

from dagrun.flow.limits import DEFAULT_LIMITS, FlowLimits
from dagrun.serving.lobby import LobbySettings

DEFAULT_PORT = 8080
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class ApiSettings:
    """Where and how the API serves. The token is not here: it must not show in a settings repr."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT  # 0: any free port (tests)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # larger request bodies get 413 before they are read
    keepalive_s: float = 15.0  # a quiet event stream sends a comment line this often
    # Live event streams at once: each holds a client connection and a store wait.
    max_streams: int = 64
    shutdown_timeout_s: float = 5.0  # how long requests in flight may finish when the server stops
    # connections without the token: how long their request headers may take, how many at once
    lobby: LobbySettings = dataclasses.field(default_factory=LobbySettings)
    flow_limits: FlowLimits = DEFAULT_LIMITS  # what a submitted flow may ask for: one token holds no process for days

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1 or self.max_streams < 1 or self.keepalive_s <= 0 or self.shutdown_timeout_s < 0:
            raise ValueError(f"unusable API settings: {self}")
