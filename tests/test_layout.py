"""The shape of the code (ARCHITECTURE.md): small modules, short functions, and package roots that load
only what is used. The arrows between parts are checked by import-linter (`lint-imports`, pyproject.toml)."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("dagrun/**/*.py"), *ROOT.glob("executors/**/*.py")])
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 40
# What `dagrun --help` and the commands that only read a store must start without (issue 13: start-up).
SLOW_TO_LOAD = {"networkx", "pydantic", "redis", "aiohttp", "RestrictedPython", "dagrun.sandbox"}
# Tables that are data, one entry per line: the REST routes and the CLI's commands and options.
LONG_TABLES = {("dagrun/api/routes.py", "routes"), ("dagrun/cli/__init__.py", "build_parser")}


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("path", SOURCES, ids=_name)
def test_modules_are_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{_name(path)} has {lines} lines: split it by concept"


def test_functions_are_short() -> None:
    long = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno:
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and (_name(path), node.name) not in LONG_TABLES:
                    long.append(f"{_name(path)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_importing_the_package_root_loads_nothing_until_a_name_is_used() -> None:
    loaded = {m for m in _loaded_after("import dagrun") if m.startswith("dagrun")}
    assert loaded == {"dagrun", "dagrun.lazy_exports"}


def test_reading_a_flow_loads_neither_the_engine_nor_a_store_nor_a_server_library() -> None:
    loaded = _loaded_after("import dagrun.flow.loader, dagrun.flow.parser")
    heavy = {"redis", "aiohttp", "websockets", "dagrun.engine", "dagrun.store", "dagrun.sandbox.pool"}
    assert not loaded & heavy


def test_a_sandbox_child_loads_only_the_sandbox_and_the_values_it_shares() -> None:
    loaded = {m for m in _loaded_after("import dagrun.sandbox.child") if m.startswith("dagrun")}
    outside = {m for m in loaded if not m.startswith(("dagrun.sandbox", "dagrun.contract"))}
    assert outside <= {"dagrun", "dagrun.lazy_exports", "dagrun.errors"}, outside


def test_the_command_line_parser_loads_no_flow_model_sandbox_or_server_library() -> None:
    loaded = _loaded_after("import dagrun.cli\ndagrun.cli.build_parser()")
    assert not loaded & SLOW_TO_LOAD, loaded & SLOW_TO_LOAD


def test_the_commands_that_read_a_sqlite_store_load_no_flow_model_sandbox_server_library_or_live_display() -> None:
    loaded = _loaded_after("import dagrun.cli.commands, dagrun.cli.control, dagrun.cli.logs, dagrun.store.sqlite.store")
    unwanted = loaded & (SLOW_TO_LOAD | {"rich.live", "dagrun.flow.model", "dagrun.engine.orchestrator"})
    assert not unwanted, unwanted


def test_each_command_names_a_function_its_cli_module_defines() -> None:
    from dagrun.cli import LaterCommand, build_parser

    parsers, later = [build_parser()], []
    while parsers:
        for action in parsers.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += action.choices.values()
                later += [sub.get_default("handler") for sub in action.choices.values()]
    later = [handler for handler in later if isinstance(handler, LaterCommand)]
    assert len(later) >= 15
    for handler in later:
        assert callable(handler.resolve()), f"dagrun.cli.{handler.module} has no {handler.name}"
