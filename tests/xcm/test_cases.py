"""Every case manifest in ``fixtures/cases`` through extraction and matching.

Raw blocks (v1 CBOR, sidecar JSON) go through the ingress's decoder with the metadata the manifest
names; decoded (polkadot-api) blocks through ``ocstream.testing``. Extraction must find exactly the
legs the manifest records — hashes, topic ids, recipients, stops, final destinations, senders,
outcomes, errors, trapped assets, relayed pages — and matching the journeys they form must give
the expected notifications.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from ocstream.ingress.decode import DecoderCache, RuntimeDecoder
from ocstream.ingress.model import ExtendedBlock
from ocstream.testing import blocks_from_case, fixtures_path
from ocstream.xcm.codec import XcmCodec
from ocstream.xcm.extract import Extracted, extract
from ocstream.xcm.legs import ReceivedLeg, SentLeg, downward_slot, leg_record
from ocstream.xcm.matching import TABLES, Engine, Tables
from ocstream.xcm.sender import sender_of

from .sim import Cluster

# From the same place the fixtures fixture reads ($OCSTREAM_FIXTURES or tests/fixtures): a
# missing folder fails the collection instead of leaving an empty, silently skipped parameter set.
CASES = sorted(p.stem for p in (fixtures_path() / "cases").glob("*.json"))


def load_case(fixtures_dir: Path, name: str) -> dict[str, Any]:
    return json.loads((fixtures_dir / "cases" / f"{name}.json").read_text())  # type: ignore[no-any-return]


def extract_case(
    fixtures_dir: Path,
    case: dict[str, Any],
    decoder_for: Callable[[str, str], RuntimeDecoder],
    routed: XcmCodec,
    decoders: DecoderCache,
) -> dict[str, tuple[ExtendedBlock, Extracted]]:
    blocks = blocks_from_case(case, fixtures_dir, decoders=decoders)
    found: dict[str, tuple[ExtendedBlock, Extracted]] = {}
    for entry, block in zip(case["blocks"], blocks, strict=True):
        if entry.get("metadata"):
            codec = XcmCodec(decoder_for(entry["chain"], entry["metadata"].rsplit("/", 1)[-1]))
        else:
            codec = routed
        prefix = 0 if entry["chain"].startswith("urn:ocn:polkadot") else 2

        def sender(block: ExtendedBlock, index: int | None, prefix: int = prefix) -> Any:
            found_sender = sender_of(block, index, ss58_prefix=prefix)
            return found_sender.model_dump() if found_sender is not None else None

        found[entry["ref"]] = (block, extract(block, codec, ss58_prefix=prefix, sender_of=sender))
    return found


def match_case(found: dict[str, tuple[ExtendedBlock, Extracted]], case: dict[str, Any]) -> Cluster:
    """The case's legs through the simulated partitions, block by block in journey order."""
    cluster = Cluster()
    for entry in case["blocks"]:
        cluster.publish_legs(found[entry["ref"]][1].legs)
        cluster.drain()
    return cluster


