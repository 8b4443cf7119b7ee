"""The embedding API: `dagrun.__all__` lists exactly what the package exports, sorted."""

from __future__ import annotations

import types

import dagrun


def test_all_is_sorted_and_equal_to_the_public_names() -> None:
    public = {
        name
        for name, value in vars(dagrun).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert dagrun.__all__ == sorted(dagrun.__all__)
    assert set(dagrun.__all__) == public
