import json
import os
from pathlib import Path

import pytest

import dagrun
from dagrun.errors import FlowError
from dagrun.flow.loader import load_flow
from dagrun.sandbox.policy import check_script


def write_flow(directory: Path, document: dict, name: str = "flow.json") -> Path:
    path = directory / name
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_script_files_are_read_relative_to_the_flow_file(tmp_path, monkeypatch):
    (tmp_path / "flows" / "scripts").mkdir(parents=True)
    (tmp_path / "flows" / "scripts" / "load.py").write_text("outputs['n'] = 1\r\n", encoding="utf-8")
    path = write_flow(tmp_path / "flows", {"name": "etl", "steps": [{"id": "load", "script_file": "scripts/load.py"}]})
    monkeypatch.chdir(tmp_path)  # nowhere near the scripts directory

    flow = load_flow(Path("flows") / "flow.json")

    assert flow.step("load").script == "outputs['n'] = 1\n"  # newlines normalised, so hashes agree
    assert flow.step("load").script_file == "scripts/load.py"
    assert flow.source == str(Path("flows") / "flow.json")
    assert load_flow(str(path)) == flow


def test_a_missing_flow_file_is_one_clear_problem():
    with pytest.raises(FlowError) as caught:
        load_flow("flows/nope.json")

    assert str(caught.value) == "flows/nope.json: cannot read the flow file: No such file or directory"
    assert caught.value.source == "flows/nope.json"


def test_a_directory_is_not_a_flow_file(tmp_path):
    with pytest.raises(FlowError, match="cannot read the flow file: Is a directory"):
        load_flow(tmp_path)


def test_a_missing_script_file_is_reported_at_its_step(tmp_path):
    path = write_flow(tmp_path, {"name": "etl", "steps": [{"id": "load", "script_file": "scripts/x.py"}]})

    with pytest.raises(FlowError) as caught:
        load_flow(path)

    assert [str(problem) for problem in caught.value.problems] == [
        "steps[0].script_file (step 'load'): cannot read 'scripts/x.py': No such file or directory"
    ]


def test_a_script_file_that_is_not_utf8_is_reported(tmp_path):
    (tmp_path / "s.py").write_bytes(b"x = '\xff'\n")
    path = write_flow(tmp_path, {"name": "etl", "steps": [{"id": "a", "script_file": "s.py"}]})

    with pytest.raises(FlowError, match=r"steps\[0\]\.script_file \(step 'a'\): cannot read 's.py': not UTF-8 text"):
        load_flow(path)


def test_a_flow_file_that_is_not_utf8_is_reported_with_its_place(tmp_path):
    path = tmp_path / "flow.json"
    path.write_bytes(b'{\n  "name": "\xff"}')

    with pytest.raises(FlowError, match=r"flow\.json: line 2, column 12: not UTF-8 text"):
        load_flow(path)


def test_a_flow_file_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "flow.json"
    path.write_text(json.dumps({"name": "x", "steps": [{"id": "a", "script": ""}]}), encoding="utf-8-sig")

    assert load_flow(path).name == "x"


def test_every_problem_of_a_flow_file_names_the_file(tmp_path):
    path = write_flow(tmp_path, {"name": "x", "steps": [{"id": "a", "script": "", "depends_on": ["b"]}, {"id": 1.5}]})

    with pytest.raises(FlowError) as caught:
        load_flow(path)

    lines = str(caught.value).splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{path}: steps[") for line in lines)


def script_problems(path: Path, **options) -> list[str]:
    with pytest.raises(FlowError) as caught:
        load_flow(path, **options)
    return [str(problem) for problem in caught.value.problems]


def test_a_script_file_outside_the_flow_files_directory_is_refused_unless_allowed(tmp_path):
    (tmp_path / "flows").mkdir()
    (tmp_path / "secret.py").write_text("outputs['x'] = 'secret'\n", encoding="utf-8")
    os.symlink(tmp_path / "secret.py", tmp_path / "flows" / "link.py")
    steps = [
        {"id": "up", "script_file": "../secret.py"},
        {"id": "abs", "script_file": str(tmp_path / "secret.py")},
        {"id": "link", "script_file": "link.py"},
        {"id": "etc", "script_file": "../../../../../../../../etc/passwd"},
    ]
    path = write_flow(tmp_path / "flows", {"name": "x", "steps": steps})
    flows, secret = str(tmp_path / "flows"), str(tmp_path / "secret.py")
    allow = "(or pass --allow-outside-scripts)"

    assert script_problems(path) == [
        f"steps[0].script_file (step 'up'): cannot read '../secret.py': it resolves to {secret!r}, outside the "
        f"flow file's directory {flows!r}; move it under that directory {allow}",
        f"steps[1].script_file (step 'abs'): cannot read {secret!r}: an absolute path; give it relative to the "
        f"flow file {allow}",
        f"steps[2].script_file (step 'link'): cannot read 'link.py': it resolves to {secret!r}, outside the "
        f"flow file's directory {flows!r}; move it under that directory {allow}",
        "steps[3].script_file (step 'etc'): cannot read '../../../../../../../../etc/passwd': it resolves to "
        f"'/etc/passwd', outside the flow file's directory {flows!r}; move it under that directory {allow}",
    ]
    path = write_flow(tmp_path / "flows", {"name": "x", "steps": steps[:3]})
    allowed = load_flow(path, allow_outside_scripts=True)
    assert {allowed.step(step_id).script for step_id in ("up", "abs", "link")} == {"outputs['x'] = 'secret'\n"}


def test_scripts_under_the_flow_files_directory_load_through_links_and_dot_dots_that_stay_inside(tmp_path):
    (tmp_path / "flows" / "scripts" / "lib").mkdir(parents=True)
    (tmp_path / "flows" / "scripts" / "a.py").write_text("outputs['a'] = 1\n", encoding="utf-8")
    os.symlink("scripts/a.py", tmp_path / "flows" / "alias.py")
    os.symlink(tmp_path / "flows", tmp_path / "via")  # the flow file reached through a link to its directory
    steps = [{"id": "a", "script_file": "scripts/lib/../a.py"}, {"id": "b", "script_file": "alias.py"}]
    write_flow(tmp_path / "flows", {"name": "x", "steps": steps})

    flow = load_flow(tmp_path / "via" / "flow.json")

    assert [step.script for step in flow.steps] == ["outputs['a'] = 1\n"] * 2


def test_a_symbolic_link_loop_is_a_problem_not_a_crash(tmp_path):
    os.symlink("loop.py", tmp_path / "loop.py")
    path = write_flow(tmp_path, {"name": "x", "steps": [{"id": "a", "script_file": "loop.py"}]})

    (problem,) = script_problems(path)
    assert problem.startswith("steps[0].script_file (step 'a'): cannot read 'loop.py': ")


def test_a_script_file_is_checked_with_the_check_given_and_the_embedding_api_gives_the_sandbox_policy(tmp_path):
    (tmp_path / "step.py").write_text("x = _secret\n", encoding="utf-8")
    path = write_flow(tmp_path, {"name": "f", "steps": [{"id": "a", "script_file": "step.py"}]})

    assert load_flow(path).step("a").script == "x = _secret\n"  # the flow model alone: what Python refuses
    with pytest.raises(FlowError, match=r"steps\[0\]\.script_file \(step 'a'\): line 1: "):
        load_flow(path, check_script=check_script)
    with pytest.raises(FlowError, match=r"steps\[0\]\.script_file \(step 'a'\): line 1: "):
        dagrun.load_flow(path)
