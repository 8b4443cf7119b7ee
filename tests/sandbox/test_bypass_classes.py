"""The classes of language-policy bypass found by attacking the sandbox, several payloads each, and the
ordinary uses of the same members that must keep working. (The OS layers that hold if a bypass is ever
found again are tested in test_confinement.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from dagrun.contract.executor import ErrorKind
from dagrun.sandbox import SandboxPool
from tests.sandbox.conftest import TEST_SETTINGS, make_step

pytestmark = pytest.mark.asyncio(loop_scope="module")

# 1. Unbound methods of pure-Python stdlib classes called with a crafted `self`: Counter.copy(int) is
#    `int.__class__(int)`, i.e. the real `type`, and with it unguarded class creation.
UNBOUND_METHODS = [
    pytest.param("from collections import Counter\nT = Counter.copy(int)", id="counter-copy"),
    pytest.param("from collections import Counter\nT = getattr(Counter, 'copy')(int)", id="through-getattr"),
    pytest.param("from collections import Counter\nclass C(Counter):\n    pass\nT = C.copy(int)", id="subclass"),
    pytest.param("from collections import Counter\nT = Counter[int].copy(int)", id="generic-alias"),
    pytest.param("from collections import ChainMap\nT = ChainMap.copy(ChainMap)", id="chainmap-copy"),
    pytest.param("import statistics\nx = statistics.NormalDist.overlap(1, 2)", id="normaldist"),
    pytest.param("import string\nx = string.Template.substitute(1)", id="template"),
    pytest.param("import json\nx = json.JSONEncoder.encode(1, 2)", id="json-encoder"),
    pytest.param("import random\nx = random.Random.choice(1, [1])", id="random-method"),
    pytest.param("from collections import deque\nx = deque.index([1], 1)", id="safe-deque-method"),
]

# 2. ABC registration makes isinstance() say yes for any class, in every later step of the child.
ABC_REGISTRATION = [
    pytest.param("from collections import ChainMap\nChainMap.register(str)", id="chainmap-register"),
    pytest.param("from collections import ChainMap\nr = getattr(ChainMap, 'register')", id="register-getattr"),
    pytest.param("from collections import ChainMap\nclass C(ChainMap):\n    pass\nC.register(int)", id="subclass"),
]

# 3. A GenericAlias forwards attribute reads to its origin: the guard must judge what the read returns.
FORWARDED_ATTRIBUTES = [
    pytest.param(
        "from collections import ChainMap\nclass S(str, ChainMap):\n    pass\nf = S[int].format", id="str-format"
    ),
    pytest.param(
        "from collections import ChainMap\nclass S(str, ChainMap):\n    pass\nf = getattr(S[int], 'format_map')",
        id="str-format-map",
    ),
    pytest.param(
        "from collections import ChainMap\nclass S(str, ChainMap):\n    pass\nf = S('{0}')[0:3].format", id="bound"
    ),
    pytest.param("from collections import ChainMap\nx = ChainMap[int].register", id="alias-register"),
]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def pool() -> AsyncIterator[SandboxPool]:
    async with SandboxPool(TEST_SETTINGS) as pool:
        yield pool


@pytest.mark.parametrize("script", [*UNBOUND_METHODS, *ABC_REGISTRATION, *FORWARDED_ATTRIBUTES])
async def test_a_bypass_is_refused_as_a_security_error(pool: SandboxPool, script: str) -> None:
    result = await pool.run(make_step(script))
    assert result.error is not None and result.error.kind == ErrorKind.SECURITY, result


async def test_a_registration_refused_leaves_later_steps_unaffected(pool: SandboxPool) -> None:
    await pool.run(make_step("from collections import ChainMap\nChainMap.register(str)"))
    result = await pool.run(make_step("from collections import ChainMap\noutputs['x'] = isinstance('s', ChainMap)"))
    assert result.outputs == {"x": False}


# 4. Interpreter memory-safety bugs reachable from allowed code: CPython 3.11's deque.index/count/remove/
#    `in` and OrderedDict's == use items that a re-entrant __eq__ frees. The facades serve subclasses that
#    compare snapshots.
MUTATING_EQ = """
from collections import deque, OrderedDict
box = deque([0] * 64)
od = OrderedDict((i, i) for i in range(64))
class Evil:
    def __eq__(self, other):
        box.clear()
        od.clear()
        return False
box.append(Evil())
for probe in ('index', 'count', 'remove', 'in'):
    box.extend([Evil()] * 8)
    try:
        if probe == 'index':
            box.index(1)
        elif probe == 'count':
            box.count(1)
        elif probe == 'remove':
            box.remove(1)
        else:
            1 in box
    except ValueError:
        pass
other = OrderedDict((i, Evil()) for i in range(64))
od.update((i, Evil()) for i in range(64))
outputs['equal'] = od == other
outputs['alive'] = True
"""


async def test_a_reentrant_eq_that_mutates_a_container_cannot_reach_freed_memory(pool: SandboxPool) -> None:
    result = await pool.run(make_step(MUTATING_EQ))
    assert result.ok, result.error
    assert result.outputs["alive"] is True
    follow_up = await pool.run(make_step("outputs['x'] = 1"))
    assert follow_up.outputs == {"x": 1}


BENIGN = [
    pytest.param(
        "from collections import Counter\nclass C(Counter):\n    def add(self, xs):\n        Counter.update(self, xs)\n"
        "c = C()\nc.add('aab')\noutputs['x'] = c['a']",
        {"x": 2},
        id="explicit-base-method-call",
    ),
    pytest.param(
        "from collections import deque\nd = deque([1, 2, 3, 2])\nd.remove(2)\n"
        "outputs['x'] = [d.index(3), d.count(2), 2 in d, 9 in d, list(d)]",
        {"x": [1, 1, True, False, [1, 3, 2]]},
        id="deque-semantics",
    ),
    pytest.param(
        "from collections import OrderedDict\na = OrderedDict(x=1, y=2)\nb = OrderedDict(y=2, x=1)\n"
        "outputs['x'] = [a == b, a == dict(b), a != b, isinstance(a, dict)]",
        {"x": [False, True, True, True]},
        id="ordereddict-semantics",
    ),
    pytest.param(
        "import statistics\nd = statistics.NormalDist(0, 1)\n"
        "outputs['x'] = round(d.overlap(statistics.NormalDist(0, 1)), 3)",
        {"x": 1.0},
        id="methods-on-instances",
    ),
    pytest.param("def f(y: list[int]) -> int:\n    return y[0]\noutputs['x'] = f([1])", {"x": 1}, id="alias"),
]


@pytest.mark.parametrize(("script", "outputs"), BENIGN)
async def test_ordinary_uses_of_the_same_members_work(
    pool: SandboxPool, script: str, outputs: dict[str, object]
) -> None:
    result = await pool.run(make_step(script))
    assert result.ok, result.error
    assert result.outputs == outputs
