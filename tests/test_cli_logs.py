"""`dagrun logs`, and the errors `dagrun run` and `dagrun errors` show: real processes, as a user runs them."""

from __future__ import annotations

import json
import queue
import re
import threading
from pathlib import Path
from typing import Any

from tests.control_support import Processes
from tests.test_cli import FLOWS, assert_no_traceback, dagrun, write_flow

# `load` prints, then fails on its first attempt (line 4) and succeeds on its second; `check` prints eight
# lines and fails for good on line 3.
RETRIED: dict[str, Any] = {
    "name": "retried",
    "steps": [
        {
            "id": "load",
            "script": "print('loading, attempt', attempt)\nlog('rows:', 3)\nif attempt < 2:\n    rows = 1 / 0\n"
            "outputs['n'] = attempt",
            "retries": {"max_attempts": 2, "backoff_s": 0.01},
            "outputs": ["n"],
        },
        {
            "id": "check",
            "depends_on": ["load"],
            "script": "for i in range(8):\n    print('checked row', i)\nraise ValueError('row %d is [bold]bad' % 7)",
        },
    ],
}


def run_retried(tmp_path: Path) -> tuple[str, str]:
    """Run RETRIED in a pipe: its run id and what `dagrun run` printed."""
    result = dagrun("run", str(write_flow(tmp_path, RETRIED)), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    heading = re.match(r"run (\S+): flow retried", result.stdout)
    assert heading is not None, result.stdout
    return heading[1], result.stdout


def test_logs_shows_every_attempt_of_every_step_in_the_order_they_ended(tmp_path: Path) -> None:
    run_id, _ = run_retried(tmp_path)

    result = dagrun("logs", run_id, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [re.sub(r" \(local:\d+\) ", " (W) ", line) for line in result.stdout.splitlines()]
    assert lines == [
        "load#1 (W) | loading, attempt 1",
        "load#1 (W) | rows: 3",
        "load#1 (W) | error: ZeroDivisionError: division by zero (script line 4: rows = 1 / 0)",
        "load#2 (W) | loading, attempt 2",
        "load#2 (W) | rows: 3",
        *(f"check#1 (W) | checked row {i}" for i in range(8)),
        "check#1 (W) | error: ValueError: row 7 is [bold]bad"
        " (script line 3: raise ValueError('row %d is [bold]bad' % 7))",
    ]

    followed = dagrun("logs", run_id, "--follow", cwd=tmp_path, timeout=4)  # the run has ended: at once
    assert (followed.returncode, followed.stdout) == (0, result.stdout)

    first = dagrun("logs", run_id, "load", "--attempt", "1", cwd=tmp_path)
    assert [line.split(" | ")[1] for line in first.stdout.splitlines()] == [
        "loading, attempt 1",
        "rows: 3",
        "error: ZeroDivisionError: division by zero (script line 4: rows = 1 / 0)",
    ]
    documents = [
        json.loads(line) for line in dagrun("logs", run_id, "load", "--json", cwd=tmp_path).stdout.splitlines()
    ]
    assert [(d["step_id"], d["attempt"], d["text"]) for d in documents] == [
        ("load", 1, "loading, attempt 1\nrows: 3\n"),
        ("load", 2, "loading, attempt 2\nrows: 3\n"),
    ]
    assert all(d["worker_id"].startswith("local:") and d["at"] > 0 for d in documents)
    assert documents[0]["error"]["type"] == "ZeroDivisionError" and documents[0]["source_line"] == "rows = 1 / 0"
    assert documents[1]["error"] is None and documents[1]["source_line"] is None


def test_logs_shows_a_succeeded_attempt_s_context_writes_after_its_lines(tmp_path: Path) -> None:
    ran = dagrun("run", str(FLOWS / "etl.json"), cwd=tmp_path)
    heading = re.match(r"run (\S+): flow etl", ran.stdout)
    assert ran.returncode == 0 and heading is not None, ran.stdout + ran.stderr

    result = dagrun("logs", heading[1], cwd=tmp_path)
    lines = [re.sub(r" \(local:\d+\) ", " (W) ", line) for line in result.stdout.splitlines()]
    assert lines[:2] == ["extract#1 (W) | extracted 30 rows", "extract#1 (W) | context: set extracted = 30"]
    assert sorted(lines[2:]) == [f"transform_{part}#1 (W) | context: incr transformed by 10" for part in range(3)]
    extract = dagrun("logs", heading[1], "extract", "--json", cwd=tmp_path)  # one attempt: one JSON document
    assert json.loads(extract.stdout)["context_ops"] == [{"op": "set", "key": "extracted", "value": 30}]


def test_logs_of_an_unknown_step_or_run_is_a_clear_error(tmp_path: Path) -> None:
    run_id, _ = run_retried(tmp_path)

    unknown = dagrun("logs", run_id, "lod", cwd=tmp_path)
    assert unknown.returncode == 2
    assert unknown.stderr == f"command line: lod: run {run_id!r} has no step 'lod' (steps: load, check)\n"
    none = dagrun("logs", run_id, "load", "--attempt", "3", cwd=tmp_path)
    assert (none.returncode, none.stdout) == (0, "")
    assert "no logs of step load in attempt 3" in none.stderr
    ghost = dagrun("logs", "ghost", cwd=tmp_path)
    assert ghost.returncode == 2 and "no run with id 'ghost'" in ghost.stderr
    bad = dagrun("logs", run_id, "--attempt", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "must be at least 1" in bad.stderr
    assert_no_traceback(bad)


def test_run_summary_and_errors_show_the_source_line_and_the_log_tail(tmp_path: Path) -> None:
    run_id, printed = run_retried(tmp_path)

    summary = printed.splitlines()
    start = next(i for i, line in enumerate(summary) if line.startswith("step check failed (attempt 1 on local:"))
    assert summary[start].endswith("): script error ValueError: row 7 is [bold]bad")  # user text, not markup
    assert summary[start + 1 : start + 3] == [
        "  script line 3: raise ValueError('row %d is [bold]bad' % 7)",
        "  log (its last 5 of 8 lines):",
    ]
    assert [line.split(" | ")[1] for line in summary[start + 3 : start + 8]] == [
        f"checked row {i}" for i in range(3, 8)
    ]
    assert summary[start + 8].startswith(f"run {run_id} failed in")  # the last line is still the outcome
    assert not any(line.startswith("step load failed") for line in summary)  # it succeeded on its retry

    errors = dagrun("errors", run_id, cwd=tmp_path)
    assert errors.returncode == 0, errors.stderr
    assert errors.stdout.splitlines() == summary[start : start + 8]
    (failure,) = json.loads(dagrun("errors", run_id, "--json", cwd=tmp_path).stdout)
    assert failure["error"] == {"kind": "script", "type": "ValueError", "message": "row 7 is [bold]bad", "line": 3}
    assert failure["source_line"] == "raise ValueError('row %d is [bold]bad' % 7)"
    assert failure["logs"] == "".join(f"checked row {i}\n" for i in range(8))


def test_follow_prints_the_logs_there_are_then_each_attempt_s_as_it_ends(tmp_path: Path) -> None:
    processes = Processes(str(tmp_path / "store"), tmp_path)
    try:
        running = processes.start("run", str(FLOWS / "approval.json"))
        run_lines = _lines_of(running.stdout)
        heading = re.fullmatch(r"run (\S+): flow approval, 4 steps", run_lines.get(timeout=60))
        assert heading is not None
        while "waits for a signal" not in run_lines.get(timeout=60):
            pass
        following = processes.start("logs", heading[1], "--follow")
        followed = _lines_of(following.stdout)
        assert re.fullmatch(r"build#1 \(local:\d+\) \| built app-1\.4\.42\.tar\.gz", followed.get(timeout=60))

        signalled = processes.run("signal", heading[1], "approve", "approved=true", "comment=ok")
        assert signalled.returncode == 0, signalled.stderr
        deployed = followed.get(timeout=60)  # deploy ran after the follow began: its lines came as it ended
        assert re.fullmatch(r"deploy#1 \(local:\d+\) \| deploying app-1\.4\.42\.tar\.gz to staging", deployed)
        assert following.wait(timeout=60) == 0  # the run ended, and so did the follow
        assert running.wait(timeout=60) == 0
    finally:
        processes.kill_all()


def _lines_of(stream: Any) -> queue.Queue[str]:
    """The lines of a child's output as they come, read by a thread."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream or ():
            lines.put(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return lines
