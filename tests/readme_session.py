"""Where tests/test_readme.py runs the README's `dagrun` commands: a temporary directory holding a copy of
`flows/` and the files the samples name (`token`, `flow.json`, `c.pem`, `k.pem`), a SQLite store
(`$DAGRUN_STORE`) for commands without `--store`, and the test run's own redis-server wherever a sample
names a remote host. A synopsis's placeholders become real values: RUN_ID a run made earlier in the session.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dagrun.store import open_store
from tests.conftest import free_port, self_signed_certificate, write_token_file
from tests.control_support import Processes, wait_for_event
from tests.readme_samples import ROOT

# The hosts and files of the README's remote samples, as this machine has them (loopback only).
LOOPBACK = {
    "redis://host:6379/0": "{redis}",
    "redis://queue-host:6379/0": "{redis}",
    "redis://...": "{redis}",
    "wss://worker-host:8765": "ws://127.0.0.1:{ws_port}",  # the README's ws worker serves no TLS
    "--host 0.0.0.0 --port 8765": "--host 127.0.0.1 --port {ws_port}",
    "--host 0.0.0.0 --port 8080": "--host 127.0.0.1 --port {http_port}",
    "/etc/dagrun/token": "token",
    "serve api --store": "serve api --port 0 --store",  # not the default 8080, which anything may hold
}
# Each placeholder of a synopsis as a real value (RUN_ID and STEP_ID: see `ReadmeSession.concrete`).
PLACEHOLDERS = {
    "F": "token",
    "URL": "{redis}",
    "N": "1",
    "SEQ": "1",
    "NAME": "starter",
    "D": "starters",
    "K=V": "region=eu",
    "STEP...": "extract",
}
# Commands whose RUN_ID must be a run still waiting (flows/approval.json, submitted): they act on one.
ON_A_WAITING_RUN = {"pause", "resume", "cancel", "signal"}
# Commands that serve until stopped: started first, as on the README's worker machines, then stopped.
SERVICES = {"worker", "orchestrator", "serve"}
_READY = re.compile(r"ready: \d+ sandbox process|serving (the )?runs of|api: listening on")
_RUN_ID = re.compile(r"\b\d{8}-\d{6}-[0-9a-f]{12}\b")
_REMOTE_FLOW = '{"name": "remote", "defaults": {"executor": "remote"}, "steps": [{"id": "a", "script": "pass"}]}'
TOKEN = "readme-token-0123456789"
WAIT_S = 30.0


def copy_flows(directory: Path) -> None:
    """The README's samples name flows by their path in the repository: `flows/etl.json`."""
    shutil.copytree(ROOT / "flows", directory / "flows")


class ReadmeSession:
    """The README's commands run in one directory, on one local and one Redis store."""

    def __init__(self, directory: Path, redis_url: str) -> None:
        copy_flows(directory)
        write_token_file(directory / "token", TOKEN)
        (directory / "flow.json").write_text(_REMOTE_FLOW)
        cert, key = self_signed_certificate(directory / "tls")
        cert.rename(directory / "c.pem")
        key.rename(directory / "k.pem")
        self.directory = directory
        self.values = {"redis": redis_url, "ws_port": str(free_port()), "http_port": str(free_port())}
        self.runs: dict[str, str] = {}  # "local" / "redis" (ended runs), "waiting:local" / "waiting:redis"
        self.processes = Processes(str(directory / "store"), directory)
        self.services: list[tuple[str, subprocess.Popen[str], Path]] = []

    def concrete(self, variant: str) -> list[str]:
        """The arguments after `dagrun` of one expanded README command, run here."""
        for written, here in LOOPBACK.items():
            variant = variant.replace(written, here)
        args = [PLACEHOLDERS.get(arg, arg).format(**self.values) for arg in shlex.split(variant)[1:]]
        store = "redis" if "--store" in args else "local"
        waiting = args[0] in ON_A_WAITING_RUN
        for i, arg in enumerate(args):
            if arg == "RUN_ID":
                args[i] = self.run_id(f"waiting:{store}" if waiting else store)
            elif arg == "STEP_ID":
                args[i] = "approve" if waiting else "extract"
        return args

    def run_id(self, key: str) -> str:
        assert key in self.runs, f"no {key} run yet for a RUN_ID: the README should run or submit one first"
        return self.runs[key]

    def run(self, variant: str) -> subprocess.CompletedProcess[str]:
        """Run one command to its end; the first run id it prints becomes RUN_ID on its store."""
        args = self.concrete(variant)
        result = self.processes.run(*args)
        store = "redis" if "--store" in args else "local"
        if (found := _RUN_ID.search(result.stdout + result.stderr)) and store not in self.runs:
            self.runs[store] = found.group()
        return result

    def start(self, variant: str) -> None:
        """Start a service with its log in a file, and wait until it says it is ready."""
        log = self.directory / f"service-{len(self.services)}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "dagrun", *self.concrete(variant)], cwd=self.directory,
                env=self.processes.env, stdout=out, stderr=out, text=True,
            )  # fmt: skip
        self.services.append((variant, process, log))
        deadline = time.monotonic() + WAIT_S
        while not _READY.search(log.read_text()):
            assert process.poll() is None, f"{variant!r} exited {process.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"{variant!r} not ready in {WAIT_S} s:\n{log.read_text()}"
            time.sleep(0.05)  # polling a process we started; tests only

    def submit_waiting_runs(self) -> None:
        """Submit flows/approval.json to both stores; the Redis one is waited for until its driver (the
        README's orchestrator) has it waiting for its signal, so that commands reach a live driver."""
        for store, extra in (("local", ()), ("redis", ("--store", self.values["redis"]))):
            result = self.processes.run("submit", "flows/approval.json", *extra)
            assert result.returncode == 0, result.stderr
            self.runs[f"waiting:{store}"] = result.stdout.split()[-1]
        asyncio.run(self._waiting(self.runs["waiting:redis"]))

    async def _waiting(self, run_id: str) -> Any:
        store = open_store(self.values["redis"])
        async with store:
            try:
                return await wait_for_event(store, run_id, "waiting", "approve")
            except TimeoutError:
                raise AssertionError(f"no orchestrator drove the submitted run {run_id} to its signal") from None

    def stop_services(self) -> dict[str, tuple[int, str]]:
        """SIGTERM every service, newest first: each one's exit code and log."""
        stopped = {}
        for variant, process, log in reversed(self.services):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            stopped[variant] = (process.returncode, log.read_text())
        self.services.clear()
        return stopped
