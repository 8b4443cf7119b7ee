"""The `random` facade acts on a generator of the step's own: seeding is reproducible in any step and
child, unseeded steps are independent, and nothing a step does to its generator reaches another step."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from dagrun.contract.executor import StepRequest
from dagrun.sandbox.facades import build_facades
from dagrun.sandbox.scope import SandboxViolation
from dagrun.sandbox.step_random import GENERATOR_FUNCTIONS, StepRandom
from tests.sandbox.conftest import TEST_SETTINGS, PoolFactory, run_in_process

Step = Callable[..., StepRequest]
ONE_CHILD = dataclasses.replace(TEST_SETTINGS, processes=1)
DRAWS = "[random.random(), random.randint(1, 10**9), random.sample(range(1000), 3), random.getrandbits(64)]"
SEEDED = f"import random\nrandom.seed(42)\nxs = list(range(10))\nrandom.shuffle(xs)\noutputs['v'] = [xs, {DRAWS}]"
UNSEEDED = f"import random\noutputs['v'] = {DRAWS}"


def expected_seeded() -> list[object]:
    generator = random.Random(42)
    xs = list(range(10))
    generator.shuffle(xs)
    draws = [generator.random(), generator.randint(1, 10**9), generator.sample(range(1000), 3)]
    return [xs, [*draws, generator.getrandbits(64)]]


def test_seeding_the_facade_repeats_the_draws_within_a_step() -> None:
    scope, violations = run_in_process(
        "import random\nrandom.seed('abc')\na = [random.random(), random.choice('xyz')]\n"
        "random.seed('abc')\noutputs['same'] = a == [random.random(), random.choice('xyz')]"
    )

    assert violations.first is None
    assert scope.outputs == {"same": True}


def test_getstate_and_setstate_round_trip() -> None:
    scope, violations = run_in_process(
        "import random\nstate = random.getstate()\na = [random.random() for _ in range(3)]\n"
        "random.setstate(state)\noutputs['same'] = a == [random.random() for _ in range(3)]"
    )

    assert violations.first is None
    assert scope.outputs == {"same": True}


def test_start_gives_the_next_step_a_fresh_unseeded_generator() -> None:
    step_random = StepRandom()
    facade = build_facades(SandboxViolation, step_random)["random"]
    facade.seed(42)
    first = facade.random()

    step_random.start()

    assert first == random.Random(42).random()
    assert facade.random() != random.Random(42).random()
    assert set(dir(facade)) == {"Random", *GENERATOR_FUNCTIONS}


async def test_a_seeded_step_draws_the_same_in_any_child_whatever_ran_there_before(
    pools: PoolFactory, step: Step
) -> None:
    busy, fresh = await pools(ONE_CHILD), await pools(ONE_CHILD)
    noise = await busy.run(step("import random\nrandom.seed(7)\nx = random.random()\nrandom.shuffle([1, 2, 3])"))

    in_busy = await busy.run(step(SEEDED, step_id="a"))
    in_fresh = await fresh.run(step(SEEDED, step_id="b"))

    assert noise.ok and in_busy.ok and in_fresh.ok, (noise.error, in_busy.error, in_fresh.error)
    assert in_busy.worker_id != in_fresh.worker_id
    assert in_busy.outputs["v"] == in_fresh.outputs["v"] == expected_seeded()


async def test_unseeded_steps_draw_independently_even_after_a_step_seeded(pools: PoolFactory, step: Step) -> None:
    pool = await pools(ONE_CHILD)
    seeding = await pool.run(step("import random\nrandom.seed(42)"))

    results = [await pool.run(step(UNSEEDED, step_id=f"s{n}")) for n in range(3)]

    assert seeding.ok and all(result.ok for result in results)
    draws = [result.outputs["v"] for result in results]
    assert len({str(value) for value in draws}) == 3
    assert draws[0][0] != random.Random(42).random()  # the seeding step left nothing behind
