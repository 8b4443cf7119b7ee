"""Package roots that load nothing until a name is used (PEP 562).

`import dagrun.flow` runs `dagrun/__init__.py` first; if that imported the embedding API it would load the
engine, the stores and redis-py into every process that only wanted to read a flow — and into every
sandbox child. So a package root lists where its public names live, and each loads on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, homes: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`: each name in `homes` is imported from its module on first use."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(home), name)

    def __dir__() -> list[str]:
        return sorted(homes)

    return __getattr__, __dir__
