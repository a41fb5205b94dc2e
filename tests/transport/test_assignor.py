"""The load-aware assignor's balancing step (``ocstream/transport/assignor.py``).

The whole assignor runs in real workers in ``tests/test_workers.py``
(``test_a_joining_worker_gets_a_fair_share_of_the_traffic``); here the swaps themselves, on the
assignments faust's own ``CopartitionedAssignor`` makes.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import cast

import faust
import orjson
import pytest
from faust.assignor.client_assignment import CopartitionedAssignment
from faust.assignor.copartitioned_assignor import CopartitionedAssignor

from ocstream.transport.assignor import (
    MIN_GAIN,
    MIN_RECORDS,
    REBALANCE_GAIN,
    LoadAwareAssignor,
    balance,
    group_weights,
    recent_or_all,
    records_since,
    unreplicated_changelogs,
    without_standbys,
)

# What xcm.py's ten parachains give 8 partitions: destinations hash onto them as
# 1, 3, 0, 1, 0, 1, 2, 2 chains, and every partition has a share of the spread new journeys.
BENCH_WEIGHTS = [10 + 100 * n for n in (1, 3, 0, 1, 0, 1, 2, 2)]


def fausts(members: int, partitions: int, replicas: int) -> list[CopartitionedAssignment]:
    """What faust's assignor gives a fresh group."""
    fresh = {f"m{n}": CopartitionedAssignment(topics={"t"}) for n in range(members)}
    result = CopartitionedAssignor({"t"}, fresh, partitions, replicas).get_assignment()
    return [result[name] for name in sorted(result)]


def loads(members: list[CopartitionedAssignment], weights: list[int]) -> list[int]:
    return [sum(weights[p] for p in m.actives) for m in members]


def check_valid(
    before: list[tuple[set[int], set[int]]], after: list[CopartitionedAssignment], partitions: int
) -> None:
    """Every partition active once; standbys never where the partition is active; each
    partition keeps its number of standbys; each member keeps its counts."""
    actives = sorted(p for m in after for p in m.actives)
    assert actives == list(range(partitions))
    for member in after:
        assert not member.actives & member.standbys
    standby_copies = [
        sorted(p for _, s in before for p in s),
        sorted(p for m in after for p in m.standbys),
    ]
    assert standby_copies[0] == standby_copies[1]
    assert [(len(a), len(s)) for a, s in before] == [
        (len(m.actives), len(m.standbys)) for m in after
    ]


@pytest.mark.parametrize("replicas", [0, 1])
def test_the_benchmarks_destinations_are_split_evenly(replicas: int) -> None:
    members = fausts(2, 8, replicas)
    before = [(set(m.actives), set(m.standbys)) for m in members]
    assert loads(members, BENCH_WEIGHTS) == [340, 740]  # faust's deal: 0.69 of it on one

    done = balance(members, BENCH_WEIGHTS)

    check_valid(before, members, 8)
    assert loads(members, BENCH_WEIGHTS) == [540, 540]
    assert done.swaps == 1
    assert done.busiest_before == pytest.approx(740 / 1080)
    assert done.busiest_after == pytest.approx(0.5)
    if replicas:  # the two members trade the swapped partitions' standbys too: still warm
        assert all(m.standbys == set(range(8)) - m.actives for m in members)


def test_a_balanced_assignment_is_left_alone() -> None:
    members = fausts(2, 8, 1)
    before = [(set(m.actives), set(m.standbys)) for m in members]
    done = balance(members, [5] * 8)
    assert done.swaps == 0
    assert [(m.actives, m.standbys) for m in members] == before


def test_no_traffic_leaves_fausts_assignment() -> None:
    members = fausts(3, 8, 1)
    before = [(set(m.actives), set(m.standbys)) for m in members]
    assert balance(members, [0] * 8).swaps == 0
    assert [(m.actives, m.standbys) for m in members] == before


def test_a_gain_below_the_threshold_is_not_worth_a_move() -> None:
    # Partition 0 carries a little more than the others: the best swap would narrow the gap
    # between the two members by 2 records of 802, less than MIN_GAIN of a fair share.
    weights = [101, 100, 100, 100, 100, 100, 100, 100]
    members = fausts(2, 8, 0)
    gap = abs(loads(members, weights)[0] - loads(members, weights)[1])
    assert 0 < gap < MIN_GAIN * sum(weights) / 2
    assert balance(members, weights).swaps == 0
    # With no threshold it would still not swap: no swap narrows a gap of 1.
    assert balance(members, weights, min_gain=0).swaps == 0


