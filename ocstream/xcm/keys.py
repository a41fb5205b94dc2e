"""How ``xcm-legs`` records are keyed (docs/matching.md §3).

Every leg is keyed by the chain it concerns, where that chain's matching state lives, except a
sent leg that nothing links to a receipt of its block (no ``continues``, no ``hop_candidates``)
and that has an id. Such a leg can only start a journey of its own, which reads nothing of its
chain's state (``Engine._on_sent``), so it is keyed by its origin and a shard of its id instead,
and a busy origin's new journeys are matched on every partition rather than on its chain's one.

The shard is picked from the id the send is known by, its topic or else its hash, so sends that
share an id share a key: identical messages from one origin reach their destination's partition
in the order they were sent, which the FIFO of identical journeys there relies on (XCM.md §9.9),
and a re-delivery of a leg meets its ``seen`` entry. Each origin has one shard key per partition
of the topic, chosen through the transport's partitioner, so its sends spread evenly and a sweep
sends at most one record per partition and origin.
"""

from __future__ import annotations

import zlib
from functools import lru_cache
from typing import Any

from ocstream.transport.wire import partition_for_key

from .legs import NO_HASH, SentLeg

__all__ = ["leg_key", "spread_key", "spread_origin", "spreadable"]

SEPARATOR = "#"  # not in a network URN


@lru_cache(maxsize=4096)
def _shard_keys(origin: str, partitions: int) -> tuple[str, ...]:
    """One key per partition for ``origin``'s spread sends: ``{origin}#{n}``, with the smallest
    ``n`` that lands on each partition."""
    keys: list[str | None] = [None] * partitions
    missing, n = partitions, 0
    while missing:
        key = f"{origin}{SEPARATOR}{n}"
        partition = partition_for_key(key.encode(), partitions)
        if keys[partition] is None:
            keys[partition] = key
            missing -= 1
        n += 1
    return tuple(k for k in keys if k is not None)


def spread_key(origin: str, message_id: str, partitions: int) -> str:
    """The key of a send from ``origin`` known by ``message_id``, on a topic of ``partitions``."""
    return _shard_keys(origin, partitions)[zlib.crc32(message_id.encode()) % partitions]


def spread_origin(key: str) -> str | None:
    """The origin of a spread key; None for a chain's own key."""
    origin, separator, _ = key.partition(SEPARATOR)
    return origin if separator else None


def spreadable(leg: SentLeg) -> bool:
    """Whether a sent leg can only start a journey and has an id to be spread by: nothing links
    it to a receipt of its block, and its bytes were read."""
    return leg.continues is None and not leg.hop_candidates and leg.message_hash != NO_HASH


def leg_key(leg: Any, partitions: int) -> str:
    """The ``xcm-legs`` key of a leg, on a topic of ``partitions`` partitions."""
    kind = leg.kind
    if kind == "sent":
        if spreadable(leg):
            return spread_key(leg.origin, leg.topic or leg.message_hash, partitions)
        return str(leg.origin)
    if kind in ("received", "bridge"):
        return str(leg.chain)
    return str(leg.recipient)
