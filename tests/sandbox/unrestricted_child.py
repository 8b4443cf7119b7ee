"""A sandbox child that runs UNRESTRICTED Python once it has confined itself exactly as a real child does
(`dagrun.sandbox.child.start`): it tests the OS layers as if the language policy had already fallen.

Only tests start it, by naming this module as the child's entry (`child_command(entry=...)`); it lives under
tests/, so no flow, API call or wire message can reach it. Protocol: the configuration line, then
{"t": "ready", ...}; then for each line {"code": "..."} from the parent, the code is run with `exec` and
{"ok": true, "result": repr(result)} or {"ok": false, "error": "...", "errno": n} comes back.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys
import threading
from typing import Any

import orjson

from dagrun.sandbox import protocol
from dagrun.sandbox.child import Channel, start

# Everything an attacker with arbitrary Python would reach for, loaded before the child confines itself.
TOOLS = {"ctypes": ctypes, "os": os, "socket": socket, "subprocess": subprocess, "threading": threading}


def main() -> None:
    reader = sys.stdin.buffer
    sys.stdout = sys.stderr
    channel = Channel(reader, 1)
    _runner, layers = start(reader, channel, os.getppid())
    channel.send(protocol.encode_ready(os.getpid(), layers))
    namespace: dict[str, Any] = dict(TOOLS)
    for line in reader:
        try:
            exec(orjson.loads(line)["code"], namespace)
            answer: dict[str, Any] = {"ok": True, "result": repr(namespace.get("result"))}
        except BaseException as exc:
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "errno": getattr(exc, "errno", None)}
        channel.send(orjson.dumps(answer) + b"\n")
    os._exit(0)
