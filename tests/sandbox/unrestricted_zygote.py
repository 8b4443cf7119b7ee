"""A zygote whose children run a script that starts with UNRESTRICTED_MARK as plain Python: the language
policy has fallen for it (its attribute reads, writes and imports go unguarded), while the OS layers and the
pool's run isolation stay as they are. Tests start it by pointing `spawner.ZYGOTE_ENTRY` here; it lives under
tests/, out of reach of any flow, API call or wire message."""

from __future__ import annotations

from types import CodeType
from typing import NoReturn

from dagrun.sandbox import zygote
from dagrun.sandbox.policy import Rejection
from dagrun.sandbox.runner import StepRunner
from dagrun.sandbox.scope import SCRIPT_FILENAME

UNRESTRICTED_MARK = "# the policy has fallen\n"
_restricted = StepRunner._compiled


def _compiled(self: StepRunner, key: str, source: str) -> CodeType | Rejection:
    if source.startswith(UNRESTRICTED_MARK):
        return compile(source, SCRIPT_FILENAME, "exec")
    return _restricted(self, key, source)


def main() -> NoReturn:
    StepRunner._compiled = _compiled  # type: ignore[method-assign]
    zygote.main()
