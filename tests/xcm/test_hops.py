"""Multi-hop journeys as real chains send them (issue 11, point 1 and 4).

The real journey of ``cases/v1-dmp-hop-polkadot-hydra.json``: Polkadot #19777220 sends a V3
message (topic ``0x2d61…``) to Hydration, whose ``InitiateReserveWithdraw`` forwards it to Asset
Hub. Hydration #4624161 executes it (``DmpQueue.ExecutedDownward``) and re-sends the nested
program as ``0x03f0…`` (no topic) in the same extrinsic; a user's unrelated transfer ``0x6e39…``
shares the page. Polkadot #19777221 backs the page. The Asset Hub receipt is not recorded; it is
built as the old ``XcmpQueue.Success`` Asset Hub emitted then would report it.

Real chains vary this journey in ways the recording does not show, so the tests edit the recorded
Hydration block the way those chains behave, and check that the link holds in every arrival order:

* Astar emits ``XcmpQueue.XcmpMessageSent`` in the **Finalization** phase, apart from the
  execution of the incoming message: no position links the send to the receipt.
* A chain that swaps on the way re-sends with a **new SetTopic** of its own.
* A current runtime keeps the **same topic** on the re-sent message, and the destination's
  ``MessageQueue.Processed`` reports the topic: the receipt can reach the destination's partition
  before the hop-out's ids do, and must still report the message that ran there.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocstream.ingress.decode import DecoderCache, RuntimeDecoder, read_compact
from ocstream.ingress.model import ExtendedBlock
from ocstream.xcm.codec import XcmCodec
from ocstream.xcm.extract import Extracted, decode_hrmp_outbound, extract
from ocstream.xcm.legs import RelayedLeg, SentLeg, continues_program

from .sim import Cluster, finish, received_leg, relayed_leg, run, run_in_any_order, sent_leg
from .test_cases import extract_case, load_case

CASE = "v1-dmp-hop-polkadot-hydra"
HYDRATION_BLOCK = "hy4624161"
HYDRATION = "urn:ocn:polkadot:2034"
ASSET_HUB = "urn:ocn:polkadot:1000"
ORIGIN_HASH = "0xba3e17a74b5454c96b426c1379e5d9f7acebc3f239bd84b066bad9e5dec26b2f"
HOP_OUT_HASH = "0x03f0f87c9f89de3b78e730e0c6af44941b3ada5446b46ff59460faa667a0c85d"
ORIGIN_TOPIC = "0x2d61ceafa0f62007fe36e1029ed347f974db05be5e5baaff31736202aeaffbdf"
NEW_TOPIC = "0x" + "5a" * 32
TERMINAL = {"xcm.received", "xcm.timeout"}


def _blake2(data: bytes) -> str:
    return "0x" + hashlib.blake2b(data, digest_size=32).hexdigest()


def _compact(n: int) -> bytes:
    if n < 1 << 6:
        return bytes([n << 2])
    if n < 1 << 14:
        return ((n << 2) | 1).to_bytes(2, "little")
    return ((n << 2) | 2).to_bytes(4, "little")


def _with_topic(message: bytes, topic: str) -> bytes:
    """A V3+ message with ``SetTopic(topic)`` appended, as a router appends it."""
    count, pos = read_compact(message, 1)
    return message[:1] + _compact(count + 1) + message[pos:] + b"\x2c" + bytes.fromhex(topic[2:])


def _edit_hop_out(
    block: ExtendedBlock, codec: XcmCodec, *, topic: str | None, phase: str | None
) -> tuple[ExtendedBlock, str]:
    """Hydration's block with its hop-out re-sent under ``topic`` and/or its send event moved
    to ``phase``; returns the block and the hop-out's hash."""
    storage = []
    new_hash = HOP_OUT_HASH
    for item in block.storage:
        if (item.pallet, item.item) == ("ParachainSystem", "HrmpOutboundMessages") and topic:
            assert item.value is not None
            entries = decode_hrmp_outbound(bytes.fromhex(item.value[2:]))
            value = _compact(len(entries))
            for recipient, page in entries:
                fragments = [m.data for m in codec.split_page(page)]
                assert _blake2(fragments[0]) == HOP_OUT_HASH
                fragments[0] = _with_topic(fragments[0], topic)
                new_hash = _blake2(fragments[0])
                page = page[:1] + b"".join(fragments)
                value += recipient.to_bytes(4, "little") + _compact(len(page)) + page
            item = item.model_copy(update={"value": "0x" + value.hex()})
        storage.append(item)
    events = []
    for event in block.events:
        if (event.module, event.name) == ("XcmpQueue", "XcmpMessageSent") and event.fields == {
            "message_hash": HOP_OUT_HASH
        }:
            update: dict[str, Any] = {"fields": {"message_hash": new_hash}}
            if phase is not None:
                update.update(phase=phase, extrinsic_index=None)
            event = event.model_copy(update=update)
        events.append(event)
    return block.model_copy(update={"storage": storage, "events": events}), new_hash


