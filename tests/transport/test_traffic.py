"""The leader's traffic watch (``ocstream/transport/traffic.py``): when it looks, what it weighs,
what a look decides.

The watch runs with real workers in tests/test_workers.py (a new group evened out at its first
look, a lasting shift against a burst, a leader taking over); here its rules one by one, with a
real :class:`LoadAwareAssignor` weighing the counts as the group leader does
(``GroupCoordinator._check_traffic``), and the looks in every order that matters.
"""

from __future__ import annotations

import pytest
from faust.assignor.client_assignment import CopartitionedAssignment
from faust.assignor.copartitioned_assignor import CopartitionedAssignor

from ocstream.transport.assignor import MIN_RECORDS, REBALANCE_GAIN, Balance, LoadAwareAssignor
from ocstream.transport.settings import TransportSettings
from ocstream.transport.traffic import (
    FIRST_LOOK,
    SETTLE_RECORDS,
    UNEVEN_CHECKS,
    TrafficWatch,
    Verdict,
)

TOPICS = ("legs", "legs-changelog")
INTERVAL = 300_000  # ms: load_check_interval's default
LOOK = int(FIRST_LOOK * 1000)
UNEVEN = Balance(1, 0.7, 0.5)
EVEN = Balance(1, 0.55, 0.5)  # a gain below REBALANCE_GAIN


def assignor_holding(held: list[tuple[set[int], set[int]]]) -> LoadAwareAssignor:
    """An assignor whose last assignment of the legs group (4 partitions) is ``held``, made
    blind: what a leader has right after a new group's first assignment."""
    assignor = LoadAwareAssignor.__new__(LoadAwareAssignor)  # the methods need no app
    assignor.weighed_records = 0.0
    assignor.last_groups = {TOPICS: (4, held)}
    return assignor


def counts(*per_partition: int) -> dict[str, list[int]]:
    return {"legs": list(per_partition), "legs-changelog": [0] * len(per_partition)}


def look(watch: TrafficWatch, assignor: LoadAwareAssignor, load: dict[str, list[int]]) -> Verdict:
    """One look, as the group leader makes it."""
    before = assignor.weighed_records
    found = assignor.uneven(load, watch.window(load))
    return watch.judge(load, found, before, assignor.weighed_records)


def test_looks_are_due_often_until_the_assignment_settles_then_every_interval() -> None:
    watch = TrafficWatch(INTERVAL)
    assert not watch.due(10**9, 1, 0)  # no assignment known
    watch.made(1, 1_000)
    assert not watch.due(1_000 + LOOK, 2, 0)  # another generation's
    for weighed in (0, MIN_RECORDS, SETTLE_RECORDS - 1):
        assert not watch.due(1_000 + LOOK - 1, 1, weighed)
        assert watch.due(1_000 + LOOK, 1, weighed)
    assert not watch.due(1_000 + LOOK, 1, SETTLE_RECORDS)
    assert watch.due(1_000 + INTERVAL, 1, SETTLE_RECORDS)
    watch.last_look = 50_000  # counted from the last look, not from the assignment
    assert not watch.due(50_000 + LOOK - 1, 1, 0)
    assert watch.due(50_000 + LOOK, 1, 0)

    short = TrafficWatch(3_000)  # an interval shorter than the first look's wins
    short.made(1, 0)
    assert short.due(3_000, 1, 0) and short.due(3_000, 1, SETTLE_RECORDS)
    off = TrafficWatch(0)
    off.made(1, 0)
    assert not off.due(10**9, 1, 0)


def test_a_look_at_too_little_traffic_decides_nothing_and_changes_nothing() -> None:
    watch = TrafficWatch(INTERVAL)
    watch.made(1, 0)
    assert watch.judge(counts(10, 10, 10, 10), None, 0, MIN_RECORDS - 1) is Verdict.WAIT
    assert watch.judge(counts(10, 10, 10, 10), UNEVEN, 0, 0) is Verdict.WAIT
    assert (watch.baseline, watch.uneven_in_row) == (None, 0)


