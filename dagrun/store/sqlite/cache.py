"""What a SQLite store keeps of the runs its process drives: each one's step positions and context.

Exact because only the holder of a run's live lease writes the run: an entry is kept only while this process
holds that lease, and dropped when the run ends, or when the lease lapses or changes hands (another process
may have driven the run since); the run is then read from the file again if it is written to. A run dropped
while rows of it may still be queued is remembered until they are committed: until then the file cannot
tell that the run exists.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dagrun.store.sqlite.writer import Writer

_EVICTED_PRUNE_AT = 1024


@dataclass(slots=True)
class RunState:
    """What the driving side knows of a run it writes to."""

    positions: dict[str, int]  # step id -> place in the flow
    context: str  # the context's JSON text after every operation applied so far


class RunCache:
    """The runs this process drives, and those it dropped with rows still queued."""

    def __init__(self, writer: Writer | None) -> None:
        """`writer` queues the rows of the store (None for a read-only store: nothing is queued)."""
        self._writer = writer
        self._states: dict[str, RunState] = {}
        # Runs dropped from _states (ended, or handed to another driver) -> the writer's batch number then.
        # While their rows may be uncommitted, the file cannot tell that they exist; this can.
        self._evicted: dict[str, int] = {}
        self._leases: dict[str, float] = {}  # run id -> expires_at of the lease this process last claimed

    def get(self, run_id: str) -> RunState | None:
        """The run's entry, if this process has loaded one (ask `drives` first whether it is still exact)."""
        return self._states.get(run_id)

    def add(self, run_id: str, positions: dict[str, int], context: str) -> RunState:
        state = self._states[run_id] = RunState(positions, context)
        return state

    def knows(self, run_id: str) -> bool:
        """Whether the run was written to here, committed or not: cached, or dropped with rows queued."""
        return run_id in self._states or run_id in self._evicted

    def drives(self, run_id: str) -> bool:
        """Whether this process holds the run's live lease: then no other process writes the run, and its
        entry is exact. An entry kept from a lease that lapsed since is dropped: others may have written."""
        if self._leases.get(run_id, 0.0) > time.time():
            return True
        if run_id in self._states:
            self.forget(run_id)
        return False

    def claimed(self, run_id: str, *, now: float, ttl_s: float) -> None:
        """This process claimed the run's lease at `now`; a claim that does not renew a live lease of its
        drops the run's entry (another process may have driven the run meanwhile)."""
        if self._leases.get(run_id, 0.0) <= now:
            self.forget(run_id)
        self._leases[run_id] = now + ttl_s

    def forget(self, run_id: str) -> None:
        """Drop what this process knows of the run; it is read from the file if the run is written to again."""
        self._leases.pop(run_id, None)
        if self._states.pop(run_id, None) is not None:
            self.remember_queued(run_id)

    def remember_queued(self, run_id: str) -> None:
        """Note that the run exists, for as long as rows of it queued so far may be uncommitted."""
        if self._writer is None:  # nothing is queued
            return
        self._evicted[run_id] = self._writer.batches_queued
        if len(self._evicted) >= _EVICTED_PRUNE_AT:
            committed = self._writer.batches_committed
            self._evicted = {key: batch for key, batch in self._evicted.items() if batch >= committed}

    def clear(self) -> None:
        self._states.clear()
