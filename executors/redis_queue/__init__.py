"""The Redis transport: Redis Streams with one consumer group per context, one reply stream per caller.

URL: ``redis://[USER:PASSWORD@]HOST[:PORT][/DB]`` or ``rediss://`` (TLS), plus redis-py's query
parameters and these (seconds unless said): ``prefix`` (default ``dagrun:``), ``queue_timeout_s`` (30),
``visibility_timeout_s`` (60), ``heartbeat_s`` (1), ``heartbeat_ttl_s`` (5), ``reconnect_timeout_s`` (60),
``prefetch`` (8 entries).

Key layout (built only by `connection.Keys`), under the prefix:

    {prefix}q:{context_id}   request stream, group ``workers``; one entry per request:
                             {id: request id, reply: reply stream, req: request envelope, sig: MAC};
                             a worker deletes an entry (XACK + XDEL) after writing its reply
    {prefix}r:{caller_id}    a caller's reply stream; one entry per worker batch: {request id: MAC +
                             result envelope, ...} ("." marks the creation entry); trimmed by its reader,
                             deleted by `aclose`, expires 10 min after its caller stopped reading
    {prefix}w:{worker_id}    a worker's heartbeat: its WorkerStatus as JSON, PX heartbeat_ttl_s
    {prefix}c:{context_id}   a context's cancel notices: one entry {entry: request entry id, sig: MAC} per
                             request withdrawn by its caller; MAXLEN ~1000, read by every worker of the context

A request id is ``{run_id}/{step_id}#{attempt}/{n}``, n counting the caller's calls. Each MAC is an
HMAC-SHA256 keyed by the workers' shared token (`signing`): workers and callers need the token, and
refuse (log, never run or deliver) an entry not signed with it. Heartbeats are not signed.

Delivery is at least once: a worker that dies (its heartbeat expires) has its pending entries claimed
and run again by a live worker; the caller keeps the first result per request id and drops the rest.
A cancelled call deletes its entry and sends a cancel notice: the worker running it stops the step, on
a best-effort basis (`cancellation`): a worker that misses the notice runs the step to its end.
"""

from __future__ import annotations

import asyncio

from dagrun.contract.executor import ExecutorOptions
from dagrun.contract.transport import WorkerStatus
from dagrun.worker.script_worker import ScriptWorker
from executors.redis_queue.client import RedisExecutor
from executors.redis_queue.connection import Keys, QueueSettings, check_connection, open_redis
from executors.redis_queue.consumer import Consumer
from executors.redis_queue.liveness import list_workers

__all__ = ["Keys", "QueueSettings", "RedisExecutor", "RedisQueueTransport", "list_workers", "transport"]


class RedisQueueTransport:
    queues_by_context = True  # a stream per context, read by the workers serving it

    def open_executor(self, url: str, options: ExecutorOptions) -> RedisExecutor:
        """An executor for ``redis://`` URLs; ExecutorError for a bad URL or no token. It connects on its
        first call."""
        return RedisExecutor(QueueSettings.from_url(url), options)

    async def serve_worker(self, worker: ScriptWorker, stop: asyncio.Event) -> None:
        """Serve `worker.settings.contexts` from the Redis at `worker.settings.url` until `stop` is set;
        ExecutorError when the worker has no token, or (credentials hidden) when Redis cannot be reached
        at the start."""
        settings = QueueSettings.from_url(worker.settings.url)
        client = open_redis(settings)
        try:
            consumer = Consumer(worker, client, settings)
            await check_connection(client, settings)
            await consumer.serve(stop)
        finally:
            await client.aclose()

    async def list_workers(self, url: str, options: ExecutorOptions) -> list[WorkerStatus]:
        """The workers whose heartbeat is live in the Redis at `url`."""
        return await list_workers(url)


transport = RedisQueueTransport()