@pytest.mark.parametrize("name", CASES)
def test_case_legs(
    name: str,
    fixtures_dir: Path,
    decoder_for: Callable[[str, str], RuntimeDecoder],
    routed_codec: XcmCodec,
    decoders: DecoderCache,
) -> None:
    case = load_case(fixtures_dir, name)
    found = extract_case(fixtures_dir, case, decoder_for, routed_codec, decoders)
    checked = 0
    for _, extracted in found.values():
        undecodable = [p for p in extracted.problems if p.kind == "undecodable"]
        assert undecodable == [], undecodable
    sent_by_block: dict[str, set[str]] = {}
    for message in case["messages"]:
        label = f"{name}/{message['label']}"
        if "sent" in message:
            ref = message["sent"]["block"]
            sent_by_block.setdefault(ref, set()).add(message["hash"])
            legs = [leg for leg in found[ref][1].sent if leg.message_hash == message["hash"]]
            assert len(legs) == 1, (label, [leg.message_hash for leg in found[ref][1].sent])
            leg = legs[0]
            assert leg.origin == message["origin"], label
            assert leg.recipient == message["recipient"], label
            assert leg.topic == message["topic"], label
            assert leg.version == message["version"], label
            assert leg.message_data == message["data"], label
            assert leg.stops[:-1] == (message.get("stops") or []), label
            assert leg.destination == message["destination"], label
            if message.get("sender", {}).get("signer_public_key"):
                assert leg.sender is not None, label
                assert leg.sender["signer"]["publicKey"] == message["sender"]["signer_public_key"]
            event = leg.context["event"]
            if event is not None and message["sent"].get("event_index") is not None:
                assert isinstance(event, dict)
                same_extrinsic = message["sent"].get("extrinsic_index")
                if same_extrinsic is not None:
                    assert leg.context["extrinsicId"] == f"{leg.block_number}-{same_extrinsic}"
            checked += 1
        if "received" in message:
            evidence = message["received"]
            block, extracted = found[evidence["block"]]
            received_legs = [
                leg
                for leg in extracted.received
                if leg.context["event"]["blockPosition"] == evidence["event_index"]
            ]
            assert len(received_legs) == 1, label
            received = received_legs[0]
            assert received.outcome == evidence["outcome"], label
            assert evidence["value"] in (received.message_id, received.message_hash), label
            if message.get("hash") and evidence.get("matched_by") == "hash":
                assert message["hash"] in received.ids, label
            if message.get("topic") and evidence.get("matched_by") == "topic":
                assert message["topic"] in received.ids, label
            if evidence.get("error") is not None:
                assert received.error == evidence["error"], (label, received.error)
            if "assets_trapped" in message:
                assert received.assets_trapped is not None, label
            else:
                assert received.assets_trapped is None, label
            checked += 1
        if "relayed" in message:
            evidence = message["relayed"]
            _, extracted = found[evidence["block"]]
            relayed_legs = [
                leg
                for leg in extracted.relayed
                if leg.message_hash == message["hash"]
                and leg.origin.endswith(f":{evidence['candidate_para']}")
                and leg.recipient.endswith(f":{evidence['recipient']}")
            ]
            assert len(relayed_legs) == 1, label
            assert relayed_legs[0].message_id == (message["topic"] or message["hash"]), label
            checked += 1
    # No more sent legs than the manifest records in the blocks it sends from.
    for ref, hashes in sent_by_block.items():
        assert {leg.message_hash for leg in found[ref][1].sent} == hashes, (name, ref)
    assert checked > 0


# Journeys whose legs are all in the fixtures, and what matching them must say: each journey's
# notification types, in the order of the blocks. Journeys are matched on different partitions
# (a new journey on a shard of its origin's key), so only the order within a journey is defined.
# Types only: the payload tests check the contents.
JOURNEYS = {
    "v1-hrmp-assethub-interlay": [["xcm.sent", "xcm.received"]],
    "v1-ump-assethub-polkadot": [["xcm.sent", "xcm.received"]],
    "head-hrmp-assethub-hydra": [["xcm.sent", "xcm.received"]],
    "head-ump-assethub-polkadot": [["xcm.sent", "xcm.received"]],
    # m1 relay → Hydration → Asset Hub (hop in, hop out, the hop-out relayed; Asset Hub's block
    # is not recorded); m3, an unrelated transfer in the same page, is its own journey.
    "v1-dmp-hop-polkadot-hydra": [
        ["xcm.sent", "xcm.hop", "xcm.hop", "xcm.relayed"],
        ["xcm.sent", "xcm.relayed"],
    ],
    "head-hops-vmp-bifrost-polkadot-hydra": [["xcm.sent", "xcm.hop", "xcm.hop", "xcm.received"]],
}