def test_swaps_are_made_only_where_the_standbys_allow_them() -> None:
    # Three members, one replica: faust spreads standbys so that a pair of members does not
    # always hold each other's partitions; a swap that would leave a member with a standby of
    # a partition it now runs, or change a standby count, is skipped.
    rng = random.Random(7)
    for _ in range(200):
        partitions = rng.choice([6, 8, 12, 16])
        members = fausts(3, partitions, 1)
        weights = [rng.choice([0, 1, 10, 100, 1000]) for _ in range(partitions)]
        before = [(set(m.actives), set(m.standbys)) for m in members]
        balance(members, weights)
        check_valid(before, members, partitions)


@pytest.mark.parametrize("seed", range(40))
def test_random_groups_stay_valid_and_get_no_less_even(seed: int) -> None:
    rng = random.Random(seed)
    partitions = rng.choice([4, 8, 16, 32])
    count = rng.randint(2, min(6, partitions))
    replicas = rng.choice([0, 1, 2])
    members = fausts(count, partitions, replicas)
    # Skewed like keyed traffic: a few hot partitions, many quiet ones.
    weights = [int(rng.paretovariate(1.2) * 100) for _ in range(partitions)]
    before = [(set(m.actives), set(m.standbys)) for m in members]
    spread = loads(members, weights)

    done = balance(members, weights)

    check_valid(before, members, partitions)
    after = loads(members, weights)
    assert max(after) <= max(spread)
    assert sum(x * x for x in after) <= sum(x * x for x in spread)
    assert done.busiest_after <= done.busiest_before
    assert (done.swaps == 0) == (after == spread)


def test_group_weights_add_up_the_groups_topics() -> None:
    load = {"legs": [5, 0, 2], "legs-changelog": [10, 1, 0], "other": [100, 100, 100]}
    assert group_weights({"legs", "legs-changelog", "missing"}, 3, load) == [15, 1, 2]
    assert group_weights({"missing"}, 2, load) == [0, 0]


