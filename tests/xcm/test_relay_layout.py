"""How relayed legs wait for their journey in ``xcm-relay`` (``ocstream/xcm/matching.py``).

A relayed leg that arrives before its journey is indexed at its recipient waits under each of
its ids, and nowhere else: one entry per id, ``{"legs": [...], "expires": <earliest>}``. Versions
before this layout listed identities under each id and kept the leg under ``leg:<identity>``;
state written that way is converted on first read and still matches, expires and is swept.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from ocstream.xcm.legs import RelayedLeg
from ocstream.xcm.matching import MatchSettings, Tables, key_chain
from ocstream.xcm.matching import _relay_waiting as relay_waiting

from .sim import Cluster, finish, partition_of, relayed_leg, sent_leg

RELAY = "urn:ocn:polkadot:0"
ASSET_HUB = "urn:ocn:polkadot:1000"
MOONBEAM = "urn:ocn:polkadot:2004"
HYDRATION = "urn:ocn:polkadot:2034"
TTL = MatchSettings().pending_ttl


def h(n: int) -> str:
    return "0x" + f"{n:064x}"


def relay_store(cluster: Cluster) -> dict[str, Any]:
    return cluster.stores[partition_of(ASSET_HUB)]["relay"]


def publish(cluster: Cluster, *legs: Any) -> None:
    for leg in legs:
        cluster.publish_legs([leg])
    cluster.drain()


def types(cluster: Cluster) -> list[str]:
    return [n["type"] for n in cluster.notifications]


def waiting(cluster: Cluster, message_id: str) -> list[str]:
    """Identities of the relayed legs waiting at Asset Hub under ``message_id``."""
    value = relay_store(cluster).get(f"{ASSET_HUB}:{message_id}")
    return [] if value is None else [entry["leg"]["identity"] for entry in value["legs"]]


def sweep(cluster: Cluster) -> None:
    cluster.sweep()
    cluster.drain()


def test_an_early_relayed_leg_waits_under_its_ids_only_and_is_gone_once_matched() -> None:
    cluster = Cluster()
    relayed = relayed_leg(RELAY, MOONBEAM, ASSET_HUB, message_hash=h(1), topic=h(9), number=20)
    publish(cluster, relayed)
    assert sorted(relay_store(cluster)) == sorted([f"{ASSET_HUB}:{h(1)}", f"{ASSET_HUB}:{h(9)}"])
    assert waiting(cluster, h(1)) == waiting(cluster, h(9)) == [relayed.identity]
    publish(cluster, relayed)  # a re-delivery is not kept twice
    assert waiting(cluster, h(1)) == [relayed.identity]
    assert cluster.counters["duplicate_legs"] == 1

    publish(cluster, sent_leg(MOONBEAM, [ASSET_HUB], message_hash=h(1), topic=h(9), number=10))
    assert types(cluster) == ["xcm.sent", "xcm.relayed"]
    assert relay_store(cluster) == {}


def test_legs_sharing_an_id_expire_one_by_one() -> None:
    # Two identical messages (no topic: the same hash) relayed 10 minutes apart; neither
    # journey is ever indexed here.
    cluster = Cluster()
    first = relayed_leg(RELAY, MOONBEAM, ASSET_HUB, message_hash=h(1), number=20)
    publish(cluster, first)
    cluster.clock.now += 600
    second = relayed_leg(RELAY, MOONBEAM, ASSET_HUB, message_hash=h(1), number=120)
    publish(cluster, second)
    assert waiting(cluster, h(1)) == [first.identity, second.identity]
    assert relay_store(cluster)[f"{ASSET_HUB}:{h(1)}"]["expires"] == cluster.clock.now - 600 + TTL

    cluster.clock.now += TTL - 300  # past the first one's expiry only
    sweep(cluster)
    assert waiting(cluster, h(1)) == [second.identity]
    assert relay_store(cluster)[f"{ASSET_HUB}:{h(1)}"]["expires"] == cluster.clock.now + 300
    assert cluster.counters["relay_expired"] == 1

    cluster.clock.now += 600
    sweep(cluster)
    assert relay_store(cluster) == {}
    assert cluster.counters["relay_expired"] == 2


def test_one_of_two_legs_sharing_an_id_is_matched_and_the_other_keeps_waiting() -> None:
    # From two senders: a journey is indexed here with its previous stop, and only the leg
    # relayed from that stop is its.
    cluster = Cluster()
    from_hydration = relayed_leg(RELAY, HYDRATION, ASSET_HUB, message_hash=h(1), number=20)
    from_moonbeam = relayed_leg(RELAY, MOONBEAM, ASSET_HUB, message_hash=h(1), number=21)
    publish(cluster, from_hydration, from_moonbeam)
    publish(cluster, sent_leg(MOONBEAM, [ASSET_HUB], message_hash=h(1), number=10))
    assert types(cluster) == ["xcm.sent", "xcm.relayed"]
    assert cluster.notifications[1]["waypoint"]["blockNumber"] == "21"
    assert waiting(cluster, h(1)) == [from_hydration.identity]
    finish(cluster)
    assert cluster.counters["relay_expired"] == 1
    assert cluster.keys_left().get("relay") is None


# -- state written by versions before this layout ---------------------------------------------


def legacy(cluster: Cluster, *legs: RelayedLeg) -> None:
    """Write ``legs`` into Asset Hub's ``xcm-relay`` as earlier versions kept them: each leg
    under ``{chain}|leg:{identity}``, its identity listed under each of its ids."""
    store = relay_store(cluster)
    for leg in legs:
        data = orjson.loads(leg.model_dump_json(by_alias=True))
        entry = {"leg": data, "ids": leg.ids, "expires": cluster.clock.now + TTL}
        store[f"{ASSET_HUB}|leg:{leg.identity}"] = entry
        for message_id in leg.ids:
            store.setdefault(f"{ASSET_HUB}:{message_id}", []).append(leg.identity)


def test_the_earlier_layout_is_converted_with_everything_linked_to_it() -> None:
    # a: ids 1 and 9; b: ids 2 and 9; c: id 3 (not linked to the others).
    cluster = Cluster()
    a = relayed_leg(RELAY, MOONBEAM, ASSET_HUB, message_hash=h(1), topic=h(9), number=20)
    b = relayed_leg(RELAY, MOONBEAM, ASSET_HUB, message_hash=h(2), topic=h(9), number=21)
    c = relayed_leg(RELAY, MOONBEAM, ASSET_HUB, message_hash=h(3), number=22)
    legacy(cluster, a, b, c)
    tables = Tables(cluster.stores[partition_of(ASSET_HUB)])  # type: ignore[arg-type]
    assert [e["leg"]["identity"] for e in relay_waiting(tables, ASSET_HUB, h(1))] == [a.identity]
    tables.commit()
    store = relay_store(cluster)
    # Reaching 1 converted a, so 9, so b, so 2; c was not reached and is as it was.
    assert sorted(store) == sorted(
        [f"{ASSET_HUB}:{h(n)}" for n in (1, 2, 3, 9)] + [f"{ASSET_HUB}|leg:{c.identity}"]
    )
    assert waiting(cluster, h(9)) == [a.identity, b.identity]
    assert waiting(cluster, h(2)) == [b.identity]
    assert store[f"{ASSET_HUB}:{h(3)}"] == [c.identity]


def test_legs_kept_the_earlier_way_still_match_wait_beside_new_ones_and_expire() -> None:
    cluster = Cluster()
    old = relayed_leg(RELAY, MOONBEAM, ASSET_HUB, message_hash=h(1), topic=h(9), number=20)
    stale = relayed_leg(RELAY, MOONBEAM, ASSET_HUB, message_hash=h(5), number=23)
    legacy(cluster, old, stale)
    # A new leg from another sender that shares the old one's topic.
    new = relayed_leg(RELAY, HYDRATION, ASSET_HUB, message_hash=h(7), topic=h(9), number=30)
    publish(cluster, new)
    assert waiting(cluster, h(9)) == [old.identity, new.identity]
    assert waiting(cluster, h(1)) == [old.identity]
    assert waiting(cluster, h(7)) == [new.identity]
    assert f"{ASSET_HUB}|leg:{old.identity}" not in relay_store(cluster)
    publish(cluster, old)  # re-delivered across the upgrade: already waiting
    assert cluster.counters["duplicate_legs"] == 1

    publish(cluster, sent_leg(MOONBEAM, [ASSET_HUB], message_hash=h(1), topic=h(9), number=10))
    assert types(cluster) == ["xcm.sent", "xcm.relayed"]
    assert cluster.notifications[1]["waypoint"]["blockNumber"] == "20"
    assert waiting(cluster, h(1)) == []
    assert waiting(cluster, h(9)) == waiting(cluster, h(7)) == [new.identity]

    # The legacy leg nothing reached expires under its identity and is swept from its list.
    finish(cluster)
    assert cluster.counters["relay_expired"] == 2  # stale (the earlier layout) and new
    assert cluster.keys_left().get("relay") is None


def test_the_sweep_finds_the_chain_of_every_kind_of_key() -> None:
    # A relayed leg's entry is the first ``{chain}:{id}`` key that expires: the sweep must send
    # it to that chain's partition, whatever the id looks like.
    assert key_chain(f"{ASSET_HUB}:{h(1)}") == ASSET_HUB
    assert key_chain(f"{ASSET_HUB}:dmp:21000000:3") == ASSET_HUB
    assert key_chain(f"{ASSET_HUB}:bw:{h(1)}") == ASSET_HUB
    assert key_chain(f"{ASSET_HUB}|leg:{ASSET_HUB}|0x01|4") == ASSET_HUB
    assert key_chain(f"{MOONBEAM}#5|s:AbC") == f"{MOONBEAM}#5"
    assert key_chain("urn:ocn:ethereum:1:0xab") == "urn:ocn:ethereum:1"


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.integers(1, 4), min_size=1, max_size=3, unique=True), min_size=1, max_size=6
    ),
    st.lists(st.integers(0, 5), max_size=2),
    st.integers(1, 4),
)
def test_any_earlier_layout_converts_whole_and_is_swept(
    ids_of: list[list[int]], stale_beside: list[int], start: int
) -> None:
    """Legs with ids drawn from four, kept the earlier way, and lists that also name a leg
    that is gone (not cleaned up): reading one id converts exactly the legs linked to it
    (through shared ids), each under every one of its ids once, and leaves the rest as it
    was; then everything expires and is swept."""
    cluster = Cluster()
    legs = [
        relayed_leg(RELAY, MOONBEAM, ASSET_HUB, message_hash=h(ids[0]), number=100 + n).model_copy(
            update={"ids": [h(i) for i in ids]}
        )
        for n, ids in enumerate(ids_of)
    ]
    legacy(cluster, *legs)
    store = relay_store(cluster)
    for n in stale_beside:  # a leg matched long ago, still listed beside a waiting one
        store[f"{ASSET_HUB}:{h(ids_of[n % len(ids_of)][0])}"].append(f"{RELAY}|gone|{n}")

    linked: set[int] = {start}
    grew = True
    while grew:
        grew = False
        for ids in ids_of:
            if linked & set(ids) and not set(ids) <= linked:
                linked |= set(ids)
                grew = True
    tables = Tables(cluster.stores[partition_of(ASSET_HUB)])  # type: ignore[arg-type]
    relay_waiting(tables, ASSET_HUB, h(start))
    tables.commit()

    for leg, ids in zip(legs, ids_of, strict=True):
        converted = bool(linked & set(ids))
        assert (f"{ASSET_HUB}|leg:{leg.identity}" in store) is not converted
        for i in ids:
            value = store[f"{ASSET_HUB}:{h(i)}"]
            if converted:
                assert [e["leg"]["identity"] for e in value["legs"]].count(leg.identity) == 1
            else:
                assert leg.identity in value
    for i in linked:  # what was read is in the new layout, or gone when only stale
        value = store.get(f"{ASSET_HUB}:{h(i)}")
        assert value is None or isinstance(value, dict)

    finish(cluster)
    assert cluster.counters["relay_expired"] == len(legs)
    assert cluster.keys_left().get("relay") is None
