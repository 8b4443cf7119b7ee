"""SandboxSettings: the limits of one sandbox pool and of every child process in it.

Every size limit is in bytes of UTF-8/JSON; every limit is enforced in the child and again, as a
total message size, by the parent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

_NOBODY = 65534
DEFAULT_MAX_SOURCE_BYTES = 256 * 1024


def _default_processes() -> int:
    return os.cpu_count() or 1


def _default_drop_to_uid() -> int | None:
    # RLIMIT_NPROC does not bind root, and root can undo every other limit: never run scripts as root.
    return _NOBODY if os.geteuid() == 0 else None


@dataclass(frozen=True, slots=True)
class SandboxSettings:
    processes: int = field(default_factory=_default_processes)  # warm children in the pool
    memory_mb: int = 512  # RLIMIT_AS of a child
    max_source_bytes: int = DEFAULT_MAX_SOURCE_BYTES
    max_output_bytes: int = 1024 * 1024  # the encoded outputs of one step
    max_log_bytes: int = 64 * 1024  # captured log/print text; truncated with a marker, not a failure
    max_context_bytes: int = 256 * 1024  # the encoded context operations of one step
    max_error_bytes: int = 4 * 1024  # an error message
    pipeline_depth: int = 4  # requests queued on one child at once (the first one is running)
    drop_to_uid: int | None = field(default_factory=_default_drop_to_uid)
    drop_to_gid: int | None = None  # None: the same number as drop_to_uid (nobody/nogroup)
    recursion_limit: int = 500
    startup_timeout_s: float = 30.0  # a child that does not say ready by then is killed
    # Whose steps may share a child. None: each run's own children, replaced for the next run, so that a
    # script that breaks the language policy can spoil its own run at most. A name: every run of this pool
    # is one trust domain (the embedder vouches for it) and children are shared, as before runs were kept
    # apart.
    trust_domain: str | None = None

    def __post_init__(self) -> None:
        minimums = {
            "processes": 1,
            "memory_mb": 64,
            "max_source_bytes": 1,
            "max_output_bytes": 2,
            "max_log_bytes": 0,
            "max_context_bytes": 0,
            "max_error_bytes": 64,
            "pipeline_depth": 1,
            "recursion_limit": 50,
        }
        for name, minimum in minimums.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"SandboxSettings.{name} must be an integer >= {minimum}, not {value!r}")
        if self.startup_timeout_s <= 0:
            raise ValueError(f"SandboxSettings.startup_timeout_s must be > 0, not {self.startup_timeout_s!r}")

    @property
    def drop_to(self) -> tuple[int, int] | None:
        """The (uid, gid) a child switches to before running any script, or None to keep its own."""
        if self.drop_to_uid is None:
            return None
        return self.drop_to_uid, self.drop_to_uid if self.drop_to_gid is None else self.drop_to_gid
