"""A run's events as Server-Sent Events: ``id: <seq>``, ``event: <kind>``, ``data: <event JSON>``.

The stream ends after the event that ends the run; a run that ended with nothing after the client's
Last-Event-ID gets 204, which tells an EventSource to stop reconnecting. A producer task follows the
store into a bounded queue (a slow client slows its producer, never the server), and the writer sends a
comment line when the run is quiet, so proxies keep the connection and a gone client is noticed. Each
live stream holds a connection, a producer task and one store wait (a store's waits share one blocking
read or commit watcher), so a server follows at most `max_streams` at once and refuses more with 503 and
Retry-After. The server's shutdown ends every stream at once (`EventStreams.close_all`); clients resume
by Last-Event-ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from http import HTTPStatus

import orjson
from aiohttp import web

from dagrun.api.guard import ApiError
from dagrun.api.models import MAX_SEQ
from dagrun.cancellation import cancel_and_wait
from dagrun.contract.states import RunStatus
from dagrun.engine.control import RunControl
from dagrun.engine.views import event_json
from dagrun.errors import DagrunError
from dagrun.store.base import Event

logger = logging.getLogger(__name__)

QUEUE_EVENTS = 256  # events read ahead of a slow client
REPLAY_PAGE_EVENTS = 1000  # events read at once from an ended run
RETRY_AFTER_S = 5  # what a client refused for too many streams is told to wait
KEEPALIVE_FRAME = b": keepalive\n\n"
HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx would otherwise buffer the stream
}


def frame(event: Event) -> bytes:
    """One SSE frame; orjson escapes newlines inside strings, so `data` is one line."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.kind.encode(), orjson.dumps(event_json(event)))


def last_event_id(request: web.Request, after: int) -> int:
    """Where to resume: the Last-Event-ID header (a reconnecting EventSource sends it), else `after`."""
    header = request.headers.get("Last-Event-ID")
    if header is None or not header.strip():
        return after
    try:
        seq = int(header)
    except ValueError:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"Last-Event-ID must be an event seq, not {header[:40]!r}") from None
    if seq < 0:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"Last-Event-ID must not be negative, not {seq}")
    if seq > MAX_SEQ:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"Last-Event-ID must be at most {MAX_SEQ}, not {header.strip()[:40]}")
    return seq


class EventStreams:
    """The streams a server has open, so that its shutdown can end them instead of waiting for them."""

    def __init__(self, *, keepalive_s: float, max_streams: int) -> None:
        self.keepalive_s = keepalive_s
        self.max_streams = max_streams
        self._open: set[EventStream] = set()

    async def respond(self, request: web.Request, control: RunControl, run_id: str, after: int) -> web.StreamResponse:
        """Stream the events of `run_id` after seq `after`; RunNotFound before anything is sent."""
        run = await control.store.get_run(run_id)
        if run.status.is_terminal:
            return await _replay(request, control, run_id, after)
        if len(self._open) >= self.max_streams:
            message = f"{self.max_streams} event streams are open, the most this server follows at once; retry"
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, message, headers={"Retry-After": str(RETRY_AFTER_S)})
        stream = EventStream(control, run_id, after, keepalive_s=self.keepalive_s)
        self._open.add(stream)
        try:
            return await stream.respond(request)
        finally:
            self._open.discard(stream)

    def close_all(self) -> None:
        for stream in list(self._open):
            stream.close()


async def _replay(request: web.Request, control: RunControl, run_id: str, after: int) -> web.StreamResponse:
    """The events of an ended run after `after`, a page at a time; 204 when there are none."""
    events = await control.store.get_events(run_id, after_seq=after, limit=REPLAY_PAGE_EVENTS)
    if not events:
        return web.Response(status=HTTPStatus.NO_CONTENT)
    response = web.StreamResponse(headers=HEADERS)
    await response.prepare(request)
    try:
        while events:
            await response.write(b"".join(frame(event) for event in events))
            events = await control.store.get_events(run_id, after_seq=events[-1].seq, limit=REPLAY_PAGE_EVENTS)
        await response.write_eof()
    except ConnectionResetError:  # the client went away; nothing to tell it
        pass
    except DagrunError as exc:  # the store failed, after the status was sent: end; the client resumes
        logger.warning("run %s: event replay ended early: %s", run_id, exc)
    return response


class EventStream:
    """One client's stream of one live run."""

    def __init__(self, control: RunControl, run_id: str, after: int, *, keepalive_s: float) -> None:
        self._control = control
        self._run_id = run_id
        self._after = after
        self._keepalive_s = keepalive_s
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(QUEUE_EVENTS)  # None: the stream ends
        self._closing = False

    async def respond(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers=HEADERS)
        await response.prepare(request)
        producer = asyncio.create_task(self._produce(), name=f"dagrun-api events {self._run_id}")
        try:
            await self._send(response)
        except ConnectionResetError:  # the client went away; nothing to tell it
            logger.debug("run %s: event stream client %s went away", self._run_id, request.remote)
        finally:
            await cancel_and_wait(producer)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    def close(self) -> None:
        """End the stream soon (the server is shutting down); the client resumes by Last-Event-ID."""
        self._closing = True
        with contextlib.suppress(asyncio.QueueFull):  # full: the writer is busy and sees `_closing` next
            self._queue.put_nowait(None)

    async def _send(self, response: web.StreamResponse) -> None:
        while not self._closing:
            try:
                async with asyncio.timeout(self._keepalive_s):
                    event = await self._queue.get()  # cancelling a get loses no item
            except TimeoutError:
                await response.write(KEEPALIVE_FRAME)
                continue
            # One write for every event queued by now (a wait returns them in batches): a write per frame
            # was a third of a busy server's time.
            frames = []
            while event is not None:
                frames.append(frame(event))
                if self._queue.empty():
                    break
                event = self._queue.get_nowait()
            if frames:
                await response.write(b"".join(frames))
            if event is None:
                return

    async def _produce(self) -> None:
        try:
            last = await self._follow()
            if last is not None:
                # follow_events may end on the run's status before it read the run's last events (the
                # status was read after a flush that let them in): read them, up to the one that ends it.
                for event in await self._control.store.get_events(self._run_id, after_seq=last):
                    await self._queue.put(event)
        except Exception as exc:  # the store failed: end the stream; the client resumes where it was
            logger.warning("run %s: event stream ended early: %s", self._run_id, exc)
        await self._queue.put(None)

    async def _follow(self) -> int | None:
        """Queue the run's events as follow_events yields them; the seq of the last one queued, or None
        when that was the event that ends the run."""
        last = self._after
        async for event in self._control.follow_events(self._run_id, after_seq=self._after):
            await self._queue.put(event)
            last = event.seq
            if event.kind == "run" and RunStatus(event.status).is_terminal:
                return None
        return last
