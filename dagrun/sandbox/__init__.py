"""The sandbox: RestrictedPython policy, module facades, the child-process runner and the warm pool.

Names load on first use: a sandbox child imports `dagrun.sandbox.child` without loading the pool.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagrun.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from dagrun.sandbox.policy import check_script as check_script
    from dagrun.sandbox.policy import compile_script as compile_script
    from dagrun.sandbox.pool import SandboxPool as SandboxPool
    from dagrun.sandbox.settings import SandboxSettings as SandboxSettings

_HOMES = {
    "SandboxPool": "dagrun.sandbox.pool",
    "SandboxSettings": "dagrun.sandbox.settings",
    "check_script": "dagrun.sandbox.policy",
    "compile_script": "dagrun.sandbox.policy",
}

__all__ = sorted(_HOMES)
__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
