"""Receipts of identical messages, replayed receipts and late receipts (issue 11, point 5).

Two transfers with the same asset, amount and beneficiary and no topic are byte-identical: the
same hash, so the same keys. What keeps their receipts apart:

* a receipt that ended (or hopped) a journey is remembered by its identity, so a re-delivery of
  it (a worker killed after its outputs were written, before its offset was committed) is
  dropped instead of waiting for the next identical message;
* a receipt whose journey already timed out is that journey's late receipt: reported once,
  flagged ``late``, and not kept for a later journey;
* a receipt whose block is older than a send cannot be that send's receipt.

Legs of one chain are published in block order, so the orders drawn here keep each chain's
legs in order and interleave the chains. A chain's new journeys are spread over the partitions
by their id (``ocstream/xcm/keys.py``): identical ones share a key, so they stay in order too.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocstream.xcm import matching
from ocstream.xcm.legs import ReceivedLeg, RelayedLeg, SentLeg
from ocstream.xcm.matching import MatchSettings

from .sim import Cluster, finish, received_leg, sent_leg
from .test_matching_orders import two_legs

MOONBEAM = "urn:ocn:polkadot:2004"
ASSET_HUB = "urn:ocn:polkadot:1000"
HASH = "0x" + "77" * 32
T0 = 1_709_700_000_000  # ms, a real 2024 block time


def send(number: int, at: int | None) -> SentLeg:
    return sent_leg(MOONBEAM, [ASSET_HUB], message_hash=HASH, number=number, timestamp=at)


def receipt(number: int, at: int | None) -> ReceivedLeg:
    return received_leg(
        ASSET_HUB, message_hash=HASH, number=number, event=1, from_chain=MOONBEAM, timestamp=at
    )


def publish(cluster: Cluster, *legs: SentLeg | ReceivedLeg | RelayedLeg) -> None:
    for leg in legs:
        cluster.publish_legs([leg])
    cluster.drain()


def received_blocks(cluster: Cluster) -> dict[str, str]:
    """Journey's origin block → the block of the receipt it was given."""
    return {
        n["origin"]["blockNumber"]: n["waypoint"]["blockNumber"]
        for n in {n["id"]: n for n in cluster.notifications}.values()
        if n["type"] == "xcm.received"
    }


def test_a_replayed_receipt_is_not_the_receipt_of_a_later_identical_message() -> None:
    # Both workers were killed right after the first receipt's outputs were written: the record
    # comes again after the restart, once its journey has ended.
    cluster = Cluster()
    first, r1 = send(10, None), receipt(30, None)
    publish(cluster, first, r1)
    assert received_blocks(cluster) == {"10": "30"}
    publish(cluster, r1)
    _an_identical_message_gets_its_own_receipt(cluster)


def _an_identical_message_gets_its_own_receipt(cluster: Cluster) -> None:
    """After the first message (block 10) took its receipt (block 30), and a replay of that
    receipt: the second identical message (11) gets its own (31), and everything is swept."""
    second, r2 = send(11, None), receipt(31, None)
    publish(cluster, second)
    assert received_blocks(cluster) == {"10": "30"}  # the replay did not end the second
    publish(cluster, r2)
    assert received_blocks(cluster) == {"10": "30", "11": "31"}
    finish(cluster)
    assert cluster.keys_left() == {}  # old and new entries alike expire and are swept


def test_a_late_receipt_is_reported_once_and_not_given_to_the_next_message() -> None:
    cluster = Cluster(MatchSettings(journey_ttl=60))
    first = send(10, T0)
    publish(cluster, first)
    cluster.clock.now += 61
    cluster.fire_deadlines()
    cluster.drain()
    late = receipt(30, T0 + 3_600_000)  # the destination was paused past the timeout
    publish(cluster, late)
    second, r2 = send(11, T0 + 3_700_000), receipt(31, T0 + 3_712_000)
    publish(cluster, second, late)  # ... and a re-delivery of the late one changes nothing
    assert [n["type"] for n in cluster.notifications] == [
        "xcm.sent",
        "xcm.timeout",
        "xcm.received",
        "xcm.sent",
    ]
    assert cluster.notifications[2]["late"] is True
    assert cluster.notifications[2]["waypoint"]["blockNumber"] == "30"
    publish(cluster, r2)
    assert received_blocks(cluster) == {"10": "30", "11": "31"}
    assert "late" not in cluster.notifications[-1]
    assert cluster.counters["late_received"] == 1


def test_a_receipt_older_than_the_send_is_not_its_receipt() -> None:
    # The destination was ingested ahead: a receipt of an earlier identical message (sent before
    # ocstream followed the origin) waits; the send that comes next is 10 minutes younger.
    cluster = Cluster()
    stale = receipt(29, T0)
    publish(cluster, stale)
    fresh_send, fresh = send(11, T0 + 600_000), receipt(31, T0 + 612_000)
    publish(cluster, fresh_send)
    assert received_blocks(cluster) == {}
    publish(cluster, fresh)
    assert received_blocks(cluster) == {"11": "31"}


