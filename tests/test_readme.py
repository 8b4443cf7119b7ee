"""Every sample in README.md works as pasted (issue 13): its Python samples run, its flows validate, its
JSON parses, every `dagrun` command of its shell blocks parses and runs with its documented exit code
(remote hosts replaced by loopback ones), every `dagrun` command its text names exists with the options
it names, and its links and file paths point inside the repository.

A shell command the test does not run must be in NOT_RUN with the reason, so a new sample cannot go
untested unnoticed.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dagrun.cli import build_parser
from tests.readme_samples import (
    README,
    ROOT,
    SHELL_LANGUAGES,
    Block,
    ShellCommand,
    anchors,
    code_blocks,
    command_spans,
    links,
    path_spans,
    shell_commands,
    synopsis_variants,
)
from tests.readme_session import SERVICES, ReadmeSession, copy_flows
from tests.test_cli import assert_no_traceback, dagrun

TEXT = README.read_text()
BLOCKS = code_blocks(TEXT)

# README commands not run here, and why. Their `dagrun` variants are still parsed by dagrun's own parser.
NOT_RUN = {
    "pip install -e .": "installs dagrun: the test runs this checkout",
    "bash .ci/test.sh": "the whole suite, this test included",
    "bash .ci/test.sh --lowest": "the whole suite again, in a new venv",
    "python benchmarks/bench_local.py": "a benchmark: minutes of load on every core",
    "python benchmarks/bench_local.py --scaling": "a benchmark: minutes of load on every core",
    "python benchmarks/bench_api.py --store sqlite --store redis": "a benchmark: minutes of load on every core",
    "python benchmarks/bench_api.py --store sqlite --store redis --split": "a benchmark: minutes of load",
    "python benchmarks/bench_ui.py": "a benchmark: a browser and 25,000 steps",
    "dagrun worker redis|ws|http ...": "a synopsis of the three `dagrun worker` lines of Remote workers, run here",
}
# Expanded commands whose documented exit code is not 0, and where the README says so.
EXIT_CODES = {
    "dagrun rerun RUN_ID": 2,  # RUN_ID succeeded: "a succeeded run with no --from is refused (exit 2)"
    "dagrun rerun RUN_ID --from-failed --input K=V": 2,  # the same: --from-failed names no step to run again
}


def blocks_in(*languages: str) -> list[Block]:
    return [block for block in BLOCKS if block.language in languages]


def readme_commands() -> list[ShellCommand]:
    return [command for block in blocks_in(*SHELL_LANGUAGES) for command in shell_commands(block)]


def parse(args: list[str]) -> tuple[int, str]:
    """dagrun's own parser on `args`, in this process: its exit code (0 when it would run) and what it printed."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            build_parser().parse_args(args)
    except SystemExit as exit:
        return int(exit.code or 0), said.getvalue()
    return 0, said.getvalue()


def parse_problem(args: list[str]) -> str | None:
    """What dagrun's parser says of `args` if it refuses them; args ending in `...` only name a command."""
    if "..." in args:
        args = [*args[: args.index("...")], "--help"]
    code, said = parse(args)
    return said.strip().splitlines()[-1] if code else None


def by_line(blocks: list[Block]) -> list[object]:
    return [pytest.param(block, id=f"line{block.line}") for block in blocks]


@pytest.mark.parametrize("block", by_line(blocks_in("python")))
def test_a_python_sample_runs_as_pasted(block: Block, tmp_path: Path) -> None:
    (tmp_path / "sample.py").write_text(block.text)
    result = dagrun_sample(tmp_path)
    assert result.returncode == 0, f"README line {block.line}:\n{result.stderr}"