@pytest.mark.parametrize("name", sorted(JOURNEYS))
def test_case_notifications(
    name: str,
    fixtures_dir: Path,
    decoder_for: Callable[[str, str], RuntimeDecoder],
    routed_codec: XcmCodec,
    decoders: DecoderCache,
) -> None:
    case = load_case(fixtures_dir, name)
    found = extract_case(fixtures_dir, case, decoder_for, routed_codec, decoders)
    cluster = match_case(found, case)
    journeys: dict[str, list[str]] = {}
    for note in cluster.notifications:
        journeys.setdefault(note["journeyId"], []).append(note["type"])
    assert sorted(journeys.values()) == sorted(JOURNEYS[name]), journeys
    ids = [n["id"] for n in cluster.notifications]
    assert len(set(ids)) == len(ids)
    for note in cluster.notifications:
        assert note["origin"]["chainId"] == note["legs"][0]["from"]
        if note["type"] == "xcm.received":
            assert note["destination"]["chainId"] == note["legs"][-1]["to"]
            assert note["waypoint"]["legIndex"] == len(note["legs"]) - 1


def test_hop_notifications_carry_the_hops_own_messages(
    fixtures_dir: Path,
    decoder_for: Callable[[str, str], RuntimeDecoder],
    routed_codec: XcmCodec,
    decoders: DecoderCache,
) -> None:
    case = load_case(fixtures_dir, "v1-dmp-hop-polkadot-hydra")
    found = extract_case(fixtures_dir, case, decoder_for, routed_codec, decoders)
    cluster = match_case(found, case)
    messages = {m["label"]: m for m in case["messages"]}
    hops = {n["direction"]: n for n in cluster.notifications if n["type"] == "xcm.hop"}
    # In: the DMP message that reached Hydration; out: the one Hydration sent on to Asset Hub.
    assert hops["in"]["waypoint"]["messageHash"] == messages["m1"]["hash"]
    assert hops["in"]["waypoint"]["messageData"] == messages["m1"]["data"]
    assert hops["in"]["waypoint"]["legIndex"] == 0
    assert hops["out"]["waypoint"]["messageHash"] == messages["m2"]["hash"]
    assert hops["out"]["waypoint"]["messageData"] == messages["m2"]["data"]
    assert hops["out"]["waypoint"]["legIndex"] == 1
    assert hops["in"]["messageId"] == messages["m1"]["topic"]
    relayed = [n for n in cluster.notifications if n["type"] == "xcm.relayed"]
    journey_relayed = [n for n in relayed if n["journeyId"] == hops["in"]["journeyId"]]
    assert [n["waypoint"]["legIndex"] for n in journey_relayed] == [1]
    assert journey_relayed[0]["waypoint"]["chainId"] == "urn:ocn:polkadot:0"


# --- a DMP without bytes ----------------------------------------------------------------------

# A downward message whose bytes the ingress could not read is matched by its place.
#
# The relay's ``Dmp.DownwardMessageQueues`` is read at the sent block. When that read comes back
# empty (the local network's chopsticks clears the queue once it forwards the message; a pruned
# node has no state for an old block), the send is still found from its event or call, but has no
# hash. Both ends know the message's place, though: the relay queued it as the k-th message for
# that para at block N, and the para's ``set_validation_data`` lists it with ``sent_at = N`` in the
# same order. That slot joins the journey.

SLOT_CASE = "v1-dmp-hop-polkadot-hydra"
RELAY_BLOCK = "dot19777220"
RELAY_NUMBER = 19777220


def _as_read_too_late(block: ExtendedBlock) -> ExtendedBlock:
    """The relay block as a late reader of an older relay sees it: the queue read came back
    empty, and ``XcmPallet.Sent`` has no ``message_id`` (older relays emit origin, destination
    and message only), so nothing in the block names the message."""
    storage = [
        item.model_copy(update={"value": None})
        if (item.pallet, item.item) == ("Dmp", "DownwardMessageQueues")
        else item
        for item in block.storage
    ]
    events = []
    for event in block.events:
        if (event.module, event.name) == ("XcmPallet", "Sent"):
            assert isinstance(event.fields, dict) and "message_id" in event.fields
            fields = {k: v for k, v in event.fields.items() if k != "message_id"}
            event = event.model_copy(update={"fields": fields})
        events.append(event)
    return block.model_copy(update={"storage": storage, "events": events})