def test_clocks_of_test_networks_are_not_compared() -> None:
    # The local network's relay starts in 2023 and its paras at the wall clock: years apart.
    cluster = Cluster()
    publish(cluster, receipt(29, T0 - 3 * 365 * 86400_000), send(11, T0))
    assert received_blocks(cluster) == {"11": "29"}


def test_a_para_clock_a_little_behind_the_relay_is_tolerated() -> None:
    # A parachain's block time can trail the relay block that sent it by a slot.
    cluster = Cluster()
    publish(cluster, send(11, T0), receipt(31, T0 - 6_000))
    assert received_blocks(cluster) == {"11": "31"}


@st.composite
def interleavings(draw: st.DrawFn) -> list[tuple[str, int]]:
    """Each chain's legs in block order (sends at Moonbeam, receipts at Asset Hub), the chains
    interleaved in any way, with re-deliveries of receipts after a simulated crash."""
    sends = [("send", i) for i in range(3)]
    receipts = [("receipt", i) for i in range(3)]
    merged: list[tuple[str, int]] = []
    while sends or receipts:
        pick = draw(st.sampled_from([q for q in (sends, receipts) if q]))
        merged.append(pick.pop(0))
    for _ in range(draw(st.integers(0, 3))):
        seen = [i for i, (kind, _) in enumerate(merged) if kind == "receipt"]
        at = draw(st.sampled_from(seen))
        merged.insert(draw(st.integers(at + 1, len(merged))), merged[at])
    return merged


@settings(max_examples=300, deadline=None)
@given(interleavings(), st.lists(st.integers(0, 7), max_size=40), st.booleans())
def test_identical_messages_get_their_own_receipts_in_any_order(
    order: list[tuple[str, int]], choices: list[int], clocks: bool
) -> None:
    # Three identical transfers a minute apart, each received 12 s after it was sent.
    legs: dict[tuple[str, int], Any] = {}
    for i in range(3):
        at = T0 + 60_000 * i if clocks else None
        legs[("send", i)] = send(10 + i, at)
        legs[("receipt", i)] = receipt(30 + i, at + 12_000 if at is not None else None)
    cluster = Cluster()
    picks = iter(choices)
    for key in order:
        cluster.publish_legs([legs[key]])
        for _ in range(next(picks, 0) % 3):
            if busy := cluster.busy():
                cluster.step(busy[next(picks, 0) % len(busy)])
    cluster.drain()
    assert received_blocks(cluster) == {"10": "30", "11": "31", "12": "32"}
    finish(cluster)
    unique = {n["id"]: n for n in cluster.notifications}.values()
    assert Counter(n["type"] for n in unique) == {"xcm.sent": 3, "xcm.received": 3}
    assert cluster.keys_left() == {}


@settings(max_examples=200, deadline=None)
@given(st.data(), st.booleans())
def test_identical_messages_among_other_sends_of_their_origin(
    data: st.DataObject, topic: bool
) -> None:
    # New journeys are spread over the partitions by their id (ocstream/xcm/keys.py). Three
    # identical transfers from Moonbeam (the same bytes; or the same topic, which Asset Hub
    # reports, over other bytes) among five other sends of Moonbeam, in any order of blocks;
    # Asset Hub receives them in the order they were sent; the two chains' blocks interleave in
    # any way, and the partitions run in any order. The identical ones share a key, so they
    # keep their order up to Asset Hub's FIFO and each gets its own receipt.
    shared = "0x" + "ab" * 32
    kinds = data.draw(st.permutations(["same"] * 3 + ["other"] * 5))
    sends, receipts = [], []
    for k, kind in enumerate(kinds):
        number = 10 + k
        if kind == "same":
            sent_hash = "0x" + f"{number:064x}" if topic else HASH
            sends.append(
                sent_leg(
                    MOONBEAM, [ASSET_HUB], message_hash=sent_hash,
                    topic=shared if topic else None, number=number,
                )
            )  # fmt: skip
            reported = shared if topic else HASH
        else:
            reported = "0x" + f"{0xC000 + number:064x}"
            sends.append(sent_leg(MOONBEAM, [ASSET_HUB], message_hash=reported, number=number))
        receipts.append(
            received_leg(
                ASSET_HUB, message_hash=reported, message_id=reported, number=30 + k,
                event=1, from_chain=MOONBEAM,
            )
        )  # fmt: skip
    cluster = Cluster()
    queues: list[list[SentLeg] | list[ReceivedLeg]] = [sends, receipts]
    while any(queues):
        queue = data.draw(st.sampled_from([q for q in queues if q]))
        cluster.publish_legs([queue.pop(0)])
        for _ in range(data.draw(st.integers(0, 2))):
            if busy := cluster.busy():
                cluster.step(data.draw(st.sampled_from(busy)))
    cluster.drain()
    expected = {str(10 + k): str(30 + k) for k in range(len(kinds))}
    assert received_blocks(cluster) == expected
    finish(cluster)
    assert cluster.keys_left() == {}


