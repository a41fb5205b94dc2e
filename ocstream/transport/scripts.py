"""Lua scripts: every state change that must be atomic runs inside Redis.

Scripts are loaded once per connection pool and called with EVALSHA; a NOSCRIPT reply (Redis was
restarted or flushed its script cache) makes :class:`LuaScript` load the script again and retry.

Only commands that exist in Redis 6.2 are used (no ``XADD key 0-*``, which is 7.0 only): dense
offsets come from a per-partition sequence counter kept next to the stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ExecAbortError, NoScriptError, ResponseError

# Appends records to one partition with dense ids 0-<seq>.
# KEYS: stream, sequence counter, compaction index, tombstones
# ARGV: compact ('1' or '0'), then per record: field count n, then n values (name, value, ...)
# Returns {first seq, last seq} of the records written.
#
# Compaction (a changelog) keeps one entry per record key: the newest. The index hash maps each
# key to its entry's id; an entry without a value is a tombstone, also listed in the tombstones
# zset by seq. The index is read and written once per call, not once per record: a Lua script
# pays for each redis.call it makes (1-2 us on top of the command), which for a busy worker's
# calls of 100 or more records was more than the commands themselves (docs/transport.md).
APPEND = """
local stream, seqkey, index, tombs = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local call = redis.call
local compact = ARGV[1] == '1'
local seq = tonumber(call('GET', seqkey) or '0')
local first = seq + 1
local keys, ids, seqs, dead = {}, {}, {}, {}
local i = 2
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  seq = seq + 1
  local id = '0-' .. seq
  if i == 2 then
    -- Only the first record can meet a stream ahead of its counter (the counter's key was
    -- lost): resume after the stream's last id. The ids after it follow the stream's.
    local res = redis.pcall('XADD', stream, id, unpack(ARGV, i + 1, i + n))
    if type(res) == 'table' and res.err then
      -- Any other refusal (out of memory, a replica, ...) is the caller's to see as it is.
      if not string.find(res.err, 'equal or smaller', 1, true) then
        return redis.error_reply(res.err)
      end
      local info = call('XINFO', 'STREAM', stream)
      for j = 1, #info, 2 do
        if info[j] == 'last-generated-id' then
          seq = tonumber(string.match(info[j + 1], '%d+-(%d+)')) + 1
        end
      end
      first = seq
      id = '0-' .. seq
      call('XADD', stream, id, unpack(ARGV, i + 1, i + n))
    end
  else
    call('XADD', stream, id, unpack(ARGV, i + 1, i + n))
  end
  if compact then
    local key, has_value = nil, false
    for j = i + 1, i + n, 2 do
      local name = ARGV[j]
      if name == 'k' then
        key = ARGV[j + 1]
      elseif name == 'v' or name == 'z' then
        has_value = true
      end
    end
    if key then
      local m = #keys + 1
      keys[m], ids[m], seqs[m], dead[m] = key, id, seq, not has_value
    end
  end
  i = i + n + 1
