"""Hostile scripts fail with a clear SECURITY, LIMIT, TIMEOUT or OUTPUT error, and the pool serves on.

One pool serves the whole module, so every case also checks that the pool survived the ones before.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from dagrun.contract.executor import ErrorKind
from dagrun.sandbox import SandboxPool
from tests.sandbox.conftest import TEST_SETTINGS, make_step

pytestmark = pytest.mark.asyncio(loop_scope="module")

SECURITY, LIMIT, TIMEOUT, OUTPUT = ErrorKind.SECURITY, ErrorKind.LIMIT, ErrorKind.TIMEOUT, ErrorKind.OUTPUT

HOSTILE = [
    # dunder access
    pytest.param("x = ().__class__.__bases__", SECURITY, id="dunder-bases"),
    pytest.param("x = getattr((), '__class__')", SECURITY, id="getattr-dunder"),
    pytest.param("x = hasattr((), '__class__')", SECURITY, id="hasattr-dunder"),
    pytest.param("x = int.mro()[-1]", SECURITY, id="mro-object"),
    pytest.param(
        "try:\n    getattr(1, '__class__')\nexcept Exception:\n    pass\noutputs['x'] = 1",
        SECURITY,
        id="caught-refusal-is-sticky",
    ),
    # reflection builtins
    pytest.param("t = type(1)", SECURITY, id="type"),
    pytest.param("v = vars()", SECURITY, id="vars"),
    pytest.param("g = globals()", SECURITY, id="globals"),
    pytest.param("l = locals()", SECURITY, id="locals"),
    pytest.param("d = dir()", SECURITY, id="dir"),
    pytest.param("o = object()", SECURITY, id="object"),
    # format strings walk attributes unguarded
    pytest.param("x = '{0.__class__}'.format(1)", SECURITY, id="str-format"),
    pytest.param("f = '{0.__globals__}'.format_map", SECURITY, id="str-format-map"),
    pytest.param("x = str.format('{0.__class__}', 1)", SECURITY, id="str-format-unbound"),
    pytest.param("class S(str):\n    pass\nx = S('{0.__class__}').format(1)", SECURITY, id="str-subclass-format"),
    pytest.param("x = format(1, '')", SECURITY, id="format-builtin"),
    # frames of generators, coroutines, async generators, tracebacks
    pytest.param("x = (y for y in []).gi_frame.f_back.f_globals", SECURITY, id="gen-frame"),
    pytest.param("x = getattr((y for y in []), 'gi_frame')", SECURITY, id="gen-frame-getattr"),
    pytest.param("x = getattr((y for y in []), 'gi_code')", SECURITY, id="gen-code-getattr"),
    pytest.param("async def f():\n    pass\nx = f().cr_frame", SECURITY, id="coroutine-frame"),
    pytest.param("async def g():\n    yield 1\nx = g().ag_frame", SECURITY, id="async-gen-frame"),
    pytest.param("try:\n    1 / 0\nexcept Exception as e:\n    tb = e.__traceback__", SECURITY, id="traceback"),
    pytest.param(
        "try:\n    1 / 0\nexcept Exception as e:\n    tb = getattr(e, '__traceback__')",
        SECURITY,
        id="traceback-getattr",
    ),
    pytest.param("try:\n    {}.x\nexcept AttributeError as e:\n    o = e.obj", SECURITY, id="attribute-error-obj"),
    # refused at compile time since RestrictedPython 8.3 (guard names as positional-only parameters: the
    # refused str.format below would run) and 8.0 (except*: CVE-2025-22153 on CPython 3.11 to 3.13.1)
    pytest.param(
        "def f(_getattr_, /):\n    return '{0}'.format\nx = f(lambda o, name: 1)", SECURITY, id="guard-shadowed"
    ),
    pytest.param("try:\n    1 / 0\nexcept* ZeroDivisionError:\n    pass", SECURITY, id="except-star"),
    # imports: anything but a facade, and whatever a facade does not hold
    pytest.param("import os", SECURITY, id="import-os"),
    pytest.param("import sys", SECURITY, id="import-sys"),
    pytest.param("import subprocess", SECURITY, id="import-subprocess"),
    pytest.param("x = __import__('os')", SECURITY, id="dunder-import"),
    pytest.param("from json import codecs", SECURITY, id="from-json-import-codecs"),
    pytest.param("from collections import abc", SECURITY, id="from-collections-import-abc"),
    pytest.param("import collections.abc", SECURITY, id="import-submodule"),
    pytest.param("import json\nx = json.codecs", SECURITY, id="json-codecs"),
    pytest.param("import re\nx = re.enum.sys", SECURITY, id="re-enum"),
    pytest.param("import datetime\nx = datetime.sys.modules['os']", SECURITY, id="datetime-sys"),
    pytest.param("import statistics\nx = statistics.sys.modules", SECURITY, id="statistics-sys"),
    pytest.param("import random\nx = random._os", SECURITY, id="random-os"),
    pytest.param("import random\nx = getattr(random.shuffle, '__self__')", SECURITY, id="random-step-generator"),
    pytest.param("import functools\nx = functools.sys", SECURITY, id="functools-sys"),
    pytest.param("x = collections._sys", SECURITY, id="prebound-facade-underscore"),
    pytest.param("import functools\nx = functools.update_wrapper", SECURITY, id="update-wrapper"),
    pytest.param("import functools\nx = functools.wraps", SECURITY, id="wraps"),
    pytest.param("import functools\nx = functools.singledispatch", SECURITY, id="singledispatch"),
    pytest.param("import string\nx = string.Formatter().format('{0.__class__}', 1)", SECURITY, id="formatter"),
    pytest.param("import json\njson.dumps = None", SECURITY, id="facade-write"),
    # code execution and I/O
    pytest.param("x = eval('1')", SECURITY, id="eval"),
    pytest.param("exec('x = 1')", SECURITY, id="exec"),
    pytest.param("c = compile('1', 's', 'eval')", SECURITY, id="compile"),
    pytest.param("x = open('/etc/passwd').read()", SECURITY, id="open"),
    pytest.param("x = input()", SECURITY, id="input"),
    pytest.param("breakpoint()", SECURITY, id="breakpoint"),
    pytest.param("print('x', file=log)", SECURITY, id="print-file"),
    # processes and the parent's file descriptors
    pytest.param("import os\nos.fork()", SECURITY, id="os-fork"),
    pytest.param("from os import fork\nfork()", SECURITY, id="from-os-import-fork"),
    pytest.param("import posix\nposix.fork()", SECURITY, id="posix-fork"),
    pytest.param("import datetime\ndatetime.sys.modules['os'].fork()", SECURITY, id="fork-through-facade"),
    pytest.param("x = open('/proc/self/fd/0').read()", SECURITY, id="read-fd"),
    pytest.param("import io\nx = io.open(3).read()", SECURITY, id="io-open-fd"),
    # writes
    pytest.param("class A:\n    pass\nsetattr(A(), '_secret', 1)", SECURITY, id="setattr-underscore"),
    pytest.param("class A:\n    pass\ndelattr(A, '__init__')", SECURITY, id="delattr-dunder"),
    pytest.param("inputs['a'] = 2", SECURITY, id="modify-inputs"),
    pytest.param("del inputs['a']", SECURITY, id="delete-input"),
    pytest.param("setattr(log, 'x', 1)", SECURITY, id="write-host-object"),
    # code that would run later, in another step's time
    pytest.param("class A:\n    def __del__(self):\n        pass", SECURITY, id="finalizer"),
    pytest.param("class S(str):\n    def __hash__(self):\n        return 0", SECURITY, id="lying-str-hash"),
    pytest.param(
        "class E:\n    def __eq__(self, other):\n        return True\nclass S(E, str):\n    pass",
        SECURITY,
        id="lying-str-eq-inherited",
    ),
    pytest.param(
        "def g():\n    try:\n        yield 1\n    finally:\n        getattr(1, '__class__')\nx = g()\nnext(x)",
        SECURITY,
        id="generator-finalizer-charged-to-its-step",
    ),
    # exits
    pytest.param("raise SystemExit", SECURITY, id="system-exit"),
    pytest.param("raise SystemExit(0)", SECURITY, id="system-exit-0"),
    pytest.param("raise KeyboardInterrupt", SECURITY, id="keyboard-interrupt"),
    # resources
    pytest.param("x = 'x' * 10**10", LIMIT, id="memory-bomb-str"),
    pytest.param("x = [0] * 10**10", LIMIT, id="memory-bomb-list"),
    pytest.param("chunks = []\nwhile True:\n    chunks.append('x' * 10**7)", LIMIT, id="memory-growth"),
    pytest.param("def f(n):\n    return f(n + 1)\nf(0)", LIMIT, id="deep-recursion"),
    pytest.param("outputs['x'] = 'a' * (2 * 1024 * 1024)", LIMIT, id="huge-output"),
    pytest.param("context.set('k', 'a' * (300 * 1024))", LIMIT, id="huge-context"),
    pytest.param("x = 1\n" * 50_000, LIMIT, id="oversize-source"),
    pytest.param("x = " + "(" * 300 + "1" + ")" * 300, ErrorKind.SCRIPT, id="too-nested-to-parse"),
    pytest.param("x = " + "-" * 100_000 + "1", LIMIT, id="too-nested-to-compile"),
    pytest.param("while True:\n    pass", TIMEOUT, id="infinite-loop"),
    pytest.param("x = 0\nfor i in range(10**12):\n    x = x + i", TIMEOUT, id="cpu-burner"),
    pytest.param("import re\nre.match('(a+)+$', 'a' * 64 + 'b')", TIMEOUT, id="regex-backtracking"),
    # outputs that are not JSON values
    pytest.param("outputs['s'] = {1, 2}", OUTPUT, id="output-set"),
    pytest.param("class X:\n    pass\noutputs['o'] = X()", OUTPUT, id="output-object"),
    pytest.param("outputs[1] = 2", OUTPUT, id="output-int-key"),
    pytest.param("outputs['n'] = 2**70", OUTPUT, id="output-big-int"),
    pytest.param("x = []\nx.append(x)\noutputs['x'] = x", OUTPUT, id="output-cycle"),
    pytest.param("outputs = [1]", OUTPUT, id="outputs-not-a-dict"),
]

BENIGN = "outputs['ok'] = sum(inputs['xs'])"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def pool() -> AsyncIterator[SandboxPool]:
    async with SandboxPool(TEST_SETTINGS) as pool:
        yield pool


@pytest.mark.parametrize(("script", "kind"), HOSTILE)
async def test_hostile_script_fails_clearly_and_the_pool_serves_on(
    pool: SandboxPool, script: str, kind: ErrorKind
) -> None:
    result = await pool.run(make_step(script, inputs={"a": 1}, timeout_s=1.0))

    assert not result.ok
    assert result.error is not None
    assert result.error.kind == kind, result.error
    assert result.error.message
    assert len(result.error.message.encode()) <= TEST_SETTINGS.max_error_bytes
    after = await pool.run(make_step(BENIGN, inputs={"xs": [1, 2, 3]}))
    assert after.ok, after.error
    assert after.outputs == {"ok": 6}


async def test_the_corpus_is_large_enough() -> None:
    assert len(HOSTILE) >= 35


async def test_security_errors_name_the_script_line(pool: SandboxPool) -> None:
    result = await pool.run(make_step("x = 1\ny = 2\nz = getattr(x, '__class__')"))

    assert result.error is not None
    assert (result.error.kind, result.error.line) == (SECURITY, 3)


async def test_huge_logs_are_truncated_with_a_marker_and_the_step_succeeds(pool: SandboxPool) -> None:
    script = "for i in range(20000):\n    print('x' * 100)\nlog('never seen')\noutputs['done'] = True"

    result = await pool.run(make_step(script))

    assert result.ok, result.error
    assert result.outputs == {"done": True}
    assert "[log truncated at 65536 bytes]" in result.logs
    assert len(result.logs.encode()) < TEST_SETTINGS.max_log_bytes + 100
    assert "never seen" not in result.logs


async def test_after_the_corpus_a_benign_step_succeeds_and_the_host_is_alive(pool: SandboxPool) -> None:
    results = await asyncio.gather(*(pool.run(make_step(BENIGN, inputs={"xs": [4, n]})) for n in range(8)))

    assert [result.outputs for result in results] == [{"ok": 4 + n} for n in range(8)]
    os.kill(os.getpid(), 0)  # still here


BENIGN_SCRIPTS = [
    pytest.param("outputs['v'] = [x * x for x in range(5) if x % 2]", {"v": [1, 9]}, id="comprehension"),
    pytest.param("outputs['v'] = {k: v for k, v in zip('ab', range(2))}", {"v": {"a": 0, "b": 1}}, id="dict-comp"),
    pytest.param("s = 'Hello, World'\noutputs['v'] = [s.lower(), s.split(', '), s[::-1], f'{len(s):03d}']",
                 {"v": ["hello, world", ["Hello", "World"], "dlroW ,olleH", "012"]}, id="strings"),
    pytest.param("d = {'a': 1}\nd['b'] = 2\nd.update(c=3)\noutputs['v'] = sorted(d.items())",
                 {"v": [["a", 1], ["b", 2], ["c", 3]]}, id="dicts"),
    pytest.param("outputs['v'] = [math.sqrt(16), math.floor(2.5), round(math.pi, 2)]", {"v": [4.0, 2, 3.14]},
                 id="math"),
    pytest.param("import json\noutputs['v'] = json.loads(json.dumps({'a': [1, 2]}, sort_keys=True))",
                 {"v": {"a": [1, 2]}}, id="import-json"),
    pytest.param("import re\noutputs['v'] = re.findall(r'\\d+', 'a1b22c333')", {"v": ["1", "22", "333"]}, id="re"),
    pytest.param("from datetime import datetime, timedelta\n"
                 "d = datetime.strptime('2024-02-28', '%Y-%m-%d') + timedelta(days=2)\n"
                 "outputs['v'] = [d.date().isoformat(), d.strftime('%A')]",
                 {"v": ["2024-03-01", "Friday"]}, id="datetime"),
    pytest.param("outputs['v'] = sorted(['bb', 'a', 'ccc'], key=lambda s: -len(s))", {"v": ["ccc", "bb", "a"]},
                 id="sorted-key"),
    pytest.param("from collections import Counter\noutputs['v'] = Counter('abracadabra').most_common(2)",
                 {"v": [["a", 5], ["b", 2]]}, id="counter"),
    pytest.param("class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n"
                 "    def norm1(self):\n        return abs(self.x) + abs(self.y)\n"
                 "p = Point(3, -4)\np.label = 'p'\noutputs['v'] = [p.norm1(), p.label]", {"v": [7, "p"]},
                 id="class-with-attributes"),
    pytest.param("def gen(n):\n    for i in range(n):\n        yield i * 2\noutputs['v'] = list(gen(3))",
                 {"v": [0, 2, 4]}, id="generator"),
    pytest.param("import statistics, itertools, functools, random, string\n"
                 "outputs['v'] = [statistics.mean([1, 2, 3]), list(itertools.chain([1], [2])),\n"
                 "    functools.reduce(lambda a, b: a * b, [1, 2, 3, 4]), random.Random(1).randint(5, 5),\n"
                 "    string.ascii_lowercase[:3]]",
                 {"v": [2, [1, 2], 24, 5, "abc"]}, id="other-modules"),
    pytest.param("import random\nrandom.seed(5)\nxs = list(range(20))\nrandom.shuffle(xs)\nrandom.seed(5)\n"
                 "ys = list(range(20))\nrandom.shuffle(ys)\noutputs['v'] = xs == ys != list(range(20))",
                 {"v": True}, id="random-seed-shuffle"),
    pytest.param("a, (b, c) = 1, (2, 3)\nfor x, y in [(1, 2)]:\n    pass\nn = 0\nn += a + b + c + x + y\n"
                 "outputs['v'] = n", {"v": 9}, id="unpacking-and-augmented-assignment"),
    pytest.param("try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    outputs['v'] = str(e)",
                 {"v": "division by zero"}, id="exceptions"),
    pytest.param("outputs['v'] = isinstance(inputs, dict) or len(dict(inputs))", {"v": 0}, id="inputs-view"),
]  # fmt: skip


@pytest.mark.parametrize(("script", "outputs"), BENIGN_SCRIPTS)
async def test_benign_scripts_work(pool: SandboxPool, script: str, outputs: dict[str, object]) -> None:
    result = await pool.run(make_step(script))

    assert result.ok, result.error
    assert result.outputs == outputs


async def test_print_and_log_are_captured(pool: SandboxPool) -> None:
    result = await pool.run(make_step("print('a', 1)\nprint('b', end='')\nlog('c', [2])"))

    assert result.ok, result.error
    assert result.logs == "a 1\nbc [2]\n"


async def test_fail_fails_the_step_with_its_message_even_when_caught(pool: SandboxPool) -> None:
    result = await pool.run(make_step("try:\n    fail('no data for ' + 'eu')\nexcept Exception:\n    pass"))

    assert result.error is not None
    assert (result.error.kind, result.error.message) == (ErrorKind.FAIL, "no data for eu")


async def test_a_script_error_has_its_type_message_and_line(pool: SandboxPool) -> None:
    result = await pool.run(make_step("x = 1\ny = {}['missing']"))

    assert result.error is not None
    assert (result.error.kind, result.error.type, result.error.line) == (ErrorKind.SCRIPT, "KeyError", 2)
    assert result.error.message == "'missing'"


async def test_a_syntax_error_is_a_script_error_with_its_line(pool: SandboxPool) -> None:
    result = await pool.run(make_step("x = 1\ny = (\n"))

    assert result.error is not None
    assert (result.error.kind, result.error.line) == (ErrorKind.SCRIPT, 2)
