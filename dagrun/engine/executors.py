"""The executors an orchestrator runs steps with: named, opened on first use, closed together, and asked
about their workers."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from dagrun.contract.executor import Executor, ExecutorOptions
from dagrun.contract.transport import WorkerStatus, find_transport, open_executor
from dagrun.errors import ExecutorError, FlowError, Problem, redact
from dagrun.flow.model import Flow

logger = logging.getLogger(__name__)


class Executors:
    """Executors by name: Executor objects (owned by whoever gave them) or URLs (opened here on first use,
    closed by `aclose`)."""

    def __init__(self, configured: Mapping[str, Executor | str], options: ExecutorOptions) -> None:
        self._configured = dict(configured)
        self._options = options
        self._opened: dict[str, Executor] = {}
        self._closed = False

    def get(self, name: str) -> Executor:
        """The executor called `name`, opened on first use."""
        if self._closed:
            raise RuntimeError("Orchestrator is closed")
        configured = self._configured[name]
        if not isinstance(configured, str):
            return configured
        if name not in self._opened:
            self._opened[name] = open_executor(configured, self._options)
        return self._opened[name]

    def open_all(self) -> None:
        """Open every configured executor now, used or not, so that a malformed URL or a missing token is
        refused before any run starts (opening one connects to nothing: that waits for its first step)."""
        for name in self._configured:
            self.get(name)

    def check(self, flow: Flow) -> None:
        """FlowError for script steps naming an executor that is not configured (those of its sub-flows'
        flows too: their child runs are driven here); ExecutorError for one that cannot be opened. Opens the
        ones the flow uses."""
        script_steps = list(flow.script_steps())
        problems = [
            Problem(
                f"{place}.executor",
                f"step {step.id!r} uses executor {step.executor!r}, which is not configured "
                f"(configured: {', '.join(sorted(self._configured))}; add one with --executor NAME=URL)",
            )
            for place, step in script_steps
            if step.executor not in self._configured
        ]
        if problems:
            raise FlowError(problems, source=flow.source)
        for name in {step.executor for _, step in script_steps}:
            self.get(name)

    async def workers(self) -> dict[str, list[WorkerStatus]]:
        """The live workers behind each executor configured by URL whose transport has workers (those of
        `local` run in this process): empty for those that cannot say."""
        found: dict[str, list[WorkerStatus]] = {}
        for name, configured in self._configured.items():
            if isinstance(configured, str):
                try:
                    listed = await find_transport(_scheme(configured)).list_workers(configured, self._options)
                except ExecutorError as exc:
                    logger.warning("executor %s: cannot list workers: %s", name, exc)
                    listed = []
                if listed is not None:
                    found[name] = listed
        return found

    async def unserved_contexts(self, flow: Flow) -> list[str]:
        """Before a run of `flow`: one line per context its steps use, on an executor that queues by context
        (Redis), that no live worker serves, saying how to start one. ExecutorError when an executor
        configured by URL that its steps use cannot be asked (unreachable, or refusing the token)."""
        needed: dict[str, set[str]] = {}
        for _, step in flow.script_steps():
            needed.setdefault(step.executor, set()).add(step.context_id)
        lines = []
        for name, contexts in sorted(needed.items()):
            url = self._configured.get(name)
            if not isinstance(url, str):
                continue  # an Executor object: its owner answers for its workers
            transport = find_transport(_scheme(url))
            workers = await transport.list_workers(url, self._options)
            if workers is None or not transport.queues_by_context:
                continue
            served = {context for worker in workers for context in worker.contexts}
            lines += [
                f"no live worker serves context {context!r} of executor {name} ({redact(url)}): its steps wait "
                f"for one (and fail when none has come for the URL's queue_timeout_s); start one with: "
                f"dagrun worker {_scheme(url)} {redact(url)} --context {context} --token-file FILE"
                for context in sorted(contexts - served)
            ]
        return lines

    async def aclose(self) -> None:
        """Close the executors opened here (not those given as objects); safe twice."""
        self._closed = True
        opened, self._opened = self._opened, {}
        for executor in reversed(opened.values()):
            await executor.aclose()


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower()
