"""A consumer group's lag as Redis holds it, read from outside the group (tools and tests).

A partition's lag is its end (the sequence counter: the offset the next record will get)
minus the offset the group committed there (0 when it committed none). That is what an
operator means by a group's lag, and what a test or a benchmark waits on when it asks
whether the workers are done: every record written has been processed and committed.

The workers' own ``ocstream_consumer_lag_records`` is another figure: records not yet
*fetched*. A worker fetches ahead into its buffers, so it stays near 0 under a backlog.

Synchronous (redis-py's blocking client): the callers are scripts and test harnesses that
poll between other blocking calls. Four reads of Redis however many partitions there are.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import redis

from .keys import Keyspace, is_changelog, offset_field

__all__ = ["group_lag", "group_topics"]


def group_topics(client: redis.Redis, keys: Keyspace, group: str) -> list[str]:
    """The topics ``group``'s members subscribe to, table changelogs left out: standbys read
    those, and the group commits no offset there."""
    names = (n.decode() for n in cast(set[bytes], client.smembers(keys.group(group).topics)))
    return sorted(n for n in names if not is_changelog(n))


def group_lag(
    client: redis.Redis,
    keys: Keyspace,
    group: str,
    topics: Iterable[str] | None = None,
) -> dict[tuple[str, int], int]:
    """``(topic, partition) -> records written and not committed by group``, for every
    partition of ``topics`` (default: :func:`group_topics`). A topic that was never created
    has no partitions and no entry. A committed offset past the end (a counter lost with a
    Redis that restarted empty) counts as no lag rather than a negative one."""
    names = sorted(set(topics)) if topics is not None else group_topics(client, keys, group)
    if not names:
        return {}
    counts = cast(list[bytes | None], client.hmget(keys.topics, names))
    pairs = [(t, p) for t, n in zip(names, counts, strict=True) for p in range(int(n or 0))]
    if not pairs:
        return {}
    ends = cast(list[bytes | None], client.mget([keys.sequence(t, p) for t, p in pairs]))
    committed = cast(
        list[bytes | None],
        client.hmget(keys.group(group).offsets, [offset_field(t, p) for t, p in pairs]),
    )
    return {
        pair: max(0, int(end or 0) - int(done or 0))
        for pair, end, done in zip(pairs, ends, committed, strict=True)
    }
