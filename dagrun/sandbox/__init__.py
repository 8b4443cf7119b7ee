"""The sandbox: RestrictedPython policy, module facades, the child-process runner and the warm pool."""

from dagrun.sandbox.policy import check_script, compile_script
from dagrun.sandbox.pool import SandboxPool
from dagrun.sandbox.settings import SandboxSettings

__all__ = ["SandboxPool", "SandboxSettings", "check_script", "compile_script"]