def test_the_leader_sees_when_traffic_would_make_the_last_assignment_fairer() -> None:
    """``uneven`` weighs the last assignment against the records carried since: it names the
    group that would change most, skips groups with too few records to tell, and finds
    nothing to do once the assignment is fair."""
    assignor = LoadAwareAssignor.__new__(LoadAwareAssignor)  # the method needs no app
    assignor.weighed_records = 0.0
    held = [({0, 2, 4, 6}, {1, 3, 5, 7}), ({1, 3, 5, 7}, {0, 2, 4, 6})]
    assignor.last_groups = {("legs", "legs-changelog"): (8, held)}
    load = {"legs": BENCH_WEIGHTS, "legs-changelog": BENCH_WEIGHTS}
    found = assignor.uneven(load)
    assert found is not None
    # approx as object: mypy's strict equality does not know it equals a float
    assert (found.busiest_before, found.busiest_after) == (
        cast(object, pytest.approx(740 / 1080)),
        0.5,
    )
    assert held[0][0] == {0, 2, 4, 6}  # weighed on copies: the record of it is unchanged

    few = {"legs": [w * (MIN_RECORDS - 1) // max(BENCH_WEIGHTS) for w in BENCH_WEIGHTS]}
    assert sum(few["legs"]) < MIN_RECORDS * 8
    assert assignor.uneven(few) is None

    assignor.last_groups = {
        ("legs", "legs-changelog"): (8, [({1, 2, 4, 6}, set()), ({0, 3, 5, 7}, set())])
    }
    assert assignor.uneven(load) is None  # what balance() made of it: already fair


def test_an_assignment_made_blind_stays_unweighed_until_enough_traffic_shows() -> None:
    """``weighed_records`` tells the leader whether to look again soon (traffic.py): it is
    below ``MIN_RECORDS`` after an assignment made with too few records per partition to
    tell, and reaches it once :meth:`uneven` (or the assignment itself) had enough, whether or
    not that moved anything; the count is the largest sample weighed, per partition."""
    topics = {"legs", "legs-changelog"}
    few = {"legs": [MIN_RECORDS - 1] * 8}
    enough = {"legs": BENCH_WEIGHTS, "legs-changelog": BENCH_WEIGHTS}
    assignor = LoadAwareAssignor.__new__(LoadAwareAssignor)  # the methods need no app
    assignor.weighed_records = 0.0
    members = fausts(2, 8, 0)
    result = {f"m{i}": member for i, member in enumerate(members)}
    assignor.load = few
    assignor._balance(topics, 8, result)
    assert assignor.weighed_records < MIN_RECORDS
    held = [(set(m.actives), set(m.standbys)) for m in members]
    assignor.last_groups = {tuple(sorted(topics)): (8, held)}
    assert assignor.uneven(few) is None
    assert assignor.weighed_records < MIN_RECORDS
    assignor.uneven(enough)
    assert assignor.weighed_records >= MIN_RECORDS
    assert assignor.weighed_records == sum(BENCH_WEIGHTS) * 2 / 8
    smaller = {"legs": [MIN_RECORDS * 2] * 8}  # weighed, but a smaller sample: no lower
    assignor.uneven(smaller)
    assert assignor.weighed_records == sum(BENCH_WEIGHTS) * 2 / 8

    again = LoadAwareAssignor.__new__(LoadAwareAssignor)
    again.weighed_records = 0.0
    again.load = enough
    again._balance(topics, 8, {f"m{i}": m for i, m in enumerate(fausts(2, 8, 0))})
    assert again.weighed_records >= MIN_RECORDS


def test_recent_traffic_is_weighed_when_there_is_enough_of_it() -> None:
    """The leader weighs what was written since its last check when that is enough to tell
    (``MIN_RECORDS`` per partition of the group), so a shift in traffic shows at once even
    under a long, even history; too little recent traffic falls back on the whole history."""
    topics = {"legs", "legs-changelog"}
    history = {"legs": [5000] * 4, "legs-changelog": [5000] * 4}
    shifted = {"legs": [600, 600, 0, 0], "legs-changelog": [0] * 4}
    assert recent_or_all(topics, 4, history, shifted) == [600, 600, 0, 0]
    assert recent_or_all(topics, 4, history, None) == [10000] * 4
    trickle = {"legs": [MIN_RECORDS - 1] * 4}
    assert recent_or_all(topics, 4, history, trickle) == [10000] * 4

    assignor = LoadAwareAssignor.__new__(LoadAwareAssignor)  # the methods need no app
    assignor.weighed_records = 0.0
    held: list[tuple[set[int], set[int]]] = [({0, 1}, set()), ({2, 3}, set())]
    assignor.last_groups = {tuple(sorted(topics)): (4, held)}
    total = {t: [a + b for a, b in zip(history[t], shifted[t], strict=True)] for t in history}
    # Over the whole history the shift is a small gain (0.55 -> 0.5): below REBALANCE_GAIN.
    whole = assignor.uneven(total)
    assert whole is not None and whole.busiest_before - whole.busiest_after < REBALANCE_GAIN
    found = assignor.uneven(total, shifted)
    assert found is not None
    assert (found.busiest_before, found.busiest_after) == (1.0, 0.5)


def test_a_record_of_the_last_assignment_reads_back_the_same() -> None:
    """What a leader leaves for one taking over without a rebalance (through JSON, as it is
    stored in Redis): the same groups, so the same verdict on the same traffic."""
    maker = LoadAwareAssignor.__new__(LoadAwareAssignor)  # the methods need no app
    maker.weighed_records = 420.0
    held = [({0, 2, 4, 6}, {1, 3}), ({1, 3, 5, 7}, {0, 2})]
    maker.last_groups = {("legs", "legs-changelog"): (8, held), ("notes",): (4, [({0}, set())])}
    taker = LoadAwareAssignor.__new__(LoadAwareAssignor)
    taker.weighed_records = 0.0
    taker.adopt(orjson.loads(orjson.dumps(maker.record())))
    assert taker.last_groups == maker.last_groups
    assert taker.weighed_records == 420.0
    # The record of the release before kept a flag, not a count: weighed, but not settled.
    older = {k: v for k, v in maker.record().items() if k != "weighed_records"}
    taker.adopt({**older, "weighed": True})
    assert taker.weighed_records == MIN_RECORDS
    load = {"legs": BENCH_WEIGHTS, "legs-changelog": BENCH_WEIGHTS}
    assert taker.uneven(load) == maker.uneven(load)


def test_records_since_a_reading_count_new_partitions_from_zero_and_never_go_negative() -> None:
    then = {"legs": [100, 50], "gone": [7]}
    now = {"legs": [130, 50, 20, 5], "blocks": [3], "gone": [2]}
    assert records_since(now, then) == {"legs": [30, 0, 20, 5], "blocks": [3], "gone": [0]}


def test_only_marked_tables_that_are_not_global_lose_their_standbys(tmp_path: Path) -> None:
    """The real assignment runs in two workers in ``tests/xcm/test_dataflow_workers.py``
    (``test_waiting_legs_have_no_standbys_and_survive_a_takeover``); here which changelogs
    it leaves without standbys, read off faust's own tables."""
    app = faust.App("mark", broker="redis://127.0.0.1:1", datadir=str(tmp_path))
    plain = app.Table("plain", default=None)
    marked = app.Table("marked", default=None)
    shared = app.GlobalTable("shared", default=None)
    assert without_standbys(marked) is marked
    without_standbys(shared)
    assert unreplicated_changelogs(app.tables.values()) == {"mark-marked-changelog"}
    assert unreplicated_changelogs([plain]) == set()
