"""Publishing one block and moving the network's tip to it, as one atomic, idempotent step.

A block is appended to the ``blocks`` topic and the network's record (its tip) is written to the
registry by a single Lua script, so Redis holds either both or neither: a crash of Redis (with
AOF) or of the ingress between the two cannot leave a block published with the tip behind it
(published again on resume) or the tip ahead of its block (a lost block).

The script first reads the stored tip: if it is already at or past the block, the block was
published before and nothing is written. That makes the step safe to repeat, which matters
when Redis applied a call but its answer was lost (the connection dropped, Redis was killed just
after writing its AOF): redis-py and the follower send the call again, and the second one finds
the tip already moved and appends nothing.

The append itself is the transport's own script (:data:`ocstream.transport.scripts.APPEND`),
wrapped as a Lua function, so offsets stay dense and the wire format is the one every writer
uses.
"""

from __future__ import annotations

import time

from ..transport import scripts
from ..transport.wire import Record
from ..transport.writer import TopicWriter
from .model import VOUCHED_HEADERS
from .registry import NetworkRecord, NetworkRegistry

# KEYS: stream, sequence counter, compaction index, tombstones (as APPEND), registry hash
# ARGV: network URN, block number, record JSON, then APPEND's own ARGV (compact flag, records)
# Returns {1, first seq} when the block was appended, {0, stored tip} when it already was.
PUBLISH_BLOCK = (
    """
local registry, urn, number, record = KEYS[5], ARGV[1], tonumber(ARGV[2]), ARGV[3]
local stored = redis.call('HGET', registry, urn)
if stored then
  local ok, current = pcall(cjson.decode, stored)
  if ok and type(current) == 'table' and type(current.tip_number) == 'number'
     and current.tip_number >= number then
    return {0, current.tip_number}
  end
end
local function append(KEYS, ARGV)
"""
    + scripts.APPEND
    + """
end
local argv = {}
for i = 4, #ARGV do argv[#argv + 1] = ARGV[i] end
local appended = append({KEYS[1], KEYS[2], KEYS[3], KEYS[4]}, argv)
redis.call('HSET', registry, urn, record)
return {1, appended[1]}
"""
)

publish_block_script = scripts.LuaScript(PUBLISH_BLOCK)


async def publish_block(
    writer: TopicWriter,
    registry: NetworkRegistry,
    topic: str,
    record: NetworkRecord,
    payload: bytes,
) -> bool:
    """Append ``payload`` (the block numbered ``record.tip_number``) to ``topic``, keyed by the
    network URN, and store ``record`` as the network's record, atomically. Returns False when
    the stored tip was already at or past the block (nothing written)."""
    assert record.tip_number is not None, "a published block moves the tip to its number"
    key = record.id.encode()
    partition = await writer.partition_for(topic, key, None)
    # The decoder normalised every value: the workers need not check them again.
    fields = Record(key, payload, int(time.time() * 1000), VOUCHED_HEADERS).fields()
    keys = writer.keys
    reply = await publish_block_script(
        writer.client,
        [*keys.append_keys(topic, partition), registry.networks_key],
        [record.id, record.tip_number, record.model_dump_json(), "0", len(fields), *fields],
    )
    return int(reply[0]) == 1
