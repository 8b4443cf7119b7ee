"""Module facades: the only modules a script can import, each an object holding allow-listed members.

A facade is never the real module: through a real one, `json.codecs`, `re.enum.sys` and
`datetime.sys` reach the host. A facade has no `__name__`, so `from collections import abc` cannot
fall back to `sys.modules` either. Members are functions, classes and constants whose public
attributes lead nowhere (no `functools.update_wrapper`/`wraps`/`singledispatch`, no
`string.Formatter`: those escape through their API).
"""

from __future__ import annotations

import collections
import datetime
import functools
import importlib
import itertools
import json
import math
import random
import re
import statistics
import string
import sys
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType
from typing import Any

from dagrun.sandbox.step_random import GENERATOR_FUNCTIONS, StepRandom

Refuse = Callable[[str], Exception]

_ALL_PUBLIC = ("*",)  # every public name of a C module whose members are plain functions

ALLOWED_MEMBERS: dict[str, tuple[ModuleType, tuple[str, ...]]] = {
    "math": (math, _ALL_PUBLIC),
    "itertools": (itertools, _ALL_PUBLIC),
    "json": (json, ("dumps", "loads", "JSONDecodeError", "JSONDecoder", "JSONEncoder")),
    "re": (
        re,
        (
            "compile", "search", "match", "fullmatch", "split", "findall", "finditer", "sub", "subn", "escape",
            "error", "Pattern", "Match", "NOFLAG", "A", "ASCII", "I", "IGNORECASE", "M", "MULTILINE", "S",
            "DOTALL", "X", "VERBOSE", "U", "UNICODE",
        ),
    ),
    "datetime": (
        datetime,
        ("date", "time", "datetime", "timedelta", "timezone", "tzinfo", "MINYEAR", "MAXYEAR", "UTC"),
    ),
    # the module's functions are served by RandomFacade, from a generator of the running step's own
    "random": (random, ("Random",)),
    "statistics": (
        statistics,
        (
            "mean", "fmean", "geometric_mean", "harmonic_mean", "median", "median_low", "median_high",
            "median_grouped", "mode", "multimode", "quantiles", "pstdev", "pvariance", "stdev", "variance",
            "covariance", "correlation", "linear_regression", "NormalDist", "StatisticsError",
        ),
    ),
    "functools": (functools, ("reduce", "partial", "cmp_to_key", "lru_cache", "cache")),
    "collections": (collections, ("Counter", "OrderedDict", "defaultdict", "deque", "namedtuple", "ChainMap")),
    # deque and OrderedDict are served as SafeDeque and SafeOrderedDict (see SAFE_MEMBERS)
    "string": (
        string,
        (
            "ascii_letters", "ascii_lowercase", "ascii_uppercase", "digits", "hexdigits", "octdigits",
            "punctuation", "printable", "whitespace", "capwords", "Template",
        ),
    ),
}  # fmt: skip


class SafeDeque(collections.deque):  # type: ignore[type-arg]
    """deque, whose comparing members compare against a snapshot: in CPython 3.11 `index`, `count`,
    `remove` and `in` keep using items that a script's `__eq__` may free by mutating the deque meanwhile
    (a use-after-free reachable from allowed code)."""

    __slots__ = ()

    def index(self, value: Any, start: int = 0, stop: int = sys.maxsize) -> int:
        return list(self).index(value, start, stop)

    def count(self, value: Any) -> int:
        return list(self).count(value)

    def remove(self, value: Any) -> None:
        snapshot = list(self)
        if value not in snapshot:
            raise ValueError(f"{type(self).__name__}.remove(x): x not in deque")
        del self[snapshot.index(value)]

    def __contains__(self, value: Any) -> bool:
        return value in list(self)