end
call('SET', seqkey, seq)
local count = #keys
if count == 0 then return {first, seq} end
-- Unpacked in steps: Lua's stack takes a few thousand values at most.
local STEP = 500
-- Every entry a record replaces goes: the one in the index, or an earlier one of this call.
local newest, gone = {}, {}
for s = 1, count, STEP do
  local e = math.min(s + STEP - 1, count)
  local before = call('HMGET', index, unpack(keys, s, e))
  for j = s, e do
    local key = keys[j]
    local prev = newest[key] or before[j - s + 1]
    if prev then gone[#gone + 1] = prev end
    newest[key] = ids[j]
  end
end
local sets, adds = {}, {}
for j = 1, count do
  if newest[keys[j]] == ids[j] then
    sets[#sets + 1] = keys[j]
    sets[#sets + 1] = ids[j]
    if dead[j] then
      adds[#adds + 1] = seqs[j]
      adds[#adds + 1] = ids[j]
    end
  end
end
for s = 1, #gone, STEP do
  local e = math.min(s + STEP - 1, #gone)
  call('XDEL', stream, unpack(gone, s, e))
  call('ZREM', tombs, unpack(gone, s, e))
end
for s = 1, #sets, 2 * STEP do
  call('HSET', index, unpack(sets, s, math.min(s + 2 * STEP - 1, #sets)))
end
for s = 1, #adds, 2 * STEP do
  call('ZADD', tombs, unpack(adds, s, math.min(s + 2 * STEP - 1, #adds)))
end
return {first, seq}
"""

# Retention of one partition of a non-compacted topic: the cut is the highest of the limits by
# entry count, by memory and by age; every entry below it is trimmed.
# KEYS: stream, sequence counter
# ARGV: max entries (0: none), max bytes (0: none), max age ms (0: none)
# Returns {first offset before, cut, entries trimmed}.
RETAIN = """
local stream = KEYS[1]
local max_entries, max_bytes, max_age = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local highwater = tonumber(redis.call('GET', KEYS[2]) or '0')
local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
if #head == 0 then return {highwater, highwater, 0} end
local first = tonumber(string.match(head[1][1], '%d+-(%d+)')) - 1
local cut = first
if max_entries > 0 then cut = math.max(cut, highwater - max_entries) end
if max_bytes > 0 then
  -- MEMORY USAGE samples a few stream nodes: an estimate, good enough for a limit in MB.
  local used = tonumber(redis.call('MEMORY', 'USAGE', stream) or '0')
  if used > max_bytes then
    local keep = math.floor(redis.call('XLEN', stream) * max_bytes / used)
    cut = math.max(cut, highwater - keep)
  end
end
if max_age > 0 and cut < highwater then
  -- Binary search over offsets for the first entry written at or after now - max age (entry
  -- ids are 0-<seq>, so time is only in the field t): about log2(entries) XRANGE COUNT 1.
  local now = redis.call('TIME')
  local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - max_age
  local lo, hi = cut, highwater
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local e = redis.call('XRANGE', stream, '0-' .. (mid + 1), '+', 'COUNT', 1)
    if #e == 0 then
      hi = mid
    else
      local t = 0
      local fields = e[1][2]
      for j = 1, #fields, 2 do
        if fields[j] == 't' then t = tonumber(fields[j + 1]) or 0 end
      end
      if t >= oldest then
        hi = mid
      else
        lo = math.min(tonumber(string.match(e[1][1], '%d+-(%d+)')), hi)
      end
    end
  end
  cut = math.max(cut, lo)
end
local trimmed = 0
if cut > first then trimmed = redis.call('XTRIM', stream, 'MINID', '0-' .. (cut + 1)) end
return {first, cut, trimmed}
"""

# Removes the tombstones of one changelog partition below the offset every holder of the
# partition has applied, with their compaction-index entries, and raises the partition's
# floor to the newest one removed. The newest entry of the partition is kept even when it is a
# tombstone: faust's recovery reads until the offset just below the highwater.
# KEYS: stream, compaction index, tombstones, sequence counter, floors, group state
# ARGV: stable gen the positions were read for, applied offset (tombstones below it go),
#       least age ms, max tombstones per call, floor field
# Returns the number removed, or -1 when the group is no longer at that stable generation.
REMOVE_TOMBSTONES = """
local st = redis.call('HMGET', KEYS[6], 'phase', 'stable_gen')
if st[1] ~= 'stable' or tonumber(st[2] or '0') ~= tonumber(ARGV[1]) then return -1 end
local max = tonumber(ARGV[4])
-- Tombstones written before the zset was scored by seq were scored by time in ms: re-score.
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '(1000000000000', '+inf',
                                'LIMIT', 0, max)) do
  redis.call('ZADD', KEYS[3], tonumber(string.match(id, '%d+-(%d+)')), id)
end
local newest = tonumber(redis.call('GET', KEYS[4]) or '0')
-- Offset o has seq o + 1: below the applied offset means seq <= applied.
local limit = math.min(tonumber(ARGV[2]), newest - 1)
local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', limit, 'LIMIT', 0, max)
local min_age = tonumber(ARGV[3])
local now = 0
if min_age > 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local floor, removed = 0, 0
for _, id in ipairs(ids) do
  local entries = redis.call('XRANGE', KEYS[1], id, id)
  if #entries == 1 then
    local fields = entries[1][2]
    local key, t = nil, 0
    for j = 1, #fields, 2 do
      if fields[j] == 'k' then key = fields[j + 1]
      elseif fields[j] == 't' then t = tonumber(fields[j + 1]) or 0 end
    end
    if min_age > 0 and now - t < min_age then break end
    if key and redis.call('HGET', KEYS[2], key) == id then redis.call('HDEL', KEYS[2], key) end
    redis.call('XDEL', KEYS[1], id)
  end
  redis.call('ZREM', KEYS[3], id)
  floor = math.max(floor, tonumber(string.match(id, '%d+-(%d+)')))
  removed = removed + 1
end
if floor > tonumber(redis.call('HGET', KEYS[5], ARGV[5]) or '0') then
  redis.call('HSET', KEYS[5], ARGV[5], floor)
end
return removed
"""

# A member's heartbeat, judged by Redis server time, and an attempt to take or keep the lease.
# KEYS: members, leader, state, meta ; ARGV: member, session ms
# Returns {is leader, has metadata, gen, phase, stable gen, server now ms}
HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local session = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + session, ARGV[1])
local leader = redis.call('GET', KEYS[2])
local is_leader = 0
if not leader then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', session)
  is_leader = 1
elseif leader == ARGV[1] then
  redis.call('PEXPIRE', KEYS[2], session)
  is_leader = 1
end
local st = redis.call('HMGET', KEYS[3], 'gen', 'phase', 'stable_gen')
return {is_leader, redis.call('HEXISTS', KEYS[4], ARGV[1]), st[1] or '0', st[2] or '',
        st[3] or '0', now}
"""

# Leader only: drop members whose heartbeat deadline passed. Returns the removed member ids.
# KEYS: members, meta, leader ; ARGV: leader member id
EXPIRE_MEMBERS = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return {} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, m in ipairs(gone) do
  redis.call('ZREM', KEYS[1], m)
  redis.call('HDEL', KEYS[2], m)
end
return gone
"""

# Leader only: start generation gen+1 (phase revoking) if the state is still at gen.
# KEYS: state, leader ; ARGV: leader member id, expected gen, members snapshot (json)
# Returns the new generation, or 0 when fenced.
BEGIN_REBALANCE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
if gen ~= tonumber(ARGV[2]) then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'gen', gen + 1, 'phase', 'revoking', 'members', ARGV[3],
           'started', now)
return gen + 1
"""

# A member has released every partition for generation gen.
# KEYS: state, revoked:{gen} ; ARGV: member, gen.  Returns 1, or 0 if gen is no longer current.
ACK_REVOKE = """
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
if gen ~= tonumber(ARGV[2]) or redis.call('HGET', KEYS[1], 'phase') ~= 'revoking' then
  return 0
end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], 86400)
return 1
"""

# Leader only: publish the assignment of generation gen and make it stable, with the leader's
# record of it for a leader that takes over without a rebalance (empty: none, and the old one
# goes), in the same step.
# KEYS: state, leader, assign:{gen}, members, meta, old assignment key prefix, assign-groups
# ARGV: leader member id, gen, members snapshot (json), record (json or ''), evicted count e,
#       e member ids, then member id / assignment bytes pairs
# Returns 1, or 0 when fenced.
COMPLETE_REBALANCE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local gen = tonumber(ARGV[2])
if tonumber(redis.call('HGET', KEYS[1], 'gen') or '0') ~= gen or
   redis.call('HGET', KEYS[1], 'phase') ~= 'revoking' then
  return 0
end
local evicted = tonumber(ARGV[5])
for i = 6, 5 + evicted do
  redis.call('ZREM', KEYS[4], ARGV[i])
  redis.call('HDEL', KEYS[5], ARGV[i])
end
local old = redis.call('HGET', KEYS[1], 'stable_gen')
redis.call('DEL', KEYS[3])
for i = 6 + evicted, #ARGV, 2 do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'phase', 'stable', 'stable_gen', gen, 'members', ARGV[3])
if old and tonumber(old) ~= gen then redis.call('DEL', KEYS[6] .. old) end
if ARGV[4] ~= '' then redis.call('SET', KEYS[7], ARGV[4]) else redis.call('DEL', KEYS[7]) end
return 1
"""

# Fenced commit: only the owner of the current stable generation may move offsets; during a
# rebalance the previous owner may still commit until it acknowledges the revoke.
# KEYS: state, offsets, revoked key prefix ; ARGV: member, member's gen, field, offset, ...
COMMIT = """
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
local phase = redis.call('HGET', KEYS[1], 'phase')
local stable = tonumber(redis.call('HGET', KEYS[1], 'stable_gen') or '0')
local mine = tonumber(ARGV[2])
local ok = false
if phase == 'stable' and gen == mine then
  ok = true
elseif phase == 'revoking' and stable == mine and
       redis.call('SISMEMBER', KEYS[3] .. gen, ARGV[1]) == 0 then
  ok = true
end
if not ok then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
"""


class LuaScript:
    """A script called by SHA, reloaded transparently after a NOSCRIPT reply."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, client: Redis, keys: Sequence[str], args: Sequence[Any] = ()) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)


ScriptCall = tuple[LuaScript, Sequence[str], Sequence[Any]]


async def run_pipelined(
    client: Redis,
    calls: Sequence[ScriptCall],
    *,
    atomic: bool = False,
    reads: Sequence[Sequence[Any]] = (),
) -> list[Any]:
    """Run many script calls in one round trip; exceptions are returned, not raised.

    A call answered NOSCRIPT did nothing, so after loading the scripts it is sent again.

    ``atomic``: the calls go in one ``MULTI``/``EXEC`` transaction, which Redis runs whole or
    not at all. A plain pipeline is run as it arrives: a round trip cut short (the process
    killed while the socket still held part of it) leaves the calls before the cut applied,
    and one that takes Redis over its ``maxmemory`` half way has its first calls written and
    the rest refused. In a transaction, commands sent without their ``EXEC`` are dropped, and
    Redis refuses to queue any command while out of memory, which discards the whole
    transaction: every call then gets that refusal (``docs/transport.md``, "One round trip,
    one transaction").

    ``reads``: commands (e.g. ``("PUBSUB NUMSUB", channel)``) sent ahead of the calls in the
    same round trip, and transaction; their replies come first in the list, then the calls'.
    """
    head = len(reads)
    results = await _pipelined(client, reads, calls, atomic and head + len(calls) > 1)
    missing = [i for i in range(head, len(results)) if isinstance(results[i], NoScriptError)]
    if not missing:
        return results
    for script in {calls[i - head][0] for i in missing}:
        await client.script_load(script.source)
    again = await _pipelined(
        client, (), [calls[i - head] for i in missing], atomic and len(missing) > 1
    )
    for i, res in zip(missing, again, strict=True):
        results[i] = res
    return results


async def _pipelined(
    client: Redis, reads: Sequence[Sequence[Any]], calls: Sequence[ScriptCall], transaction: bool
) -> list[Any]:
    pipe = client.pipeline(transaction=transaction)
    for command in reads:
        pipe.execute_command(*command)
    for script, keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    try:
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results
    except ResponseError as exc:
        # EXECABORT: Redis refused a command as it was queued, so it discarded the transaction
        # and none of the commands ran. redis-py raises that first refusal, from the abort.
        aborted = isinstance(exc, ExecAbortError) or isinstance(exc.__cause__, ExecAbortError)
        if not (transaction and aborted):
            raise
        return [exc] * (len(reads) + len(calls))


append = LuaScript(APPEND)
retain = LuaScript(RETAIN)
remove_tombstones = LuaScript(REMOVE_TOMBSTONES)
heartbeat = LuaScript(HEARTBEAT)
expire_members = LuaScript(EXPIRE_MEMBERS)
begin_rebalance = LuaScript(BEGIN_REBALANCE)
ack_revoke = LuaScript(ACK_REVOKE)
complete_rebalance = LuaScript(COMPLETE_REBALANCE)
commit = LuaScript(COMMIT)
