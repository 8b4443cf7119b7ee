"""`dagrun init NAME`: a starter flow to edit, NAME.yaml (or NAME.json) and the NAME.py its second step runs.

One document for both formats: its `description` fields explain each part, since JSON has no comments; the
YAML file adds a few comment lines on top. Existing files are never overwritten.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from dagrun.errors import UsageError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name", metavar="NAME", help="the flow's name, and of its files: NAME.yaml (or .json) and NAME.py"
    )
    parser.add_argument("--dir", default=".", metavar="D", help="write them in directory D (default: here)")
    parser.add_argument("--json", action="store_true", help="write NAME.json (no comments) instead of NAME.yaml")


def init(args: argparse.Namespace) -> int:
    if not _NAME.fullmatch(args.name):
        raise UsageError(f"init: {args.name!r} is not a flow name: use letters, digits, '_', '-' and '.'")
    directory = Path(args.dir)
    flow_path = directory / f"{args.name}.{'json' if args.json else 'yaml'}"
    script_path = directory / f"{args.name}.py"
    flow = starter_flow(args.name, script_path.name)
    files = {flow_path: _json_text(flow) if args.json else _yaml_text(flow, flow_path.name), script_path: _script()}
    for path in files:
        if path.exists():
            raise UsageError(f"init: {str(path)!r} exists; remove it or choose another NAME or --dir")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for path, text in files.items():
            with path.open("x", encoding="utf-8") as file:  # "x": nor a file made since the check above
                file.write(text)
    except OSError as exc:
        raise UsageError(f"init: cannot write {str(exc.filename)!r}: {exc.strerror or exc}") from exc
    print(f"wrote {flow_path} and {script_path}; try: dagrun run {flow_path} -i who=you")
    return 0


def starter_flow(name: str, script_file: str) -> dict[str, Any]:
    """Two steps, the second after the first: an inline script, then one in `script_file`."""
    return {
        "name": name,
        "description": "A starter from `dagrun init`, two steps, the second after the first: say here what it does.",
        "inputs": {"who": "world"},
        "steps": [
            {
                "id": "greet",
                "description": "An inline script. 'inputs' holds what its inputs resolve to; what it puts in "
                "'outputs' (the keys listed below) later steps read as ${steps.greet.KEY}.",
                "script": "outputs['greeting'] = 'hello, ' + inputs['who']\n",
                "inputs": {"who": "${flow.who}"},
                "outputs": ["greeting"],
            },
            {
                "id": "shout",
                "description": "A script in a file, relative to this flow file; it runs after 'greet'.",
                "depends_on": ["greet"],
                "script_file": script_file,
                "inputs": {"text": "${steps.greet.greeting}"},
                "outputs": ["shouted"],
            },
        ],
    }


def _script() -> str:
    return (
        "# The script of step 'shout'. It runs in dagrun's sandbox: 'inputs' holds the step's inputs, and what\n"
        "# it puts in 'outputs' (the keys the step's 'outputs' lists) the steps after it can read.\n"
        "outputs['shouted'] = inputs['text'].upper() + '!'\n"
    )


def _json_text(flow: dict[str, Any]) -> str:
    import orjson

    return orjson.dumps(flow, option=orjson.OPT_INDENT_2).decode() + "\n"


def _yaml_text(flow: dict[str, Any], flow_file: str) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        """Writes a script (text of several lines) as a literal block, as a person would."""

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    header = (
        f"# A dagrun flow. Check it: dagrun validate {flow_file}; run it: dagrun run {flow_file} -i who=you\n"
        "# Its fields are those of the JSON Schema `dagrun schema` prints. For an editor to check them:\n"
        "#   dagrun schema > flow.schema.json, then start this file with\n"
        "#   # yaml-language-server: $schema=flow.schema.json\n"
    )
    return header + yaml.dump(flow, Dumper=Dumper, sort_keys=False, default_flow_style=None, width=110)