def _extracted_with_a_late_relay_read(
    fixtures_dir: Path,
    decoder_for: Callable[[str, str], RuntimeDecoder],
    routed_codec: XcmCodec,
    decoders: DecoderCache,
) -> tuple[dict[str, Any], dict[str, tuple[ExtendedBlock, Extracted]]]:
    """The case's legs, with its relay block extracted as a late reader sees it."""
    case = load_case(fixtures_dir, SLOT_CASE)
    found = extract_case(fixtures_dir, case, decoder_for, routed_codec, decoders)
    relay, _ = found[RELAY_BLOCK]
    metadata = next(b["metadata"] for b in case["blocks"] if b["ref"] == RELAY_BLOCK)
    codec = XcmCodec(decoder_for(relay.network, metadata.rsplit("/", 1)[-1]))
    late = _as_read_too_late(relay)
    found[RELAY_BLOCK] = (late, extract(late, codec, ss58_prefix=0))
    return case, found


def _relay_journey(cluster: Cluster) -> list[dict[str, Any]]:
    return [n for n in cluster.notifications if n["origin"]["blockNumber"] == str(RELAY_NUMBER)]


def test_a_dmp_without_bytes_is_matched_by_its_slot(
    fixtures_dir: Path,
    decoder_for: Callable[[str, str], RuntimeDecoder],
    routed_codec: XcmCodec,
    decoders: DecoderCache,
) -> None:
    case, found = _extracted_with_a_late_relay_read(
        fixtures_dir, decoder_for, routed_codec, decoders
    )
    slot = downward_slot(RELAY_NUMBER, 0)
    sent = [leg for leg in found[RELAY_BLOCK][1].legs if isinstance(leg, SentLeg)]
    assert len(sent) == 1
    assert sent[0].message_data is None  # no bytes, no hash ...
    assert sent[0].ids == [slot]  # ... only its place
    assert [p.kind for p in found[RELAY_BLOCK][1].problems] == ["missing-bytes"]
    received = [
        leg
        for block, extracted in found.values()
        if block.network == "urn:ocn:polkadot:2034"
        for leg in extracted.legs
        if isinstance(leg, ReceivedLeg)
    ]
    assert [leg.slot for leg in received] == [slot]

    mine = _relay_journey(match_case(found, case))
    assert [n["type"] for n in mine] == ["xcm.sent", "xcm.received"], mine
    assert mine[1]["waypoint"]["outcome"] == "Success"
    assert mine[1]["destination"]["chainId"] == "urn:ocn:polkadot:2034"
    # No all-zero placeholder anywhere: the send does not know its hash yet, the receipt's
    # event tells the real one.
    zero = "0x" + "00" * 32
    assert zero not in json.dumps(mine)
    assert mine[0]["waypoint"]["messageHash"] is None
    real = next(m["hash"] for m in case["messages"] if m["sent"]["block"] == RELAY_BLOCK)
    assert mine[1]["waypoint"]["messageHash"] == real
    assert mine[1]["destination"]["messageHash"] == real


def test_without_the_slot_the_same_journey_is_left_unmatched(
    fixtures_dir: Path,
    decoder_for: Callable[[str, str], RuntimeDecoder],
    routed_codec: XcmCodec,
    decoders: DecoderCache,
) -> None:
    """The control: the same late read with the para's slot taken away never completes."""
    case, found = _extracted_with_a_late_relay_read(
        fixtures_dir, decoder_for, routed_codec, decoders
    )
    for ref, (block, extracted) in list(found.items()):
        legs = [
            leg.model_copy(update={"slot": None}) if isinstance(leg, ReceivedLeg) else leg
            for leg in extracted.legs
        ]
        found[ref] = (block, Extracted(legs=legs, problems=extracted.problems))
    assert [n["type"] for n in _relay_journey(match_case(found, case))] == ["xcm.sent"]


