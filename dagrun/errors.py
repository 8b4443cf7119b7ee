"""The error hierarchy: one class per situation a caller handles differently.

    DagrunError
    ├── FlowError          an invalid flow; `.problems` lists every problem with its place
    │   └── CycleError     the dependency graph has a cycle; `.cycle` is it, closed (a, b, a)
    ├── ScriptError        a script that cannot be compiled; `.line` is its script line
    ├── UnresolvedInput    a step input whose reference has no value at run time
    ├── ExecutorError      an executor could not be opened or could not deliver a step
    │   ├── WorkerUnavailable   no worker answers
    │   └── ExecutorSetupError  asked for in a way that cannot work (unknown scheme, bad URL)  [BadInput]
    ├── StoreError         the store cannot be opened, read or written
    │   ├── StoreUrlError  a store URL whose scheme dagrun does not know               [BadInput]
    │   ├── StoreNotFound  there is no store to read at that path (reading never creates one)
    │   ├── RunNotFound    no run has that id
    │   ├── LeaseLost      a run's writes were refused: another driver took its lease (fencing)
    │   └── RunLost        the run vanished from the store while it was driven (a Redis without
    │                      persistence restarted)
    ├── InsecureFile       a file holding a secret (a token) that other users can read or write;
    │                      `.path` names it, `.fix` is the chmod that makes it private
    ├── ControlError       a command that does not fit the run's state (cancel an ended run, signal a
    │                      step that does not wait for one, or that has a signal with other values);
    │                      `.run_id` names the run
    ├── RunHandedBack      an orchestrator stopped driving a run before it ended (its lease was lost,
    │                      or it was closed); the run can be resumed
    └── BadInput           what the caller got wrong (an argument, a URL, a setting), not the
        │                  environment: the command line exits 2 for it, 3 for the other errors
        └── UsageError     a command-line argument that does not fit (a missing URL, an unusable
                           token file, a count below 1)

A failing *script* never raises: it becomes a failed StepResult. These errors are for callers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@", re.IGNORECASE)


def redact(text: str) -> str:
    """Hide credentials in URLs (``redis://user:secret@host`` -> ``redis://***@host``)."""
    return _CREDENTIALS.sub(r"\g<scheme>***@", text)


class DagrunError(Exception):
    """Base of every error dagrun raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem in a flow: `path` is where (``steps[3].depends_on[0]``), `message` is what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class FlowError(DagrunError):
    """An invalid flow. `source` names the file (or ``<flow>``); `problems` holds all problems found."""

    def __init__(self, problems: list[Problem], *, source: str = "<flow>") -> None:
        self.problems = problems
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        """Every problem on its own line, each prefixed by the source."""
        return "\n".join(f"{self.source}: {problem}" for problem in self.problems)


class CycleError(FlowError):
    """The dependency graph has a cycle; `cycle` is the closed path, e.g. ``("a", "b", "a")``."""

    def __init__(self, cycle: tuple[str, ...], *, source: str = "<flow>") -> None:
        self.cycle = cycle
        super().__init__([Problem("steps", f"dependency cycle: {' -> '.join(cycle)}")], source=source)


class ScriptError(DagrunError):
    """A script that does not compile under the sandbox rules."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        self.message = message
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message)


class UnresolvedInput(DagrunError):
    """A step input references an output that the (succeeded) upstream step did not produce."""


class ExecutorError(DagrunError):
    """An executor could not be opened, or could not deliver a step to a worker."""


class WorkerUnavailable(ExecutorError):
    """No worker answers (refused, unreachable, or died without a replacement)."""


class BadInput(DagrunError):
    """What the caller got wrong (an argument, a URL, a setting) rather than the environment."""


class UsageError(BadInput):
    """A command-line argument that does not fit: a missing URL, an unusable token file, a count below 1."""


class ExecutorSetupError(ExecutorError, BadInput):
    """An executor or worker asked for in a way that cannot work: an unknown URL scheme, a malformed URL or
    setting, a worker server for a transport that has none."""


class StoreError(DagrunError):
    """The store cannot be opened, read or written."""


class StoreUrlError(StoreError, BadInput):
    """A store URL whose scheme dagrun does not know."""


class StoreNotFound(StoreError):
    """There is no store to read at the path; `path` is the database file looked for."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"{path}: there is no store here (reading never creates one); check the path")


class RunNotFound(StoreError):
    """No run has the given id."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"no run with id {run_id!r}")


class LeaseLost(StoreError):
    """The store refused a write of a run because its lease passed to another driver since this one took
    it (a higher lease epoch, the fencing token); nothing of that write landed."""

    def __init__(self, run_id: str, *, epoch: int, held: int) -> None:
        self.run_id = run_id
        self.epoch = epoch
        self.held = held
        super().__init__(
            f"run {run_id!r}: its lease passed to another driver (lease epoch {epoch}, this driver's {held});"
            " this driver's writes were refused"
        )


class RunLost(StoreError):
    """The store no longer has a run this process was driving; the run cannot be resumed."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(
            f"run {run_id!r} is gone: the store lost it while it was driven "
            "(a Redis without persistence loses its runs when it restarts)"
        )


class InsecureFile(DagrunError):
    """A file holding a secret can be read or written by other users than its owner, so it is not used.
    `path` is the file, `mode` its permission bits, `fix` the command that makes it private."""

    def __init__(self, path: str, mode: int, *, what: str, fix: str) -> None:
        self.path = path
        self.mode = mode
        self.fix = fix
        super().__init__(f"{what} {path!r}: other users can read or write it (mode {mode:04o}); run: {fix}")


class ControlError(DagrunError):
    """A control command that does not fit the run's state; nothing was sent (or, for a signal that lost
    a race to another client's, what was sent has no effect: the first signal to a step counts)."""

    def __init__(self, run_id: str, message: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id!r}: {message}")


class RunHandedBack(DagrunError):
    """This orchestrator stopped driving the run before it ended; another may take it over."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id!r} was handed back before it ended; `dagrun resume {run_id}` continues it")
