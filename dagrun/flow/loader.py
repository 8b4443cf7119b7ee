"""Loading flow files: the I/O around `parse_flow`.

A flow file is UTF-8 JSON, or YAML when its name ends in .yaml or .yml (same schema; its problems also say
their line); each step's `script_file`, and each sub-flow file (a step's `flow`), is read relative to the
directory of the flow file that names it, and only from under the top flow file's directory unless allowed
(the check is in the one file reader, after symbolic links).
Every failure, the flow file itself included, comes out as a FlowError naming the file: never a traceback.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

from dagrun.errors import FlowError, Problem
from dagrun.flow.limits import DEFAULT_LIMITS, FlowLimits
from dagrun.flow.model import Flow
from dagrun.flow.parser import parse_flow
from dagrun.flow.references import Loc
from dagrun.flow.scripts import ScriptChecker, ScriptReader, check_syntax
from dagrun.flow.subflows import Enclosing, FlowFile, FlowReader

logger = logging.getLogger(__name__)

YAML_SUFFIXES = frozenset({".yaml", ".yml"})


def load_flow(
    path: str | os.PathLike[str],
    *,
    check_script: ScriptChecker = check_syntax,
    limits: FlowLimits = DEFAULT_LIMITS,
    allow_outside_scripts: bool = False,
) -> Flow:
    """Read and validate the flow file at `path` (see `parse_flow` for `check_script`, whose default knows
    no sandbox, and `limits`); FlowError (source = the path as given) lists every problem, including a flow
    file that cannot be read. A script_file must be under the flow file's directory, symbolic links
    resolved, unless `allow_outside_scripts`."""
    source = os.fspath(path)
    flow_path = Path(path)
    try:
        data = flow_path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise FlowError([Problem("", f"cannot read the flow file: {reason}")], source=source) from exc
    document, lines = _document(data, flow_path, source)
    root = Path(os.path.realpath(flow_path.parent))
    flow = parse_flow(
        document,
        source=source,
        read_script=_script_reader(flow_path.parent, root, allow_outside=allow_outside_scripts),
        read_flow=_flow_reader(flow_path.parent, root, allow_outside=allow_outside_scripts),
        check_script=check_script,
        limits=limits,
        lines=lines,
        nesting=(Enclosing(os.path.realpath(flow_path), source),),
    )
    logger.debug("flow %s loaded from %s: %d steps", flow.name, source, len(flow.steps))
    return flow


def _document(data: bytes, flow_path: Path, source: str) -> tuple[bytes | dict[str, Any], dict[Loc, int] | None]:
    """What `parse_flow` takes from the file's bytes: JSON as it is, YAML read into its mapping and lines."""
    if flow_path.suffix.lower() not in YAML_SUFFIXES:
        return data, None
    from dagrun.flow.yaml_document import load_yaml  # PyYAML takes 20 ms to import: only for YAML files

    return load_yaml(data, source=source)


def _script_reader(base: Path, root: Path, *, allow_outside: bool) -> ScriptReader:
    """Reads a script_file relative to `base`. Unless `allow_outside`, one that is absolute or resolves
    outside `root` (the top flow file's directory) is refused with an OSError, which the parser reports at
    the step's script_file: a flow from elsewhere must not make dagrun read (and hand a step) any file the
    user can read."""

    def read_script(script_file: str) -> str:
        path = base / script_file
        if not allow_outside:
            _check_inside(root, script_file, path)
        # text mode: universal newlines, so a script hashes alike whatever line endings it was saved with
        return path.read_text(encoding="utf-8")

    return read_script


def _flow_reader(base: Path, root: Path, *, allow_outside: bool) -> FlowReader:
    """Reads a sub-flow file relative to `base`, under `root` like a script_file; what it names in turn is
    read relative to its own directory."""

    def read_flow(flow_file: str) -> FlowFile:
        path = base / flow_file
        if not allow_outside:
            _check_inside(root, flow_file, path)
        document, lines = _document(path.read_bytes(), path, os.fspath(path))
        return FlowFile(
            document, os.fspath(path), os.path.realpath(path), lines,
            _script_reader(path.parent, root, allow_outside=allow_outside),
            _flow_reader(path.parent, root, allow_outside=allow_outside),
        )  # fmt: skip

    return read_flow


def _check_inside(root: Path, script_file: str, path: Path) -> None:
    allow = "or pass --allow-outside-scripts"
    if Path(script_file).is_absolute():
        raise PermissionError(errno.EACCES, f"an absolute path; give it relative to the flow file ({allow})")
    resolved = Path(os.path.realpath(path))  # realpath, not resolve(): a symbolic link loop is no RuntimeError
    if not resolved.is_relative_to(root):
        raise PermissionError(
            errno.EACCES,
            f"it resolves to {str(resolved)!r}, outside the flow file's directory {str(root)!r}; "
            f"move it under that directory ({allow})",
        )