def dagrun_sample(directory: Path) -> subprocess.CompletedProcess[str]:
    """`python sample.py` in a directory holding a copy of flows/, with its own store."""
    copy_flows(directory)
    env = {**os.environ, "DAGRUN_STORE": str(directory / "store")}
    return subprocess.run(
        [sys.executable, "sample.py"], cwd=directory, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("block", by_line(blocks_in("json", "yaml", "yml")))
def test_a_flow_sample_validates_and_other_json_parses(block: Block, tmp_path: Path) -> None:
    document = json.loads(block.text) if block.language == "json" else yaml.safe_load(block.text)
    if not (isinstance(document, dict) and {"name", "steps"} <= document.keys()):
        return  # not a flow: parsing it was the check
    path = tmp_path / f"sample.{block.language}"
    path.write_text(block.text)
    result = dagrun("validate", str(path), cwd=tmp_path)
    assert result.returncode == 0, f"README line {block.line}: {result.stderr}"


def test_every_link_points_to_a_file_of_the_repository_or_to_a_heading() -> None:
    headings = anchors(TEXT)
    broken = []
    for line, target in links(TEXT):
        if target.startswith(("http://", "https://")):
            continue
        if target.startswith("#"):
            if target[1:] not in headings:
                broken.append(f"line {line}: {target} is no heading's anchor")
        elif not inside_repository(target.split("#")[0]):
            broken.append(f"line {line}: {target} is no file of the repository")
    assert not broken, "\n".join(broken)


def test_every_file_path_in_code_is_a_file_of_the_repository() -> None:
    missing = [f"line {line}: {path}" for line, path in path_spans(TEXT) if not inside_repository(path)]
    assert not missing, "not in a clone of the repository:\n" + "\n".join(missing)


def inside_repository(path: str) -> bool:
    resolved = (README.parent / path).resolve()
    return resolved.is_relative_to(ROOT) and resolved.exists()


def test_every_shell_command_is_a_dagrun_command_that_parses_or_is_listed(tmp_path: Path) -> None:
    session = ReadmeSession(tmp_path, "redis://127.0.0.1:1/0")  # only parsed here: nothing is run
    session.runs = dict.fromkeys(("local", "redis", "waiting:local", "waiting:redis"), "last")  # the newest run
    problems = []
    for command in readme_commands():
        if not command.text.startswith("dagrun "):
            if command.text not in NOT_RUN:
                problems.append(f"line {command.line}: {command.text!r} is not run: list it in NOT_RUN")
            continue
        for variant in synopsis_variants(command.text):
            if problem := parse_problem(session.concrete(variant)):
                problems.append(f"line {command.line}: {variant!r}: {problem}")
    written = {command.text for command in readme_commands()}
    problems += [f"NOT_RUN lists {text!r}, which the README no longer has" for text in NOT_RUN if text not in written]
    assert not problems, "\n".join(problems)


def test_every_dagrun_command_the_text_names_exists_with_the_options_it_names() -> None:
    problems = []
    for line, span in command_spans(TEXT):
        words = list(itertools.takewhile(re.compile("[a-z]+").fullmatch, span.split()[1:]))
        helps = (help_text(words[:count]) for count in range(len(words), -1, -1))
        shown = next((text for text in helps if text is not None), None)
        if shown is None:
            problems.append(f"line {line}: `{span}`: dagrun has no such command")
            continue
        unknown = [option for option in options(span) if not re.search(rf"{option}(?![\w-])", shown)]
        problems += [f"line {line}: `{span}`: no option {option}" for option in unknown]
    assert not problems, "\n".join(problems)


def help_text(words: list[str]) -> str | None:
    """What `dagrun WORDS --help` prints, or None when dagrun has no such command."""
    code, said = parse([*words, "--help"])
    return None if code else said


def options(command: str) -> set[str]:
    return set(re.findall(r"(?<!\S)\[?(--[\w-]+)", command))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_every_dagrun_command_runs_with_its_documented_exit_code(tmp_path: Path, redis_url: str) -> None:
    variants = [
        variant
        for command in readme_commands()
        if command.text.startswith("dagrun ") and command.text not in NOT_RUN
        for variant in synopsis_variants(command.text)
    ]
    variants = list(dict.fromkeys(variants))
    services = [variant for variant in variants if variant.split()[1] in SERVICES]
    session = ReadmeSession(tmp_path, redis_url)
    try:
        for service in services:
            session.start(service)
        session.submit_waiting_runs()
        failures = [failure for v in variants if v not in services and (failure := run_failure(session, v))]
        stopped = session.stop_services()
    finally:
        session.stop_services()
        session.processes.kill_all()
    failures += [f"{v!r} exited {code} on SIGTERM:\n{log}" for v, (code, log) in stopped.items() if code != 0]
    assert not failures, "\n\n".join(failures)


def run_failure(session: ReadmeSession, variant: str) -> str | None:
    """Why `variant` did not do what the README says, if it did not."""
    result = session.run(variant)
    expected = EXIT_CODES.get(variant, 0)
    with contextlib.suppress(AssertionError):
        assert_no_traceback(result)
        if result.returncode == expected:
            return None
    return f"{variant!r} exited {result.returncode}, not {expected}:\n{result.stdout[-800:]}\n{result.stderr[-800:]}"
