"""The Celery peer of bench_remote.py: the benchmark DAGs as Celery tasks, each submitted as soon as all of
its dependencies have finished.

The worker imports this module by name (``celery -A celery_peer -b BROKER --result-backend BACKEND worker
...`` with this directory on PYTHONPATH); the driver imports it too and calls `configure` first. A step
is the task ``step(*dependency_values) -> {"v": 1 + sum(v)}``, the same work as dagrun's step script.
"""

from __future__ import annotations

import sys
from collections import deque
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from vine import promise

app = Celery("celery_peer")
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=600,  # the benchmark's results are not needed after the run
    broker_connection_retry_on_startup=True,
)


@app.task(name="celery_peer.step")
def step(*deps: dict[str, int]) -> dict[str, int]:
    return {"v": 1 + sum(d["v"] for d in deps)}


def configure(*, broker_url: str, backend_url: str) -> None:
    """Point the driver at the broker and result backend the worker was started with."""
    app.conf.update(broker_url=broker_url, result_backend=backend_url)


def worker_argv(*, broker_url: str, backend_url: str, queue: str, concurrency: int = 2) -> list[str]:
    """The worker command of PERFORMANCE.md's Celery row (prefork, no gossip/mingle/heartbeat)."""
    return [
        *(sys.executable, "-m", "celery", "-A", "celery_peer", "-b", broker_url, "--result-backend", backend_url),
        "worker",
        *("--pool", "prefork", "-c", str(concurrency), "-Q", queue, "-n", f"{queue}@%h"),
        *("--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"),
    ]


class DagDriver:
    """Runs one DAG ``{step: [dependencies]}`` on the worker: in-degree counters; a step is submitted
    when its counter reaches 0, with its dependencies' values as arguments."""

    def __init__(self, dag: dict[str, list[str]], *, queue: str) -> None:
        self._dag = dag
        self._queue = queue
        self._missing = {name: len(deps) for name, deps in dag.items()}
        self._dependents: dict[str, list[str]] = {name: [] for name in dag}
        for name, deps in dag.items():
            for dep in deps:
                self._dependents[dep].append(name)
        self.values: dict[str, dict[str, int]] = {}
        self._finished: deque[tuple[str, AsyncResult]] = deque()  # filled by the result callbacks
        self._all_done = promise()

    def run(self, *, timeout_s: float) -> dict[str, dict[str, int]]:
        """Every step's value; RuntimeError when a task failed, celery's TimeoutError after `timeout_s`."""
        for name, missing in self._missing.items():
            if missing == 0:
                self._submit(name)
        # The Redis result backend subscribes to each task's result channel before the task is published;
        # drain_events_until blocks on that pub/sub socket (what join_native and iter_native wait with) and
        # yields after each message, so the driver never polls. It returns once `_all_done` is fulfilled.
        consumer = app.backend.result_consumer
        for _ in consumer.drain_events_until(self._all_done, timeout=timeout_s):
            self._handle_finished()
        return self.values

    def _submit(self, name: str) -> None:
        result = step.apply_async(args=[self.values[dep] for dep in self._dag[name]], queue=self._queue)
        # `then` registers the AsyncResult with the backend (a strong reference until it is ready).
        result.then(lambda ready, name=name: self._finished.append((name, ready)))

    def _handle_finished(self) -> None:
        while self._finished:
            name, result = self._finished.popleft()
            if not result.successful():
                raise RuntimeError(f"celery task {name} ended {result.state}: {result.result!r}")
            value: Any = result.result
            self.values[name] = value
            for dependent in self._dependents[name]:
                self._missing[dependent] -= 1
                if self._missing[dependent] == 0:
                    self._submit(dependent)
        if len(self.values) == len(self._dag):
            self._all_done()