def test_leg_records_read_back_as_extraction_wrote_them(
    fixtures_dir: Path,
    decoder_for: Callable[[str, str], RuntimeDecoder],
    routed_codec: XcmCodec,
    decoders: DecoderCache,
) -> None:
    """Every recorded case's legs, encoded as ``xcm_extract`` encodes them and read back as the
    matcher reads them, are the legs extraction found; their free-form fields (instructions,
    sender, context) are JSON, which they must be since they are not checked as such
    (``ocstream/xcm/legs.py``, ``Json``)."""
    kinds: Counter[str] = Counter()
    for name in CASES:
        case = load_case(fixtures_dir, name)
        for _, extracted in extract_case(
            fixtures_dir, case, decoder_for, routed_codec, decoders
        ).values():
            for leg in extracted.legs:
                encoded = leg_record(leg)
                dumped = leg.model_dump(by_alias=True)
                assert encoded == orjson.dumps({"kind": leg.kind, "leg": dumped})
                record = orjson.loads(encoded)
                assert record["leg"] == dumped  # JSON through and through
                read = type(leg).model_validate(record["leg"])
                assert read == leg
                kinds[leg.kind] += 1
    assert kinds["sent"] >= 15 and kinds["received"] >= 25 and kinds["relayed"] >= 5, kinds


@pytest.mark.parametrize(
    ("kind", "damage"),
    [
        ("sent", {"identity": None}),
        ("sent", {"transport": "carrier-pigeon"}),
        ("sent", {"ids": "0xabc"}),
        ("sent", {"context": ["not", "an", "object"]}),
        ("sent", {"legs": [{"from": "urn:ocn:polkadot:0"}]}),
        ("received", {"outcome": "Maybe"}),
        ("received", {"block_number": "not a number"}),
        ("relayed", {"context": None}),
    ],
)
def test_a_malformed_leg_record_is_refused_whole(kind: str, damage: dict[str, Any]) -> None:
    """What the matcher refuses, the dataflow dead-letters (``bad-record``) with nothing of
    the record applied: every field but the free-form JSON ones is checked."""
    leg: dict[str, Any] = {
        "sent": {
            "identity": "urn:ocn:polkadot:1000|0xb|hrmp|0|0",
            "origin": "urn:ocn:polkadot:1000",
            "recipient": "urn:ocn:polkadot:2034",
            "transport": "hrmp",
            "block_number": 1,
            "block_hash": "0xb",
            "message_hash": "0xm",
            "message_data": None,
            "ids": ["0xm"],
            "stops": ["urn:ocn:polkadot:2034"],
            "legs": [
                {"from": "urn:ocn:polkadot:1000", "to": "urn:ocn:polkadot:2034", "type": "hrmp"}
            ],
            "context": {},
        },
        "received": {
            "identity": "urn:ocn:polkadot:2034|0xc|3",
            "chain": "urn:ocn:polkadot:2034",
            "block_number": 2,
            "block_hash": "0xc",
            "message_hash": "0xm",
            "message_id": "0xm",
            "outcome": "Success",
            "context": {},
        },
        "relayed": {
            "identity": "urn:ocn:polkadot:0|0xr|0|0|0",
            "relay": "urn:ocn:polkadot:0",
            "origin": "urn:ocn:polkadot:1000",
            "recipient": "urn:ocn:polkadot:2034",
            "block_number": 3,
            "block_hash": "0xr",
            "message_hash": "0xm",
            "message_id": "0xm",
            "ids": ["0xm"],
            "outcome": "Success",
            "context": {},
        },
    }[kind]
    engine = Engine(now=lambda: 1_700_000_000.0)
    stores: dict[str, dict[str, Any]] = {table: {} for table in TABLES}
    chain = leg.get("origin") or leg.get("chain") or leg["recipient"]
    # The well-formed record is taken ...
    engine.handle(Tables(stores), chain, {"kind": kind, "leg": leg})  # type: ignore[arg-type]
    # ... and each damage makes it refused.
    with pytest.raises(ValidationError):
        engine.handle(Tables(stores), chain, {"kind": kind, "leg": {**leg, **damage}})  # type: ignore[arg-type]
