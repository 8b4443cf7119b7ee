"""The embedding API: `dagrun.__all__` lists exactly what the package exports, sorted, each loaded on first use."""

from __future__ import annotations

import dagrun


def test_all_is_sorted_and_every_name_in_it_loads() -> None:
    assert dagrun.__all__ == sorted(dagrun.__all__)
    assert dir(dagrun) == dagrun.__all__
    for name in dagrun.__all__:
        assert getattr(dagrun, name).__module__.startswith("dagrun."), name


def test_a_star_import_gives_exactly_the_public_names() -> None:
    namespace: dict[str, object] = {}
    exec("from dagrun import *", namespace)
    assert sorted(set(namespace) - {"__builtins__"}) == dagrun.__all__
