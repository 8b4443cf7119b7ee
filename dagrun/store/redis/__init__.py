"""The Redis store: runs shared by many machines, written in batches of Lua script calls.

- `store`: RedisStore, the Store itself: queues writes, flushes before reads;
- `connection`: the clients, and where a Redis error becomes a StoreError;
- `layout`: key names, the Lua scripts that write them, and the values' encoding;
- `writer`: the writer task, sending queued ops in batches, one script call each;
- `wait`: one blocking read that serves every wait;
- `query`: reads of runs, steps, contexts and events;
- `control`: commands, notices and leases.
"""
