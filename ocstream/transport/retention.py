"""Bounded retention: Redis keeps every entry in memory, so topics must not grow forever.

The leader of each group runs :func:`apply` every ``retention_interval``.

**Non-compacted topics** are trimmed per partition (``XTRIM MINID``, which Redis 6.2 has) at the
highest of three cuts, each of which can be turned off with 0:

* by age: entries written more than ``retention_hours`` ago (field ``t``; entry ids are
  ``0-<seq>``, so the RETAIN script finds the cut by a binary search over offsets);
* by size: the oldest entries while the stream uses more than ``retention_mb`` (``MEMORY
  USAGE``, an estimate from a few sampled stream nodes);
* by count: entries beyond ``max_len`` (off by default).

The limits apply per partition: each partition is its own stream and is trimmed on its own, so
a topic holds at most ``partitions x retention_mb``, and a hot partition (blocks are keyed by
network) is not cut to a share sized for the quiet ones. The cut normally lies below every
group's committed offset; when it does not (a group fell that far behind), the entries are
trimmed anyway — memory is the harder limit — and the loss is logged with the group and
partition and counted in ``retention_trimmed_uncommitted``.

A topic's limits can be overridden in the ``retention`` hash::

    HSET ocs:retention blocks "hours=6 mb=256"   # entries=N too; unnamed limits keep defaults
    HSET ocs:retention blocks 200000             # older format: an entry cap alone (0: keep all)

**Compacted changelogs** are bounded by their key count already, except for tombstones (the
entries that record a deletion). A tombstone is removed once every member holding its partition
in the current generation (active or standby) has reported that its local store applied it
(:mod:`.local_state`), and the partition's *floor* is raised past it. A worker that later
recovers the partition from a local store older than the floor may have missed a deletion, so it
discards that store and recovers from the changelog's start (:func:`.local_state.discard_stale`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from mode import get_logger
from redis.asyncio import Redis

from . import scripts
from .keys import Keyspace, offset_field
from .metrics import METRICS
from .settings import TransportSettings
from .writer import _text

logger = get_logger(__name__)

#: Most tombstones one REMOVE_TOMBSTONES call removes (the rest go at the next run).
TOMBSTONES_PER_CALL = 1000

MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Retention of one non-compacted topic, per partition; 0 turns a limit off."""

    hours: float
    mb: float
    entries: int

    @classmethod
    def defaults(cls, settings: TransportSettings) -> Limits:
        return cls(settings.retention_hours, settings.retention_mb, settings.max_len)

    @property
    def keeps_everything(self) -> bool:
        return not (self.hours or self.mb or self.entries)

    def describe(self) -> str:
        parts = []
        if self.hours:
            parts.append(f"{self.hours:g} h")
        if self.mb:
            parts.append(f"{self.mb:g} MB")
        if self.entries:
            parts.append(f"{self.entries} entries")
        return ", ".join(parts) or "no limit"


def parse_override(text: str, defaults: Limits) -> Limits:
    """A value of the ``retention`` hash: ``"hours=6 mb=256 entries=0"`` (any subset, spaces or
    commas between; unnamed limits keep ``defaults``), or an integer alone, the older format: an
    entry cap and no other limit, so that ``0`` still keeps everything.

    >>> parse_override("hours=6", Limits(24, 64, 0))
    Limits(hours=6.0, mb=64, entries=0)

    Raises ``ValueError`` with the reason for anything else.
    """
    text = text.strip()
    if text.lstrip("-").isdigit():
        entries = int(text)
        if entries < 0:
            raise ValueError(f"an entry cap must be 0 or more, not {entries}")
        return Limits(0.0, 0.0, entries)
    values = {"hours": defaults.hours, "mb": defaults.mb, "entries": float(defaults.entries)}
    for item in text.replace(",", " ").split():
        name, sep, raw = item.partition("=")
        if not sep or name not in values:
            raise ValueError(f"{item!r} is not hours=N, mb=N or entries=N")
        try:
            number = float(raw)
        except ValueError:
            raise ValueError(f"{item!r}: {raw!r} is not a number") from None
        if number < 0:
            raise ValueError(f"{item!r}: a limit must be 0 or more")
        values[name] = number
    return Limits(values["hours"], values["mb"], int(values["entries"]))


async def topic_limits(
    client: Redis, keys: Keyspace, settings: TransportSettings
) -> tuple[Limits, dict[str, Limits]]:
    """The default limits and the valid per-topic overrides; a bad override is logged and the
    defaults apply to that topic."""
    defaults = Limits.defaults(settings)
    overrides: dict[str, Limits] = {}
    for raw_topic, raw_value in (await client.hgetall(keys.retention)).items():
        topic = _text(raw_topic)
        try:
            overrides[topic] = parse_override(_text(raw_value), defaults)
        except ValueError as exc:
            logger.warning(
                "Retention override %s = %r is invalid (%s); the defaults (%s) apply",
                topic,
                _text(raw_value),
                exc,
                defaults.describe(),
            )
    return defaults, overrides


