"""What workers wrote for synthetic journeys (``benchmarks/journeys.py``: a sent, a relayed and
a received leg each), read back from Redis and checked, for the tests that run whole workers
over many of them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import orjson
import redis

from ocstream.transport import Keyspace
from ocstream.transport.wire import entry_value
from tests.streams import xrange

#: The notifications of a journey of three legs, one of each type.
EACH_ONCE = frozenset({"xcm.sent": 1, "xcm.relayed": 1, "xcm.received": 1}.items())


def notification_entries(
    client: redis.Redis, keys: Keyspace, partitions: int
) -> list[dict[str, Any]]:
    """Every entry of ``xcm-notifications``, in partition order (one written twice, twice)."""
    return [
        orjson.loads(entry_value(fields) or b"{}")
        for partition in range(partitions)
        for _, fields in xrange(client, keys.stream("xcm-notifications", partition))
    ]


def dead_letter_count(client: redis.Redis, keys: Keyspace, partitions: int) -> int:
    return sum(client.xlen(keys.stream("xcm-dead-letters", p)) for p in range(partitions))


def assert_each_journey_notified_once(notes: Iterable[dict[str, Any]], journeys: int) -> None:
    """``notes`` (one per notification id) name exactly ``journeys`` journeys, and each has
    one ``xcm.sent``, one ``xcm.relayed`` and one ``xcm.received``."""
    by_journey: dict[str, Counter[str]] = {}
    for note in notes:
        by_journey.setdefault(note["journeyId"], Counter())[note["type"]] += 1
    assert len(by_journey) == journeys
    kinds = Counter(frozenset(types.items()) for types in by_journey.values())
    assert kinds == {EACH_ONCE: journeys}, kinds
