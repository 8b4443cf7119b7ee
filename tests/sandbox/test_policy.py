"""The script policy in-process: compilation, the guards, the facades and the per-step objects.

No child process here; the escape corpus in test_escapes.py runs the same rules in real children.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagrun.contract.context import ContextOp, ContextOpKind
from dagrun.errors import ScriptError
from dagrun.sandbox import check_script, compile_script
from dagrun.sandbox.facades import ALLOWED_MEMBERS, build_facades
from dagrun.sandbox.policy import build_base_globals, check_function_names, step_globals
from dagrun.sandbox.runner import cap_text
from dagrun.sandbox.scope import (
    LOG_TRUNCATED_MARKER,
    LimitExceeded,
    LogBuffer,
    SandboxViolation,
    StepFailed,
    StepScope,
    Violations,
)
from dagrun.sandbox.step_random import StepRandom
from tests.sandbox.conftest import run_in_process


def test_compile_script_caches_by_source() -> None:
    assert compile_script("x = 1") is compile_script("x = 1")
    assert compile_script("x = 1") is not compile_script("x = 2")


@pytest.mark.parametrize(
    ("source", "line", "fragment"),
    [
        ("x = 1\ny = (\n", 2, "SyntaxError"),
        ("x = 1\n\nz = x.__class__", 3, "__class__"),
        ("x = eval('1')", 1, "Eval calls are not allowed"),
        ("async def f():\n    pass", 1, "AsyncFunctionDef"),
    ],
)
def test_compile_script_raises_script_error_with_the_line(source: str, line: int, fragment: str) -> None:
    with pytest.raises(ScriptError) as caught:
        compile_script(source)

    assert caught.value.line == line
    assert fragment in caught.value.message


def test_compile_script_refuses_oversize_and_too_deeply_nested_sources() -> None:
    with pytest.raises(ScriptError, match="over the 100-byte limit"):
        compile_script("x = 1\n" * 20, max_source_bytes=100)
    with pytest.raises(ScriptError, match="too large or too deeply nested"):
        compile_script("x = " + "-" * 200_000 + "1")


def test_long_but_flat_scripts_compile() -> None:
    compile_script("x = " + " + ".join(["1"] * 1000))
    compile_script("if x:\n    pass\n" + "".join(f"elif x == {n}:\n    pass\n" for n in range(300)))


def test_check_script_reports_every_problem_with_its_line() -> None:
    problems = check_script("a = x._y\nb = 1\nc = y.__dict__\nd = eval('1')")

    assert [line for line, _ in problems] == [1, 3, 4]
    assert check_script("outputs['a'] = 1") == []
    assert check_script("x = (") == [(1, "SyntaxError: '(' was never closed")]


def test_facades_hold_only_their_members_and_are_not_modules() -> None:
    facades = build_facades(SandboxViolation, StepRandom())

    for name, facade in facades.items():
        assert not hasattr(facade, "__name__") and not hasattr(facade, "__spec__")
        assert repr(facade) == f"<sandbox module {name!r}>"
        with pytest.raises(AttributeError):
            facade.anything = 1
    assert facades["json"].dumps([1]) == "[1]"
    for attempt in ("codecs", "scanner", "decoder", "sys"):
        with pytest.raises(SandboxViolation, match=f"json.{attempt} is not available"):
            getattr(facades["json"], attempt)
    assert "Formatter" not in ALLOWED_MEMBERS["string"][1]
    assert not {"update_wrapper", "wraps", "singledispatch"} & set(ALLOWED_MEMBERS["functools"][1])


def test_import_gives_facades_and_refuses_the_rest() -> None:
    scope, _ = run_in_process("import json\nfrom math import sqrt\noutputs['v'] = [json.dumps(1), sqrt(4)]")
    assert scope.outputs == {"v": ["1", 2.0]}

    for source in ("import os", "import json.decoder", "from json import scanner", "from . import x"):
        with pytest.raises(SandboxViolation):
            run_in_process(source)


def test_refusals_are_sticky_and_carry_the_script_line() -> None:
    _, violations = run_in_process("x = 1\ntry:\n    getattr(x, '__class__')\nexcept Exception:\n    pass")

    assert violations.first is not None
    assert violations.first.line == 3
    assert "'__class__'" in violations.first.message


@pytest.mark.parametrize(
    "source",
    [
        "getattr((n for n in []), 'gi_frame')",
        "getattr(1, 'mro')",
        "getattr('', 'format')",
        "getattr(str, 'format_map')",
        "setattr(log, 'x', 1)",
        "class A:\n    pass\nsetattr(A, '_x', 1)",
        "inputs['a'] = 1",
        "x = type(1)",
        "x = open('/etc/hosts')",
    ],
)
def test_guards_refuse(source: str) -> None:
    with pytest.raises(SandboxViolation):
        run_in_process(source, inputs={"a": 0})


def test_refusals_by_code_of_an_earlier_step_do_not_fail_the_running_one() -> None:
    violations = Violations()
    earlier: dict[str, Any] = step_globals(
        build_base_globals(violations),
        StepScope(context={}, violations=violations, max_log_bytes=100, max_context_bytes=100),
        inputs={},
        attempt=1,
        step_id="a",
        run_id="r",
        context_id="default",
    )
    exec(compile_script("def left_behind():\n    return getattr(1, '__class__')"), earlier)
    violations.start({})  # another step's globals

    with pytest.raises(SandboxViolation):
        earlier["left_behind"]()
    assert violations.first is None


def test_script_classes_and_plain_containers_are_writable() -> None:
    source = (
        "class Box:\n    pass\n"
        "b = Box()\nb.value = 1\nsetattr(b, 'other', 2)\nBox.shared = 3\n"
        "from collections import Counter, deque\n"
        "c = Counter()\nc['a'] = 2\nd = deque([1])\nd[0] = 5\nl = [0]\nl[0] = 1\n"
        "outputs['v'] = [b.value, b.other, b.shared, c['a'], d[0], l[0]]"
    )
    scope, violations = run_in_process(source)

    assert violations.first is None
    assert scope.outputs == {"v": [1, 2, 3, 2, 5, 1]}


def test_context_records_json_copies_of_what_is_written() -> None:
    scope, _ = run_in_process(
        "row = [1]\ncontext.set('row', row)\nrow.append(2)\ncontext.append('log', 'a')\n"
        "outputs['n'] = context.incr('n')\noutputs['row'] = context.get('row')",
        context={"n": 41},
    )

    assert scope.context_ops == [
        ContextOp(ContextOpKind.SET, "row", [1]),
        ContextOp(ContextOpKind.APPEND, "log", "a"),
        ContextOp(ContextOpKind.INCR, "n", 1),
    ]
    assert scope.outputs == {"n": 42, "row": [1, 2]}


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("context.set(1, 'a')", TypeError),
        ("context.set('a', {1})", TypeError),
        ("context.incr('a', 'x')", TypeError),
        ("context.set('a', 'x')\ncontext.incr('a')", ValueError),
        ("context.set('a', 'x' * 2000)", LimitExceeded),
    ],
)
def test_context_refuses_bad_writes(source: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        run_in_process(source)


def test_fail_is_sticky() -> None:
    with pytest.raises(StepFailed, match="bad input"):
        run_in_process("fail('bad input')")
    scope, _ = run_in_process("try:\n    fail('caught')\nexcept Exception:\n    pass")
    assert scope.failure == "caught"


def test_logs_are_truncated_with_a_marker_and_stay_valid_utf8() -> None:
    scope, _ = run_in_process("for i in range(100):\n    print('é' * 30)\nlog('\\ud800')", max_log_bytes=200)

    text = scope.log.text()
    assert text.endswith("\n[log truncated at 200 bytes]\n")
    assert len(text.encode()) <= 200 + len("\n[log truncated at 200 bytes]\n")
    text.encode("utf-8")  # no lone surrogates


def test_cap_text_cuts_on_a_character_boundary() -> None:
    assert cap_text("short", 100) == "short"
    capped = cap_text("é" * 100, 50)
    assert capped.endswith(" [truncated]") and len(capped.encode()) <= 50
    assert cap_text("\ud800", 10) == "?"


def test_host_function_names_are_checked() -> None:
    check_function_names(["lookup", "send_mail"])
    for bad in ("_x", "1x", "class", "inputs", "math", "sorted", "eval", "printed"):
        with pytest.raises(ValueError):
            check_function_names([bad])


@given(st.lists(st.text(), max_size=20), st.integers(min_value=0, max_value=300))
def test_log_text_is_valid_utf8_and_capped(parts: list[str], limit: int) -> None:
    log = LogBuffer(limit)
    for part in parts:
        log.write(part)

    text = log.text()

    data = text.encode("utf-8")
    joined = "".join(parts)
    if len(joined.encode("utf-8")) <= limit:
        assert text == joined
    else:
        marker = LOG_TRUNCATED_MARKER.format(limit=limit)
        assert text.endswith(marker) and len(data) <= limit + len(marker.encode())
        assert joined.startswith(text.removesuffix(marker))


@given(st.text(), st.integers(min_value=16, max_value=200))
def test_capped_text_is_valid_utf8_within_the_limit(text: str, limit: int) -> None:
    capped = cap_text(text, limit)

    assert len(capped.encode("utf-8")) <= limit
    if len(text.encode("utf-8")) <= limit:
        assert capped == text


def test_check_script_reports_refused_imports_with_their_line() -> None:
    source = "import json\nimport os\nfrom sys import modules\nfrom collections import Counter\nimport re, socket\n"
    problems = check_script(source)
    assert [(line, message.split(" is not")[0]) for line, message in problems] == [
        (2, "import of 'os'"),
        (3, "import of 'sys'"),
        (5, "import of 'socket'"),
    ]
    assert "allowed: collections, datetime" in problems[0][1]
