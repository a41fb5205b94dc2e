"""Bounded retention: Redis keeps every entry in memory, so topics must not grow forever.

The leader of each group runs :func:`apply` every ``retention_interval``:

* a non-compacted topic keeps at most ``max_len`` entries per partition (``XTRIM MINID``, which
  Redis 6.2 has). The cut normally lies below every group's committed offset; when it does not
  (a group fell that far behind), the entries are trimmed anyway — memory is the harder limit —
  and the loss is logged with the group and partition and counted in
  ``retention_trimmed_uncommitted``.
* a compacted changelog is bounded by its key count already; tombstones older than
  ``tombstone_retention`` are removed together with their compaction-index entries.

A per-topic limit can be set in the ``retention`` hash (topic -> max entries; 0 keeps all).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from mode import get_logger
from redis.asyncio import Redis

from . import scripts
from .keys import Keyspace, offset_field
from .metrics import METRICS
from .settings import TransportSettings
from .writer import _text

logger = get_logger(__name__)

TOMBSTONES_PER_CALL = 1000


async def apply(
    client: Redis,
    keys: Keyspace,
    settings: TransportSettings,
    topics: Mapping[str, int],
    compacted: Collection[str],
) -> None:
    """Apply retention to ``topics`` (name -> partition count); see the module docstring."""
    limits = {_text(k): int(v) for k, v in (await client.hgetall(keys.retention)).items()}
    groups = sorted(_text(g) for g in await client.smembers(keys.groups))
    for topic, count in sorted(topics.items()):
        if topic in compacted:
            calls: list[scripts.ScriptCall] = [
                (
                    scripts.trim_tombstones,
                    [
                        keys.stream(topic, p),
                        keys.compaction_index(topic, p),
                        keys.tombstones(topic, p),
                    ],
                    [int(settings.tombstone_retention * 1000), TOMBSTONES_PER_CALL],
                )
                for p in range(count)
            ]
            removed = sum(
                r for r in await scripts.run_pipelined(client, calls) if isinstance(r, int)
            )
            if removed:
                METRICS.tombstones_removed += removed
                logger.info("Removed %d old tombstones from changelog %r", removed, topic)
            continue
        max_len = limits.get(topic, settings.max_len)
        if max_len > 0:
            await _trim_topic(client, keys, topic, count, max_len, groups)


async def _trim_topic(
    client: Redis, keys: Keyspace, topic: str, count: int, max_len: int, groups: list[str]
) -> None:
    highwaters = await client.mget([keys.sequence(topic, p) for p in range(count)])
    readers = []
    for group in groups:
        if await client.sismember(keys.group(group).topics, topic):
            readers.append(group)
    for p, raw in enumerate(highwaters):
        cut = int(raw or 0) - max_len  # offsets below `cut` go
        if cut <= 0:
            continue
        field = offset_field(topic, p)
        for group in readers:
            committed = int(await client.hget(keys.group(group).offsets, field) or 0)
            if committed < cut:
                lost = cut - committed
                METRICS.retention_trimmed_uncommitted += lost
                logger.warning(
                    "Retention of %s[%d] (%d entries) trims %d entries group %r has not "
                    "committed (committed %d, trimmed below %d)",
                    topic,
                    p,
                    max_len,
                    lost,
                    group,
                    committed,
                    cut,
                )
        # Offset `cut` has id 0-(cut+1): everything below it goes.
        trimmed = await client.xtrim(keys.stream(topic, p), minid=f"0-{cut + 1}", approximate=False)
        METRICS.retention_trimmed += int(trimmed or 0)