async def apply(
    client: Redis,
    keys: Keyspace,
    settings: TransportSettings,
    topics: Mapping[str, int],
    compacted: Collection[str],
    group: str | None = None,
) -> None:
    """Apply retention to ``topics`` (name -> partition count); see the module docstring.

    Tombstones of the ``compacted`` topics are removed only with ``group``, the group whose
    members hold those changelogs and report how far they applied them.
    """
    defaults, overrides = await topic_limits(client, keys, settings)
    groups = sorted(_text(g) for g in await client.smembers(keys.groups))
    changelogs = {t: n for t, n in topics.items() if t in compacted}
    if changelogs and group is not None:
        await remove_tombstones(client, keys, settings, group, changelogs)
    for topic, count in sorted(topics.items()):
        if topic in compacted:
            continue
        limits = overrides.get(topic, defaults)
        if limits.keeps_everything:
            continue
        # Another app's changelog that this group reads: trimming it by age would delete live
        # table state. Its compaction index gives it away; its own group removes its tombstones.
        if await client.exists(*(keys.compaction_index(topic, p) for p in range(count))):
            continue
        await _trim_topic(client, keys, topic, count, limits, groups)


async def _trim_topic(
    client: Redis, keys: Keyspace, topic: str, count: int, limits: Limits, groups: list[str]
) -> None:
    args = [limits.entries, int(limits.mb * MB), int(limits.hours * 3_600_000)]
    calls: list[scripts.ScriptCall] = [
        (scripts.retain, [keys.stream(topic, p), keys.sequence(topic, p)], args)
        for p in range(count)
    ]
    results = await scripts.run_pipelined(client, calls)
    readers = [g for g in groups if await client.sismember(keys.group(g).topics, topic)]
    for p, result in enumerate(results):
        if isinstance(result, Exception):
            logger.warning("Retention of %s[%d] failed: %s", topic, p, result)
            continue
        first, cut, trimmed = (int(v) for v in result)
        METRICS.retention_trimmed += trimmed
        if not trimmed:
            continue
        field = offset_field(topic, p)
        for group in readers:
            committed = int(await client.hget(keys.group(group).offsets, field) or 0)
            lost = cut - max(committed, first)
            if lost > 0:
                METRICS.retention_trimmed_uncommitted += lost
                logger.warning(
                    "Retention of %s[%d] (%s) trimmed %d entries group %r had not "
                    "committed (committed %d, trimmed below %d)",
                    topic,
                    p,
                    limits.describe(),
                    lost,
                    group,
                    committed,
                    cut,
                )


async def remove_tombstones(
    client: Redis,
    keys: Keyspace,
    settings: TransportSettings,
    group: str,
    changelogs: Mapping[str, int],
) -> int:
    """Remove the tombstones of ``changelogs`` (name -> partition count) that every member
    holding their partition in the group's current stable generation has applied.

    A partition is skipped while one of its holders has not reported for this generation: a
    member that joined with an old local store may still need its tombstones. The REMOVE script
    checks that the generation is still the stable one, so reports of a generation that a
    rebalance has since replaced never remove anything.
    """
    group_keys = keys.group(group)
    phase, raw_gen = await client.hmget(group_keys.state, ["phase", "stable_gen"])
    if phase != b"stable" or raw_gen is None:
        return 0
    gen = int(raw_gen)
    holders: dict[str, set[str]] = {}
    for raw_member, raw_assignment in (await client.hgetall(group_keys.assignment(gen))).items():
        member = _text(raw_member)
        assignment = ConsumerProtocolMemberAssignment.decode(raw_assignment)
        for topic, partitions in assignment.assignment:
            if topic in changelogs:
                for p in partitions:
                    holders.setdefault(offset_field(topic, p), set()).add(member)
    reports: dict[str, dict[str, int]] = {}
    for raw_member, raw_report in (await client.hgetall(group_keys.applied)).items():
        report: dict[str, Any] = orjson.loads(raw_report)
        if report.get("gen") == gen:
            reports[_text(raw_member)] = report.get("applied", {})
    calls: list[scripts.ScriptCall] = []
    for topic, count in sorted(changelogs.items()):
        for p in range(count):
            field = offset_field(topic, p)
            applied = _applied_by_all(holders.get(field, set()), reports, field)
            if applied is None:
                continue
            calls.append(
                (
                    scripts.remove_tombstones,
                    [
                        keys.stream(topic, p),
                        keys.compaction_index(topic, p),
                        keys.tombstones(topic, p),
                        keys.sequence(topic, p),
                        keys.tombstone_floors,
                        group_keys.state,
                    ],
                    [
                        gen,
                        applied,
                        int(settings.tombstone_retention * 1000),
                        TOMBSTONES_PER_CALL,
                        field,
                    ],
                )
            )
    if not calls:
        return 0
    removed = 0
    for (_, call_keys, _), result in zip(
        calls, await scripts.run_pipelined(client, calls), strict=True
    ):
        if isinstance(result, Exception):
            logger.warning("Removing tombstones of %s failed: %s", call_keys[0], result)
        elif int(result) > 0:
            removed += int(result)
    if removed:
        METRICS.tombstones_removed += removed
        logger.info(
            "Removed %d changelog tombstones every holder had applied (group %r, generation %d)",
            removed,
            group,
            gen,
        )
    return removed


def _applied_by_all(
    members: set[str], reports: Mapping[str, Mapping[str, int]], field: str
) -> int | None:
    """The offset below which every holder of a partition has applied its changelog, or None
    when the partition has no holder or one of them has not vouched for it."""
    if not members:
        return None
    positions = []
    for member in members:
        position = reports.get(member, {}).get(field)
        if position is None:
            return None
        positions.append(int(position))
    return min(positions)
