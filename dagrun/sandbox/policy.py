"""The script policy: restricted compilation, the attribute/write guards and the builtins of a step.

Pure and importable anywhere (the parent validates flows with `check_script`). RestrictedPython
rewrites attribute reads to `_getattr_`, writes to `_write_`, iteration to `_getiter_` ... at compile
time; the guards here decide at run time. Anything a guard refuses is recorded (sticky) and fails the
step with ErrorKind.SECURITY.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import functools
import keyword
import operator
import re
import sys
import weakref
from abc import ABCMeta
from collections import ChainMap, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import (
    BuiltinMethodType,
    CodeType,
    FrameType,
    FunctionType,
    GenericAlias,
    MappingProxyType,
    MethodType,
    TracebackType,
)
from typing import Any

from RestrictedPython.compile import compile_restricted_exec
from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence, safe_builtins
from RestrictedPython.transformer import INSPECT_ATTRIBUTES

from dagrun.errors import ScriptError
from dagrun.sandbox.facades import ALLOWED_MEMBERS, Facade, build_facades, make_import
from dagrun.sandbox.scope import SCRIPT_FILENAME, StepScope, Violations
from dagrun.sandbox.settings import DEFAULT_MAX_SOURCE_BYTES
from dagrun.sandbox.step_random import StepRandom

_COMPILE_CACHE_SIZE = 256
COMPILE_RECURSION_LIMIT = 10_000
_LINE_PREFIX = re.compile(r"^Line (\d+|None): ")

# Frame, traceback and generator internals lead to f_globals/f_builtins, i.e. out of the sandbox.
DENIED_ATTRIBUTES = INSPECT_ATTRIBUTES | {
    "f_lasti", "f_lineno", "f_trace_lines", "f_trace_opcodes", "tb_lasti", "tb_lineno", "gi_running",
    "gi_suspended", "cr_running", "cr_suspended", "ag_running", "co_consts", "co_names", "co_filename",
    "mro",  # int.mro()[-1] is `object`
}  # fmt: skip
_OPAQUE_TYPES = (FrameType, TracebackType, CodeType)
_STR_FORMATTERS = frozenset({"format", "format_map"})  # '{0.__class__}'.format(x) walks attributes unguarded
_STR_FORMAT, _STR_FORMAT_MAP = str.format, str.format_map
_ABC_REGISTER = ABCMeta.register  # registering makes isinstance() say yes for any class, in every later step
_VALUE_TYPES = (str, bytes, int, float, complex, tuple, frozenset)
_IDENTITY_OPS = ("__eq__", "__ne__", "__hash__")
_WRITABLE_TYPES = (dict, list, deque, ChainMap)  # and their subclasses (Counter, OrderedDict, defaultdict)

_EXTRA_BUILTINS = (
    "list", "dict", "set", "frozenset", "tuple", "sum", "min", "max", "enumerate", "zip", "map", "filter",
    "any", "all", "reversed", "sorted", "iter", "next", "ascii", "bin", "bytes", "property", "staticmethod",
    "classmethod", "NotImplemented", "RecursionError", "StopAsyncIteration", "TimeoutError",
)  # fmt: skip
_REFUSED_BUILTINS = (
    "type", "vars", "open", "eval", "exec", "compile", "format", "globals", "locals", "dir", "input",
    "breakpoint", "memoryview", "object", "super", "help", "exit", "quit", "bytearray",
)  # fmt: skip

_INPLACE_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv,
    "//=": operator.ifloordiv, "%=": operator.imod, "**=": operator.ipow, "<<=": operator.ilshift,
    ">>=": operator.irshift, "&=": operator.iand, "^=": operator.ixor, "|=": operator.ior,
    "@=": operator.imatmul,
}  # fmt: skip
_MISSING = object()


# --- compilation ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a source does not compile: `kind` is "syntax", "policy" or "limit"."""

    kind: str
    problems: tuple[tuple[int | None, str], ...]

    def to_error(self) -> ScriptError:
        line, message = self.problems[0]
        more = len(self.problems) - 1
        return ScriptError(message + (f" (and {more} more)" if more else ""), line=line)


