"""DomainDispatcher: which child runs which job. Jobs wait per trust domain, and children are bound to one.

A trust domain is whose steps may share a child: each run alone (`SandboxSettings.trust_domain` None), or
every run of the pool (a name the embedder vouches for). A child serves one domain from its first job until
it is killed; the domains wait in the order of their oldest job. A waiting job goes to an idle child of its
domain, else to a child that serves nobody yet, else to the child of its domain with the fewest in flight
(at most `pipeline_depth`). When domains wait and no child is free to bind, the idle children of domains
that wait for nothing are replaced by fresh ones (forked from the zygote: nothing of the old domain's steps
is in them), after REBIND_GRACE_S.

Runs share the children in time slices: when a domain waits with no child of its own, the child that has
served its domain longest, for SLICE_S at least, drains (it takes no new job) and is replaced once idle,
and the fresh child goes to the waiting domain first (`_promised`). So a small run beside a big one on a
one-process worker waits for a slice, not for the big run's end; a domain alone keeps its children.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable

from dagrun.sandbox import protocol
from dagrun.sandbox.children import Children
from dagrun.sandbox.process import ChildProcess, Job
from dagrun.sandbox.settings import SandboxSettings

REBIND_GRACE_S = 0.02  # an idle child stays its run's this long before another run may have it replaced
SLICE_S = 0.1  # a child serves its run at least this long before another waiting run may have it


class DomainDispatcher:
    """`submit(job)`; `dispatch()` again whenever a child may have room. `on_start(child)` is called when
    `child.jobs[0]` starts running."""

    def __init__(
        self, settings: SandboxSettings, children: Children, *, on_start: Callable[[ChildProcess], None]
    ) -> None:
        self._settings = settings
        self._children = children
        self._on_start = on_start
        # Jobs no child has taken, per trust domain, the domains in the order of their oldest job.
        self._waiting: dict[str, deque[Job]] = {}
        self._room_timer: asyncio.TimerHandle | None = None  # `_make_room` again once a grace or slice ends
        self._promised: list[str] = []  # waiting domains owed the next fresh child, in the order they asked
        self._is_flush_due = False
        self._is_closed = False

    def domain_of(self, job: Job) -> str:
        """Whose steps may share a child: the settings' named domain, else each run alone."""
        return self._settings.trust_domain or job.request.run_id

    def submit(self, job: Job) -> None:
        """Queue a job behind its domain's and hand out what can be."""
        domain = self.domain_of(job)
        waiting = self._waiting.get(domain)
        if waiting is None:
            waiting = self._waiting[domain] = deque()
        waiting.append(job)
        self.dispatch()

    def put_back(self, jobs: deque[Job]) -> None:
        """Jobs taken back from a child before they started: at the front of their queues, in order."""
        for job in reversed(jobs):
            if not job.future.done():
                job.child = None
                self._waiting.setdefault(self.domain_of(job), deque()).appendleft(job)

    def withdraw(self, job: Job) -> None:
        """Forget a job no child has taken (it was cancelled)."""
        waiting = self._waiting.get(self.domain_of(job))
        if waiting is not None and job in waiting:
            waiting.remove(job)

    def take_all(self) -> list[Job]:
        """Every waiting job, no longer waiting (to fail them)."""
        jobs = [job for waiting in self._waiting.values() for job in waiting]
        self._waiting.clear()
        return jobs

    def close(self) -> list[Job]:
        """Stop dispatching; the jobs that were waiting."""
        self._is_closed = True
        if self._room_timer is not None:
            self._room_timer.cancel()
        return self.take_all()

    def dispatch(self) -> None:
        """Hand waiting jobs to children of their trust domain, binding a child that serves nobody yet to a
        domain that needs one; then make room for the domains still waiting.

        A write wakes the child, which costs more than the write: an idle child is written to at once
        (it waits), a busy one once per loop iteration by `_flush` (it reads when its step is done)."""
        children = self._children.ready
        if not self._waiting or not children:
            return
        idle: list[ChildProcess] = []
        # With no child free to bind, only domains with a child of their own can be served: with hundreds
        # of runs waiting, the others are skipped rather than looked at on every result.
        unbound = any(child.domain is None for child in children)
        depth = self._settings.pipeline_depth
        servable = None if unbound else {c.domain for c in children if len(c.jobs) < depth and not c.is_draining}
        for domain in list(self._waiting):
            if servable is not None and domain not in servable:
                continue
            jobs = self._waiting[domain]
            while jobs and (child := self._child_for(domain)) is not None:
                self._hand(jobs.popleft(), child, idle)
            if not jobs:
                del self._waiting[domain]
        for child in idle:
            _write_outbox(child)
        if self._waiting:
            self._make_room()

    def _child_for(self, domain: str) -> ChildProcess | None:
        """An idle child of `domain`, else one that serves nobody yet (bound to it now: steps run side by
        side before they queue behind each other), else the child of `domain` with the fewest in flight.
        One pass over the children: this runs for every job."""
        least: ChildProcess | None = None
        spare: ChildProcess | None = None
        for child in self._children.ready:
            if child.domain == domain and not child.is_draining:
                in_flight = len(child.jobs)
                if not in_flight:
                    return child
                if in_flight < self._settings.pipeline_depth and (least is None or in_flight < len(least.jobs)):
                    least = child
            elif child.domain is None and spare is None and self._may_bind(domain):
                spare = child
        if spare is not None:
            spare.domain, spare.bound_at = domain, asyncio.get_running_loop().time()
            if domain in self._promised:
                self._promised.remove(domain)
            return spare
        return least

    def _may_bind(self, domain: str) -> bool:
        """Whether a fresh child may go to `domain`: first to the domains it was promised to, that still wait."""
        self._promised = [promised for promised in self._promised if promised in self._waiting]
        return not self._promised or self._promised[0] == domain

    def _hand(self, job: Job, child: ChildProcess, idle: list[ChildProcess]) -> None:
        child.next_id += 1
        job.id, job.child = child.next_id, child
        child.jobs.append(job)
        child.outbox.append(protocol.encode_run(job.id, job.payload))
        if len(child.jobs) == 1:
            self._on_start(child)
            idle.append(child)
        elif not self._is_flush_due:
            self._is_flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._is_flush_due = False
        for child in self._children.ready:
            _write_outbox(child)

    def _make_room(self) -> None:
        """Replace every idle child of a domain that waits for nothing by a fresh one for the domains that
        wait, which then spread over all of them. None while a child that serves nobody yet is there to take
        a domain. A child whose last step ended within REBIND_GRACE_S is left to its run, whose next step is
        usually on its way (its driver submits it on the result): the room is looked for again when the
        grace ends. Then share the children out in slices (`_share`)."""
        if any(child.domain is None for child in self._children.ready):
            return
        now = asyncio.get_running_loop().time()
        later: list[float] = []  # when to look again: a grace or a slice ends
        for child in list(self._children.ready):
            if child.jobs or (child.domain in self._waiting and not child.is_draining):
                continue
            if now - child.last_done < REBIND_GRACE_S and not child.is_draining:
                later.append(child.last_done + REBIND_GRACE_S)
            else:
                self._children.replace(child)
        later += self._share(now)
        if later and (self._room_timer is None or self._room_timer.when() > min(later)):
            if self._room_timer is not None:
                self._room_timer.cancel()
            self._room_timer = asyncio.get_running_loop().call_at(min(later), self._look_for_room)

    def _share(self, now: float) -> list[float]:
        """For each waiting domain without a child (and not yet promised one), drain the child that has
        served its domain longest, from the domain with the most children, once it has served SLICE_S; the
        fresh child replacing it is promised to the waiting domain. When a slice ends, if none has yet."""
        children = [child for child in self._children.ready if not child.is_draining]
        served = {child.domain for child in children}
        for domain in self._waiting:
            if domain in served or domain in self._promised:
                continue
            if not children:
                return []
            counts = Counter(child.domain for child in children)
            child = max(children, key=lambda c: (counts[c.domain], now - c.bound_at))
            if now - child.bound_at < SLICE_S:
                return [child.bound_at + SLICE_S]
            child.is_draining = True
            children.remove(child)
            self._promised.append(domain)
            if not child.jobs:
                self._children.replace(child)
        return []

    def _look_for_room(self) -> None:
        self._room_timer = None
        if not self._is_closed:
            self.dispatch()


def _write_outbox(child: ChildProcess) -> None:
    if child.outbox:
        child.write(b"".join(child.outbox))
        child.outbox.clear()
