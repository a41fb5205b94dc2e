"""Order independence of matching (hypothesis): the legs of a journey arrive in any order, spread
over partitions owned by two workers that run in any interleaving, and the outcome is always the
same set of notifications, exactly one terminal, and, once retention has passed, no keys left."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ocstream.xcm.legs import ReceivedLeg, RelayedLeg, SentLeg
from ocstream.xcm.matching import MatchSettings

from .sim import Cluster, finish, received_leg, relayed_leg, run, run_in_any_order, sent_leg

RELAY = "urn:ocn:polkadot:0"
ASSET_HUB = "urn:ocn:polkadot:1000"
HYDRATION = "urn:ocn:polkadot:2034"
MOONBEAM = "urn:ocn:polkadot:2004"
TERMINAL = {"xcm.received", "xcm.timeout"}

Block = list[SentLeg | ReceivedLeg | RelayedLeg]


def h(n: int) -> str:
    return "0x" + f"{n:064x}"


def direct(topic: bool, inbound_reports_topic: bool) -> tuple[list[Block], list[str]]:
    """Moonbeam → Asset Hub over HRMP: sent, relayed, received."""
    t = h(0xABC) if topic else None
    sent = sent_leg(MOONBEAM, [ASSET_HUB], message_hash=h(1), topic=t, number=10)
    relayed = relayed_leg(RELAY, MOONBEAM, ASSET_HUB, message_hash=h(1), topic=t, number=20)
    reported = t if (t and inbound_reports_topic) else h(1)
    received = received_leg(
        ASSET_HUB, message_hash=reported, message_id=reported, number=30, from_chain=MOONBEAM
    )
    return [[sent], [relayed], [received]], ["xcm.sent", "xcm.relayed", "xcm.received"]


def two_legs(topic: bool, fail_at_hop: bool) -> tuple[list[Block], list[str]]:
    """Relay → Hydration → Asset Hub: sent (DMP), hop in + hop out in one Hydration block,
    the hop-out relayed, then received at Asset Hub."""
    t = h(0xDEF) if topic else None
    sent = sent_leg(RELAY, [HYDRATION, ASSET_HUB], message_hash=h(1), topic=t, number=10)
    hop_in = received_leg(
        HYDRATION,
        message_hash=h(1),
        number=40,
        event=8,
        from_chain=RELAY,
        outcome="Fail" if fail_at_hop else "Success",
    )
    blocks: list[Block]
    if fail_at_hop:
        return [[sent], [hop_in]], ["xcm.sent", "xcm.hop"]
    hop_out = sent_leg(
        HYDRATION, [ASSET_HUB], message_hash=h(2), topic=t, number=40, continues=hop_in.identity
    )
    relayed = relayed_leg(RELAY, HYDRATION, ASSET_HUB, message_hash=h(2), topic=t, number=11)
    received = received_leg(ASSET_HUB, message_hash=h(2), number=50, from_chain=HYDRATION)
    blocks = [[sent], [hop_in, hop_out], [relayed], [received]]
    return blocks, ["xcm.sent", "xcm.hop", "xcm.hop", "xcm.relayed", "xcm.received"]


def summary(notifications: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    return Counter((n["type"], n["id"]) for n in notifications)


journeys = st.one_of(
    st.builds(direct, st.booleans(), st.booleans()),
    st.builds(two_legs, st.booleans(), st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(journeys, st.data())
def test_any_order_gives_the_same_notifications(journey: Any, data: st.DataObject) -> None:
    blocks, expected_types = journey
    # At-least-once delivery: some blocks' legs arrive again, anywhere in the stream.
    reference, cluster = run_in_any_order(data, blocks, again=3)

    # A re-emitted notification keeps its id (sinks deliver an id once): compare the ids.
    assert set(summary(cluster.notifications)) == set(summary(reference.notifications))
    unique = list({n["id"]: n for n in cluster.notifications}.values())
    assert sorted(n["type"] for n in unique) == sorted(expected_types)
    terminals = [n for n in unique if n["type"] in TERMINAL]
    failed_hops = [
        n for n in unique if n["type"] == "xcm.hop" and n["waypoint"]["outcome"] == "Fail"
    ]
    assert len(terminals) + len(failed_hops) == 1
    finish(cluster)
    assert cluster.keys_left() == {}
    # Nothing more was said after the journey ended: no timeout on top of the terminal.
    unique = list({n["id"]: n for n in cluster.notifications}.values())
    assert sorted(n["type"] for n in unique) == sorted(expected_types)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_identical_transfers_are_separate_journeys(data: st.DataObject) -> None:
    # Two byte-identical messages without a topic (same hash), sent in two blocks, and two receipts.
    first = sent_leg(MOONBEAM, [ASSET_HUB], message_hash=h(7), number=10)
    second = sent_leg(MOONBEAM, [ASSET_HUB], message_hash=h(7), number=11)
    r1 = received_leg(ASSET_HUB, message_hash=h(7), number=30, event=1, from_chain=MOONBEAM)
    r2 = received_leg(ASSET_HUB, message_hash=h(7), number=31, event=1, from_chain=MOONBEAM)
    blocks: list[Block] = [[first], [second], [r1], [r2]]
    order = data.draw(st.permutations(range(4)))
    choices = data.draw(st.lists(st.integers(0, 7), max_size=20))
    cluster = run(blocks, order, choices)
    types = Counter(n["type"] for n in cluster.notifications)
    assert types == {"xcm.sent": 2, "xcm.received": 2}
    finish(cluster)
    assert cluster.keys_left() == {}
    assert Counter(n["type"] for n in cluster.notifications) == types


def test_a_journey_with_no_receipt_times_out_once() -> None:
    cluster = Cluster(MatchSettings(journey_ttl=60))
    cluster.publish_legs([sent_leg(MOONBEAM, [ASSET_HUB], message_hash=h(3), topic=h(4))])
    cluster.drain()
    cluster.clock.now += 30
    cluster.fire_deadlines()
    cluster.drain()
    assert [n["type"] for n in cluster.notifications] == ["xcm.sent"]
    cluster.clock.now += 31
    cluster.fire_deadlines()
    cluster.drain()
    assert [n["type"] for n in cluster.notifications] == ["xcm.sent", "xcm.timeout"]
    # A receipt after the timeout is reported once, flagged late (the delivery layer counts it
    # as late for subscriptions that had the timeout); it is not kept for a later journey.
    late = received_leg(ASSET_HUB, message_hash=h(3), from_chain=MOONBEAM)
    cluster.publish_legs([late])
    cluster.publish_legs([late])  # and its re-delivery changes nothing
    cluster.drain()
    finish(cluster)
    assert [n["type"] for n in cluster.notifications] == ["xcm.sent", "xcm.timeout", "xcm.received"]
    assert cluster.notifications[-1]["late"] is True
    assert cluster.counters["late_received"] == 1
    assert cluster.keys_left() == {}


def test_re_delivered_legs_change_nothing() -> None:
    blocks, _ = two_legs(topic=True, fail_at_hop=False)
    cluster = Cluster()
    for block in blocks + blocks:
        cluster.publish_legs(block)
    cluster.drain()
    assert sorted(n["type"] for n in cluster.notifications) == sorted(
        ["xcm.sent", "xcm.hop", "xcm.hop", "xcm.relayed", "xcm.received"]
    )


def test_an_inbound_from_another_chain_does_not_match() -> None:
    # The same bytes sent by two paras to the relay: the origin check keeps them apart.
    cluster = Cluster()
    cluster.publish_legs([sent_leg(MOONBEAM, [RELAY], message_hash=h(9))])
    cluster.publish_legs([received_leg(RELAY, message_hash=h(9), from_chain=HYDRATION)])
    cluster.drain()
    assert [n["type"] for n in cluster.notifications] == ["xcm.sent"]
    cluster.publish_legs([received_leg(RELAY, message_hash=h(9), event=2, from_chain=MOONBEAM)])
    cluster.drain()
    assert [n["type"] for n in cluster.notifications] == ["xcm.sent", "xcm.received"]
