"""Fixtures for the REST API suites: a real ApiServer on 127.0.0.1 (port 0) over a sqlite or a redis store,
with an in-process Orchestrator serving the same store so that submitted runs really run.

`make_api` is a factory (custom settings, or no orchestrator); it closes what it made at teardown, the
client first, then the server, the orchestrator and the store. `api` is one made with the defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dagrun.api import ApiServer, ApiSettings
from dagrun.api.routes import Route, RunHandlers
from dagrun.api.stream import EventStreams
from dagrun.engine.control import RunControl
from dagrun.engine.orchestrator import Orchestrator
from dagrun.store import MemoryStore, Store, open_store
from dagrun.store.base import Event

WAIT_S = 30.0  # for a run to reach a state; far above what it takes

HELLO = {
    "name": "hello",
    "inputs": {"who": "world"},
    "steps": [
        {"id": "greet", "script": "outputs['greeting'] = 'hello, ' + inputs['who']",
         "inputs": {"who": "${flow.who}"}, "outputs": ["greeting"]},
        {"id": "shout", "depends_on": ["greet"], "script": "outputs['shouted'] = inputs['text'].upper()",
         "inputs": {"text": "${steps.greet.greeting}"}},
    ],
}  # fmt: skip

GATED = {
    "name": "gated",
    "steps": [
        {"id": "build", "script": "outputs['n'] = 41", "outputs": ["n"]},
        {"id": "approve", "depends_on": ["build"], "wait_for": {"fields": ["ok"]}},
        {"id": "ship", "depends_on": ["approve"], "script": "outputs['n'] = inputs['n'] + 1",
         "inputs": {"n": "${steps.build.n}"}},
    ],
}  # fmt: skip

FAILING = {
    "name": "failing",
    "steps": [
        {"id": "boom", "script": "fail('no luck')"},
        {"id": "after", "depends_on": ["boom"], "script": "outputs['x'] = 1"},
        {"id": "alone", "script": "outputs['x'] = 2"},
    ],
}


@dataclass
class Api:
    """A served API and a client session that sends its token."""

    kind: str
    server: ApiServer
    store: Store
    client: aiohttp.ClientSession
    token: str

    @property
    def url(self) -> str:
        return self.server.url

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.client.request(method, path, **kwargs) as response:
            body = await response.json() if response.content_type == "application/json" else await response.text()
            return response.status, body

    async def submit(self, flow: dict[str, Any], inputs: dict[str, Any] | None = None) -> str:
        status, body = await self.call("POST", "/v1/runs", json={"flow": flow, "inputs": inputs or {}})
        assert status == 201, body
        run_id: str = body["run_id"]
        return run_id

    async def until(self, run_id: str, predicate: Callable[[Event], bool]) -> Event:
        """The first event of the run that satisfies `predicate` (read from the store, not the API)."""
        async with asyncio.timeout(WAIT_S):
            async for event in RunControl(self.store).follow_events(run_id):
                if predicate(event):
                    return event
        raise AssertionError(f"run {run_id} ended without the awaited event")

    async def until_step(self, run_id: str, step_id: str, status: str) -> Event:
        return await self.until(run_id, lambda e: e.step_id == step_id and e.status == status)

    async def until_ended(self, run_id: str) -> dict[str, Any]:
        async with asyncio.timeout(WAIT_S):
            await RunControl(self.store).wait_for_completion(run_id)
        status, body = await self.call("GET", f"/v1/runs/{run_id}")
        assert status == 200, body
        return dict(body)


def route_table() -> list[Route]:
    """The API's routes, as create_app registers them."""
    return RunHandlers(RunControl(MemoryStore()), None, EventStreams(keepalive_s=1, max_streams=1)).routes()


@pytest.fixture
def token() -> str:
    return "api-" + secrets.token_hex(16)


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")  # only redis tests start the session's redis-server
        return url
    return str(tmp_path / "dagrun.db")


MakeApi = Callable[..., Any]


@pytest.fixture
async def make_api(store_url: str, token: str) -> AsyncIterator[MakeApi]:
    async with contextlib.AsyncExitStack() as stack:

        async def make(*, orchestrate: bool = True, settings: ApiSettings | None = None) -> Api:
            store = await stack.enter_async_context(open_store(store_url))
            orchestrator = None
            if orchestrate:
                orchestrator = await stack.enter_async_context(Orchestrator(store, processes=1))
                halt = asyncio.Event()
                serving = asyncio.create_task(orchestrator.serve(halt))
                stack.push_async_callback(_stop, halt, serving)
            control = orchestrator.control if orchestrator else RunControl(store)
            settings = settings or ApiSettings(port=0, keepalive_s=0.2)
            server = ApiServer(control, token=token, orchestrator=orchestrator, settings=settings)
            await stack.enter_async_context(server)
            headers = {"Authorization": f"Bearer {token}"}
            client = await stack.enter_async_context(aiohttp.ClientSession(server.url, headers=headers))
            return Api("redis" if store_url.startswith("redis") else "sqlite", server, store, client, token)

        yield make


async def _stop(halt: asyncio.Event, serving: asyncio.Task[None]) -> None:
    halt.set()
    await serving


@pytest.fixture
async def api(make_api: MakeApi) -> Api:
    made: Api = await make_api()
    return made
