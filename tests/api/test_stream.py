"""The event stream (Server-Sent Events): frames as the event log has them, resuming by Last-Event-ID,
the end after the run's last event, keepalive comments, and streams that end with the server."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from dagrun.api import ApiSettings, models
from tests.api.conftest import GATED, HELLO, WAIT_S, Api, MakeApi


@dataclass
class Stream:
    """What a client read from one event stream."""

    status: int
    frames: list[dict[str, Any]] = field(default_factory=list)  # {"id", "event", "data"}
    comments: int = 0
    ended: bool = False  # the server closed the stream (rather than the client stopping)

    @property
    def ids(self) -> list[int]:
        return [int(frame["id"]) for frame in self.frames]


async def read_stream(response: aiohttp.ClientResponse, stream: Stream, *, until: Any = None) -> Stream:
    """Parse frames into `stream` until the server ends it, or until a frame satisfies `until`."""
    pending: dict[str, Any] = {}
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith(":"):
            stream.comments += 1
        elif line:
            name, _, value = line.partition(": ")
            pending[name] = json.loads(value) if name == "data" else value
        elif pending:
            stream.frames.append(pending)
            if until is not None and until(pending):
                return stream
            pending = {}
    stream.ended = True
    return stream


async def stream_of(api: Api, run_id: str, *, headers: dict[str, str] | None = None, **params: str) -> Stream:
    async with asyncio.timeout(WAIT_S):
        async with api.client.get(f"/v1/runs/{run_id}/events/stream", headers=headers, params=params) as response:
            stream = Stream(response.status)
            if response.status == 200:
                assert response.headers["Content-Type"] == "text/event-stream"
                await read_stream(response, stream)
            return stream


async def test_a_live_run_streams_every_event_then_the_stream_ends(api: Api) -> None:
    run_id = await api.submit(GATED)
    async with asyncio.timeout(WAIT_S), api.client.get(f"/v1/runs/{run_id}/events/stream") as response:
        assert response.status == 200 and response.headers["Cache-Control"] == "no-cache"
        stream = await read_stream(response, Stream(200), until=lambda frame: frame["data"]["status"] == "waiting")
        await asyncio.sleep(0.5)  # quiet: the server sends keepalive comments (every 0.2 s here)
        await api.call("POST", f"/v1/runs/{run_id}/steps/approve/signal", json={"values": {"ok": 1}})
        await read_stream(response, stream)

    _, logged = await api.call("GET", f"/v1/runs/{run_id}/events")
    assert stream.ended and stream.comments >= 1
    assert [frame["data"] for frame in stream.frames] == logged["events"]
    assert stream.ids == [event["seq"] for event in logged["events"]]
    assert [frame["event"] for frame in stream.frames] == [event["kind"] for event in logged["events"]]
    assert stream.frames[-1]["data"]["kind"] == "run" and stream.frames[-1]["data"]["status"] == "succeeded"


async def test_last_event_id_resumes_a_live_stream_after_that_event(api: Api) -> None:
    run_id = await api.submit(GATED)
    waiting = await api.until_step(run_id, "approve", "waiting")
    async with asyncio.timeout(WAIT_S):
        headers = {"Last-Event-ID": str(waiting.seq - 1)}
        async with api.client.get(f"/v1/runs/{run_id}/events/stream", headers=headers) as response:
            stream = await read_stream(response, Stream(200), until=lambda frame: True)
            await api.call("POST", f"/v1/runs/{run_id}/steps/approve/signal", json={"values": {"ok": 1}})
            await read_stream(response, stream)
    assert stream.ids[0] == waiting.seq and stream.ended
    assert stream.ids == list(range(waiting.seq, waiting.seq + len(stream.ids)))


async def test_an_ended_run_replays_after_last_event_id_then_says_no_content(api: Api) -> None:
    run_id = await api.submit(HELLO)
    await api.until_ended(run_id)
    whole = await stream_of(api, run_id)
    assert whole.status == 200 and whole.ended and whole.ids == list(range(1, 9))
    resumed = await stream_of(api, run_id, headers={"Last-Event-ID": "6"}, after="1")  # the header wins
    assert resumed.ids == [7, 8] and resumed.frames == whole.frames[6:]
    assert (await stream_of(api, run_id, after="2")).ids == [3, 4, 5, 6, 7, 8]
    assert (await stream_of(api, run_id, headers={"Last-Event-ID": "8"})).status == 204  # EventSource: stop


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ("soon", "must be an event seq"),
        ("-1", "must not be negative"),
        ("19046597803243059806208", f"must be at most {models.MAX_SEQ}"),  # past 64 bits: it was a 500
    ],
)
async def test_a_bad_last_event_id_is_400(api: Api, header: str, fragment: str) -> None:
    run_id = await api.submit(HELLO)
    status, body = await api.call("GET", f"/v1/runs/{run_id}/events/stream", headers={"Last-Event-ID": header})
    assert status == 400 and fragment in body["error"]


async def test_stopping_the_server_ends_open_streams_at_once(make_api: MakeApi) -> None:
    api: Api = await make_api(settings=ApiSettings(port=0, keepalive_s=60, shutdown_timeout_s=30))
    run_id = await api.submit(GATED)
    await api.until_step(run_id, "approve", "waiting")
    async with asyncio.timeout(WAIT_S), api.client.get(f"/v1/runs/{run_id}/events/stream") as response:
        stream = await read_stream(response, Stream(200), until=lambda frame: frame["data"]["status"] == "waiting")
        async with asyncio.timeout(5):  # far below shutdown_timeout_s: the server did not wait for it
            await api.server.aclose()
            await read_stream(response, stream)
    assert stream.ended and stream.frames[-1]["data"]["status"] == "waiting"


async def test_a_client_that_goes_away_leaves_no_follower_behind(api: Api) -> None:
    run_id = await api.submit(GATED)
    await api.until_step(run_id, "approve", "waiting")
    async with asyncio.timeout(WAIT_S), api.client.get(f"/v1/runs/{run_id}/events/stream") as response:
        await read_stream(response, Stream(200), until=lambda frame: True)
    # The next keepalive write (0.2 s) finds the connection gone, and the handler stops its producer.
    async with asyncio.timeout(WAIT_S):
        while any(task.get_name().startswith("dagrun-api events") for task in asyncio.all_tasks()):
            await asyncio.sleep(0.05)  # waiting for the server's side to notice; tests only
    await api.call("POST", f"/v1/runs/{run_id}/cancel")


async def test_streams_past_the_limit_are_refused_with_retry_after(make_api: MakeApi) -> None:
    api: Api = await make_api(settings=ApiSettings(port=0, keepalive_s=0.2, max_streams=1))
    first, second = await api.submit(GATED), await api.submit(GATED)
    await api.until_step(second, "approve", "waiting")
    async with asyncio.timeout(WAIT_S), api.client.get(f"/v1/runs/{first}/events/stream") as response:
        await read_stream(response, Stream(200), until=lambda frame: True)
        async with api.client.get(f"/v1/runs/{second}/events/stream") as refused:
            assert refused.status == 503 and refused.headers["Retry-After"] == "5"
            assert "1 event streams are open" in (await refused.json())["error"]
        await api.call("POST", f"/v1/runs/{first}/cancel")
        await read_stream(response, Stream(200))
    await api.call("POST", f"/v1/runs/{second}/cancel")
    await api.until_ended(second)
    assert (await stream_of(api, second)).ended  # an ended run's replay is not a live stream
