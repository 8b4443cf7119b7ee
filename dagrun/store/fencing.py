"""Fencing: a run's writes carry the epoch of the lease their store claimed, and a store refuses them once
a newer claim has raised the run's epoch, so a driver that lost its lease (paused past it, cut off) cannot
write even before it notices.

Each claim that is not a renewal raises the run's epoch (kept with the run, never reset); a renewal keeps
it. A lapsed lease may be renewed by its holder only while the epoch is still the one it held: a claim in
between means the run has moved on. Writes from a store that never claimed the run carry epoch 0, so they
land only on a run that nobody has ever leased. `Fences` is what one store object knows: the epoch it
holds per run (and for which owner) and the runs whose writes were refused; the check itself is made by the
backend where the write lands (a Lua script on Redis, the write transaction in SQLite).
"""

from __future__ import annotations

from dagrun.errors import LeaseLost


class Fences:
    def __init__(self) -> None:
        self._held: dict[str, tuple[str, int]] = {}  # run id -> (owner, epoch) of the lease claimed here
        # run id -> the epoch this store's writes of it carry (`epochs.get(run_id, 0)`: read per write)
        self.epochs: dict[str, int] = {}
        self.refused: dict[str, int] = {}  # run id -> the epoch that refused a write of it (the writer adds)

    def held_by(self, run_id: str, owner: str) -> int:
        """The epoch `owner` holds for the run through this store, 0 when none: what a claim may renew."""
        held = self._held.get(run_id)
        return held[1] if held is not None and held[0] == owner else 0

    def claimed(self, run_id: str, owner: str, epoch: int) -> None:
        """`owner` holds the run's lease at `epoch` (0: the claim failed, nothing changes)."""
        if epoch:
            self._held[run_id] = (owner, epoch)
            self.epochs[run_id] = epoch
            self.refused.pop(run_id, None)

    def released(self, run_id: str, owner: str) -> None:
        if self._held.get(run_id, ("", 0))[0] == owner:
            del self._held[run_id], self.epochs[run_id]

    def check(self, run_id: str) -> None:
        """LeaseLost when a write of the run was refused: this store's writes of it go nowhere."""
        epoch = self.refused.get(run_id)
        if epoch is not None:
            raise LeaseLost(run_id, epoch=epoch, held=self.epochs.get(run_id, 0))
