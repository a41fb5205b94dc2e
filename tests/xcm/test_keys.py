"""How ``xcm-legs`` records are keyed (``ocstream/xcm/keys.py``; docs/matching.md §3): every leg by
the chain it concerns, except sent legs that can only start a journey, which are spread over the
partitions by their origin and id. Orders and outcomes are checked by the property tests, which
route through the same function (``tests/xcm/sim.py``); this checks the keys themselves."""

from __future__ import annotations

from collections import Counter
from typing import cast

import orjson
import pytest

from ocstream.transport.wire import partition_for_key
from ocstream.xcm.keys import leg_key, spread_key, spread_origin
from ocstream.xcm.legs import NO_HASH, SentLeg, leg_record
from ocstream.xcm.matching import TABLES, Engine, Tables

from .sim import bridge_leg, received_leg, relayed_leg, sent_leg

RELAY = "urn:ocn:polkadot:0"
ASSET_HUB = "urn:ocn:polkadot:1000"
HYDRATION = "urn:ocn:polkadot:2034"


def h(n: int) -> str:
    return "0x" + f"{n:064x}"


def test_a_busy_origins_new_journeys_spread_over_every_partition() -> None:
    sends = [sent_leg(ASSET_HUB, [HYDRATION], message_hash=h(n), number=n) for n in range(1, 4001)]
    for partitions in (1, 8, 16, 50):
        keys = [leg_key(leg, partitions) for leg in sends]
        assert {spread_origin(key) for key in keys} == {ASSET_HUB}
        # One key per partition, so at most one sweep record per partition and origin.
        assert len(set(keys)) == partitions
        load = Counter(partition_for_key(key.encode(), partitions) for key in keys)
        assert len(load) == partitions
        # As even as the ids' hashes: within 20 % of an even share.
        assert max(load.values()) < 1.2 * len(keys) / partitions, load


def test_sends_that_share_an_id_share_a_key() -> None:
    # Identical messages (the same hash) keep their order at the destination's FIFO.
    first = sent_leg(ASSET_HUB, [HYDRATION], message_hash=h(7), number=10)
    again = sent_leg(ASSET_HUB, [HYDRATION], message_hash=h(7), number=11)
    assert first.identity != again.identity
    assert leg_key(first, 16) == leg_key(again, 16) == spread_key(ASSET_HUB, h(7), 16)
    # With a topic, the topic decides: the same topic is one key whatever the bytes.
    topical = [
        sent_leg(ASSET_HUB, [HYDRATION], message_hash=h(n), topic=h(0xABC), number=n)
        for n in range(20, 40)
    ]
    assert {leg_key(leg, 16) for leg in topical} == {spread_key(ASSET_HUB, h(0xABC), 16)}


def test_legs_that_need_their_chains_state_keep_the_chain() -> None:
    hop_in = received_leg(HYDRATION, message_hash=h(1), number=40, from_chain=RELAY)
    assert leg_key(hop_in, 16) == HYDRATION
    sure = sent_leg(HYDRATION, [ASSET_HUB], message_hash=h(2), number=40, continues=hop_in.identity)
    maybe = sent_leg(
        HYDRATION, [ASSET_HUB], message_hash=h(3), number=40, hop_candidates=[hop_in.identity]
    )
    byteless = sent_leg(RELAY, [HYDRATION], message_hash=NO_HASH, number=41)
    assert [leg_key(leg, 16) for leg in (sure, maybe, byteless)] == [HYDRATION, HYDRATION, RELAY]
    relayed = relayed_leg(RELAY, HYDRATION, ASSET_HUB, message_hash=h(2), number=41)
    assert leg_key(relayed, 16) == ASSET_HUB
    bridged = bridge_leg(ASSET_HUB, "received", ids=[h(4)], nonce="7")
    assert leg_key(bridged, 16) == ASSET_HUB
    assert spread_origin(ASSET_HUB) is None


def _handle(key: str, leg: SentLeg) -> list[str]:
    engine = Engine(now=lambda: 1000.0)
    tables = Tables({name: {} for name in TABLES})
    step = engine.handle(tables, key, orjson.loads(leg_record(leg)))
    return [cast(str, note["type"]) for note in step.notifications]


def test_a_new_journey_is_matched_under_either_key() -> None:
    leg = sent_leg(ASSET_HUB, [HYDRATION], message_hash=h(5), number=12)
    assert _handle(leg_key(leg, 16), leg) == ["xcm.sent"]
    # Keyed by its origin, as extraction wrote sent legs before they were spread (records still
    # in the topic when a deployment is upgraded).
    assert _handle(ASSET_HUB, leg) == ["xcm.sent"]


def test_a_hop_out_under_a_spread_key_is_refused() -> None:
    # Its receipt's state is on its chain's partition: matched anywhere else, it would become a
    # journey of its own. The worker dead-letters the record (bad-record) instead.
    hop_out = sent_leg(HYDRATION, [ASSET_HUB], message_hash=h(2), number=40, continues="x|y|1")
    with pytest.raises(ValueError, match="keyed"):
        _handle(spread_key(HYDRATION, h(2), 16), hop_out)
    # Nor is any sent leg keyed by another chain, or by another origin's shard.
    other = sent_leg(HYDRATION, [ASSET_HUB], message_hash=h(3), number=40)
    for key in (ASSET_HUB, spread_key(ASSET_HUB, h(3), 16)):
        with pytest.raises(ValueError, match="keyed"):
            _handle(key, other)
    # Nor a downward message whose bytes were not read: it has only its slot to be known by.
    byteless = sent_leg(RELAY, [HYDRATION], message_hash=NO_HASH, number=41)
    assert _handle(RELAY, byteless) == ["xcm.sent"]
    with pytest.raises(ValueError, match="keyed"):
        _handle(spread_key(RELAY, h(9), 16), byteless)