def test_an_unsettled_assignment_is_rebalanced_at_the_first_uneven_look() -> None:
    """Blind or settling, one uneven look is enough: it finishes the weighing the assignment
    began, it does not watch for change."""
    for before in (0, MIN_RECORDS, SETTLE_RECORDS - 1):
        watch = TrafficWatch(INTERVAL)
        watch.made(1, 0)
        assert watch.judge(counts(900, 0, 0, 0), UNEVEN, before, before + 200) is (
            Verdict.REBALANCE
        )
        assert watch.baseline is None  # the assignment that follows weighs the same records


def test_settling_looks_weigh_a_growing_sample_from_the_same_start() -> None:
    """While settling, an even look does not move the window on: the next look weighs
    everything since the same start, so the sample grows until it can be trusted. The look
    that reaches :data:`SETTLE_RECORDS` starts the window."""
    watch = TrafficWatch(INTERVAL)
    watch.made(1, 0)
    first = counts(150, 150, 150, 150)
    assert watch.judge(first, EVEN, 0, 150) is Verdict.EVEN
    assert watch.baseline is None
    assert watch.window(counts(900, 900, 900, 900)) is None  # so: every record written
    settled = counts(1_000, 1_000, 1_000, 1_000)
    assert watch.judge(settled, None, 150, 1_000) is Verdict.EVEN
    assert watch.baseline == settled
    assert watch.window(counts(1_100, 1_000, 1_000, 1_050)) == counts(100, 0, 0, 50)


def test_a_settled_assignment_takes_two_uneven_checks_in_a_row() -> None:
    """Uneven once is perhaps a burst (logged; the window moves on so the next check weighs
    the traffic after it on its own); an even check in between starts the count again; two
    in a row rebalance."""
    watch = TrafficWatch(INTERVAL)
    watch.made(1, 0)
    readings = [counts(n * 1_000, n * 1_000, n * 1_000, n * 1_000) for n in range(2, 7)]
    assert UNEVEN_CHECKS == 2
    assert watch.judge(readings[0], UNEVEN, SETTLE_RECORDS, 2_000) is Verdict.UNEVEN_ONCE
    assert watch.baseline == readings[0] and watch.uneven_in_row == 1
    assert watch.judge(readings[1], EVEN, 2_000, 2_000) is Verdict.EVEN
    assert watch.baseline == readings[1] and watch.uneven_in_row == 0
    assert watch.judge(readings[2], UNEVEN, 2_000, 2_000) is Verdict.UNEVEN_ONCE
    assert watch.judge(readings[3], UNEVEN, 2_000, 2_000) is Verdict.REBALANCE
    assert watch.baseline == readings[2]  # kept: the new assignment weighs what was judged
    watch.rebalancing()  # the leader started it: nothing to watch until the next is made
    assert watch.assigned is None and not watch.due(10**9, 1, 2_000)
    assert watch.baseline == readings[2]
    watch.made(2, 1)
    assert watch.uneven_in_row == 0
    assert watch.judge(readings[4], UNEVEN, 2_000, 2_000) is Verdict.UNEVEN_ONCE


def test_a_leader_adopts_each_generation_once_and_weighs_all_traffic_after() -> None:
    watch = TrafficWatch(INTERVAL)
    watch.made(3, 0)
    watch.baseline = counts(5, 5, 5, 5)
    watch.uneven_in_row = 1
    assert not watch.should_adopt(3)  # its own assignment
    assert watch.should_adopt(4)
    assert not watch.should_adopt(4)  # asked once, record or not
    watch.adopted(4, 7_000)
    # mypy keeps baseline narrowed to the dict set above, past adopted(), which clears it
    assert (watch.assigned, watch.baseline, watch.uneven_in_row) == ((4, 7_000), None, 0)  # type: ignore[comparison-overlap]
    assert not watch.should_adopt(4)


