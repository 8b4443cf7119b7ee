"""Writing flows from the command line: YAML flow files in every command, `dagrun init`, shell completion."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_cli import FLOWS, assert_no_traceback, dagrun


def test_validate_run_submit_and_graph_take_yaml_flow_files(tmp_path: Path) -> None:
    flow = str(FLOWS / "etl.yaml")

    assert dagrun("validate", flow, cwd=tmp_path).stdout.startswith(f"{flow}: valid flow 'etl' with 5 steps")
    run = dagrun("run", flow, "-i", "rows=9", "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["steps"]["load"]["outputs"]["grand_total"] == sum((i * 7) % 11 for i in range(9))
    submit = dagrun("submit", flow, cwd=tmp_path)
    assert submit.returncode == 0, submit.stderr
    graph = dagrun("graph", flow, cwd=tmp_path)
    assert graph.returncode == 0 and '"extract" -> "transform_0"' in graph.stdout


def test_yaml_problems_say_their_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "flow.yml"
    path.write_text("name: x\nsteps:\n  - id: a\n    script: pass\n    depends_on: [b]\n    timeout_s: 0\n")

    result = dagrun("validate", str(path), cwd=tmp_path)

    assert result.returncode == 2
    assert_no_traceback(result)
    assert result.stderr.splitlines() == [
        f"{path}: line 5, steps[0].depends_on[0]: step 'a' depends on unknown step 'b'",
        f"{path}: line 6, steps[0].timeout_s (step 'a'): input should be greater than 0 (got 0)",
        "dagrun: 2 problems found",
    ]
    # what YAML cannot give a flow (here a key read as a boolean) is told first, alone, as a syntax error is
    path.write_text("name: x\nsteps:\n  - id: a\n    script: pass\n    depends_on: [b]\n    yes: 1\n")
    result = dagrun("validate", str(path), cwd=tmp_path)
    assert (result.returncode, result.stderr) == (
        2,
        f"{path}: line 6, steps[0]: the key 'yes' is read as a boolean, not a string: quote it\n",
    )


@pytest.mark.parametrize("form", ["yaml", "json"])
def test_init_writes_a_starter_flow_that_validates_and_runs(tmp_path: Path, form: str) -> None:
    result = dagrun("init", "hello", "--dir", "flows", *(["--json"] if form == "json" else []), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    flow = tmp_path / "flows" / f"hello.{form}"
    assert sorted(path.name for path in flow.parent.iterdir()) == sorted([flow.name, "hello.py"])
    if form == "yaml":
        assert flow.read_text().startswith("# A dagrun flow.")
    assert "script_file" in flow.read_text()

    assert dagrun("validate", str(flow), cwd=tmp_path).returncode == 0
    run = dagrun("run", str(flow), "-i", "who=you", "--json", cwd=tmp_path)

    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    assert document["status"] == "succeeded"
    assert document["steps"]["shout"]["outputs"] == {"shouted": "HELLO, YOU!"}


def test_init_never_overwrites_a_file(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text("mine\n")

    result = dagrun("init", "hello", cwd=tmp_path)

    assert result.returncode == 2
    assert (
        result.stderr == f"dagrun: init: {str(Path('hello.py'))!r} exists; remove it or choose another NAME or --dir\n"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hello.py"]
    assert (tmp_path / "hello.py").read_text() == "mine\n"


def test_init_refuses_a_name_that_is_not_a_file_name(tmp_path: Path) -> None:
    result = dagrun("init", "../up", cwd=tmp_path)

    assert result.returncode == 2
    assert result.stderr == "dagrun: init: '../up' is not a flow name: use letters, digits, '_', '-' and '.'\n"


def bash_completions(script: str, line: str) -> list[str]:
    """What the bash script offers for `line` (the last word is the one being completed)."""
    words = line.split(" ")
    driver = (
        f"{script}\nCOMP_WORDS=({' '.join(map(repr, words))}); COMP_CWORD={len(words) - 1}; "
        '_dagrun; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    result = subprocess.run(["bash", "--norc", "-c", driver], capture_output=True, text=True, check=True)
    return result.stdout.split()


def test_bash_completion_offers_the_parsers_commands_options_and_choices(tmp_path: Path) -> None:
    script = dagrun("completion", "bash", cwd=tmp_path).stdout
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0

    assert bash_completions(script, "dagrun ru") == ["run", "runs"]
    assert bash_completions(script, "dagrun serve ") == ["api"]
    assert bash_completions(script, "dagrun serve api --orch") == ["--orchestrate"]
    assert bash_completions(script, "dagrun -v run flow.yaml --max-p") == ["--max-parallel"]
    assert bash_completions(script, "dagrun runs --status c") == ["cancelled"]
    assert bash_completions(script, "dagrun completion ") == ["bash", "zsh", "fish"]
    assert bash_completions(script, "dagrun run ") == []  # left to bash: file names


def test_zsh_completion_is_the_bash_one_through_bashcompinit(tmp_path: Path) -> None:
    script = dagrun("completion", "zsh", cwd=tmp_path).stdout
    bash = dagrun("completion", "bash", cwd=tmp_path).stdout

    assert script.splitlines()[1] == "autoload -U +X bashcompinit && bashcompinit"
    assert script.endswith(bash)
    if shutil.which("zsh"):
        assert subprocess.run(["zsh", "-n"], input=script, text=True).returncode == 0


_FISH_WORD = re.compile(r"'(?:[^'\\]|\\.)*'|[^\s']+")


def test_fish_completion_has_a_line_per_command_and_option(tmp_path: Path) -> None:
    script = dagrun("completion", "fish", cwd=tmp_path).stdout

    lines = script.splitlines()[1:]
    for line in lines:  # fish's quoting: every quote closed, words separated by spaces
        assert line.startswith("complete -c dagrun ") and " ".join(_FISH_WORD.findall(line)) == line, line
    offered = {words[words.index("-a") + 1] for words in map(_FISH_WORD.findall, lines) if "-a" in words}
    assert {"'run'", "'runs'", "'init'", "'completion'", "'api'", "'bash zsh fish'"} <= offered
    assert any("__fish_seen_subcommand_from run'" in line and " -l max-parallel -r " in line for line in lines)
    if shutil.which("fish"):
        assert subprocess.run(["fish", "-n"], input=script, text=True).returncode == 0


def test_the_branch_flow_runs_the_branch_its_condition_picks_and_its_events_say_why_the_other_was_skipped(
    tmp_path: Path,
) -> None:
    run = dagrun("run", str(FLOWS / "branch.json"), "-i", "min_score=0.9", "--json", cwd=tmp_path)

    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert {step_id: step["status"] for step_id, step in result["steps"].items()} == {
        "check": "succeeded", "publish": "skipped", "quarantine": "succeeded", "report": "succeeded",
    }  # fmt: skip
    assert result["steps"]["report"]["outputs"] == {"summary": "score 0.80: quarantine/batch-5-rows"}
    events = dagrun("events", result["run_id"], cwd=tmp_path)
    assert re.search(r"step publish skipped: condition \$\{steps\.check\.ok\} is false\n", events.stdout)


def test_graph_draws_the_edges_into_a_conditional_step_dashed_and_labelled(tmp_path: Path) -> None:
    dot = dagrun("graph", str(FLOWS / "branch.json"), cwd=tmp_path)
    mermaid = dagrun("graph", str(FLOWS / "branch.json"), "--format", "mermaid", cwd=tmp_path)

    assert '  "check" -> "quarantine" [style=dashed, label="not ${steps.check.ok}"];\n' in dot.stdout
    assert '  "publish" -> "report";\n' in dot.stdout
    assert '  s0 -.->|"not #36;#123;steps.check.ok#125;"| s2\n' in mermaid.stdout
    assert "  s1 --> s3\n" in mermaid.stdout


def test_a_bad_condition_is_a_problem_at_its_place_and_one_it_cannot_judge_fails_its_step(tmp_path: Path) -> None:
    steps = [
        {"id": "check", "script": "outputs['ok'] = 3"},
        {"id": "go", "depends_on": ["check"], "script": "pass", "when": "${steps.check.ok} =< 3"},
    ]
    path = tmp_path / "flow.json"
    path.write_text(json.dumps({"name": "f", "steps": steps}))

    invalid = dagrun("validate", str(path), cwd=tmp_path)
    steps[1]["when"] = "${steps.check.ok}"
    path.write_text(json.dumps({"name": "f", "steps": steps}))
    failed = dagrun("run", str(path), cwd=tmp_path)

    assert invalid.returncode == 2
    assert_no_traceback(invalid)
    assert invalid.stderr.splitlines()[0] == (
        f"{path}: steps[1].when: step 'go' has a malformed condition: unknown operator '=<'; "
        "use one of ==, !=, <, <=, >, >="
    )
    assert failed.returncode == 1
    assert_no_traceback(failed)
    assert (
        "step go failed (no attempt): input error UnresolvedInput: step 'go' condition '${steps.check.ok}': "
        "the value is a number (3), not a boolean" in " ".join(failed.stdout.split() + failed.stderr.split())
    )