def _journey(
    fixtures_dir: Path,
    decoder_for: Callable[[str, str], RuntimeDecoder],
    routed_codec: XcmCodec,
    decoders: DecoderCache,
    *,
    topic: str | None = None,
    phase: str | None = None,
    receipt_reports: str = "hash",
) -> tuple[list[list[Any]], str, Extracted]:
    """The journey's blocks as leg lists (Polkadot send, Hydration hop, Polkadot relayed,
    Asset Hub receipt), with Hydration edited; also the hop-out's hash and the Hydration
    extraction."""
    case = load_case(fixtures_dir, CASE)
    found = extract_case(fixtures_dir, case, decoder_for, routed_codec, decoders)
    block, _ = found[HYDRATION_BLOCK]
    metadata = next(b["metadata"] for b in case["blocks"] if b["ref"] == HYDRATION_BLOCK)
    codec = XcmCodec(decoder_for(HYDRATION, metadata.rsplit("/", 1)[-1]))
    edited, hop_hash = _edit_hop_out(block, codec, topic=topic, phase=phase)
    hydration = extract(edited, codec, ss58_prefix=0)
    reported = {"hash": hop_hash, "topic": topic or ORIGIN_TOPIC}[receipt_reports]
    receipt = received_leg(
        ASSET_HUB,
        message_hash=reported,
        message_id=reported,
        number=5_000_000,
        from_chain=HYDRATION,
        timestamp=1709704020000,
    )
    # The relay backed the page Hydration sent: with the edited message in it.
    (hop_out,) = [leg for leg in hydration.sent if leg.message_hash == hop_hash]
    relayed = [
        leg.model_copy(
            update={
                "message_hash": hop_hash,
                "message_id": hop_out.topic or hop_hash,
                "ids": hop_out.ids,
            }
        )
        if isinstance(leg, RelayedLeg) and leg.message_hash == HOP_OUT_HASH
        else leg
        for leg in found["dot19777221"][1].legs
    ]
    blocks: list[list[Any]] = [found["dot19777220"][1].legs, hydration.legs, relayed, [receipt]]
    return blocks, hop_hash, hydration


def _origin_journey(cluster: Cluster) -> list[dict[str, Any]]:
    unique = {n["id"]: n for n in cluster.notifications}.values()
    return [n for n in unique if n["origin"]["messageHash"] == ORIGIN_HASH]


def _types(notifications: Iterable[dict[str, Any]]) -> Counter[str]:
    return Counter(n["type"] for n in notifications)


#: The origin's topic kept by the hop, the destination's receipt by topic (held until the hop).
HELD = "same-topic-receipt-by-topic"

EXPECTED = Counter({"xcm.sent": 1, "xcm.hop": 2, "xcm.relayed": 1, "xcm.received": 1})

