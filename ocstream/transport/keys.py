"""Every Redis key the transport uses, in one place.

The layout is a contract shared with tools outside faust (the ingress, tests, operators' scripts):

=====================================  ======  ==================================================
key                                    type    content
=====================================  ======  ==================================================
``{p}t:{topic}:{n}``                   stream  partition ``n`` of ``topic``; entry ids ``0-<seq>``
``{p}o:{topic}:{n}``                   string  last sequence number handed out for that partition
``{p}ci:{topic}:{n}``                  hash    changelog compaction index: record key -> entry id
``{p}tomb:{topic}:{n}``                zset    changelog tombstone entry ids, scored by their seq
``{p}topics``                          hash    topic -> partition count
``{p}retention``                       hash    topic -> retention limits (``retention.py``)
``{p}tombfloor``                       hash    ``topic\\x1fpartition`` -> 1 + offset of the
                                               newest tombstone removed from that changelog
``{p}groups``                          set     consumer group ids (for retention bookkeeping)
``{p}g:{group}:offsets``               hash    ``topic\\x1fpartition`` -> next offset (fenced)
``{p}g:{group}:topics``                set     topics the group subscribes to
``{p}g:{group}:members``               zset    member id -> heartbeat deadline (server ms)
``{p}g:{group}:meta``                  hash    member id -> faust assignor metadata
``{p}g:{group}:applied``               hash    member id -> JSON: how far its table stores
                                               applied each changelog partition it holds
``{p}g:{group}:leader``                string  leader lease (member id, PX = session timeout)
``{p}g:{group}:state``                 hash    gen, phase, stable_gen, members, started
``{p}g:{group}:revoked:{gen}``         set     members that released their partitions for gen
``{p}g:{group}:assign:{gen}``          hash    member id -> faust assignment bytes
=====================================  ======  ==================================================

Offsets are dense: the entry with id ``0-<seq>`` has offset ``seq - 1``, so the first entry of a
partition is offset 0 and the highwater (next offset to be written) equals the last seq.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "ocs:"

#: Separates topic and partition in the committed-offsets hash (a byte no topic name contains).
OFFSET_FIELD_SEP = "\x1f"


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Builds key names under one prefix (``ocs:`` unless configured)."""

    prefix: str = DEFAULT_PREFIX

    # -- topics
    def stream(self, topic: str, partition: int) -> str:
        return f"{self.prefix}t:{topic}:{partition}"

    def sequence(self, topic: str, partition: int) -> str:
        return f"{self.prefix}o:{topic}:{partition}"

    def compaction_index(self, topic: str, partition: int) -> str:
        return f"{self.prefix}ci:{topic}:{partition}"

    def tombstones(self, topic: str, partition: int) -> str:
        return f"{self.prefix}tomb:{topic}:{partition}"

    def append_keys(self, topic: str, partition: int) -> list[str]:
        """The keys an append to a partition touches, in the order the append scripts take
        them (``KEYS[1..4]``): stream, sequence, compaction index, tombstones."""
        return [
            self.stream(topic, partition),
            self.sequence(topic, partition),
            self.compaction_index(topic, partition),
            self.tombstones(topic, partition),
        ]

    @property
    def topics(self) -> str:
        return f"{self.prefix}topics"

    @property
    def retention(self) -> str:
        return f"{self.prefix}retention"

    @property
    def tombstone_floors(self) -> str:
        return f"{self.prefix}tombfloor"

    @property
    def groups(self) -> str:
        return f"{self.prefix}groups"

    # -- consumer groups
    def group(self, group: str) -> GroupKeys:
        return GroupKeys(f"{self.prefix}g:{group}:")


@dataclass(frozen=True, slots=True)
class GroupKeys:
    base: str

    @property
    def offsets(self) -> str:
        return self.base + "offsets"

    @property
    def topics(self) -> str:
        return self.base + "topics"

    @property
    def members(self) -> str:
        return self.base + "members"

    @property
    def meta(self) -> str:
        return self.base + "meta"

    @property
    def applied(self) -> str:
        return self.base + "applied"

    @property
    def leader(self) -> str:
        return self.base + "leader"

    @property
    def state(self) -> str:
        return self.base + "state"

    def revoked(self, generation: int) -> str:
        return f"{self.base}revoked:{generation}"

    def assignment(self, generation: int) -> str:
        return f"{self.base}assign:{generation}"

    @property
    def assigned_groups(self) -> str:
        """The leader's record of its last assignment per copartitioned group, for a leader
        that takes over without a rebalance (``LoadAwareAssignor.record``)."""
        return self.base + "assign-groups"


#: What faust's table changelog topics end with (``<app id>-<table>-changelog``).
CHANGELOG_SUFFIX = "-changelog"


def is_changelog(topic: str) -> bool:
    """Whether ``topic`` is a table's changelog by its name: how a member knows the changelog
    of a table it does not have itself (another role's, another app's)."""
    return topic.endswith(CHANGELOG_SUFFIX)


def offset_field(topic: str, partition: int) -> str:
    return f"{topic}{OFFSET_FIELD_SEP}{partition}"


def parse_offset_field(field: str | bytes) -> tuple[str, int] | None:
    """The topic and partition an :func:`offset_field` names, or None for a field that is not
    one (a tool reading a group's offsets hash should skip what it does not understand)."""
    name = field.decode() if isinstance(field, bytes) else field
    topic, sep, partition = name.rpartition(OFFSET_FIELD_SEP)
    if not sep or not topic or not partition.isdigit():
        return None
    return topic, int(partition)
