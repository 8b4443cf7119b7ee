"""A flow's scripts during one parse: each script_file read once, each distinct source checked and hashed once.

The flow model knows no sandbox: whoever parses a flow passes the check its scripts must pass (a
`ScriptChecker`, such as the sandbox policy's `check_script`); `check_syntax`, what any Python refuses, is
what a parse without one gets. Reading files is the caller's business too (a `ScriptReader`).
"""

from __future__ import annotations

from collections.abc import Callable

from dagrun.contract.executor import script_hash

ScriptReader = Callable[[str], str]  # script_file as written -> source; raises OSError
ScriptProblem = tuple[int | None, str]  # the line (when there is one), and what is wrong
ScriptChecker = Callable[[str], list[ScriptProblem]]  # a source -> its problems; [] when it may run


def check_syntax(source: str) -> list[ScriptProblem]:
    """The problems any Python compiler finds in `source`: a syntax error, null bytes, absurd nesting."""
    try:
        compile(source, "<script>", "exec", dont_inherit=True)
    except SyntaxError as exc:
        return [(exc.lineno, exc.msg)]
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, absurd nesting
        return [(None, str(exc) or type(exc).__name__)]
    return []


class Scripts:
    """The scripts of one parse: a flow of 100k steps usually holds a handful of distinct sources."""

    def __init__(self, *, read_script: ScriptReader | None, check_script: ScriptChecker) -> None:
        self._read_script = read_script
        self._check_script = check_script
        self._files: dict[str, tuple[str | None, str]] = {}  # script_file -> (source, why not)
        self._hashes: dict[str, str] = {}  # source -> hash
        self._problems: dict[str, list[ScriptProblem]] = {}  # hash -> problems

    def hash(self, source: str) -> str:
        digest = self._hashes.get(source)
        if digest is None:
            digest = self._hashes[source] = script_hash(source)
        return digest

    def read(self, path: str) -> tuple[str | None, str]:
        """The source of script_file `path`, or None and why it cannot be read."""
        if path not in self._files:
            self._files[path] = self._load(path)
        return self._files[path]

    def _load(self, path: str) -> tuple[str | None, str]:
        if self._read_script is None:
            return None, "a flow given as a document must inline its scripts with 'script'"
        try:
            return self._read_script(path), ""
        except OSError as exc:
            return None, exc.strerror or str(exc)
        except UnicodeDecodeError:
            return None, "not UTF-8 text"

    def problems(self, source: str) -> list[ScriptProblem]:
        """What the checker finds in `source`."""
        digest = self.hash(source)
        problems = self._problems.get(digest)
        if problems is None:
            problems = self._problems[digest] = self._check_script(source)
        return problems
