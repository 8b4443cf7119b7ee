"""`dagrun serve api` as an operator runs it: a real process that says where it listens, serves and drives
runs, stops cleanly on SIGTERM, and exits with one line when it cannot start."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.api.conftest import HELLO, WAIT_S

ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"api: listening on (http://127\.0\.0\.1:\d+)")


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
    path = tmp_path / "token"
    path.write_text("serve-test-token-0123456789\n")
    return path


@pytest.fixture
async def served(tmp_path: Path, token_file: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, str, list[str]]]:
    """`serve api --orchestrate` on a sqlite store and port 0: the process, its URL, the lines it logged."""
    process = await start(
        tmp_path, "--store", str(tmp_path / "store"), "--token-file", str(token_file), "--port", "0",
        "--orchestrate", "--processes", "1",
    )  # fmt: skip
    lines: list[str] = []
    try:
        async with asyncio.timeout(WAIT_S):
            assert process.stderr is not None
            while not (found := LISTENING.search(lines[-1] if lines else "")):
                line = await process.stderr.readline()
                assert line, "the server exited:\n" + "".join(lines)
                lines.append(line.decode())
        yield process, found.group(1), lines
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_it_serves_drives_runs_and_stops_cleanly_on_sigterm(
    served: tuple[asyncio.subprocess.Process, str, list[str]], token_file: Path
) -> None:
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
    assert token not in log and "Traceback" not in log


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
        (["--token-file", "missing-token"], 3, "cannot read token file 'missing-token'"),
        (["--token-file", "{token}", "--processes", "2"], 2, "--processes: only applies with --orchestrate"),
        (["--token-file", "{token}", "--orchestrate", "--executor", "remote"], 2, "'remote' is not NAME=URL"),
        (["--token-file", "{token}", "--store", "ftp://x"], 3, "unsupported store URL scheme 'ftp'"),
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
