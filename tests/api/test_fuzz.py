"""The REST API under a schema-driven fuzzer: schemathesis, led by the API's own /openapi.json, against a real
`dagrun serve api --orchestrate` on loopback (tests/api/schemathesis.toml holds its settings and seed).

With the token, every operation gets schema-valid and invalid data in each of schemathesis's phases: the
document's examples, boundary and type-breaking values, random cases, and chains of calls that follow the
document's links from a created run (so a real run's commands, signals and event stream are reached). Without
the token (or with a made-up one) every operation but /health must refuse with the documented 401. All of
schemathesis's checks hold throughout: no 5xx, statuses, content types, headers and bodies as documented. Then
the server still answers, stops cleanly on SIGTERM, and its log holds no traceback. Routes added later are
fuzzed without a change here.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import write_token_file

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("schemathesis.toml")
TOKEN = "fuzz-token-" + "0123456789abcdef"
LISTENING = re.compile(r"api: listening on (http://127\.0\.0\.1:\d+)")
START_TIMEOUT_S = 30.0
FUZZ_TIMEOUT_S = 240.0  # one schemathesis run takes 30-90 s on 2 cores: a hang fails here, not at CI's limit
STOP_TIMEOUT_S = 30.0


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    url: str
    log: Path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """`dagrun serve api --orchestrate` on a sqlite store and a free port, its log in a file; killed at
    teardown if the test did not stop it."""
    token_file = write_token_file(tmp_path / "token", TOKEN)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DAGRUN_STORE", None)
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "dagrun", "serve", "api", "--orchestrate", "--processes", "1", "--port", "0"]
    command += ["--store", str(tmp_path / "store"), "--token-file", str(token_file)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield Served(process, _listening_url(process, log), log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _listening_url(process: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (found := LISTENING.search(log.read_text(errors="replace"))):
        assert process.poll() is None, "the server exited:\n" + log.read_text(errors="replace")
        assert time.monotonic() < deadline, "the server did not listen in time:\n" + log.read_text(errors="replace")
        time.sleep(0.05)
    return found.group(1)


def fuzz(document: str, workdir: Path, *options: str) -> str:
    """One `schemathesis run` of every operation in `document` (a URL or a file), the one serving the document
    included (schemathesis leaves it out unless selected); its report. It fails on a failed check or a
    warning that the document is wrong."""
    if importlib.util.find_spec("schemathesis") is None:  # fail, not skip: the test extra installs it
        pytest.fail("schemathesis is not installed: pip install -e '.[test]'")
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", document]
    command += ["--include-path-regex", "^/", *options]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=FUZZ_TIMEOUT_S, check=False)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    return report


def get(url: str, *, token: str | None = None) -> bytes:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
        assert response.status == 200
        body: bytes = response.read()
        return body


@pytest.mark.slow
@pytest.mark.timeout(2 * FUZZ_TIMEOUT_S + START_TIMEOUT_S + STOP_TIMEOUT_S)
def test_the_api_holds_up_under_the_fuzzer(served: Served, tmp_path: Path) -> None:
    print(fuzz(f"{served.url}/openapi.json", tmp_path, "--header", f"Authorization: Bearer {TOKEN}"))
    document = tmp_path / "openapi.json"  # the document needs the token too
    document.write_bytes(get(f"{served.url}/openapi.json", token=TOKEN))
    # Without the token, or with one schemathesis makes up: the documented 401 everywhere but /health.
    print(fuzz(str(document), tmp_path, "--url", served.url, "--phases", "fuzzing", "--max-examples", "5"))
    assert get(f"{served.url}/health") == b'{"status":"ok"}'
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=STOP_TIMEOUT_S) == 0
    log = served.log.read_text(errors="replace")
    assert "Traceback" not in log, log
