"""The WebSocket and HTTP worker servers before authentication: connections that send no complete headers
are closed after the header timeout, and a flood of idle ones neither grows past the cap nor keeps the
orchestrator's steps or its /health probe out."""

from __future__ import annotations

import asyncio
import time
from typing import Literal

import aiohttp
import pytest

from dagrun.contract.executor import ExecutorOptions
from dagrun.contract.transport import open_executor
from dagrun.serving.lobby import LobbySettings
from executors.worker_client import bearer_header
from tests.executors.conftest import ServerFactory, WorkerFactory, make_request
from tests.lobby_support import HALF_HEADER, IdleSockets, closed_after_s, count_closed

TIMEOUT_S = 0.5  # the header timeout of these tests
CAP = 16

Kind = Literal["ws", "http"]
kinds = pytest.mark.parametrize("kind", ["ws", "http"])


@pytest.mark.slow
@kinds
async def test_connections_that_send_no_complete_headers_are_closed_after_the_header_timeout(
    workers: WorkerFactory, servers: ServerFactory, options: ExecutorOptions, kind: Kind
) -> None:
    worker = await workers(lobby=LobbySettings(header_timeout_s=TIMEOUT_S, max_unauthenticated=CAP))
    server = await servers(kind, worker)
    async with IdleSockets(server.port) as idle:
        silent = await idle.open(4)
        halfway = await idle.open(4, HALF_HEADER)
        waits = await asyncio.gather(*(closed_after_s(reader, TIMEOUT_S + 5) for reader in silent + halfway))
    assert min(waits) > TIMEOUT_S - 0.1, waits
    async with open_executor(server.url, options) as executor:
        assert (await executor.call(make_request("outputs['v'] = 1"))).outputs == {"v": 1}


@pytest.mark.slow
@kinds
async def test_a_flood_of_idle_connections_keeps_neither_steps_nor_health_out(
    workers: WorkerFactory, servers: ServerFactory, options: ExecutorOptions, token: str, kind: Kind
) -> None:
    worker = await workers(lobby=LobbySettings(header_timeout_s=30.0, max_unauthenticated=CAP))
    server = await servers(kind, worker)  # only the cap frees room during this test
    async with IdleSockets(server.port) as idle:
        flood = await idle.open(100) + await idle.open(100, HALF_HEADER)
        started = time.monotonic()
        health = server.url.replace("ws", "http", 1) + "/health"  # both servers answer it over plain HTTP
        async with aiohttp.ClientSession() as session, session.get(health, headers=bearer_header(token)) as response:
            assert response.status == 200
        async with open_executor(server.url, options) as executor:
            assert (await executor.call(make_request("outputs['v'] = 2"))).outputs == {"v": 2}
        assert time.monotonic() - started < 5.0  # the step starts a sandbox process: far less than 30 s
        assert await count_closed(flood, timeout_s=1.0) >= len(flood) - CAP  # the lobby never held more
