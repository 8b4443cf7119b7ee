"""The `dagrun` command as a user drives it: real processes, exit codes, stdout and stderr."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import queue
import re
import resource
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dagrun.cli import build_parser
from dagrun.cli.render import clock
from dagrun.store import RunRecord, open_store
from tests.conftest import RedisServers, write_token_file
from tests.control_support import Processes, read_only_mount
from tests.store.conftest import make_run

FLOWS = Path(__file__).resolve().parent.parent / "flows"


def dagrun(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DAGRUN_STORE": str(cwd / "store")}
    env.pop("DAGRUN_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "dagrun", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def write_flow(directory: Path, document: dict[str, Any] | str, name: str = "flow.json") -> Path:
    path = directory / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout


@contextlib.contextmanager
def run_in_background(path: Path, *args: str, cwd: Path) -> Iterator[subprocess.Popen[str]]:
    """`dagrun run PATH ARGS` as a child process with the test's store; killed if the test leaves it running."""
    env = {**os.environ, "DAGRUN_STORE": str(cwd / "store")}
    runner = subprocess.Popen(
        [sys.executable, "-m", "dagrun", "run", str(path), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield runner
    finally:
        if runner.poll() is None:
            runner.kill()
        runner.communicate()  # closes its pipes, whether the test read them or not


def test_validate_accepts_a_valid_flow(tmp_path: Path) -> None:
    result = dagrun("validate", str(FLOWS / "etl.json"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_validate_lists_every_problem_with_its_place(tmp_path: Path) -> None:
    bad = {
        "name": "bad",
        "steps": [
            {"id": "a", "script": "pass", "depends_on": ["c"]},
            {"id": "b", "script": "pass", "depends_on": ["a"]},
            {"id": "c", "script": "pass", "depends_on": ["b"]},
            {"id": "d", "script": "x = (", "depends_on": ["lod"]},
            {"id": "a", "script": "pass", "dependson": []},
        ],
    }
    result = dagrun("validate", str(write_flow(tmp_path, bad)), cwd=tmp_path)
    assert result.returncode == 2
    assert_no_traceback(result)
    err = result.stderr
    assert "steps[3].depends_on[0]" in err and "'lod'" in err
    assert "a -> b -> c -> a" in err or "b -> c -> a -> b" in err or "c -> a -> b -> c" in err
    assert "steps[3].script" in err and "line 1" in err
    assert "steps[4]" in err and "dependson" in err
    assert "duplicate" in err.lower()
    assert "problems found" in err


def test_validate_reports_malformed_json_with_line_and_column(tmp_path: Path) -> None:
    path = write_flow(tmp_path, '{\n  "name": "x",\n  "steps": [\n    {"id": "a" "script": "pass"}\n  ]\n}')
    result = dagrun("validate", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "line 4" in result.stderr and "column" in result.stderr
    assert_no_traceback(result)


def test_validate_reports_a_missing_file(tmp_path: Path) -> None:
    result = dagrun("validate", "nope.json", cwd=tmp_path)
    assert result.returncode == 2
    assert "nope.json" in result.stderr
    assert_no_traceback(result)


def test_run_json_prints_exactly_one_document(tmp_path: Path) -> None:
    result = dagrun("run", str(FLOWS / "hello.json"), "--input", "who=team", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert set(document) == {"run_id", "status", "context", "outputs", "steps"}
    assert document["status"] == "succeeded"
    assert document["steps"]["shout"] == {
        "status": "succeeded",
        "attempts": 1,
        "outputs": {"shouted": "HELLO, TEAM!"},
        "error": None,
    }


def test_failed_run_exits_1_and_the_store_can_be_read_back(tmp_path: Path) -> None:
    result = dagrun("run", str(FLOWS / "cleanup_on_failure.json"), "--json", cwd=tmp_path)
    assert result.returncode == 1
    run_id = json.loads(result.stdout)["run_id"]

    status = dagrun("status", run_id, "--json", cwd=tmp_path)
    document = json.loads(status.stdout)
    assert document["status"] == "failed"
    assert document["steps"]["divide"]["error"]["type"] == "ZeroDivisionError"
    assert document["steps"]["publish"]["status"] == "skipped"
    assert "context" in document
    table = dagrun("status", run_id, cwd=tmp_path)  # the steps counted by state, in the order they go through
    assert table.stdout.splitlines()[-1] == "steps: 3 succeeded, 1 failed, 1 skipped"

    outputs = dagrun("outputs", run_id, "cleanup", cwd=tmp_path)
    assert json.loads(outputs.stdout) == {"removed": "scratch-42"}

    events = dagrun("events", run_id, cwd=tmp_path)
    assert events.returncode == 0
    assert "step divide failed" in events.stdout
    assert "step cleanup succeeded" in events.stdout

    runs = dagrun("runs", "--json", cwd=tmp_path)
    assert [r["run_id"] for r in json.loads(runs.stdout)] == [run_id]


def test_plain_output_when_not_a_terminal(tmp_path: Path) -> None:
    result = dagrun("run", str(FLOWS / "hello.json"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "step greet succeeded" in result.stdout
    assert "succeeded" in result.stdout.splitlines()[-1]


LONG_NAME = "a-flow-whose-name-is-long-enough-to-squeeze-a-table-of-runs-into-eighty-columns-and-more"
LONG_ERROR = "this message is long: " + " ".join(["word"] * 40) + " end"


def test_in_a_pipe_lines_are_never_wrapped_nor_ids_cut_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)  # with it, the output wraps where it says
    fails = {"name": LONG_NAME, "steps": [{"id": "fails", "script": f"raise ValueError({LONG_ERROR!r})"}]}
    ran = dagrun("run", str(write_flow(tmp_path, fails)), "--json", cwd=tmp_path)
    assert ran.returncode == 1, ran.stderr
    run_id = json.loads(ran.stdout)["run_id"]

    status = dagrun("status", run_id, cwd=tmp_path)
    runs = dagrun("runs", cwd=tmp_path)

    assert status.returncode == 1 and runs.returncode == 0, status.stderr + runs.stderr
    assert any(f"ValueError: {LONG_ERROR} (script line 1)" in line for line in status.stdout.splitlines())
    assert any(run_id in line and LONG_NAME in line for line in status.stdout.splitlines())
    assert any(run_id in line and LONG_NAME in line for line in runs.stdout.splitlines())
    assert "…" not in runs.stdout + status.stdout


def test_invalid_flow_creates_no_run(tmp_path: Path) -> None:
    path = write_flow(tmp_path, {"name": "x", "steps": [{"id": "a", "script": "pass", "depends_on": ["a"]}]})
    result = dagrun("run", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "steps[0].depends_on[0]" in result.stderr
    assert not (tmp_path / "store").exists()  # not even a store


def test_unknown_input_is_refused_before_running(tmp_path: Path) -> None:
    result = dagrun("run", str(FLOWS / "hello.json"), "--input", "whom=x", cwd=tmp_path)
    assert result.returncode == 2
    assert "whom" in result.stderr
    assert_no_traceback(result)


def test_values_nested_too_deep_are_one_problem_each_never_a_traceback(tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    path = write_flow(
        tmp_path, '{"name": "x", "steps": [{"id": "a", "script": "pass", "inputs": {"n": ' + deep + "}}]}"
    )
    result = dagrun("validate", str(path), cwd=tmp_path)
    assert (result.returncode, result.stderr) == (
        2,
        f"{path}: steps[0].inputs.n: nested more than 64 levels deep (arrays and objects); flatten it\n",
    )

    result = dagrun("run", str(FLOWS / "hello.json"), "--input", "who=" + "[" * 1000 + "]" * 1000, cwd=tmp_path)
    assert result.returncode == 2
    assert "hello.json: inputs.who: nested more than 64 levels deep" in result.stderr
    assert_no_traceback(result)


def test_the_flow_limits_are_options_of_the_commands_that_take_flows(tmp_path: Path) -> None:
    path = write_flow(tmp_path, {"name": "x", "steps": [{"id": "a", "script": "pass", "timeout_s": 100_000}]})
    result = dagrun("validate", str(path), cwd=tmp_path)
    assert (result.returncode, result.stderr.splitlines()[0]) == (
        2,
        f"{path}: steps[0].timeout_s (step 'a'): 100000 is over the maximum of 86400 seconds (--max-timeout-s); "
        "lower it",
    )

    assert dagrun("validate", str(path), "--max-timeout-s", "1e5", cwd=tmp_path).returncode == 0
    result = dagrun("run", str(path), "--max-timeout-s", "inf", "--max-attempts", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert "argument --max-attempts: must be at least 1, not 0" in result.stderr
    assert_no_traceback(result)


def test_a_script_file_outside_the_flow_files_directory_needs_allow_outside_scripts(tmp_path: Path) -> None:
    (tmp_path / "flows").mkdir()
    (tmp_path / "shared.py").write_text("outputs['n'] = 1\n")
    path = write_flow(tmp_path / "flows", {"name": "x", "steps": [{"id": "a", "script_file": "../shared.py"}]})

    for command in ("validate", "run", "submit", "graph"):
        result = dagrun(command, str(path), cwd=tmp_path)
        assert result.returncode == 2, command
        assert "steps[0].script_file (step 'a'): cannot read '../shared.py': it resolves to" in result.stderr
        assert "(or pass --allow-outside-scripts)" in result.stderr
        assert_no_traceback(result)
    assert dagrun("validate", str(path), "--allow-outside-scripts", cwd=tmp_path).returncode == 0
    assert dagrun("graph", str(path), "--allow-outside-scripts", cwd=tmp_path).returncode == 0


def test_unknown_run_id_exits_2(tmp_path: Path) -> None:
    assert dagrun("submit", str(FLOWS / "hello.json"), cwd=tmp_path).returncode == 0  # a store, without that run
    for command in (["status", "no-such-run"], ["outputs", "no-such-run"], ["events", "no-such-run"]):
        result = dagrun(*command, cwd=tmp_path)
        assert result.returncode == 2, command
        assert result.stderr == f"dagrun: no run with id 'no-such-run' in the store at {tmp_path / 'store'}\n"


def commands_taking_a_run_id() -> list[str]:
    """Every sub-command with a `run` argument, as the parser has them."""
    (commands,) = [action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    return [name for name, parser in commands.choices.items() if any(a.dest == "run" for a in parser._actions)]


def test_every_command_taking_a_run_id_takes_a_unique_prefix_of_it_or_last(tmp_path: Path) -> None:
    commands = commands_taking_a_run_id()
    assert {"status", "pause", "cancel", "resume", "signal", "wait", "errors", "metrics", "pending", "checkpoint",
            "outputs", "events"} <= set(commands)  # fmt: skip
    run_id = json.loads(dagrun("run", str(FLOWS / "hello.json"), "--json", cwd=tmp_path).stdout)["run_id"]
    prefix, sibling = run_id[:-1], run_id[:-2] + ("0" if run_id[-2] != "0" else "1") + run_id[-1]
    asyncio.run(record_runs(tmp_path / "store", make_run(sibling)))  # shares all of `prefix` but its last digit
    extra = {"signal": ["greet", "ok=true"]}  # what else a command needs (refused alike: greet waits for none)

    for command in commands:  # the same answer, whole id included (`run X: ...`, or in the error)
        by_id = dagrun(command, run_id, *extra.get(command, []), cwd=tmp_path)
        assert "usage:" not in by_id.stderr and "no run with id" not in by_id.stderr, (command, by_id.stderr)
        by_prefix = dagrun(command, prefix, *extra.get(command, []), cwd=tmp_path)
        assert (by_prefix.returncode, by_prefix.stdout, by_prefix.stderr) == (
            by_id.returncode, by_id.stdout, by_id.stderr
        ), command  # fmt: skip
    by_last = dagrun("status", "last", cwd=tmp_path)
    assert by_last.returncode == 0 and f"run {sibling}" in by_last.stdout, by_last.stdout + by_last.stderr


async def record_runs(store: Path, *runs: RunRecord) -> None:
    """Runs recorded straight into the store at `store`, one step each, as a submit would leave them."""
    async with open_store(str(store)) as opened:
        for run in runs:
            await opened.create_run(run, ["a"])


def test_a_run_id_prefix_names_one_run_or_lists_the_runs_it_names(tmp_path: Path) -> None:
    store = tmp_path / "store"
    ids = [f"20261123-153012-a{n:02d}" for n in range(13)]
    runs = [make_run(run_id, flow_name="etl", created_at=1_800_000_000.0 + n) for n, run_id in enumerate(ids)]

    assert dagrun("status", "last", cwd=tmp_path).returncode == 2  # no store at all yet
    asyncio.run(open_store(str(store)).aclose())
    empty = dagrun("status", "last", cwd=tmp_path)
    assert (empty.returncode, empty.stderr) == (
        2,
        f"dagrun: there are no runs in the store at {store}, so 'last' names none\n",
    )
    asyncio.run(record_runs(store, *runs, make_run("20261123-153012-b00", created_at=1_800_000_100.0)))

    ambiguous = dagrun("status", "20261123-153012-a", cwd=tmp_path)
    assert ambiguous.returncode == 2
    assert ambiguous.stderr.splitlines() == [
        "dagrun: run id prefix '20261123-153012-a' names 13 runs; type more of the id:",
        *(f"  {run_id}  etl  pending  {clock(1_800_000_000.0 + n)}" for n, run_id in enumerate(ids[:10])),
        "  and 3 more",
    ]
    assert "20261123-153012-b00" in dagrun("status", "20261123-153012-b", cwd=tmp_path).stdout
    assert "20261123-153012-b00" in dagrun("status", "last", cwd=tmp_path).stdout
    short = dagrun("pending", "20261", cwd=tmp_path)
    assert (short.returncode, short.stderr) == (
        2,
        "dagrun: no run with id '20261', and a prefix of one needs 6 characters at least\n",
    )
    unknown = dagrun("events", "20261124", cwd=tmp_path)
    assert (unknown.returncode, unknown.stderr) == (2, f"dagrun: no run with id '20261124' in the store at {store}\n")


def test_a_store_path_that_cannot_be_written_exits_3(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = dagrun("run", str(FLOWS / "hello.json"), "--store", str(blocker / "store"), cwd=tmp_path)
    assert result.returncode == 3
    assert str(blocker) in result.stderr
    assert_no_traceback(result)


def test_an_empty_store_file_is_refused_as_damaged_with_exit_3(tmp_path: Path) -> None:
    path = tmp_path / "store" / "dagrun.db"
    path.parent.mkdir()
    path.touch()
    for command in (["run", str(FLOWS / "hello.json")], ["runs"]):
        result = dagrun(*command, cwd=tmp_path)
        assert result.returncode == 3, command
        assert result.stderr == (
            f"dagrun: {path}: the store file is empty (0 bytes), so it is a damaged store, not a new one; restore it"
            " from a backup, or remove it to start an empty store\n"
        )
    assert path.stat().st_size == 0


@pytest.mark.slow
def test_a_store_deleted_while_a_run_writes_fails_the_run_with_exit_3(tmp_path: Path) -> None:
    busy = "n = 0\nfor _ in range(100000):\n    n += 1"
    steps = [{"id": "s0", "script": busy}] + [
        {"id": f"s{i}", "script": busy, "depends_on": [f"s{i - 1}"]} for i in range(1, 100)
    ]
    path = write_flow(tmp_path, {"name": "long", "steps": steps})
    store = tmp_path / "store"
    with run_in_background(path, "--processes", "1", cwd=tmp_path) as runner:
        assert runner.stdout is not None
        for line in runner.stdout:  # one line per step that ends
            if "step s5 succeeded" in line:
                break
        for name in ("dagrun.db", "dagrun.db-wal", "dagrun.db-shm"):
            (store / name).unlink()
        _, err = runner.communicate(timeout=60)
    assert runner.returncode == 3, err
    assert err.endswith(
        f"dagrun: {store / 'dagrun.db'}: the store file was deleted while in use; what was written to it is lost,"
        " and no more writes are accepted\n"
    ), err
    assert "Traceback" not in err
    assert not (store / "dagrun.db").exists()  # nothing made a new, empty store in its place


@pytest.mark.parametrize(
    ("option", "looked_for"),
    [
        ([], "store/dagrun.db"),  # $DAGRUN_STORE
        (["--store", "./tpyo"], "tpyo/dagrun.db"),
        (["--store", "sqlite://{tmp_path}/no/such/dir/x.db"], "no/such/dir/x.db"),
    ],
)
def test_read_commands_on_a_path_without_a_store_exit_2_and_create_nothing(
    tmp_path: Path, option: list[str], looked_for: str
) -> None:
    option = [part.format(tmp_path=tmp_path) for part in option]
    for command in (["runs"], ["status", "r1"], ["wait", "last"], ["events", "20261123"]):
        result = dagrun(*command, *option, cwd=tmp_path)
        assert result.returncode == 2, command
        assert result.stderr == (
            f"dagrun: {tmp_path / looked_for}: there is no store here (reading never creates one); check the path\n"
        )
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_read_commands_work_on_a_store_that_cannot_be_written(tmp_path: Path) -> None:
    processes = Processes(str(tmp_path / "store"), tmp_path)
    run_id = json.loads(processes.run("run", str(FLOWS / "hello.json"), "--json").stdout)["run_id"]
    store = tmp_path / "store"
    read_only = read_only_mount(store)
    written = processes.run("run", str(FLOWS / "hello.json"), prefix=read_only)
    assert written.returncode == 3
    assert written.stderr == (
        f"dagrun: {store / 'dagrun.db'}: the store cannot be written here, it is read-only; reading it still works\n"
    )
    commands = [["runs"], ["status", run_id, "--json"], ["outputs", run_id], ["events", run_id], ["wait", run_id]]
    commands += [["errors", run_id], ["metrics", run_id], ["pending", run_id], ["checkpoint", run_id]]
    results = {command[0]: processes.run(*command, prefix=read_only) for command in commands}
    assert {name: (r.returncode, r.stderr) for name, r in results.items()} == {name: (0, "") for name in results}
    assert json.loads(results["status"].stdout)["steps"]["shout"]["outputs"] == {"shouted": "HELLO, WORLD!"}
    assert os.listdir(store) == ["dagrun.db"]


def test_graph_exports_dot_and_mermaid(tmp_path: Path) -> None:
    dot = dagrun("graph", str(FLOWS / "etl.json"), cwd=tmp_path)
    assert dot.returncode == 0
    assert dot.stdout.startswith("digraph") and '"extract" -> "transform_0"' in dot.stdout
    mermaid = dagrun("graph", str(FLOWS / "etl.json"), "--format", "mermaid", cwd=tmp_path)
    assert mermaid.stdout.startswith("flowchart") or mermaid.stdout.startswith("graph")


def test_schema_is_json_schema(tmp_path: Path) -> None:
    result = dagrun("schema", cwd=tmp_path)
    schema = json.loads(result.stdout)
    assert schema["type"] == "object" and "steps" in schema["properties"]


def test_status_works_from_another_process_while_a_run_writes(tmp_path: Path) -> None:
    busy = "total = 0\nfor i in range(400000):\n    total += i\noutputs['total'] = total"
    steps = [{"id": "s0", "script": busy}] + [
        {"id": f"s{i}", "script": busy, "depends_on": [f"s{i - 1}"]} for i in range(1, 30)
    ]
    path = write_flow(tmp_path, {"name": "slow", "steps": steps})
    with run_in_background(path, "--json", cwd=tmp_path) as runner:
        deadline = time.monotonic() + 30
        seen_running = None
        while time.monotonic() < deadline and runner.poll() is None:
            runs = json.loads(dagrun("runs", "--json", cwd=tmp_path).stdout or "[]")
            if runs and runs[0]["status"] == "running":
                status = json.loads(dagrun("status", runs[0]["run_id"], "--json", cwd=tmp_path).stdout)
                done = [s for s in status["steps"].values() if s["status"] == "succeeded"]
                if done and status["status"] == "running":  # not if it ended between the two reads
                    seen_running = status
                    break
        assert seen_running is not None, "never saw the run in progress from another process"
        assert seen_running["status"] == "running"
        assert 0 < len([s for s in seen_running["steps"].values() if s["status"] == "succeeded"]) < 30
        out, err = runner.communicate(timeout=60)
        assert runner.returncode == 0, err
        assert json.loads(out)["status"] == "succeeded"


@pytest.mark.parametrize("bad", ["--max-parallel=0", "--max-parallel=x"])
def test_bad_arguments_exit_2_with_a_usage_message(tmp_path: Path, bad: str) -> None:
    result = dagrun("run", str(FLOWS / "hello.json"), bad, cwd=tmp_path)
    assert result.returncode == 2
    assert "max-parallel" in result.stderr


def test_steps_can_name_an_executor_given_on_the_command_line(tmp_path: Path) -> None:
    flow = {"name": "x", "steps": [{"id": "a", "script": "outputs['ok'] = True", "executor": "elsewhere"}]}
    path = write_flow(tmp_path, flow)
    result = dagrun("run", str(path), "--executor", "elsewhere=local://?processes=1", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["steps"]["a"]["outputs"] == {"ok": True}


def test_a_step_naming_an_unconfigured_executor_is_refused(tmp_path: Path) -> None:
    flow = {"name": "x", "steps": [{"id": "a", "script": "pass", "executor": "remote"}]}
    result = dagrun("run", str(write_flow(tmp_path, flow)), cwd=tmp_path)
    assert result.returncode == 2
    assert "steps[0].executor: step 'a' uses executor 'remote', which is not configured" in result.stderr


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("remote", "'remote' is not NAME=URL"),
        ("remote=nope://host", "no executor for scheme 'nope'"),
        ("remote=local://?bogus=1", "unknown setting 'bogus'"),
    ],
)
def test_bad_executor_arguments_are_clear_errors(tmp_path: Path, argument: str, message: str) -> None:
    flow = {"name": "x", "steps": [{"id": "a", "script": "pass", "executor": "remote"}]}
    result = dagrun("run", str(write_flow(tmp_path, flow)), "--executor", argument, cwd=tmp_path)
    assert result.returncode in (2, 3)
    assert message in result.stderr
    assert_no_traceback(result)


def test_worker_errors_are_one_clear_line(tmp_path: Path) -> None:
    unknown = dagrun("worker", "carrier-pigeon", cwd=tmp_path)  # bad arguments exit 2 ...
    assert unknown.returncode == 2
    assert "no executor for scheme 'carrier-pigeon'" in unknown.stderr
    local = dagrun("worker", "local", cwd=tmp_path)
    assert local.returncode == 2
    no_url = dagrun("worker", "redis", cwd=tmp_path)
    assert (no_url.returncode, no_url.stderr) == (2, "dagrun: needs a Redis URL: redis://HOST[:PORT][/DB] (a user "
                                                     "and password go before HOST), rediss:// for TLS\n")  # fmt: skip
    no_token = dagrun("worker", "redis", "redis://127.0.0.1:6379/0", "--token-file", "nope", cwd=tmp_path)
    assert (no_token.returncode, no_token.stderr) == (
        2,
        "dagrun: cannot read token file 'nope': No such file or directory\n",
    )
    scheme = dagrun("runs", "--store", "zzz://x", cwd=tmp_path)
    assert scheme.returncode == 2 and "unsupported store URL scheme 'zzz'" in scheme.stderr
    assert "the local executor has no worker server" in local.stderr
    assert_no_traceback(local)


def test_a_token_file_other_users_can_read_or_write_is_refused_with_exit_2(tmp_path: Path) -> None:
    token = write_token_file(tmp_path / "token", "t" * 32)
    token.chmod(0o640)
    commands = [
        ["worker", "ws", "--token-file", str(token)],
        ["workers", "ws://127.0.0.1:9", "--token-file", str(token)],
        ["serve", "api", "--token-file", str(token), "--port", "0"],
        ["run", str(FLOWS / "hello.json"), "--token-file", str(token)],
    ]
    refusal = f"dagrun: token file {str(token)!r}: other users can read or write it (mode 0640); run: chmod 600 {token}"
    for command in commands:
        result = dagrun(*command, cwd=tmp_path)
        assert (result.returncode, result.stderr) == (2, refusal + "\n"), command


def test_interrupting_a_busy_run_leaves_it_to_resume_and_exits_130(tmp_path: Path) -> None:
    busy = "total = 0\nfor i in range(10 ** 10):\n    total += i"  # runs until interrupted, however slow the machine
    path = write_flow(
        tmp_path,
        {"name": "slow", "steps": [{"id": "a", "script": busy}, {"id": "b", "script": busy, "depends_on": ["a"]}]},
    )
    with run_in_background(path, cwd=tmp_path) as runner:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            runs = json.loads(dagrun("runs", "--json", cwd=tmp_path).stdout or "[]")
            if runs and runs[0]["status"] == "running":
                break
        assert runs and runs[0]["status"] == "running", runs
        runner.send_signal(signal.SIGINT)
        _, err = runner.communicate(timeout=30)
    assert runner.returncode == 130, err
    assert "Traceback" not in err
    [run] = json.loads(dagrun("runs", "--json", cwd=tmp_path).stdout)
    assert run["status"] == "running"  # not cancelled: handed back, its step stopped
    assert err.endswith(f"continue it here with: dagrun resume {run['run_id']}\n"), err


@pytest.mark.slow
def test_a_run_its_redis_store_loses_exits_3_naming_the_store_and_still_prints_its_document(
    tmp_path: Path, redis_servers: RedisServers
) -> None:
    server = redis_servers("--requirepass", "pw-secret")  # no persistence: a restart loses every run
    url = f"redis://:pw-secret@127.0.0.1:{server.port}/0"
    spin = "import datetime\nend = datetime.datetime.now() + datetime.timedelta(seconds=3)\n"
    spin += "while datetime.datetime.now() < end:\n    pass\noutputs['v'] = 1"
    steps = [{"id": "a", "script": spin}, {"id": "b", "script": spin, "depends_on": ["a"]}]
    path = write_flow(tmp_path, {"name": "slow", "steps": steps})
    with run_in_background(path, "--json", "--store", url, "--processes", "1", cwd=tmp_path) as runner:
        deadline = time.monotonic() + 30
        runs: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not (runs and runs[0]["status"] == "running"):
            runs = json.loads(dagrun("runs", "--json", "--store", url, cwd=tmp_path).stdout or "[]")
        assert runs and runs[0]["status"] == "running", runs
        server.restart()  # while step a runs
        out, err = runner.communicate(timeout=60)

    assert runner.returncode == 3, err
    assert "Traceback" not in err and "pw-secret" not in err + out
    run_id = runs[0]["run_id"]
    assert err.splitlines()[-1] == (
        f"dagrun: store redis://***@127.0.0.1:{server.port}/0: run {run_id!r} is gone: the store lost it "
        "while it was driven (a Redis without persistence loses its runs when it restarts)"
    )
    document = json.loads(out)
    assert (document["run_id"], document["status"]) == (run_id, "failed")
    assert document["error"] == err.splitlines()[-1].removeprefix("dagrun: ")
    # as this process last wrote them: the store may have failed the write of a's end, or the next one
    assert document["steps"]["a"]["status"] in ("running", "succeeded") and document["steps"]["a"]["attempts"] == 1
    assert document["steps"]["b"]["status"] in ("pending", "running")


def test_a_worker_that_cannot_connect_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = write_token_file(tmp_path / "token", "a-token-of-16-chars-or-more")
    url = f"redis://user:secret@127.0.0.1:{port}/0"
    result = dagrun("worker", "redis", url, "--token-file", str(token), cwd=tmp_path)  # ... the environment 3
    assert result.returncode == 3
    assert result.stderr.startswith("dagrun: cannot connect to redis at redis://***@127.0.0.1")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # nothing after it, no asyncio noise
    assert "secret" not in result.stderr


def test_a_store_that_fills_up_mid_run_reports_only_the_steps_it_persisted(tmp_path: Path) -> None:
    flow = {"name": "big", "steps": [{"id": f"s{i}", "script": "outputs['blob'] = 'x' * 20000"} for i in range(40)]}
    path = write_flow(tmp_path, flow)

    def full_disk_at_300_kb() -> None:  # in the child: a write past the limit fails (EFBIG), as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    env = {**os.environ, "DAGRUN_STORE": str(tmp_path / "store")}
    result = subprocess.run(
        [sys.executable, "-m", "dagrun", "run", str(path), "--processes", "1"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60, preexec_fn=full_disk_at_300_kb,
    )  # fmt: skip

    assert result.returncode == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    reported = re.findall(r"step (s\d+) succeeded", result.stdout)
    unconfirmed = re.search(r"the store failed before these step states were confirmed written .*: (.*)", result.stderr)
    assert unconfirmed is not None, result.stderr
    (run,) = json.loads(dagrun("runs", "--json", cwd=tmp_path).stdout)
    status = json.loads(dagrun("status", run["run_id"], "--json", cwd=tmp_path).stdout)
    persisted = {step_id for step_id, step in status["steps"].items() if step["status"] == "succeeded"}
    assert set(reported) <= persisted, (reported, persisted)  # every line printed is true
    told = {item.split(" ")[0] for item in unconfirmed.group(1).split(", ")}
    assert persisted <= set(reported) | told, (reported, told, persisted)  # and nothing persisted went unsaid


def test_run_says_its_id_at_once_and_the_command_that_signals_a_waiting_step(tmp_path: Path) -> None:
    processes, store = Processes(str(tmp_path / "default-store"), tmp_path), tmp_path / "chosen"
    try:
        running = processes.start("run", str(FLOWS / "approval.json"), "--store", str(store))  # in a pipe
        lines: queue.Queue[str] = queue.Queue()

        def read_lines() -> None:
            for line in running.stdout or ():
                lines.put(line.rstrip("\n"))

        threading.Thread(target=read_lines, daemon=True).start()
        heading = lines.get(timeout=60)
        run_id = re.fullmatch(r"run (\S+): flow approval, 4 steps", heading)
        assert run_id is not None, heading
        told = ""
        while "waits for a signal" not in told:
            told = lines.get(timeout=60)
        command = told.partition("waits for a signal: ")[2]
        assert command == f"dagrun signal {run_id[1]} approve approved=VALUE comment=VALUE --store {store}"

        pasted = shlex.split(command.replace("approved=VALUE", "approved=true").replace("=VALUE", "=ok"))
        assert processes.run(*pasted[1:]).returncode == 0  # the printed command, as a user would paste it
        assert running.wait(timeout=60) == 0
    finally:
        processes.kill_all()


def test_version_is_the_installed_distribution_s(tmp_path: Path) -> None:
    result = dagrun("--version", cwd=tmp_path)
    assert (result.returncode, result.stdout.strip()) == (0, f"dagrun {importlib.metadata.version('dagrun')}")