def test_a_first_look_misled_by_a_small_sample_is_corrected_seconds_later() -> None:
    """The case the settling stage is for. A new group's first look sees 150 records per
    partition, spread evenly (a clump of journeys on the partitions that are quiet after); the
    traffic that follows is all on the first member's partitions. The leader keeps looking
    every :data:`FIRST_LOOK` seconds and rebalances at the next look, whose larger sample shows
    it, long before an interval."""
    held: list[tuple[set[int], set[int]]] = [({0, 1}, set()), ({2, 3}, set())]
    assignor = assignor_holding(held)
    watch = TrafficWatch(INTERVAL)
    watch.made(1, 0)
    now = LOOK
    assert watch.due(now, 1, assignor.weighed_records)
    assert look(watch, assignor, counts(10, 10, 10, 10)) is Verdict.WAIT  # blind still
    now += LOOK
    assert look(watch, assignor, counts(150, 150, 150, 150)) is Verdict.EVEN
    assert watch.stage(assignor.weighed_records) == "settling"
    verdicts = []
    busy = (300, 300, 0, 0)  # per look
    reading = [150, 150, 150, 150]
    while True:
        now += LOOK
        assert watch.due(now, 1, assignor.weighed_records)
        watch.last_look = now
        reading = [r + b for r, b in zip(reading, busy, strict=True)]
        verdicts.append(look(watch, assignor, counts(*reading)))
        if verdicts[-1] is not Verdict.EVEN:
            break
    assert verdicts == [Verdict.REBALANCE]  # at the next look: 0.75 of the records -> 0.5
    # The same traffic, judged as a settled assignment's, would have waited for an interval
    # and then for a second check.
    settled = TrafficWatch(INTERVAL)
    settled.made(1, 0)
    assert not settled.due(LOOK, 1, SETTLE_RECORDS)


def test_looks_at_real_faust_assignments_reach_a_verdict_the_assignor_agrees_with() -> None:
    """From faust's own deal of 8 partitions to two members, traffic on the first member's
    partitions only: the watch rebalances, and the assignment the assignor then makes with the
    watch's window is even, which the next look confirms."""
    fresh = {f"m{n}": CopartitionedAssignment(topics=set(TOPICS)) for n in range(2)}
    dealt = CopartitionedAssignor(set(TOPICS), fresh, 8, 0).get_assignment()
    members = [dealt[name] for name in sorted(dealt)]
    assignor = LoadAwareAssignor.__new__(LoadAwareAssignor)
    assignor.weighed_records = 0.0
    assignor.last_groups = {TOPICS: (8, [(set(m.actives), set()) for m in members])}
    first = sorted(members[0].actives)
    load = {"legs": [300 if p in first else 0 for p in range(8)], "legs-changelog": [0] * 8}
    watch = TrafficWatch(INTERVAL)
    watch.made(1, 0)
    assert look(watch, assignor, load) is Verdict.REBALANCE

    assignor.load, assignor.recent = load, watch.window(load)
    assignor.weighed_records = 0.0
    assignor._balance(set(TOPICS), 8, dealt)
    shares = [sum(load["legs"][p] for p in m.actives) / sum(load["legs"]) for m in members]
    assert max(shares) - 0.5 < REBALANCE_GAIN
    assignor.last_groups = {TOPICS: (8, [(set(m.actives), set()) for m in members])}
    watch.made(2, LOOK)
    assert look(watch, assignor, load) is Verdict.EVEN


def test_a_weighed_assignment_is_overturned_only_by_twice_its_sample() -> None:
    """An assignment made on 150 records per partition (settling) is not rebalanced by a look
    at 250, however uneven: logged, looked at again; at 300 it is."""
    watch = TrafficWatch(INTERVAL)
    watch.made(2, 0, 150)
    assert watch.judge(counts(900, 100, 0, 0), UNEVEN, 150, 250) is Verdict.UNEVEN_SMALL
    assert watch.baseline is None  # the sample keeps growing from the same start
    assert watch.uneven_in_row == 0  # a settled assignment's count, not this one's
    assert watch.judge(counts(1000, 200, 0, 0), UNEVEN, 250, 300) is Verdict.REBALANCE
    watch.adopted(3, 0, 400)  # a record taken over counts the same
    assert watch.judge(counts(900, 100, 0, 0), UNEVEN, 400, 799) is Verdict.UNEVEN_SMALL
    assert watch.judge(counts(900, 100, 0, 0), UNEVEN, 799, 800) is Verdict.REBALANCE


