"""The shared token of the remote transports: a caller with another token, or none, and a worker without
one are refused clearly, and no token ever reaches an error message or a log line."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dagrun.errors import ExecutorError
from tests.executors.contract.conftest import Executors, needs
from tests.executors.contract.steps import DOUBLE, make_request
from tests.executors.contract.targets import TOKEN, Capability, RemoteTarget, Target

pytestmark = [pytest.mark.asyncio(loop_scope="module"), needs(Capability.TOKEN)]


async def test_a_caller_with_another_token_is_refused_clearly_and_no_token_is_shown(
    executors: Executors, target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert isinstance(target, RemoteTarget)
    trusted = await executors()
    assert (await trusted.call(make_request(DOUBLE, inputs={"x": 1}))).ok
    before = target.status(trusted).steps_done
    wrong = "wrong-" + TOKEN[::-1]
    stranger = await executors(token=wrong, patience_s=1)

    with pytest.raises(ExecutorError) as refused:
        await asyncio.wait_for(stranger.call(make_request(DOUBLE, inputs={"x": 1})), 15)

    message = str(refused.value)
    assert target.shared is not None
    assert "token" in message
    for phrase in target.says_token_refused(target.shared.url):
        assert phrase in message
    assert TOKEN not in message and wrong not in message
    assert target.status(trusted).steps_done == before
    assert target.refusal_logged in caplog.text
    assert TOKEN not in caplog.text and wrong not in caplog.text
    assert all(TOKEN not in record.getMessage() for record in caplog.records)
    assert not [record for record in caplog.records if record.exc_info]  # a refusal, not a traceback


async def test_an_executor_without_a_token_is_refused_at_open(executors: Executors) -> None:
    with pytest.raises(ExecutorError, match=r"(no token|needs the workers' shared token).*--token-file FILE"):
        await executors(token=None)


@needs(Capability.SERVER)
async def test_a_worker_without_a_token_refuses_to_serve(target: Target) -> None:
    assert isinstance(target, RemoteTarget)
    place = target.new_place()
    settings = target.settings(place, token=None)
    served = await target.serve_unready(place, settings)
    with pytest.raises(ExecutorError, match=r"needs (a|the workers') shared token.*--token-file FILE") as refused:
        await asyncio.wait_for(served.task, 10)
    assert f"worker {settings.worker_id}" in str(refused.value)
