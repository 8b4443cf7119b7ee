"""Fencing: a run's writes carry the epoch of the lease their store claimed, and once another driver has
claimed the run, the old driver's writes are refused whole, even when it has not noticed yet. Each store
here is a separate client of one SQLite file or Redis prefix, as another process would be."""

from __future__ import annotations

import asyncio

import pytest

from dagrun.contract.context import ContextOp, ContextOpKind
from dagrun.contract.states import RunStatus, StepStatus
from dagrun.errors import LeaseLost
from dagrun.store import StepRecord
from tests.store.conftest import StoreFactory, create

INCR = ContextOpKind.INCR


async def test_each_new_claim_raises_the_epoch_and_a_renewal_keeps_it(clients: StoreFactory) -> None:
    a, b = clients(), clients()
    await create(a, "r1", ["s"])
    assert await a.claim_lease("r1", "orch-a", ttl_s=30)
    first = await b.get_lease("r1")
    assert await a.claim_lease("r1", "orch-a", ttl_s=30)  # a renewal
    renewed = await b.get_lease("r1")
    assert renewed is not None and (renewed.owner, renewed.epoch) == ("orch-a", 1)
    await a.release_lease("r1", "orch-a")
    assert await b.claim_lease("r1", "orch-b", ttl_s=30)
    lease = await a.get_lease("r1")
    assert first is not None and lease is not None
    assert (first.epoch, lease.epoch, lease.owner) == (1, 2, "orch-b")


async def test_the_writes_of_a_driver_whose_lease_passed_on_are_refused_whole(clients: StoreFactory) -> None:
    old, new = clients(), clients()
    await create(old, "r1", ["s"])
    assert await old.claim_lease("r1", "orch-old", ttl_s=0.2)
    await old.set_run_status("r1", RunStatus.RUNNING, at=1.0)
    await old.record_step(StepRecord("r1", "s", StepStatus.RUNNING, attempt=1))
    await old.flush()
    await asyncio.sleep(0.3)  # the old driver is paused past its lease; another takes the run over
    assert await new.claim_lease("r1", "orch-new", ttl_s=30)

    # the old driver wakes up with its step's result and writes it, not knowing yet
    await old.record_step(StepRecord("r1", "s", StepStatus.SUCCEEDED, attempt=1, outputs={"rows": 3}, logs="old"))
    with pytest.raises(LeaseLost):  # a context write is answered at once
        await old.apply_context("r1", (ContextOp(INCR, "n", 1),))
    with pytest.raises(LeaseLost, match=r"run 'r1': its lease passed to another driver \(lease epoch 2"):
        await old.set_run_status("r1", RunStatus.SUCCEEDED, at=2.0)
    with pytest.raises(LeaseLost):  # and every later write of the run is refused at once
        await old.record_step(StepRecord("r1", "s", StepStatus.FAILED, attempt=1))

    assert [(step.status, step.attempt, step.outputs) for step in await new.get_steps("r1")] == [
        (StepStatus.RUNNING, 1, {})
    ]
    assert await new.get_context("r1") == {}
    assert await new.get_logs("r1") == []  # the attempt's logs went with its refused record
    assert (await new.get_run("r1")).status == RunStatus.RUNNING
    assert [(e.kind, e.status) for e in await new.get_events("r1")] == [("run", "running"), ("step", "running")]
    # the new driver's writes land
    await new.record_step(StepRecord("r1", "s", StepStatus.SUCCEEDED, attempt=2, outputs={"rows": 4}))
    assert (await new.apply_context("r1", (ContextOp(INCR, "n", 10),)))[0] == {"n": 10}
    await new.set_run_status("r1", RunStatus.SUCCEEDED, at=3.0)
    assert (await old.get_run("r1")).status == RunStatus.SUCCEEDED
    assert (await old.get_steps("r1"))[0].outputs == {"rows": 4}


async def test_a_store_that_never_claimed_a_leased_run_cannot_write_it(clients: StoreFactory) -> None:
    driver, stranger = clients(), clients()
    await create(driver, "r1", ["s"])
    await driver.flush()
    await stranger.record_step(StepRecord("r1", "s", StepStatus.READY))  # nobody ever leased it: allowed
    await stranger.flush()
    assert await driver.claim_lease("r1", "orch", ttl_s=30)

    with pytest.raises(LeaseLost, match=r"lease epoch 1, this driver's 0"):
        await stranger.set_run_status("r1", RunStatus.CANCELLED, at=1.0)
    assert (await driver.get_run("r1")).status == RunStatus.PENDING


async def test_a_lapsed_lease_is_renewed_only_if_nobody_claimed_it_since(clients: StoreFactory) -> None:
    a, b = clients(), clients()
    await create(a, "r1", ["s"])
    assert await a.claim_lease("r1", "orch-a", ttl_s=0.1)
    await asyncio.sleep(0.2)
    assert await a.claim_lease("r1", "orch-a", ttl_s=0.1)  # lapsed, untouched: renewed at the same epoch
    assert (await b.get_lease("r1")).epoch == 1  # type: ignore[union-attr]
    await asyncio.sleep(0.2)
    assert await b.claim_lease("r1", "orch-b", ttl_s=30)
    await b.release_lease("r1", "orch-b")

    assert not await a.claim_lease("r1", "orch-a", ttl_s=30)  # the run moved on while a was away
    await a.record_step(StepRecord("r1", "s", StepStatus.RUNNING, attempt=1))
    with pytest.raises(LeaseLost):
        await a.set_run_status("r1", RunStatus.FAILED, at=1.0)
    await a.release_lease("r1", "orch-a")  # as its driver does when it stops; a new claim is a new epoch
    assert await a.claim_lease("r1", "orch-a", ttl_s=30)
    assert (await b.get_lease("r1")).epoch == 3  # type: ignore[union-attr]
    await a.set_run_status("r1", RunStatus.FAILED, at=1.0)
