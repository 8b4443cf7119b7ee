"""What `dagrun run` checks of its executors before it records a run: every --executor URL is opened (a
malformed one, or a missing token, is exit 2 even when no step uses it), an unused one is warned of, a
remote executor that cannot be reached is exit 3 with nothing recorded, and a Redis context no live worker
serves is warned of at once, with the command that starts one."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import RedisServer, free_port, write_token_file
from tests.test_cli import dagrun, write_flow

LOCAL = {"name": "here", "steps": [{"id": "a", "script": "outputs['x'] = 1"}]}
REMOTE = {
    "name": "there",
    "steps": [{"id": "a", "executor": "remote", "context_id": "gpu", "script": "outputs['x'] = 1"}],
}


def test_an_executor_no_step_uses_is_warned_of_and_the_run_goes_on(tmp_path: Path, redis_url: str) -> None:
    token = write_token_file(tmp_path / "token", "t" * 32)
    result = dagrun(
        "run", str(write_flow(tmp_path, LOCAL)), "--executor", f"remote={redis_url}", "--token-file", str(token),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "dagrun: warning: --executor remote is used by no step of flow 'here' (its steps use: local)\n"
    )


def test_a_malformed_or_tokenless_executor_is_refused_even_when_unused(tmp_path: Path) -> None:
    flow = str(write_flow(tmp_path, LOCAL))
    token = write_token_file(tmp_path / "token", "t" * 32)
    port = dagrun(
        "run", flow, "--executor", "remote=redis://127.0.0.1:port/0", "--token-file", str(token), cwd=tmp_path
    )
    no_token = dagrun("run", flow, "--executor", "remote=redis://127.0.0.1:6379/0", cwd=tmp_path)
    scheme = dagrun("run", flow, "--executor", "remote=nosuch://x", cwd=tmp_path)

    assert (port.returncode, no_token.returncode, scheme.returncode) == (2, 2, 2)
    assert "redis://127.0.0.1:port/0" in port.stderr and "Port could not be cast" in port.stderr
    assert "needs the workers' shared token" in no_token.stderr and "--token-file" in no_token.stderr
    assert "no executor for scheme 'nosuch'" in scheme.stderr
    assert not (tmp_path / ".dagrun").exists()  # nothing was recorded, not even a store


def test_an_unreachable_remote_executor_is_exit_3_and_no_run_is_recorded(tmp_path: Path) -> None:
    token = write_token_file(tmp_path / "token", "t" * 32)
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    result = dagrun(
        "run", str(write_flow(tmp_path, REMOTE)), "--executor", f"remote={url}", "--token-file", str(token),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith(f"dagrun: cannot connect to redis at {url}")
    assert "Traceback" not in result.stderr
    assert dagrun("runs", "--json", cwd=tmp_path).stdout.strip() == "[]"


def test_a_context_no_live_worker_serves_is_warned_of_before_the_run_starts(
    tmp_path: Path, redis_server: RedisServer, redis_url: str
) -> None:
    token = write_token_file(tmp_path / "token", "t" * 32)
    url = f"{redis_url}{'&' if '?' in redis_url else '?'}queue_timeout_s=1"
    result = dagrun(
        "run", str(write_flow(tmp_path, REMOTE)), "--executor", f"remote={url}", "--token-file", str(token),
        cwd=tmp_path,
    )  # fmt: skip
    warning = (
        f"dagrun: warning: no live worker serves context 'gpu' of executor remote ({url}): its steps wait for one "
        f"(and fail when none has come for the URL's queue_timeout_s); start one with: dagrun worker redis {url} "
        "--context gpu --token-file FILE\n"
    )
    assert result.stderr.startswith(warning), result.stderr
    assert result.returncode == 1  # then, with no worker for a second, the step failed
    assert "no live worker" in result.stdout
