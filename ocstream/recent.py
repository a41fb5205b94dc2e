"""Recent notifications and journeys, read back from the ``xcm-notifications`` topic.

The topic is shared by every worker (Redis streams, one per partition), so any worker answers
for the whole group: these views do not depend on which partitions a worker holds. Each record
carries its append time (``t``, ms), its key (the journey id) and the notification JSON.

* :func:`recent_notifications`: the newest notifications over all partitions, newest first.
* :func:`journeys`: the same records grouped by journey: status, legs, the notifications.
* :func:`journey_notifications`: the notifications of one journey, from its partition.

Only what retention kept can be found, and only among the newest ``scan`` records of each
partition; ``docs/dashboard.md`` says so for users of the routes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
from redis.asyncio import Redis

from .transport.keys import Keyspace
from .transport.wire import entry_value, partition_for_key

__all__ = [
    "NOTIFICATIONS_TOPIC",
    "journey_notifications",
    "journeys",
    "recent_notifications",
    "summarize",
]

NOTIFICATIONS_TOPIC = "xcm-notifications"

#: Records read per partition for one journey's notifications.
JOURNEY_SCAN = 5000

#: Journey status by the kinds of notification seen, the first that applies.
_STATUS = (
    ("xcm.timeout", "timeout"),
    ("xcm.received", "received"),
    ("xcm.hop", "in transit"),
    ("xcm.relayed", "in transit"),
    ("xcm.sent", "sent"),
)


async def partitions_of(client: Redis, keys: Keyspace, topic: str, default: int) -> int:
    """The topic's partition count as the transport recorded it (``default`` if unknown)."""
    raw = await client.hget(keys.topics, topic)
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        return default


def _decode(entry: Sequence[Any]) -> dict[str, Any] | None:
    fields = entry[1] or {}
    raw = entry_value(fields)
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    at = fields.get(b"t")
    return {"at": int(at) if at is not None and at.isdigit() else None, "notification": value}


async def _newest(client: Redis, stream: str, count: int) -> list[dict[str, Any]]:
    entries: list[Any] = await client.xrevrange(stream, count=count) or []
    return [found for entry in entries if (found := _decode(entry)) is not None]


async def recent_notifications(
    client: Redis, keys: Keyspace, partitions: int, *, limit: int = 50, origin: str | None = None
) -> list[dict[str, Any]]:
    """The ``limit`` newest notifications of all partitions (``{"at": ms, "notification":
    …}``), newest first; with ``origin``, only those whose origin is that chain."""
    scan = min(5000, max(limit, 1) * (4 if origin else 1))
    batches = await asyncio.gather(
        *(_newest(client, keys.stream(NOTIFICATIONS_TOPIC, p), scan) for p in range(partitions))
    )
    found = [item for batch in batches for item in batch]
    if origin is not None:
        found = [item for item in found if _origin(item["notification"]) == origin]
    found.sort(key=lambda item: item["at"] or 0, reverse=True)
    return found[:limit]


def _origin(notification: Mapping[str, Any]) -> str | None:
    origin = notification.get("origin")
    return origin.get("chainId") if isinstance(origin, Mapping) else None


def _context(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def summarize(journey_id: str, items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One journey from its notifications (``{"at", "notification"}``, any order)."""
    ordered = sorted(items, key=lambda item: item["at"] or 0)
    notes = [item["notification"] for item in ordered]
    kinds = {str(n.get("type")) for n in notes}
    status = next((label for kind, label in _STATUS if kind in kinds), "unknown")
    first = notes[0] if notes else {}
    last = notes[-1] if notes else {}
    origin = _context(first.get("origin"))
    destination = _context(last.get("destination"))
    outcome = None
    if status == "received":
        received = next(n for n in notes if n.get("type") == "xcm.received")
        outcome = _context(received.get("waypoint")).get("outcome")
    legs = max((n.get("legs") or [] for n in notes), key=len, default=[])
    return {
        "journeyId": journey_id,
        "status": status,
        "outcome": outcome,
        "origin": origin.get("chainId"),
        "destination": destination.get("chainId"),
        "originBlock": origin.get("blockNumber"),
        "messageHash": origin.get("messageHash"),
        "legs": legs,
        "firstAt": ordered[0]["at"] if ordered else None,
        "lastAt": ordered[-1]["at"] if ordered else None,
        "notifications": [
            {
                "id": n.get("id"),
                "type": n.get("type"),
                "at": item["at"],
                "chainId": _context(n.get("waypoint")).get("chainId"),
                "outcome": _context(n.get("waypoint")).get("outcome"),
            }
            for item, n in zip(ordered, notes, strict=True)
        ],
    }


async def journeys(
    client: Redis, keys: Keyspace, partitions: int, *, limit: int = 20
) -> list[dict[str, Any]]:
    """The ``limit`` journeys with the most recent notifications, newest first, each summed up
    by :func:`summarize` from the notifications found among the newest records."""
    items = await recent_notifications(client, keys, partitions, limit=max(limit, 1) * 8)
    grouped: dict[str, list[dict[str, Any]]] = {}
    for item in items:  # newest first: the first ``limit`` journeys met are the most recent
        journey = item["notification"].get("journeyId")
        if not isinstance(journey, str):
            continue
        if journey not in grouped and len(grouped) >= limit:
            continue
        grouped.setdefault(journey, []).append(item)
    return [summarize(journey, found) for journey, found in grouped.items()]


async def journey_notifications(
    client: Redis, keys: Keyspace, partitions: int, journey_id: str
) -> list[dict[str, Any]]:
    """The notifications of one journey, oldest first, among the newest
    :data:`JOURNEY_SCAN` records of its partition (notifications are keyed by journey)."""
    partition = partition_for_key(journey_id.encode(), partitions)
    stream = keys.stream(NOTIFICATIONS_TOPIC, partition)
    entries: list[Any] = await client.xrevrange(stream, count=JOURNEY_SCAN) or []
    found = []
    for entry in entries:
        if (entry[1] or {}).get(b"k") != journey_id.encode():
            continue
        item = _decode(entry)
        if item is not None:
            found.append(item)
    found.reverse()
    return found
