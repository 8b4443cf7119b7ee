"""Loading flow files: the I/O around `parse_flow`.

A flow file is UTF-8 JSON; each step's `script_file` is read relative to the flow file's directory.
Every failure, the flow file itself included, comes out as a FlowError naming the file: never a traceback.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dagrun.errors import FlowError, Problem
from dagrun.flow import Flow
from dagrun.flow_limits import DEFAULT_LIMITS, FlowLimits
from dagrun.flow_parser import parse_flow

logger = logging.getLogger(__name__)


def load_flow(path: str | os.PathLike[str], *, limits: FlowLimits = DEFAULT_LIMITS) -> Flow:
    """Read and validate the flow file at `path` (see `parse_flow` for `limits`); FlowError (source = the
    path as given) lists every problem, including a flow file that cannot be read."""
    source = os.fspath(path)
    flow_path = Path(path)
    try:
        data = flow_path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise FlowError([Problem("", f"cannot read the flow file: {reason}")], source=source) from exc
    base = flow_path.parent

    def read_script(script_file: str) -> str:
        # text mode: universal newlines, so a script hashes alike whatever line endings it was saved with
        return (base / script_file).read_text(encoding="utf-8")

    flow = parse_flow(data, source=source, read_script=read_script, limits=limits)
    logger.debug("flow %s loaded from %s: %d steps", flow.name, source, len(flow.steps))
    return flow
