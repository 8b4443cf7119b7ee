"""How the Redis store lays runs out in Redis: key names (built only by `Keys`) and the Lua scripts that
write them; the encoding of the values they hold is in `records`.

Every write goes through a Lua script, so each call of a script is applied whole or not at all; the
scripts touch only the keys they are given.

The keys under the prefix (URL query ``?prefix=``, default ``dagrun:``):

    run:{run_id}          hash  RunRecord fields (flow, inputs as JSON; times as exact text), `member`, `seq` (last
                                event seq), `context` (JSON) with `context_token` (who wrote it last), `created_by`,
                                `command_seq` (last command seq) with `command_token` (the send that wrote it)
    steps:{run_id}        hash  step id -> its state, a JSON array (one field per step: an upsert is one HSET)
    order:{run_id}        list  step ids in the flow's order; a step first recorded later is pushed last
    logs:{run_id}         hash  JSON [step_id, attempt] -> JSON [worker_id, at, text, [[op, key, value], ...], error]:
                                each attempt's logs, context writes and error, by the write ending it (`steps`: the
                                latest's logs)
    events:{run_id}       stream entry id ``{seq}-0``, field `e`: a JSON array. XRANGE from ``{after_seq+1}-0``
                                COUNT limit is O(log n + limit), and a watcher can XREAD BLOCK on it
    commands:{run_id}     stream entry id ``{seq}-0``, field `c`: a JSON array (at, kind, step_id, values)
    lease:{run_id}        string the owner, with a PX ttl: a lease that is not renewed lapses by expiring
    epoch:{run_id}        counter, the run's lease epoch: raised by each claim that is not a renewal; every
                                write script refuses a run's ops fenced below it (`fencing`)
    notices               stream entry id ``{cursor}-0``, fields `run_id`, `kind`; trimmed to about MAX_NOTICES
    notices:last          counter, the cursor of the newest notice (so that cursors are plain integers)
    runs                  zset  every run: score created_at, member ``{creation number, 16 hex}:{run_id}`` so that
                                runs created at the same instant list the later creation first
    runs:status:{status}  zset  the same, per status (moved by the script that changes the status)
    runs:flow:{name}      zset  the same, per flow; both filters walk the smaller set and probe the other
    runs:ids              zset  every run id, all scored 0 so that ZRANGEBYLEX finds the ids with a prefix in
                                O(log n + found); runs created before it existed are added by the first such read
    runs:created          counter of creations;   writer:{id}  hash, a writer's last batch (expires after a day)
    wake:{id}             stream  one entry: a store ends its own blocking read to read more streams (expires
                                after an hour)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from dagrun.contract.states import RunStatus

DEFAULT_PREFIX = "dagrun:"

# The run hash fields that make a RunRecord, in RunRecord's order.
RUN_FIELDS = (
    "run_id", "flow_name", "status", "flow", "inputs", "created_at", "started_at", "finished_at", "error", "rerun_of",
    "parent",
)  # fmt: skip
STATUSES = tuple(RunStatus)
ORDER_WIDTH = 16  # hex digits of the creation number that starts each member of the runs sorted sets
MAX_NOTICES = 10_000  # the notices stream is trimmed to about this many (MAXLEN ~); readers rescan anyway


@dataclass(frozen=True, slots=True)
class Keys:
    """The one place key names are built; `prefix` namespaces them all."""

    prefix: str = DEFAULT_PREFIX

    @property
    def runs(self) -> str:
        return f"{self.prefix}runs"

    @property
    def run_ids(self) -> str:
        return f"{self.prefix}runs:ids"

    @property
    def run_counter(self) -> str:
        return f"{self.prefix}runs:created"

    def runs_with_status(self, status: str) -> str:
        return f"{self.prefix}runs:status:{status}"

    def runs_of_flow(self, flow_name: str) -> str:
        return f"{self.prefix}runs:flow:{flow_name}"

    def run(self, run_id: str) -> str:
        return f"{self.prefix}run:{run_id}"

    def steps(self, run_id: str) -> str:
        return f"{self.prefix}steps:{run_id}"

    def step_order(self, run_id: str) -> str:
        return f"{self.prefix}order:{run_id}"

    def logs(self, run_id: str) -> str:
        return f"{self.prefix}logs:{run_id}"

    def events(self, run_id: str) -> str:
        return f"{self.prefix}events:{run_id}"

    def commands(self, run_id: str) -> str:
        return f"{self.prefix}commands:{run_id}"

    def lease(self, run_id: str) -> str:
        return f"{self.prefix}lease:{run_id}"

    def epoch(self, run_id: str) -> str:
        return f"{self.prefix}epoch:{run_id}"

    @property
    def notices(self) -> str:
        return f"{self.prefix}notices"

    @property
    def notice_counter(self) -> str:
        return f"{self.prefix}notices:last"

    def writer(self, writer_id: str) -> str:
        return f"{self.prefix}writer:{writer_id}"

    def wake(self, store_id: str) -> str:
        return f"{self.prefix}wake:{store_id}"


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A script run by EVALSHA, loaded on the first NOSCRIPT (a new or restarted server)."""

    text: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.text.encode()).hexdigest())

    async def __call__(self, client: Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:  # NOSCRIPT: the script did not run, so running it again is safe
            await client.script_load(self.text)
            return await client.evalsha(self.sha, len(keys), *keys, *args)


# Lua for the scripts that append a notice: `notices` and `counter` are keys of the script; the counter
# numbers the entries (``{cursor}-0``), so that a cursor is a plain integer.
_NOTIFY = f"""
local function notify(notices, counter, run_id, kind)
  local cursor = redis.call('INCR', counter)
  redis.call('XADD', notices, 'MAXLEN', '~', {MAX_NOTICES}, cursor .. '-0', 'run_id', run_id, 'kind', kind)
end
"""


def notifying(text: str) -> LuaScript:
    """A script whose `text` may call ``notify(notices, counter, run_id, kind)``."""
    return LuaScript(_NOTIFY + text)


# KEYS: run hash, steps hash, step order, all runs, runs of its status, runs of its flow, creation counter,
# notices, notice counter, the run ids.
# ARGV: the RunRecord fields (numbers as text, '' for none, error after a '0'/'1' flag), a creation token,
# the state of a pending step, the notice kind, the context (JSON), the run it reruns ('' for none), the
# states of the steps it reuses (a JSON object: step id -> state text), the parent step ('' for none), then
# the step ids. Returns 1, or 0 when the id is taken by another creation (the token makes a create that was
# retried after a lost reply succeed, without a second notice).
CREATE_RUN = notifying("""
local run = KEYS[1]
if redis.call('EXISTS', run) == 1 then
  return redis.call('HGET', run, 'created_by') == ARGV[11] and 1 or 0
end
local member = string.format('%016x', redis.call('INCR', KEYS[7])) .. ':' .. ARGV[1]
redis.call('HSET', run, 'run_id', ARGV[1], 'flow_name', ARGV[2], 'status', ARGV[3], 'flow', ARGV[4],
  'inputs', ARGV[5], 'created_at', ARGV[6], 'member', member, 'seq', 0, 'context', ARGV[14], 'context_token', '',
  'created_by', ARGV[11])
if ARGV[7] ~= '' then redis.call('HSET', run, 'started_at', ARGV[7]) end
if ARGV[8] ~= '' then redis.call('HSET', run, 'finished_at', ARGV[8]) end
if ARGV[9] == '1' then redis.call('HSET', run, 'error', ARGV[10]) end
if ARGV[15] ~= '' then redis.call('HSET', run, 'rerun_of', ARGV[15]) end
if ARGV[17] ~= '' then redis.call('HSET', run, 'parent', ARGV[17]) end
local reused = cjson.decode(ARGV[16])
local states, ids = {}, {}
for i = 18, #ARGV do
  states[#states + 1] = ARGV[i]
  states[#states + 1] = reused[ARGV[i]] or ARGV[12]
  ids[#ids + 1] = ARGV[i]
  if #ids == 1000 or i == #ARGV then
    redis.call('HSET', KEYS[2], unpack(states))
    redis.call('RPUSH', KEYS[3], unpack(ids))
    states, ids = {}, {}
  end
end
for i = 4, 6 do redis.call('ZADD', KEYS[i], ARGV[6], member) end
redis.call('ZADD', KEYS[10], 0, ARGV[1])
notify(KEYS[8], KEYS[9], ARGV[1], ARGV[13])
return 1
""")

# KEYS: run hash, commands stream, notices, notice counter. ARGV: the command (a JSON array), a token, the
# run id, the notice kind. Appends the command with the run's next `command_seq` and its notice; returns
# that seq, or 0 when there is no such run. A send retried after a lost reply (same token) is not
# appended twice: it gets the seq of the first.
SEND_COMMAND = notifying("""
local last = redis.call('HMGET', KEYS[1], 'run_id', 'command_seq', 'command_token')
if not last[1] then return 0 end
if last[3] == ARGV[2] then return tonumber(last[2]) end
local seq = (tonumber(last[2]) or 0) + 1
redis.call('HSET', KEYS[1], 'command_seq', seq, 'command_token', ARGV[2])
redis.call('XADD', KEYS[2], seq .. '-0', 'c', ARGV[1])
notify(KEYS[3], KEYS[4], ARGV[3], ARGV[4])
return seq
""")

# KEYS: per run its lease and its epoch. ARGV: owner, ttl in ms, then per run the epoch `owner` held (0 for
# none). Per lease: renews it when `owner` holds it; takes a free or lapsed one, raising its epoch, or, when
# `owner` held it, keeping its epoch if nobody claimed it since. Returns per run the epoch of the lease
# claimed, 0 when it was not (another owner holds it, or took it meanwhile). See `fencing`.
CLAIM_LEASES = LuaScript("""
local claimed = {}
for i = 1, #KEYS / 2 do
  local lease, epoch_key, held = KEYS[2 * i - 1], KEYS[2 * i], tonumber(ARGV[2 + i])
  local owner = redis.call('GET', lease)
  local epoch = tonumber(redis.call('GET', epoch_key)) or 0
  claimed[i] = 0
  if owner == ARGV[1] or (not owner and held > 0 and held == epoch) then
    if epoch == 0 then epoch = redis.call('INCR', epoch_key) end
    claimed[i] = epoch
  elseif not owner and held == 0 then
    claimed[i] = redis.call('INCR', epoch_key)
  end
  if claimed[i] ~= 0 then redis.call('SET', lease, ARGV[1], 'PX', ARGV[2]) end
end
return claimed
""")

# KEYS: the lease, notices, notice counter. ARGV: owner, run id, the notice kind ('' for none). Deletes the
# lease if `owner` holds it, then appends the notice: 1; 0 (and no notice) when `owner` does not hold it.
RELEASE_LEASE = notifying("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[3] ~= '' then notify(KEYS[2], KEYS[3], ARGV[2], ARGV[3]) end
return 1
""")

# KEYS[1]: this writer's last batch; KEYS[2..n+1]: the runs-of-status sets; then six keys per run group:
# run hash, steps hash, events stream, step order, lease epoch, attempts' logs.
# ARGV: batch number, n, the n statuses (in KEYS' order); then per group its argument count, the lease epoch
# its writes carry (their fence: see `fencing`) and its ops:
#   S step_id state event                                   upsert a step, append its event
#   L field log                                             keep an attempt's logs (after the S op ending it)
#   R status started_at finished_at has_error error event   move the run, append its event
#   C expected_token new_token context                      compare-and-set the context
# Event seqs come from the run's `seq` field, here, so writers on any machine share one gap-free order.
# Returns per group 0 (the run is gone: its ops were dropped), minus the run's epoch (a later claim passed the
# fence: its ops were refused), or the replies of its C ops in order: 1, or {token, context} as they are now.
# The reply is kept per writer: a batch sent again after a lost reply (same batch number) is not applied
# twice, it gets the first reply.
WRITE_BATCH = LuaScript("""
local last = redis.call('HMGET', KEYS[1], 'batch', 'reply')
if last[1] == ARGV[1] then return cjson.decode(last[2]) end
local n = tonumber(ARGV[2])
local by_status = {}
for i = 1, n do by_status[ARGV[i + 2]] = KEYS[i + 1] end
local results = {}
local k, a = n + 1, n + 3
while a <= #ARGV do
  local run, steps, events, order = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local epoch = tonumber(redis.call('GET', KEYS[k + 5])) or 0
  local logs = KEYS[k + 6]
  local stop = a + tonumber(ARGV[a])
  local fence = tonumber(ARGV[a + 1])
  a = a + 2
  k = k + 6
  if redis.call('EXISTS', run) == 0 then
    results[#results + 1] = 0
    a = stop + 1
  elseif epoch > fence then
    results[#results + 1] = -epoch
    a = stop + 1
  else
    local first_seq = tonumber(redis.call('HGET', run, 'seq'))
    local seq = first_seq
    local cas = {}
    while a <= stop do
      local op = ARGV[a]
      if op == 'S' then
        if redis.call('HSET', steps, ARGV[a + 1], ARGV[a + 2]) == 1 then redis.call('RPUSH', order, ARGV[a + 1]) end
        seq = seq + 1
        redis.call('XADD', events, seq .. '-0', 'e', ARGV[a + 3])
        a = a + 4
      elseif op == 'L' then
        redis.call('HSET', logs, ARGV[a + 1], ARGV[a + 2])
        a = a + 3
      elseif op == 'R' then
        local status = ARGV[a + 1]
        local old = redis.call('HMGET', run, 'status', 'member', 'created_at')
        if old[1] ~= status then
          if old[1] and by_status[old[1]] then redis.call('ZREM', by_status[old[1]], old[2]) end
          redis.call('ZADD', by_status[status], old[3], old[2])
          redis.call('HSET', run, 'status', status)
        end
        if ARGV[a + 2] ~= '' then redis.call('HSETNX', run, 'started_at', ARGV[a + 2]) end
        if ARGV[a + 3] ~= '' then redis.call('HSET', run, 'finished_at', ARGV[a + 3])
        else redis.call('HDEL', run, 'finished_at') end
        if ARGV[a + 4] == '1' then redis.call('HSET', run, 'error', ARGV[a + 5])
        else redis.call('HDEL', run, 'error') end
        seq = seq + 1
        redis.call('XADD', events, seq .. '-0', 'e', ARGV[a + 6])
        a = a + 7
      else
        local now = redis.call('HMGET', run, 'context_token', 'context')
        if now[1] == ARGV[a + 1] then
          redis.call('HSET', run, 'context_token', ARGV[a + 2], 'context', ARGV[a + 3])
          cas[#cas + 1] = 1
        else
          cas[#cas + 1] = {now[1] or '', now[2] or '{}'}
        end
        a = a + 4
      end
    end
    if seq ~= first_seq then redis.call('HSET', run, 'seq', seq) end
    results[#results + 1] = cas
  end
end
redis.call('HSET', KEYS[1], 'batch', ARGV[1], 'reply', cjson.encode(results))
redis.call('EXPIRE', KEYS[1], 86400)
return results
""")

# KEYS: two runs sorted sets; ARGV[1]: limit, ARGV[2]: offset. The members of both, newest first, past the
# `offset` newest: walks the smaller one a page at a time and keeps what the other holds.
LIST_BOTH = LuaScript("""
local a, b = KEYS[1], KEYS[2]
if redis.call('ZCARD', a) > redis.call('ZCARD', b) then a, b = b, a end
local limit, skip, found, start = tonumber(ARGV[1]), tonumber(ARGV[2]), {}, 0
while #found < limit do
  local page = redis.call('ZREVRANGE', a, start, start + 255)
  if #page == 0 then break end
  local scores = redis.call('ZMSCORE', b, unpack(page))
  for i = 1, #page do
    if scores[i] then
      if skip > 0 then skip = skip - 1 elseif #found < limit then found[#found + 1] = page[i] end
    end
  end
  start = start + 256
end
return found
""")
