import json
from pathlib import Path

import pytest

from dagrun.errors import FlowError
from dagrun.loader import load_flow


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