VARIANTS = {
    # (topic of the re-sent message, phase of its send event, what the receipt reports)
    "finalization-phase": (None, "Finalization", "hash"),
    "new-topic": (NEW_TOPIC, None, "topic"),
    "new-topic-finalization": (NEW_TOPIC, "Finalization", "hash"),
    "same-topic-receipt-by-topic": (ORIGIN_TOPIC, None, "topic"),
    "same-topic-finalization-receipt-by-topic": (ORIGIN_TOPIC, "Finalization", "topic"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_hop_out_is_linked_in_the_recorded_order(
    variant: str,
    fixtures_dir: Path,
    decoder_for: Callable[[str, str], RuntimeDecoder],
    routed_codec: XcmCodec,
    decoders: DecoderCache,
) -> None:
    topic, phase, reports = VARIANTS[variant]
    blocks, hop_hash, hydration = _journey(
        fixtures_dir,
        decoder_for,
        routed_codec,
        decoders,
        topic=topic,
        phase=phase,
        receipt_reports=reports,
    )
    (hop_out,) = [leg for leg in hydration.sent if leg.message_hash == hop_hash]
    (receipt,) = hydration.received
    if phase == "Finalization" and topic is None:
        # No position and no topic: only the content can tell, so the receipt is offered.
        assert hop_out.continues is None
        assert hop_out.hop_candidates == [receipt.identity]
    # The user's own transfer in extrinsic 2 is not offered anything to continue.
    (other,) = [leg for leg in hydration.sent if leg.message_hash != hop_hash]
    assert other.continues is None and other.hop_candidates == []

    cluster = run(blocks, [0, 1, 2, 3], [])
    mine = _origin_journey(cluster)
    assert _types(mine) == EXPECTED, [n["type"] for n in mine]
    hops = sorted(
        (n["direction"], n["waypoint"]["messageHash"]) for n in mine if n["type"] == "xcm.hop"
    )
    assert hops == [("in", ORIGIN_HASH), ("out", hop_hash)]
    (received,) = [n for n in mine if n["type"] == "xcm.received"]
    # The message that ran at Asset Hub is the hop-out, whatever id the receipt reported.
    assert received["waypoint"]["messageHash"] == hop_hash
    assert received["destination"]["messageHash"] == hop_hash
    # The user's transfer is a journey of its own, and the only other one.
    others = [n for n in cluster.notifications if n not in mine]
    assert {n["origin"]["messageHash"] for n in others} == {other.message_hash}


@pytest.mark.parametrize("variant", list(VARIANTS))
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_the_hop_out_is_linked_in_any_arrival_order(
    variant: str,
    data: st.DataObject,
    fixtures_dir: Path,
    decoder_for: Callable[[str, str], RuntimeDecoder],
    routed_codec: XcmCodec,
    decoders: DecoderCache,
) -> None:
    blocks, hop_hash, _ = _cached_journey(
        variant, fixtures_dir, decoder_for, routed_codec, decoders
    )
    reference, cluster = run_in_any_order(data, blocks, choices=40)
    assert {n["id"] for n in cluster.notifications} == {n["id"] for n in reference.notifications}
    mine = _origin_journey(cluster)
    assert _types(mine) == EXPECTED
    assert [n for n in mine if n["type"] in TERMINAL][0]["waypoint"]["messageHash"] == hop_hash
    # No second journey was started for the hop-out.
    sent = [
        n for n in {n["id"]: n for n in cluster.notifications}.values() if n["type"] == "xcm.sent"
    ]
    assert len(sent) == 2  # the origin's and the user's unrelated transfer


_CACHE: dict[str, tuple[list[list[Any]], str, Extracted]] = {}


def _cached_journey(
    variant: str,
    fixtures_dir: Path,
    decoder_for: Callable[[str, str], RuntimeDecoder],
    routed_codec: XcmCodec,
    decoders: DecoderCache,
) -> tuple[list[list[Any]], str, Extracted]:
    """:func:`_journey` for one of :data:`VARIANTS`, built once per test session."""
    if variant not in _CACHE:
        topic, phase, reports = VARIANTS[variant]
        _CACHE[variant] = _journey(
            fixtures_dir,
            decoder_for,
            routed_codec,
            decoders,
            topic=topic,
            phase=phase,
            receipt_reports=reports,
        )
    return _CACHE[variant]


# -- the content comparison across XCM versions ---------------------------------------------------

BENEFICIARY_V3 = {
    "parents": 0,
    "interior": {"X1": {"AccountId32": {"network": None, "id": "0x" + "8e" * 32}}},
}
BENEFICIARY_V4 = {
    "parents": 0,
    "interior": {"X1": [{"AccountId32": {"network": None, "id": "0x" + "8e" * 32}}]},
}
USDT_V3 = {
    "Concrete": {
        "parents": 1,
        "interior": {"X3": [{"Parachain": 1000}, {"PalletInstance": 50}, {"GeneralIndex": 1984}]},
    }
}
USDT_V4 = {
    "parents": 1,
    "interior": {"X3": [{"Parachain": 1000}, {"PalletInstance": 50}, {"GeneralIndex": 1984}]},
}


def test_content_matches_across_xcm_versions() -> None:
    """A V3 nested program (what the origin asked for) against the V4 message the hop chain
    re-sent: ``Concrete`` asset ids, ``X1([j])`` junctions, reanchored fees and a new topic."""
    asked = [
        {
            "BuyExecution": {
                "fees": {"id": USDT_V3, "fun": {"Fungible": 1000}},
                "weight_limit": "Unlimited",
            }
        },
        {"DepositAsset": {"assets": {"Wild": {"AllCounted": 1}}, "beneficiary": BENEFICIARY_V3}},
    ]
    resent = {
        "V4": [
            {"ReserveAssetDeposited": [{"id": USDT_V4, "fun": {"Fungible": 900}}]},
            "ClearOrigin",
            {
                "BuyExecution": {
                    "fees": {"id": USDT_V4, "fun": {"Fungible": 900}},
                    "weight_limit": "Unlimited",
                }
            },
            {
                "DepositAsset": {
                    "assets": {"Wild": {"AllCounted": 1}},
                    "beneficiary": BENEFICIARY_V4,
                }
            },
            {"SetTopic": NEW_TOPIC},
        ]
    }
    assert continues_program(asked, resent)
    other = {
        "V4": [
            *resent["V4"][:3],
            {
                "DepositAsset": {
                    "assets": {"Wild": {"AllCounted": 1}},
                    "beneficiary": {**BENEFICIARY_V4, "parents": 1},
                }
            },
        ]
    }
    assert not continues_program(asked, other)
    # A V2 program (``Wild(All)`` with ``max_assets``, ``network: Any``) carried on as V3.
    asked_v2 = [
        {
            "DepositAsset": {
                "assets": {"Wild": "All"},
                "max_assets": 1,
                "beneficiary": {
                    "parents": 0,
                    "interior": {"X1": {"AccountId32": {"network": "Any", "id": "0x" + "8e" * 32}}},
                },
            }
        }
    ]
    assert continues_program(asked_v2, resent)


def test_a_signed_send_is_not_a_hop_out_of_another_extrinsic(
    fixtures_dir: Path,
    decoder_for: Callable[[str, str], RuntimeDecoder],
    routed_codec: XcmCodec,
    decoders: DecoderCache,
) -> None:
    """The user's transfer (signed, extrinsic 2) ends like nothing the relay asked for, but the
    rule does not even try: a signed send continues only a receipt of its own extrinsic."""
    _, _, hydration = _journey(fixtures_dir, decoder_for, routed_codec, decoders)
    signed = [
        leg
        for leg in hydration.sent
        if leg.sender is not None or leg.context["extrinsicId"] == "4624161-2"
    ]
    assert signed and all(isinstance(leg, SentLeg) and leg.hop_candidates == [] for leg in signed)


def test_a_receipt_by_topic_waits_for_the_last_hops_message(
    fixtures_dir: Path,
    decoder_for: Callable[[str, str], RuntimeDecoder],
    routed_codec: XcmCodec,
    decoders: DecoderCache,
) -> None:
    """Asset Hub's receipt (by the topic the hop kept) is ingested before Hydration's block: it
    matches the journey at once, but reports the message that ran, which only Hydration's
    hop-out tells."""
    blocks, hop_hash, _ = _cached_journey(HELD, fixtures_dir, decoder_for, routed_codec, decoders)
    cluster = run(blocks, [0, 3], [])
    assert cluster.counters["receipt_held"] == 1
    assert "xcm.received" not in _types(_origin_journey(cluster))
    run(blocks, [1, 2], [], cluster)
    (received,) = [n for n in _origin_journey(cluster) if n["type"] == "xcm.received"]
    assert received["waypoint"]["messageHash"] == hop_hash
    assert received["waypoint"]["messageData"] is not None


def test_a_held_receipt_is_reported_when_the_hop_never_shows(
    fixtures_dir: Path,
    decoder_for: Callable[[str, str], RuntimeDecoder],
    routed_codec: XcmCodec,
    decoders: DecoderCache,
) -> None:
    """Hydration's block never arrives (its ingress is down): after ``hold_ttl`` the receipt is
    reported as it is — it names only the topic, so no hash — and never with the first leg's
    message, which did not run at Asset Hub."""
    blocks, _, _ = _cached_journey(HELD, fixtures_dir, decoder_for, routed_codec, decoders)
    cluster = run(blocks, [0, 3], [])
    cluster.clock.now += 301
    cluster.fire_deadlines()
    cluster.drain()
    (received,) = [n for n in _origin_journey(cluster) if n["type"] == "xcm.received"]
    assert received["waypoint"]["messageHash"] is None
    assert received["waypoint"]["instructions"] is None
    assert cluster.counters["receipt_hold_expired"] == 1
    finish(cluster)
    assert [n["type"] for n in _origin_journey(cluster)].count("xcm.timeout") == 0


# -- three stops: Polkadot → Hydration → Asset Hub → Astar (XCM.md §9.11) ------------------------

RELAY = "urn:ocn:polkadot:0"
ASTAR = "urn:ocn:polkadot:2006"
BENEFICIARY = BENEFICIARY_V3


def _h(n: int) -> str:
    return "0x" + f"{n:064x}"


def _to_para(para: int) -> dict[str, Any]:
    return {"parents": 1, "interior": {"X1": {"Parachain": para}}}


def _fees() -> dict[str, Any]:
    return {"fees": {"id": USDT_V3, "fun": {"Fungible": 10**9}}, "weight_limit": "Unlimited"}


def _deposit() -> dict[str, Any]:
    return {"DepositAsset": {"assets": {"Wild": {"AllCounted": 1}}, "beneficiary": BENEFICIARY}}


def _reserve_to(para: int, then: list[Any]) -> dict[str, Any]:
    return {
        "DepositReserveAsset": {
            "assets": {"Wild": {"AllCounted": 1}},
            "dest": _to_para(para),
            "xcm": then,
        }
    }


def _resent(tail: dict[str, Any], topic: str | None, amount: int) -> dict[str, Any]:
    """What a hop chain sends on: its own prefix (reanchored asset, fees), the tail it was asked
    to carry over, and the router's topic."""
    asset = [{"id": USDT_V4, "fun": {"Fungible": amount}}]
    fees = {"fees": asset[0], "weight_limit": "Unlimited"}
    program: list[Any] = [{"ReserveAssetDeposited": asset}, "ClearOrigin", {"BuyExecution": fees}]
    program.append(tail)
    if topic is not None:
        program.append({"SetTopic": topic})
    return {"V4": program}


def three_stops(topics: str, link: str, reports: str) -> tuple[list[list[Any]], str]:
    """The journey's blocks and the hash of the message that ran at Astar. ``topics``: none,
    same (each hop keeps the origin's topic) or new (each hop re-sends with its own);
    ``link``: sure (extraction placed the send in the receipt's extrinsic) or content (only
    candidates); ``reports``: what receipts name when the message has a topic."""
    t0 = _h(0xA0) if topics != "none" else None
    t1 = {"none": None, "same": t0, "new": _h(0xA1)}[topics]
    t2 = {"none": None, "same": t0, "new": _h(0xA2)}[topics]
    outer = {
        "V3": [
            {"WithdrawAsset": [{"id": USDT_V3, "fun": {"Fungible": 10**10}}]},
            {"BuyExecution": _fees()},
            _reserve_to(
                1000,
                [
                    {"BuyExecution": _fees()},
                    _reserve_to(2006, [{"BuyExecution": _fees()}, _deposit()]),
                ],
            ),
        ]
        + ([{"SetTopic": t0}] if t0 else [])
    }
    stops = [HYDRATION, ASSET_HUB, ASTAR]
    send = sent_leg(RELAY, stops, message_hash=_h(1), topic=t0, number=10, instructions=outer)

    def receipt(chain: str, number: int, message_hash: str, topic: str | None, source: str) -> Any:
        reported = topic if (topic and reports == "topic") else message_hash
        return received_leg(
            chain,
            message_hash=reported,
            message_id=reported,
            number=number,
            event=3,
            from_chain=source,
        )

    def hop_out(
        chain: str, number: int, message_hash: str, topic: str | None, program: Any, after: Any
    ) -> SentLeg:
        rest = (
            {"continues": after.identity}
            if link == "sure"
            else {"hop_candidates": [after.identity]}
        )
        first = next(s for s in stops if s != chain and stops.index(s) > stops.index(chain))
        return sent_leg(
            chain,
            [first, *stops[stops.index(first) + 1 :]],
            message_hash=message_hash,
            topic=topic,
            number=number,
            entry=1,
            instructions=program,
            **rest,
        )

    in1 = receipt(HYDRATION, 40, _h(1), t0, RELAY)
    out1 = hop_out(HYDRATION, 40, _h(2), t1, _resent(_reserve_to(2006, []), t1, 900), in1)
    in2 = receipt(ASSET_HUB, 50, _h(2), t1, HYDRATION)
    out2 = hop_out(ASSET_HUB, 50, _h(3), t2, _resent(_deposit(), t2, 800), in2)
    in3 = receipt(ASTAR, 60, _h(3), t2, ASSET_HUB)
    relayed1 = relayed_leg(RELAY, HYDRATION, ASSET_HUB, message_hash=_h(2), topic=t1, number=41)
    relayed2 = relayed_leg(RELAY, ASSET_HUB, ASTAR, message_hash=_h(3), topic=t2, number=51)
    return [[send], [in1, out1], [relayed1], [in2, out2], [relayed2], [in3]], _h(3)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["none", "same", "new"]),
    st.sampled_from(["sure", "content"]),
    st.sampled_from(["hash", "topic"]),
    st.data(),
)
def test_three_stops_in_any_order(
    topics: str, link: str, reports: str, data: st.DataObject
) -> None:
    blocks, last_hash = three_stops(topics, link, reports)
    reference, cluster = run_in_any_order(data, blocks, choices=60)
    unique = list({n["id"]: n for n in cluster.notifications}.values())
    assert {n["id"] for n in unique} == {n["id"] for n in reference.notifications}
    assert _types(unique) == {"xcm.sent": 1, "xcm.hop": 4, "xcm.relayed": 2, "xcm.received": 1}
    hops = sorted(
        (n["waypoint"]["legIndex"], n["direction"], n["waypoint"]["chainId"])
        for n in unique
        if n["type"] == "xcm.hop"
    )
    assert hops == sorted(
        [(0, "in", HYDRATION), (1, "out", HYDRATION), (1, "in", ASSET_HUB), (2, "out", ASSET_HUB)]
    )
    (received,) = [n for n in unique if n["type"] == "xcm.received"]
    assert received["waypoint"]["messageHash"] == last_hash
    assert received["waypoint"]["legIndex"] == 2
    finish(cluster)
    assert cluster.keys_left() == {}
    assert _types({n["id"]: n for n in cluster.notifications}.values()) == _types(unique)


def test_a_possible_hop_out_waits_for_its_candidates_only_a_while() -> None:
    """A hook's message sent at Finalization in a block whose receipt's journey never comes
    (its sender's ingress is far behind): it is not a hop-out of anything known, and after
    ``park_ttl`` it is announced as a journey of its own."""
    blocks, _ = three_stops("none", "content", "hash")
    in1, out1 = blocks[1]
    cluster = Cluster()
    cluster.publish_legs([in1, out1])
    cluster.drain()
    assert cluster.notifications == []
    assert cluster.counters["hop_out_parked"] == 1
    cluster.clock.now += 121
    cluster.sweep()
    cluster.drain()
    assert [n["type"] for n in cluster.notifications] == ["xcm.sent"]
    assert cluster.notifications[0]["origin"]["chainId"] == HYDRATION