def compile_source(
    source: str, filename: str = SCRIPT_FILENAME, *, max_source_bytes: int = DEFAULT_MAX_SOURCE_BYTES
) -> CodeType | Rejection:
    """Compile under the sandbox rules, uncached; never raises for anything in the source."""
    if len(source) > max_source_bytes or len(source.encode("utf-8", "surrogatepass")) > max_source_bytes:
        return Rejection("limit", ((None, f"script is over the {max_source_bytes}-byte limit"),))
    with _recursion_limit(COMPILE_RECURSION_LIMIT):
        return _compile_checked(source, filename)


def _compile_checked(source: str, filename: str) -> CodeType | Rejection:
    try:
        tree = ast.parse(source, filename)
    except SyntaxError as exc:
        return Rejection("syntax", ((exc.lineno, f"{type(exc).__name__}: {exc.msg}"),))
    except (ValueError, UnicodeError) as exc:  # e.g. null bytes
        return Rejection("syntax", ((None, f"SyntaxError: {exc}"),))
    except (MemoryError, RecursionError):
        return Rejection("limit", ((None, "script is too large or too deeply nested to compile"),))
    try:
        result = compile_restricted_exec(tree, filename)
    except (MemoryError, RecursionError):
        return Rejection("limit", ((None, "script is too large or too deeply nested to compile"),))
    except (SyntaxError, ValueError) as exc:
        return Rejection("syntax", ((getattr(exc, "lineno", None), f"{type(exc).__name__}: {exc}"),))
    if result.errors or result.code is None:
        return Rejection("policy", tuple(_parse_problem(error) for error in result.errors) or ((None, "rejected"),))
    code: CodeType = result.code
    return code


_compile_cached = functools.lru_cache(maxsize=_COMPILE_CACHE_SIZE)(compile_source)


def compile_script(
    source: str, filename: str = SCRIPT_FILENAME, *, max_source_bytes: int = DEFAULT_MAX_SOURCE_BYTES
) -> CodeType:
    """The restricted code object of a script, cached by source.

    Raises ScriptError (with the script line when known) for a syntax error, a policy violation, a
    source over `max_source_bytes`, or a source too large or deeply nested to compile.
    """
    compiled = _compile_cached(source, filename, max_source_bytes=max_source_bytes)
    if isinstance(compiled, Rejection):
        raise compiled.to_error()
    return compiled


def check_script(source: str, *, max_source_bytes: int = DEFAULT_MAX_SOURCE_BYTES) -> list[tuple[int | None, str]]:
    """Every problem of a script as (line, message): compile errors, and imports the sandbox would refuse
    at run time (found now, so that validation reports them); empty when the script is fine."""
    compiled = _compile_cached(source, SCRIPT_FILENAME, max_source_bytes=max_source_bytes)
    if isinstance(compiled, Rejection):
        return list(compiled.problems)
    return _refused_imports(source)