def settle_against_a_moving_hot_spot(guarded: bool) -> int:
    """Rebalances of a new two-member group until its assignment settles, when every look's
    new traffic goes to the partitions the first member holds then (the worst case for the
    settling looks: each rebalance moves the hot spot). ``guarded=False`` tells the watch
    nothing of the sample each assignment was weighed against."""
    fresh = {f"m{n}": CopartitionedAssignment(topics=set(TOPICS)) for n in range(2)}
    dealt = CopartitionedAssignor(set(TOPICS), fresh, 8, 0).get_assignment()
    members = [dealt[name] for name in sorted(dealt)]
    assignor = LoadAwareAssignor.__new__(LoadAwareAssignor)
    assignor.weighed_records = 0.0
    watch = TrafficWatch(INTERVAL)
    watch.made(1, 0)
    reading = [0] * 8
    rebalances = 0
    for gen in range(1, 200):
        assignor.last_groups = {TOPICS: (8, [(set(m.actives), set()) for m in members])}
        for p in members[0].actives:
            reading[p] += 60
        load = {"legs": list(reading), "legs-changelog": [0] * 8}
        if look(watch, assignor, load) is Verdict.REBALANCE:
            rebalances += 1
            assignor.load, assignor.recent = load, watch.window(load)
            assignor.weighed_records = 0.0
            assignor._balance(set(TOPICS), 8, {f"m{n}": m for n, m in enumerate(members)})
            watch.made(gen + 1, 0, assignor.weighed_records if guarded else 0.0)
        if watch.stage(assignor.weighed_records) == "settled":
            return rebalances
    raise AssertionError("never settled")


def test_an_assignment_settles_after_a_few_rebalances_even_against_a_moving_hot_spot() -> None:
    guarded = settle_against_a_moving_hot_spot(guarded=True)
    assert 1 <= guarded <= 4  # 100 -> 200 -> 400 -> 800 -> settled
    assert settle_against_a_moving_hot_spot(guarded=False) > guarded


def test_the_settings_set_the_first_looks_the_settled_sample_and_the_checks_in_a_row() -> None:
    """``load_first_look``, ``load_settle_records`` and ``load_uneven_checks`` (transport
    settings, from the environment like the rest) replace the defaults in every rule above;
    values that would break the stages are refused."""
    settings = TransportSettings.from_env(
        {
            "OCSTREAM_TRANSPORT_LOAD_CHECK_INTERVAL": "60",
            "OCSTREAM_TRANSPORT_LOAD_FIRST_LOOK": "2.5",
            "OCSTREAM_TRANSPORT_LOAD_SETTLE_RECORDS": "400",
            "OCSTREAM_TRANSPORT_LOAD_UNEVEN_CHECKS": "1",
        }
    )
    watch = TrafficWatch.of(settings)
    assert (watch.interval, watch.first_look) == (60_000, 2_500)
    watch.made(1, 0)
    assert not watch.due(2_499, 1, 399) and watch.due(2_500, 1, 399)
    assert not watch.due(2_500, 1, 400) and watch.due(60_000, 1, 400)  # settled at 400
    assert [watch.stage(n) for n in (99, 100, 399, 400)] == [
        "blind",
        "settling",
        "settling",
        "settled",
    ]
    load = counts(500, 500, 500, 500)
    assert watch.judge(load, EVEN, 0, 400) is Verdict.EVEN
    assert watch.baseline == load  # the window starts at 400, not at the default 1,000
    assert watch.judge(load, UNEVEN, 400, 500) is Verdict.REBALANCE  # one check in a row

    default = TrafficWatch.of(TransportSettings())
    assert (default.first_look, default.settle_records, default.uneven_checks) == (
        LOOK,
        SETTLE_RECORDS,
        UNEVEN_CHECKS,
    )
    for name, value in (
        ("LOAD_SETTLE_RECORDS", str(MIN_RECORDS - 1)),
        ("LOAD_UNEVEN_CHECKS", "0"),
        ("LOAD_FIRST_LOOK", "0"),
    ):
        with pytest.raises(ValueError, match=name.lower()):
            TransportSettings.from_env({f"OCSTREAM_TRANSPORT_{name}": value})
