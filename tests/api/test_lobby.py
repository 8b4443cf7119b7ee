"""The API before authentication: connections that send no complete headers are closed after the header
timeout, and a flood of idle ones neither grows past the cap nor keeps /health or token holders out."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from dagrun.api import ApiSettings
from dagrun.serving.lobby import LobbySettings
from tests.api.conftest import Api, MakeApi
from tests.lobby_support import HALF_HEADER, IdleSockets, closed_after_s, count_closed, exchange, get

TIMEOUT_S = 0.5  # the header timeout of these tests
CAP = 16


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """These tests are about connections: one store kind is enough."""
    return str(tmp_path / "dagrun.db")


async def served(make_api: MakeApi, *, header_timeout_s: float = TIMEOUT_S) -> Api:
    lobby = LobbySettings(header_timeout_s=header_timeout_s, max_unauthenticated=CAP)
    api: Api = await make_api(orchestrate=False, settings=ApiSettings(port=0, lobby=lobby))
    return api


@pytest.mark.slow
async def test_connections_that_send_no_complete_headers_are_closed_after_the_header_timeout(
    make_api: MakeApi,
) -> None:
    api = await served(make_api)
    async with IdleSockets(api.server.port) as idle:
        silent = await idle.open(4)
        halfway = await idle.open(4, HALF_HEADER)
        waits = await asyncio.gather(*(closed_after_s(reader, TIMEOUT_S + 5) for reader in silent + halfway))
    assert min(waits) > TIMEOUT_S - 0.1, waits
    status, _ = await api.call("GET", "/v1/runs")
    assert status == 200


@pytest.mark.slow
async def test_a_flood_of_idle_connections_keeps_neither_health_nor_token_holders_out(make_api: MakeApi) -> None:
    api = await served(make_api, header_timeout_s=30.0)  # only the cap frees room during this test
    async with IdleSockets(api.server.port) as idle:
        flood = await idle.open(100) + await idle.open(100, HALF_HEADER)
        started = time.monotonic()
        async with aiohttp.ClientSession(api.url) as anonymous, anonymous.get("/health") as response:
            assert response.status == 200
        status, _ = await api.call("GET", "/v1/runs")  # a new connection: the session's first request
        assert status == 200
        assert time.monotonic() - started < 2.0
        assert await count_closed(flood, timeout_s=1.0) >= len(flood) - CAP  # the lobby never held more


@pytest.mark.slow
async def test_an_authenticated_keep_alive_connection_outlives_the_header_timeout_and_a_flood(
    make_api: MakeApi,
) -> None:
    api = await served(make_api)
    reader, writer = await asyncio.open_connection("127.0.0.1", api.server.port)
    try:
        assert await exchange(reader, writer, get("/v1/runs", api.token)) == 200
        async with IdleSockets(api.server.port) as idle:
            await idle.open(CAP * 3)
            await asyncio.sleep(TIMEOUT_S * 2)  # past the header timeout, idle, with the lobby over full
            assert await exchange(reader, writer, get("/v1/runs", api.token)) == 200
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.slow
async def test_a_keep_alive_connection_without_the_token_must_send_its_next_headers_in_time(
    make_api: MakeApi,
) -> None:
    api = await served(make_api)
    reader, writer = await asyncio.open_connection("127.0.0.1", api.server.port)
    try:
        for _ in range(3):  # each answer starts a new wait, shorter than the header timeout
            assert await exchange(reader, writer, get("/health")) == 200
            await asyncio.sleep(TIMEOUT_S / 2)
        assert await closed_after_s(reader, TIMEOUT_S + 5) > TIMEOUT_S / 2 - 0.1
    finally:
        writer.close()
        await writer.wait_closed()
