"""Print a pip constraints file pinning each runtime dependency of pyproject.toml to its lower bound.

`bash .ci/test.sh --lowest` installs with it, so the bounds are written once, in pyproject.toml. Each
dependency must read `name[extras]>=X` (an upper bound may follow after a comma); anything else is refused
rather than guessed, since a dependency without a tested lower bound is what this script exists to catch.
Stdlib only: it runs before anything is installed.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_REQUIREMENT = re.compile(
    r"""(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*) \s* (?:\[[^\]]*\])?  # name[extras]
        \s* >= \s* (?P<version>[^,;\s]+) \s* (?:,[^;]*)?        # >=X, then maybe ,<Y; no marker""",
    re.VERBOSE,
)


def lowest_constraints(pyproject: Path) -> list[str]:
    """`name==X` for each runtime dependency; raises ValueError naming a dependency without a `>=` bound."""
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    constraints = []
    for requirement in dependencies:
        match = _REQUIREMENT.fullmatch(requirement.strip())
        if match is None:
            expected = "expected 'name[extras]>=X', maybe then ',<Y', and no marker"
            raise ValueError(f"{pyproject}: dependency {requirement!r}: {expected}")
        constraints.append(f"{match['name']}=={match['version']}")
    return constraints


def main() -> int:
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        print("\n".join(lowest_constraints(pyproject)))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
