"""StepRandom: the generator behind the `random` facade's functions, a new one for every step.

Invariant: a step's `random.random()`, `random.seed(42)`, `random.setstate(...)` ... act on a
`random.Random` that no other step ever sees: `start()` drops it between steps, and the next one is
seeded from 16 bytes of os.urandom, so unseeded steps are unpredictable and independent, and a seeded
step draws the same numbers in any child, whatever ran there before. The generator is created on first
use: creating and seeding one costs ~10 µs, and most steps never draw.
"""

from __future__ import annotations

import os
import random

# The functions of the `random` module that act on its generator: the facade serves them as the
# methods of the step's generator.
GENERATOR_FUNCTIONS = frozenset({
    "random", "randint", "randrange", "choice", "choices", "sample", "shuffle", "uniform", "gauss",
    "normalvariate", "lognormvariate", "expovariate", "vonmisesvariate", "gammavariate", "triangular",
    "betavariate", "paretovariate", "weibullvariate", "getrandbits", "randbytes", "seed", "getstate",
    "setstate",
})  # fmt: skip
_SEED_BYTES = 16


class StepRandom:
    """The running step's generator; `start()` before each step forgets the previous one."""

    __slots__ = ("_generator",)

    def __init__(self) -> None:
        self._generator: random.Random | None = None

    def start(self) -> None:
        """Forget the previous step's generator; the next use creates a fresh one."""
        self._generator = None

    def generator(self) -> random.Random:
        """This step's generator, created and seeded from os.urandom on first use."""
        generator = self._generator
        if generator is None:
            generator = self._generator = random.Random(int.from_bytes(os.urandom(_SEED_BYTES), "big"))
        return generator
