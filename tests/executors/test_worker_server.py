"""What the WebSocket and HTTP worker servers share (`dagrun/worker/server.py`), seen in their logs."""

from __future__ import annotations

import logging
from typing import Literal

import pytest

from tests.executors.conftest import ServerFactory, WorkerFactory


@pytest.mark.parametrize(("kind", "logger"), [("ws", "executors.websocket.server"), ("http", "executors.http.server")])
async def test_each_worker_server_logs_under_its_own_name(
    workers: WorkerFactory,
    servers: ServerFactory,
    caplog: pytest.LogCaptureFixture,
    kind: Literal["ws", "http"],
    logger: str,
) -> None:
    caplog.set_level(logging.INFO)
    server = await servers(kind, await workers(worker_id="w-named"))
    await server.aclose()
    lines = [(r.name, r.levelno, r.getMessage()) for r in caplog.records if r.getMessage().startswith("worker w-named")]
    assert (logger, logging.INFO, f"worker w-named listening on {server.url}") in lines
    assert (logger, logging.INFO, f"worker w-named: {server.PROTOCOL} server closed") in lines