def test_a_late_hop_and_its_receipt_after_the_timeout() -> None:
    """Relay → Hydration → Asset Hub timed out; then Asset Hub's receipt of the hop-out comes,
    and only after it Hydration's block (its ingress was lagging): the receipt waits for the
    hop-out's ids, then is reported once as the journey's late receipt."""
    blocks, _ = two_legs(topic=False, fail_at_hop=False)
    sent, hop, _relayed, final = blocks
    cluster = Cluster(MatchSettings(journey_ttl=60))
    publish(cluster, *sent)
    cluster.clock.now += 61
    cluster.fire_deadlines()
    cluster.drain()
    publish(cluster, *final)
    publish(cluster, *hop)
    types = [n["type"] for n in cluster.notifications]
    assert types == ["xcm.sent", "xcm.timeout", "xcm.hop", "xcm.hop", "xcm.received"]
    assert cluster.notifications[-1]["late"] is True
    assert cluster.counters["late_received"] == 1


def test_local_network_clocks_count_blocks_and_are_not_compared() -> None:
    # Seen on the local network: chopsticks stamps each block with its parent's time + 12 s, so
    # para 1000 (many blocks) runs ahead of para 1001; a receipt at 1001 #3 carried a time 33 s
    # before the send at 1000 #6 it answered.
    para_1000, para_1001 = "urn:ocn:local:1000", "urn:ocn:local:1001"
    cluster = Cluster()
    answer = received_leg(
        para_1001, message_hash=HASH, number=3, from_chain=para_1000, timestamp=T0 - 33_000
    )
    publish(cluster, answer)
    publish(cluster, sent_leg(para_1000, [para_1001], message_hash=HASH, number=6, timestamp=T0))
    assert received_blocks(cluster) == {"6": "3"}


def test_a_downward_receipt_is_ordered_by_the_relay_block_that_queued_it() -> None:
    # The para names the relay block that queued each downward message (its slot): a receipt of
    # a message queued before the send is an earlier identical message's, whatever the clocks.
    relay, para = "urn:ocn:polkadot:0", "urn:ocn:polkadot:2034"
    cluster = Cluster()
    older = received_leg(para, message_hash=HASH, number=40, from_chain=relay).model_copy(
        update={"slot": "dmp:99:0"}
    )
    publish(cluster, older)
    publish(cluster, sent_leg(relay, [para], message_hash=HASH, number=100))
    assert received_blocks(cluster) == {}
    own = received_leg(para, message_hash=HASH, number=41, event=2, from_chain=relay)
    publish(cluster, own.model_copy(update={"slot": "dmp:100:0"}))
    assert received_blocks(cluster) == {"100": "41"}


def _seen_keys(cluster: Cluster) -> list[str]:
    return [key for stores in cluster.stores for key in stores["seen"]]


def test_seen_keys_are_short_digests_of_the_identities() -> None:
    """What a finished journey keeps for a day is its ``seen`` entries: each key is the chain
    and 22 characters of a digest, not the leg's identity (about 100 characters)."""
    cluster = Cluster()
    first, r1 = send(10, None), receipt(30, None)
    publish(cluster, first, r1)
    keys = _seen_keys(cluster)
    assert len(keys) == 2, keys  # the send and the receipt that ended its journey
    for key in keys:
        chain, _, digest = key.partition("|s:")
        assert chain.split("#")[0] in (MOONBEAM, ASSET_HUB), key
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", digest), key
    assert not any(first.identity in key or r1.identity in key for key in keys)


def test_seen_entries_written_before_short_keys_still_catch_replays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rolling upgrade: the version before kept ``seen`` entries under the whole identity.
    Its legs replayed to the new version (an ingress re-publishing its last blocks, a worker
    killed before its commit) are still recognised until those entries expire."""
    cluster = Cluster()
    first, r1 = send(10, None), receipt(30, None)
    with monkeypatch.context() as old_version:
        old_version.setattr(matching, "_seen_key", lambda chain, identity: f"{chain}|{identity}")
        publish(cluster, first, r1)
    assert any(first.identity in key for key in _seen_keys(cluster))
    assert received_blocks(cluster) == {"10": "30"}
    sent_before = len(cluster.notifications)
    publish(cluster, first, r1)  # both replayed to the new version
    assert len(cluster.notifications) == sent_before
    assert cluster.counters["duplicate_legs"] == 2
    _an_identical_message_gets_its_own_receipt(cluster)
