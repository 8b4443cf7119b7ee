"""`dagrun serve api` as an operator runs it: a real process that says where it listens, serves and drives
runs, stops cleanly on SIGTERM, and exits with one line when it cannot start."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.api.conftest import HELLO, WAIT_S
from tests.conftest import write_token_file
from tests.control_support import Processes

ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"api: listening on (http://127\.0\.0\.1:\d+)")
TALLY = {
    "name": "tally",
    "steps": [
        {"id": "count", "script": "context.incr('n', 2)\ncontext.append('seen', 'count')"},
        {"id": "more", "depends_on": ["count"], "script": "context.incr('n', 3)"},
    ],
}


async def start(tmp_path: Path, *args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DAGRUN_STORE", None)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dagrun", "-v", "serve", "api", *args,
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def finish(process: asyncio.subprocess.Process) -> tuple[int, str]:
    async with asyncio.timeout(WAIT_S):
        _, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stderr.decode()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    return write_token_file(tmp_path / "token", "serve-test-token-0123456789")


Served = tuple[asyncio.subprocess.Process, str, list[str]]  # the process, its URL, the lines it logged


@pytest.fixture
async def serve(tmp_path: Path, token_file: Path) -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    """Starts `serve api` on the sqlite store `tmp_path/store` and port 0, with more arguments, and waits
    until it listens; kills every process it started at teardown."""
    started: list[asyncio.subprocess.Process] = []

    async def serve_with(*args: str) -> Served:
        process = await start(
            tmp_path, "--store", str(tmp_path / "store"), "--token-file", str(token_file), "--port", "0", *args
        )
        started.append(process)
        lines: list[str] = []
        async with asyncio.timeout(WAIT_S):
            assert process.stderr is not None
            while not (found := LISTENING.search(lines[-1] if lines else "")):
                line = await process.stderr.readline()
                assert line, "the server exited:\n" + "".join(lines)
                lines.append(line.decode())
        return process, found.group(1), lines

    try:
        yield serve_with
    finally:
        for process in started:
            if process.returncode is None:
                process.kill()
                await process.wait()


@pytest.fixture
async def served(serve: Callable[..., Awaitable[Served]]) -> Served:
    """`serve api --orchestrate`: it drives the runs it is sent."""
    return await serve("--orchestrate", "--processes", "1")


async def test_it_serves_drives_runs_and_stops_cleanly_on_sigterm(served: Served, token_file: Path) -> None:
    process, url, lines = served
    token = token_file.read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(url, headers=headers) as client:
        async with client.post("/v1/runs", json={"flow": HELLO}) as response:
            assert response.status == 201
            run_id = (await response.json())["run_id"]
        async with asyncio.timeout(WAIT_S), client.get(f"/v1/runs/{run_id}/events/stream") as response:
            body = await response.text()  # the stream ends with the run
        assert '"status":"succeeded","step_id":null' in body
    process.send_signal(signal.SIGTERM)
    code, rest = await finish(process)
    log = "".join(lines) + rest
    assert code == 0, log
    assert "SIGTERM received" in log and "api: stopped" in log
    assert f"(the dashboard: {url}/ui/)" in log
    assert token not in log and "Traceback" not in log


async def test_it_shows_the_context_of_a_run_that_an_orchestrator_process_drives(
    serve: Callable[..., Awaitable[Served]], tmp_path: Path, token_file: Path
) -> None:
    orchestrators = Processes(str(tmp_path / "store"), tmp_path)  # the same store, another process
    try:
        orchestrators.start("orchestrator", "--processes", "1")
        _, url, _ = await serve()
        headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        async with aiohttp.ClientSession(url, headers=headers) as client:
            async with client.post("/v1/runs", json={"flow": TALLY}) as response:
                assert response.status == 201
                run_id = (await response.json())["run_id"]
            async with asyncio.timeout(WAIT_S), client.get(f"/v1/runs/{run_id}/events/stream") as response:
                await response.text()  # the stream ends with the run
            async with client.get(f"/v1/runs/{run_id}") as response:
                detail = await response.json()
            async with client.get(f"/v1/runs/{run_id}/checkpoint") as response:
                checkpoint = await response.json()
    finally:
        orchestrators.kill_all()
    assert detail["status"] == "succeeded", detail
    assert detail["context"] == checkpoint["context"] == {"n": 5, "seen": ["count"]}


async def test_it_exits_with_one_line_when_it_cannot_bind(tmp_path: Path, token_file: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = await start(tmp_path, "--store", "memory://", "--token-file", str(token_file), "--port", str(port))
        code, stderr = await finish(process)
    assert code == 3
    assert stderr.strip().splitlines()[-1] == (
        f"dagrun: api: cannot listen on 127.0.0.1:{port}: address already in use; pick another --port or stop what "
        "holds it"
    )
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--token-file", "missing-token"], 2, "cannot read token file 'missing-token'"),
        (["--token-file", "{token}", "--processes", "2"], 2, "--processes: only applies with --orchestrate"),
        (["--token-file", "{token}", "--orchestrate", "--executor", "remote"], 2, "'remote' is not NAME=URL"),
        (["--token-file", "{token}", "--store", "ftp://x"], 2, "unsupported store URL scheme 'ftp'"),
        (["--token-file", "{token}", "--max-unauthenticated", "0"], 2, "--max-unauthenticated: must be at least 1"),
    ],
    ids=["no-token-file", "orchestrator-option-alone", "bad-executor", "bad-store", "bad-lobby"],
)
async def test_unusable_options_are_one_clear_line(
    tmp_path: Path, token_file: Path, args: list[str], code: int, message: str
) -> None:
    args = [arg.replace("{token}", str(token_file)) for arg in args]
    store = [] if "--store" in args else ["--store", "memory://"]
    process = await start(tmp_path, *store, *args, "--port", "0")
    returncode, stderr = await finish(process)
    assert returncode == code and message in stderr, stderr
    assert "Traceback" not in stderr