class SafeOrderedDict(collections.OrderedDict):  # type: ignore[type-arg]
    """OrderedDict, whose `==` compares snapshots: CPython 3.11's walks the linked order while a key's
    `__eq__` may change it (gh-119004)."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, collections.OrderedDict):
            return list(self.items()) == list(other.items())
        return dict.__eq__(self, other)

    __hash__ = None  # type: ignore[assignment]


# Members replaced by a subclass without the interpreter bug they expose (the real class stays its base).
SAFE_MEMBERS: dict[tuple[str, str], type] = {
    ("collections", "deque"): SafeDeque,
    ("collections", "OrderedDict"): SafeOrderedDict,
}

# Modules the members above import lazily (or through codecs) at call time. A child loads them before
# it drops its privileges, after which nothing new can be imported (the interpreter's files are
# unreadable to the unprivileged user), and the guarded import lets C code touch loaded modules only.
LAZY_IMPORTS = (
    "_strptime", "time", "calendar", "locale", "unicodedata", "stringprep", "encodings.idna", "encodings.ascii",
    "encodings.latin_1", "encodings.utf_8_sig", "encodings.utf_16", "encodings.utf_32", "encodings.cp1252",
    "encodings.unicode_escape", "encodings.raw_unicode_escape", "encodings.punycode", "json.decoder",
    "json.encoder", "json.scanner", "decimal", "fractions", "numbers", "bisect", "heapq", "hashlib",
)  # fmt: skip


def preload_modules() -> None:
    for name in LAZY_IMPORTS:
        importlib.import_module(name)


class Facade:
    """A read-only stand-in for one module, holding its allow-listed members only."""

    __slots__ = ("_facade_members", "_facade_module", "_facade_refuse")

    def __init__(self, module_name: str, members: Mapping[str, Any], refuse: Refuse) -> None:
        object.__setattr__(self, "_facade_module", module_name)
        object.__setattr__(self, "_facade_members", dict(members))
        object.__setattr__(self, "_facade_refuse", refuse)

    def __getattr__(self, name: str) -> Any:
        # reached for every name that is not a slot: members, and everything else a script tries
        members: dict[str, Any] = self._facade_members
        if name in members:
            return members[name]
        if name.startswith("_"):  # scripts cannot ask for these; the interpreter's probes get the usual answer
            raise AttributeError(f"module {self._facade_module!r} has no attribute {name!r}")
        raise self._facade_refuse(f"{self._facade_module}.{name} is not available in the sandbox")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"module {self._facade_module!r} is read-only in the sandbox")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"module {self._facade_module!r} is read-only in the sandbox")

    def __dir__(self) -> list[str]:
        return sorted(self._facade_members)

    def __repr__(self) -> str:
        return f"<sandbox module {self._facade_module!r}>"


class RandomFacade(Facade):
    """The `random` facade: its module functions are the methods of the running step's generator, looked
    up at each read, so a step never draws from (or seeds) the generator of another."""

    __slots__ = ("_facade_step_random",)

    def __init__(self, members: Mapping[str, Any], refuse: Refuse, step_random: StepRandom) -> None:
        super().__init__("random", members, refuse)
        object.__setattr__(self, "_facade_step_random", step_random)

    def __getattr__(self, name: str) -> Any:
        if name in GENERATOR_FUNCTIONS:
            return getattr(self._facade_step_random.generator(), name)
        return super().__getattr__(name)

    def __dir__(self) -> list[str]:
        return sorted([*self._facade_members, *GENERATOR_FUNCTIONS])


def public_names(module: ModuleType) -> list[str]:
    return [name for name in dir(module) if not name.startswith("_")]


def build_facades(refuse: Refuse, step_random: StepRandom) -> dict[str, Facade]:
    """One facade per allowed module; asking one for any other public name is refused (SECURITY).
    The `random` functions act on `step_random`'s generator, never on the module's shared one."""
    preload_modules()
    facades: dict[str, Facade] = {}
    for module_name, (module, names) in ALLOWED_MEMBERS.items():
        allowed = public_names(module) if names == _ALL_PUBLIC else list(names)
        members = {name: SAFE_MEMBERS.get((module_name, name), getattr(module, name)) for name in allowed}
        if module_name == "random":
            facades[module_name] = RandomFacade(members, refuse, step_random)
        else:
            facades[module_name] = Facade(module_name, members, refuse)
    return facades


def make_import(facades: Mapping[str, Facade], refuse: Refuse) -> Callable[..., Facade | None]:
    """The `__import__` of scripts: a facade for allowed modules, a refusal for anything else."""
    available = ", ".join(sorted(facades))

    def guarded_import(
        name: str,
        globals: Any = None,
        locals: Any = None,
        fromlist: Iterable[str] | None = (),
        level: int = 0,
    ) -> Facade | None:
        if type(fromlist) is list:
            # PyImport_Import (datetime.strptime needs `_strptime`, strftime needs `time`) calls the
            # `__import__` of the running script's builtins with a list, then takes sys.modules[name]
            # itself; the import statement passes None or a tuple, and scripts cannot call this
            # function by name. Only modules the host already loaded pass, and nothing is returned.
            if name in sys.modules:
                return None
            raise refuse(f"import of {name!r} is not allowed in the sandbox")
        facade = facades.get(name) if level == 0 else None
        if facade is None:
            raise refuse(f"import of {name!r} is not allowed in the sandbox; available modules: {available}")
        for member in fromlist or ():
            # checked here, so that `from x import y` never reaches the interpreter's own fallback
            try:
                getattr(facade, member)
            except AttributeError:
                raise ImportError(f"cannot import name {member!r} from {name!r}") from None
        return facade

    return guarded_import