def _refused_imports(source: str) -> list[tuple[int | None, str]]:
    problems: list[tuple[int | None, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = ["." * node.level + (node.module or "")]
        else:
            continue
        for name in names:
            if name not in ALLOWED_MEMBERS:
                allowed = ", ".join(sorted(ALLOWED_MEMBERS))
                problems.append((node.lineno, f"import of {name!r} is not allowed in the sandbox (allowed: {allowed})"))
    return problems


@contextlib.contextmanager
def _recursion_limit(limit: int) -> Iterator[None]:
    # RestrictedPython's transformer recurses in Python, ~4 frames per AST level: a 200-term sum
    # would not compile under a child's limit of 500. CPython's compiler guards its C stack itself.
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(max(previous, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(previous)


def _parse_problem(error: str) -> tuple[int | None, str]:
    match = _LINE_PREFIX.match(error)
    if match is None:
        return None, error
    line = match.group(1)
    return (int(line) if line != "None" else None), error[match.end() :]


# --- guards --------------------------------------------------------------------------------------


class Guards:
    """The run-time guards of one process; refusals go to `violations`, cleared per step."""

    def __init__(self, violations: Violations) -> None:
        self.violations = violations
        self.script_classes: weakref.WeakSet[type] = weakref.WeakSet()  # only these may be written to

    def getattr(self, obj: Any, name: str, default: Any = _MISSING) -> Any:
        """`_getattr_` and `getattr`: safer_getattr plus the frame/traceback/generator deny-list, then the
        value found is judged by what it is, not by the object it came from (which can forward or lie)."""
        if type(name) is not str:
            raise TypeError("attribute name must be a str")
        if name[:1] == "_" or name in DENIED_ATTRIBUTES or isinstance(obj, _OPAQUE_TYPES):
            raise self.violations.refuse(f"access to attribute {name!r} is not allowed in the sandbox")
        if name == "obj" and isinstance(obj, AttributeError):
            raise self.violations.refuse("AttributeError.obj is not available in the sandbox")  # a host object
        value = getattr(obj, name) if default is _MISSING else getattr(obj, name, default)
        return self._judged(obj, name, value)

    def _judged(self, obj: Any, name: str, value: Any) -> Any:
        """The value of an attribute read, or a refusal. A GenericAlias forwards reads to its origin
        (``S[int].format`` is ``str.format``), and an ABC can be told any class is its subclass, so the
        object read from proves nothing; the value does."""
        if _is_str_formatter(value):  # '{0.__class__}'.format(x) walks attributes unguarded
            raise self.violations.refuse(f"str.{name} is not available in the sandbox; use f-strings or %")
        if type(value) is MethodType and value.__func__ is _ABC_REGISTER:
            raise self.violations.refuse("registering a class with an ABC is not allowed in the sandbox")
        if type(value) is FunctionType and value.__code__.co_filename != SCRIPT_FILENAME:
            owner = _defining_class(obj, name, value)
            if owner is not None:
                return self._bound_to_instances(owner, value)
        return value

    def _bound_to_instances(self, owner: type, function: FunctionType) -> Callable[..., Any]:
        """A host class's method read from the class: callable only with a real instance as `self`, as
        the method was written for (a crafted `self` runs host code on the script's terms, e.g.
        ``Counter.copy(int)`` returns `type`)."""
        refuse = self.violations.refuse
        where = f"{owner.__name__}.{function.__name__}"

        def method_of_instances(*args: Any, **kwargs: Any) -> Any:
            if not args or owner not in type(args[0]).__mro__:  # type() and __mro__ cannot be faked
                raise refuse(f"{where} can only be called with a {owner.__name__} as its first argument")
            return function(*args, **kwargs)

        return method_of_instances

    def hasattr(self, obj: Any, name: str) -> bool:
        try:
            self.getattr(obj, name)
        except AttributeError:
            return False
        return True

    def write(self, obj: Any) -> Any:
        """`_write_`: the target of an attribute or item assignment, if the script may change it."""
        kind = type(obj)
        if kind in self.script_classes or any(base in _WRITABLE_TYPES for base in kind.__mro__):
            return obj  # by the real MRO: isinstance() would also count classes registered with an ABC
        if isinstance(obj, type) and obj in self.script_classes:
            return obj
        if isinstance(obj, MappingProxyType):
            raise self.violations.refuse("inputs (and other read-only mappings) cannot be modified; copy with dict()")
        raise self.violations.refuse(f"cannot modify a {type(obj).__name__} object in the sandbox")

    def setattr(self, obj: Any, name: str, value: Any) -> None:
        if type(name) is not str or name[:1] == "_":
            raise self.violations.refuse(f"setting attribute {name!r} is not allowed in the sandbox")
        setattr(self.write(obj), name, value)

    def delattr(self, obj: Any, name: str) -> None:
        if type(name) is not str or name[:1] == "_":
            raise self.violations.refuse(f"deleting attribute {name!r} is not allowed in the sandbox")
        delattr(self.write(obj), name)

    def build_class(self, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any) -> type:
        """`__metaclass__`: classes defined by scripts are recorded, so their instances are writable."""
        if "__del__" in namespace:  # a finalizer would run whenever the object is collected: in a later step
            raise self.violations.refuse("__del__ is not allowed in script classes")
        cls = type(name, bases, namespace, **kwargs)
        for base in _VALUE_TYPES:
            # a str whose == and hash lie would poison host caches keyed by value (re, strptime) for
            # every later step of this child
            if issubclass(cls, base) and any(getattr(cls, op) is not getattr(base, op) for op in _IDENTITY_OPS):
                raise self.violations.refuse(f"a script class derived from {base.__name__} cannot redefine == or hash")
        self.script_classes.add(cls)
        return cls

    def refused(self, name: str) -> Callable[..., Any]:
        def refused_builtin(*args: Any, **kwargs: Any) -> Any:
            raise self.violations.refuse(f"{name}() is not available in the sandbox")

        return refused_builtin


def _is_str_formatter(value: Any) -> bool:
    """`str.format`/`format_map`, unbound or bound to any str (subclasses inherit the same descriptor)."""
    if value is _STR_FORMAT or value is _STR_FORMAT_MAP:
        return True
    return type(value) is BuiltinMethodType and value.__name__ in _STR_FORMATTERS and isinstance(value.__self__, str)


def _defining_class(obj: Any, name: str, function: FunctionType) -> type | None:
    """The class whose own namespace holds `function` as a method `name`, when it was read from a class
    (or a GenericAlias of one); None for a function that takes no `self` (a staticmethod, a facade member)."""
    cls = obj.__origin__ if isinstance(obj, GenericAlias) else obj
    if not isinstance(cls, type):
        return None
    for klass in cls.__mro__:
        if klass.__dict__.get(name) is function:
            return klass
    return None


def _inplacevar(op: str, target: Any, value: Any) -> Any:
    return _INPLACE_OPERATORS[op](target, value)


def _apply(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return function(*args, **kwargs)


def build_builtins(guards: Guards, guarded_import: Callable[..., Facade | None]) -> dict[str, Any]:
    """RestrictedPython's safe builtins, what ordinary code needs, guarded reflection, refusal stubs."""
    names = {name: value for name, value in safe_builtins.items() if name not in ("_getattr_",)}
    names.update({name: getattr(builtins, name) for name in _EXTRA_BUILTINS})
    names.update({name: guards.refused(name) for name in _REFUSED_BUILTINS})
    names.update(
        getattr=guards.getattr,
        hasattr=guards.hasattr,
        setattr=guards.setattr,
        delattr=guards.delattr,
        __import__=guarded_import,
    )
    return names


def build_base_globals(
    violations: Violations,
    functions: Mapping[str, Callable[..., Any]] | None = None,
    *,
    guards: Guards | None = None,
    step_random: StepRandom | None = None,
) -> dict[str, Any]:
    """The globals every step starts from (copied per step): guards, builtins, module facades and the
    host functions. Step names (inputs, outputs, context ...) come from `step_globals`; the `random`
    functions act on `step_random`'s generator, which the runner renews per step."""
    guards = guards or Guards(violations)
    facades = build_facades(violations.refuse, step_random or StepRandom())
    guarded_import = make_import(facades, violations.refuse)
    base: dict[str, Any] = {
        "__builtins__": build_builtins(guards, guarded_import),
        "__name__": "script",
        "__metaclass__": guards.build_class,
        "_getattr_": guards.getattr,
        "_getitem_": operator.getitem,
        "_getiter_": iter,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_write_": guards.write,
        "_inplacevar_": _inplacevar,
        "_apply_": _apply,
    }
    base.update(facades)
    base.update(functions or {})
    return base


STEP_NAMES = ("inputs", "outputs", "context", "attempt", "step_id", "run_id", "context_id", "log", "fail")


def step_globals(
    base: dict[str, Any],
    scope: StepScope,
    *,
    inputs: dict[str, Any],
    attempt: int,
    step_id: str,
    run_id: str,
    context_id: str,
) -> dict[str, Any]:
    """A step's globals: a copy of the base plus the names of this step (inputs is a read-only view)."""
    namespace = base.copy()
    namespace.update(scope.names(MappingProxyType(inputs)))
    namespace["attempt"] = attempt
    namespace["step_id"] = step_id
    namespace["run_id"] = run_id
    namespace["context_id"] = context_id
    return namespace


def check_function_names(names: Iterable[str]) -> None:
    """Raise ValueError for a host function name a script could not call or that hides a sandbox name."""
    reserved = {*STEP_NAMES, "print", "printed", *ALLOWED_MEMBERS, *safe_builtins, *_EXTRA_BUILTINS, *_REFUSED_BUILTINS}
    for name in names:
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
            raise ValueError(f"host function name {name!r} is not a valid public identifier")
        if name in reserved:
            raise ValueError(f"host function name {name!r} is taken by the sandbox; choose another")
