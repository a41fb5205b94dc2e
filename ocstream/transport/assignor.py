"""Partition assignment that also weighs how much traffic each partition carries.

faust's ``PartitionAssignor`` deals the partitions of each copartitioned group out by count:
every member gets about as many partitions as the others, the assignment is sticky, and a
member's standby is promoted when it loses an active. That is balanced when every partition
carries the same traffic. Keyed topics rarely do: the matcher keys a destination's work by its
chain, and a dozen chains hashed onto eight partitions leave some partitions with three chains
and others with none (docs/benchmarks.md, "Issue 14, fourteenth round": one of two workers did
0.6 of the work). Partition counts alone cannot see that.

:class:`LoadAwareAssignor` runs faust's assignment first, then swaps active partitions between
the busiest and the least busy member of a group while that narrows the gap between them by a
worthwhile amount (:data:`MIN_GAIN` of a member's fair share). Swaps keep each member's
partition count, so faust's capacity rules still hold; where standby replicas are on, a swap
is made only when the two members hold each other's moved partitions as standbys (they then
trade those too, and a promoted standby is warm), or neither does.

The weight of a partition is the number of records written to it, summed over the group's
topics (from the sequence counters the transport keeps anyway, ``{p}o:{topic}:{n}``). The group
leader reads them before it assigns (``group.py``). A fresh deployment has no traffic to weigh,
so its first assignment is faust's; the leader then looks at it every few seconds until it has
weighed enough traffic, and checks a stable group every ``load_check_interval``
(:meth:`LoadAwareAssignor.uneven`), starting a rebalance when the traffic made the assignment
clearly uneven (:data:`REBALANCE_GAIN`). When to look, which records to weigh and how many
uneven checks make a rebalance is decided by ``traffic.py`` (``TrafficWatch``).

``OCSTREAM_TRANSPORT_ASSIGNMENT=sticky`` turns the weighing off (faust's assignment alone).

**Tables without standbys.** faust gives every table a standby replica per
``table_standby_replicas``. A table marked with :func:`without_standbys` gets none: its
changelog partitions are dealt to their actives only, and a member that takes one over
recovers it from the changelog. That suits a table whose entries live seconds (the XCM
matcher's waiting legs): its compacted changelog holds few live entries, so recovering it
costs little, while a standby would apply every write and every deletion of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from faust.assignor import PartitionAssignor
from faust.assignor.client_assignment import ClientAssignment, CopartitionedAssignment
from faust.assignor.cluster_assignment import ClusterAssignment
from faust.assignor.copartitioned_assignor import CopartitionedAssignor
from mode import get_logger

from .metrics import METRICS

__all__ = [
    "MIN_GAIN",
    "MIN_RECORDS",
    "REBALANCE_GAIN",
    "STANDBYS_ATTRIBUTE",
    "Balance",
    "LoadAwareAssignor",
    "balance",
    "group_weights",
    "recent_or_all",
    "records_since",
    "unreplicated_changelogs",
    "without_standbys",
]

logger = get_logger(__name__)

#: The attribute :func:`without_standbys` sets on a table (False: no standby replicas).
STANDBYS_ATTRIBUTE = "ocstream_standbys"


def without_standbys(table: Any) -> Any:
    """Mark a faust table so that no member holds a standby replica of it, whatever
    ``table_standby_replicas`` says (see the module's docstring); returns the table. Every
    worker of an app must mark the same tables: the group leader's marks are the ones that
    count. A global table keeps its copies on every member (faust's standbys are how it has
    them), marked or not."""
    setattr(table, STANDBYS_ATTRIBUTE, False)
    return table


def unreplicated_changelogs(tables: Iterable[Any]) -> set[str]:
    """The changelog topics of the tables marked by :func:`without_standbys`."""
    return {
        table.changelog_topic.get_topic_name()
        for table in tables
        if getattr(table, STANDBYS_ATTRIBUTE, True) is False and not table.is_global
    }


#: A swap is made only if it narrows the gap between the two members by at least this share of
#: a member's fair load (total / members): small gains are not worth moving table state.
MIN_GAIN = 0.05

#: The group leader starts a rebalance of a stable group on traffic alone when weighing it
#: would lower the busiest member's share of a group's records by at least this much (0.1: from
#: 0.6 of two members' records to 0.5), and the group carried at least :data:`MIN_RECORDS` per
#: partition. A rebalance stops every member for a moment and moves table state, so only a
#: clear gain is worth one.
REBALANCE_GAIN = 0.1
MIN_RECORDS = 100


@dataclass(frozen=True, slots=True)
class Balance:
    """What :func:`balance` did to one group: swaps made, and the busiest member's share of
    the group's weight before and after (1 / members is an even split)."""

    swaps: int
    busiest_before: float
    busiest_after: float


def group_weights(
    topics: Iterable[str], partitions: int, load: Mapping[str, Sequence[int]]
) -> list[int]:
    """Per partition of a copartitioned group: the records written to it over the group's
    topics (topics missing from ``load`` count nothing)."""
    weights = [0] * partitions
    for topic in topics:
        counts = load.get(topic)
        if counts is None:
            continue
        for partition, count in enumerate(counts[:partitions]):
            weights[partition] += count
    return weights


def records_since(
    load: Mapping[str, Sequence[int]], then: Mapping[str, Sequence[int]]
) -> dict[str, list[int]]:
    """Per topic and partition, the records written between two readings of the counters. A
    partition the first reading did not have (the topic grew) counts from 0; a counter that
    went back (a topic deleted and made again) counts as nothing written."""
    recent: dict[str, list[int]] = {}
    for topic, counts in load.items():
        before = then.get(topic, ())
        recent[topic] = [
            max(0, n - (before[p] if p < len(before) else 0)) for p, n in enumerate(counts)
        ]
    return recent


def recent_or_all(
    topics: Iterable[str],
    partitions: int,
    load: Mapping[str, Sequence[int]],
    recent: Mapping[str, Sequence[int]] | None,
) -> list[int]:
    """The weights to deal a group by: the records written since the leader's last check
    (``recent``) when they are at least :data:`MIN_RECORDS` per partition, so that a change
    in traffic shows within one check; else every record written (``load``)."""
    if recent is not None:
        window = group_weights(topics, partitions, recent)
        if sum(window) >= MIN_RECORDS * partitions:
            return window
    return group_weights(topics, partitions, load)


def _busiest(members: Sequence[CopartitionedAssignment], weights: Sequence[int]) -> float:
    total = sum(weights)
    return max(sum(weights[p] for p in m.actives) for m in members) / total


def balance(
    members: Sequence[CopartitionedAssignment],
    weights: Sequence[int],
    *,
    min_gain: float = MIN_GAIN,
) -> Balance:
    """Swap active partitions between members of one copartitioned group until no swap between
    the busiest and the least busy member narrows their gap by ``min_gain`` of a fair share.
    Changes ``members`` in place; every member keeps its number of actives and of standbys."""
    total = sum(weights)
    if len(members) < 2 or total <= 0:
        return Balance(0, 1.0 if members else 0.0, 1.0 if members else 0.0)
    before = _busiest(members, weights)
    threshold = min_gain * total / len(members)
    swaps = 0
    # Every swap lowers the sum of the squared loads (below), so the search ends; the bound only
    # guards against a mistake.
    for _ in range(len(weights) * len(members)):
        loads = [sum(weights[p] for p in m.actives) for m in members]
        heavy = max(range(len(members)), key=loads.__getitem__)
        light = min(range(len(members)), key=loads.__getitem__)
        gap = loads[heavy] - loads[light]
        # The swap that leaves the narrowest gap, among those that narrow it by the threshold.
        # Moving weight ``moved`` (0 < moved < gap) from heavy to light lowers the sum of the
        # squared loads, so the search cannot cycle.
        choices = [
            (abs(gap - 2 * (weights[p] - weights[q])), p, q)
            for p in sorted(members[heavy].actives)
            for q in sorted(members[light].actives)
            if weights[p] > weights[q] and _standbys_allow(members[heavy], members[light], p, q)
        ]
        best = min(choices, default=None)
        if best is None or best[0] >= gap or best[0] > gap - threshold:
            break
        _swap(members[heavy], members[light], best[1], best[2])
        swaps += 1
    return Balance(swaps, before, _busiest(members, weights))


def _standbys_allow(
    heavy: CopartitionedAssignment, light: CopartitionedAssignment, p: int, q: int
) -> bool:
    """Whether ``p`` (heavy's) and ``q`` (light's) can trade places without a member holding a
    partition both as active and as standby, and without changing anyone's standby count."""
    return (p in light.standbys) == (q in heavy.standbys)


def _swap(heavy: CopartitionedAssignment, light: CopartitionedAssignment, p: int, q: int) -> None:
    heavy.actives.remove(p)
    light.actives.remove(q)
    heavy.actives.add(q)
    light.actives.add(p)
    if p in light.standbys:  # then q is one of heavy's standbys (_standbys_allow)
        light.standbys.remove(p)
        heavy.standbys.remove(q)
        light.standbys.add(q)
        heavy.standbys.add(p)


class LoadAwareAssignor(PartitionAssignor):
    """faust's assignor, with :func:`balance` applied to each copartitioned group.

    ``load`` (topic -> records written per partition) and ``recent`` (the same, since the
    leader's last check) are what :meth:`assign_weighed` weighs, for the span of one
    assignment; None (or no records yet) leaves faust's assignment as it is.
    """

    load: Mapping[str, Sequence[int]] | None = None
    recent: Mapping[str, Sequence[int]] | None = None

    def __init__(self, app: Any, replicas: int = 0) -> None:
        super().__init__(app, replicas=replicas)
        #: The last assignment this assignor made, per group: its partition count and each
        #: member's (actives, standbys), for :meth:`uneven`.
        self.last_groups: dict[tuple[str, ...], tuple[int, list[tuple[set[int], set[int]]]]] = {}
        #: The most records per partition some group of the last assignment has been weighed
        #: against, when it was made or by :meth:`uneven` since (0: made before any traffic).
        #: How far the leader trusts the assignment (``traffic.TrafficWatch.stage``).
        self.weighed_records = 0.0

    def _weighed_against(self, weights: Sequence[int], partitions: int) -> None:
        self.weighed_records = max(self.weighed_records, sum(weights) / partitions)

    def assign_weighed(
        self,
        cluster: Any,
        member_metadata: Any,
        load: Mapping[str, Sequence[int]],
        recent: Mapping[str, Sequence[int]] | None,
    ) -> Any:
        """faust's :meth:`assign`, with ``load`` and ``recent`` weighed, and forgotten after:
        an assignment made without them is faust's alone."""
        self.load, self.recent = load, recent
        try:
            return self.assign(cluster, member_metadata)
        finally:
            self.load = self.recent = None

    def record(self) -> dict[str, Any]:
        """The last assignment, per group, as JSON-ready data (:meth:`adopt` reads it)."""
        return {
            "weighed_records": self.weighed_records,
            "groups": [
                {
                    "topics": list(topics),
                    "partitions": partitions,
                    "held": [[sorted(a), sorted(s)] for a, s in held],
                }
                for topics, (partitions, held) in sorted(self.last_groups.items())
            ],
        }

    def adopt(self, record: Mapping[str, Any]) -> None:
        """Take another leader's :meth:`record` of the current assignment as this assignor's
        last one, so that :meth:`uneven` can weigh it."""
        self.last_groups = {
            tuple(group["topics"]): (
                int(group["partitions"]),
                [(set(a), set(s)) for a, s in group["held"]],
            )
            for group in record["groups"]
        }
        if "weighed_records" in record:
            self.weighed_records = float(record["weighed_records"])
        else:  # the record of the release before, which kept a flag only
            self.weighed_records = float(MIN_RECORDS if record.get("weighed") else 0)

    def uneven(
        self,
        load: Mapping[str, Sequence[int]],
        recent: Mapping[str, Sequence[int]] | None = None,
    ) -> Balance | None:
        """What weighing the traffic would change in the last assignment: the group whose
        busiest member's share would drop most, or None when no group would change. Each group
        is weighed by its ``recent`` records if there are enough, else by ``load``
        (:func:`recent_or_all`). Groups that carried fewer than :data:`MIN_RECORDS` records
        per partition are left out: too few to tell a busy partition from a quiet one."""
        found: Balance | None = None
        for topics, (partitions, held) in self.last_groups.items():
            weights = recent_or_all(topics, partitions, load, recent)
            if sum(weights) < MIN_RECORDS * partitions:
                continue
            self._weighed_against(weights, partitions)
            copies = [
                CopartitionedAssignment(actives=set(a), standbys=set(s), topics=set(topics))
                for a, s in held
            ]
            done = balance(copies, weights)
            gain = done.busiest_before - done.busiest_after
            if done.swaps and (found is None or gain > found.busiest_before - found.busiest_after):
                found = done
        return found

    def _perform_assignment(self, cluster: Any, member_metadata: Any) -> Any:
        # This is faust-streaming's PartitionAssignor._perform_assignment (0.15.3), unchanged but
        # for the call to ``balance`` after each group's assignment and the standbys of tables
        # marked ``without_standbys`` dropped: faust offers no hook between assigning a group
        # and packing the result.
        self.last_groups = {}
        self.weighed_records = 0.0
        cluster_assgn = ClusterAssignment()
        clients_metadata = {
            member_id: self._get_client_metadata(metadata)
            for member_id, metadata in member_metadata.items()
        }
        subscriptions = {
            member_id: list(metadata.subscription)
            for member_id, metadata in member_metadata.items()
        }
        for member_id in member_metadata:
            cluster_assgn.add_client(
                member_id, subscriptions[member_id], clients_metadata[member_id]
            )
        topics = cluster_assgn.topics()
        copartitioned_groups = self._get_copartitioned_groups(topics, cluster, subscriptions)
        self._update_member_urls(clients_metadata)
        assignments: MutableMapping[str, ClientAssignment] = {
            member_id: ClientAssignment(actives={}, standbys={}) for member_id in member_metadata
        }
        topic_to_group_id: dict[str, int] = {}
        partitions_by_topic: dict[str, int] = {}
        for group_id, (num_partitions, topic_groups) in enumerate(
            sorted(copartitioned_groups.items())
        ):
            for group_topics in topic_groups:
                for topic in group_topics:
                    topic_to_group_id[topic] = group_id
                    partitions_by_topic[topic] = num_partitions
                assert len(group_topics) > 0 and num_partitions > 0
                assgn = cluster_assgn.copartitioned_assignments(group_topics)
                assignor = CopartitionedAssignor(
                    topics=group_topics,
                    cluster_asgn=assgn,
                    num_partitions=num_partitions,
                    replicas=self.replicas,
                )
                result = assignor.get_assignment()
                self._balance(group_topics, num_partitions, result)
                self.last_groups[tuple(sorted(group_topics))] = (
                    num_partitions,
                    [(set(result[c].actives), set(result[c].standbys)) for c in sorted(result)],
                )
                for client, copart_assn in result.items():
                    assignments[client].add_copartitioned_assignment(copart_assn)
        assignments = self._global_table_standby_assignments(assignments, partitions_by_topic)
        unreplicated = unreplicated_changelogs(self._table_manager.data.values())
        for assignment in assignments.values():
            for topic in unreplicated.intersection(assignment.standbys):
                del assignment.standbys[topic]
        changelog_distribution = self._get_changelog_distribution(assignments)
        external_topic_distribution = self._get_external_topic_distribution(assignments)
        return self._protocol_assignments(
            assignments, changelog_distribution, external_topic_distribution, topic_to_group_id
        )

    def _balance(
        self,
        topics: set[str],
        partitions: int,
        result: Mapping[str, CopartitionedAssignment],
    ) -> None:
        if not self.load or len(result) < 2:
            return
        weights = recent_or_all(topics, partitions, self.load, self.recent)
        self._weighed_against(weights, partitions)
        members = [result[client] for client in sorted(result)]
        done = balance(members, weights)
        METRICS.partition_swaps += done.swaps
        if done.swaps:
            logger.info(
                "[assign] %d partition swap(s) by traffic in the group of %s: the busiest "
                "member's share of its records %.2f -> %.2f (%d records per partition weighed)",
                done.swaps,
                min(topics),
                done.busiest_before,
                done.busiest_after,
                sum(weights) // partitions,
            )
