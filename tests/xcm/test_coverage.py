"""The start-up boundary: a timeout whose receipt may lie before the destination's ingress began.

Real journey: the UMP transfer of ``cases/v1-ump-assethub-polkadot.json``, sent from Polkadot
Asset Hub #4818937 (timestamp 1697616444000) and executed by Polkadot #17773282
(``MessageQueue.Processed 0xfbc0…``). The relay's ingress is said to begin at a real relay block:

* #17773282 itself: the receipt is published, the journey ends with ``xcm.received``;
* #18468942 (recorded months later): an ingress added to a running deployment. The receipt lies
  before it and is never seen, so the timeout says ``not-covered``, not a silent failure;
* #17677887 (before the send) with the receipt lost: a plain timeout, for the relay was followed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ocstream.ingress.decode import RuntimeDecoder, build_extended_block
from ocstream.ingress.model import ExtendedBlock, StorageItem
from ocstream.ingress.raw import load_sidecar_json, load_v1_cbor
from ocstream.ingress.registry import NetworkRecord
from ocstream.xcm.bridge import BridgeLeg
from ocstream.xcm.codec import XcmCodec
from ocstream.xcm.coverage import Coverage, coverage_of_record, uncovered_stop
from ocstream.xcm.extract import extract
from ocstream.xcm.legs import ReceivedLeg, RelayedLeg, SentLeg
from tests.xcm.sim import Cluster

DecoderFor = Callable[[str, str], RuntimeDecoder]
RELAY = "urn:ocn:polkadot:0"
ASSET_HUB = "urn:ocn:polkadot:1000"
SENT_AT = 1697616444000


def _block(
    fixtures_dir: Path, decoder: RuntimeDecoder, network: str, file: str, number: int
) -> ExtendedBlock:
    for raw in load_v1_cbor(fixtures_dir / "raw/v1" / file):
        block = build_extended_block(network, decoder, raw.header, raw.extrinsics, raw.events)
        if block.number == number:
            return block
    raise AssertionError(f"#{number} is not in {file}")


def _sent(
    fixtures_dir: Path, decoder_for: DecoderFor
) -> list[SentLeg | ReceivedLeg | RelayedLeg | BridgeLeg]:
    decoder = decoder_for(ASSET_HUB, "assethub-9430.scale")
    block = _block(fixtures_dir, decoder, ASSET_HUB, "ump-out-1000.cbor.bin", 4818937)
    manifest = json.loads((fixtures_dir / "cases/v1-ump-assethub-polkadot.json").read_text())
    [item] = manifest["storage"]
    storage = StorageItem(
        pallet="ParachainSystem", item="UpwardMessages", key=item["key"], value=item["value"]
    )
    block = block.model_copy(update={"storage": [storage]})
    assert block.timestamp == SENT_AT
    legs = extract(block, XcmCodec(decoder)).legs
    assert [leg.kind for leg in legs] == ["sent"]
    return legs


def _relay_coverage(
    fixtures_dir: Path, decoder_for: DecoderFor, file: str, number: int
) -> Coverage:
    decoder = decoder_for(RELAY, "polkadot-9430.scale")
    block = _block(fixtures_dir, decoder, RELAY, file, number)
    assert block.timestamp is not None
    return Coverage(block.number, block.timestamp)


def _run(
    legs: list[SentLeg | ReceivedLeg | RelayedLeg | BridgeLeg], coverage: dict[str, Coverage]
) -> list[dict[str, object]]:
    cluster = Cluster()
    cluster.engine.coverage = coverage.get
    cluster.publish_legs(legs)
    cluster.drain()
    cluster.clock.now += 3601
    cluster.fire_deadlines()
    cluster.drain()
    return cluster.notifications


def test_a_receipt_inside_the_coverage_is_received(
    fixtures_dir: Path, decoder_for: DecoderFor
) -> None:
    decoder = decoder_for(RELAY, "polkadot-9430.scale")
    receipt = _block(fixtures_dir, decoder, RELAY, "ump-in-success.cbor.bin", 17773282)
    coverage = {RELAY: Coverage(receipt.number, receipt.timestamp or 0)}
    notes = _run(
        _sent(fixtures_dir, decoder_for) + extract(receipt, XcmCodec(decoder)).legs, coverage
    )
    assert [n["type"] for n in notes] == ["xcm.sent", "xcm.received"]


def test_a_receipt_before_the_destination_coverage_gives_a_flagged_timeout(
    fixtures_dir: Path, decoder_for: DecoderFor
) -> None:
    later = load_sidecar_json(fixtures_dir / "raw/sidecar/polkadot-18468942.json")
    decoder = decoder_for(RELAY, "polkadot-1000001.scale")
    block = build_extended_block(RELAY, decoder, later.header, later.extrinsics, later.events)
    assert block.timestamp is not None and block.timestamp > SENT_AT
    notes = _run(_sent(fixtures_dir, decoder_for), {RELAY: Coverage(block.number, block.timestamp)})
    assert [n["type"] for n in notes] == ["xcm.sent", "xcm.timeout"]
    timeout = notes[1]
    assert timeout["timeoutReason"] == "not-covered"
    assert timeout["coverage"] == {
        "chainId": RELAY,
        "coveredFromBlock": "18468942",
        "coveredFromTimestamp": block.timestamp,
        "sentTimestamp": SENT_AT,
    }


def test_a_destination_followed_since_before_the_send_gives_a_plain_timeout(
    fixtures_dir: Path, decoder_for: DecoderFor
) -> None:
    coverage = _relay_coverage(fixtures_dir, decoder_for, "ump-in-fail.cbor.bin", 17677887)
    assert coverage.timestamp < SENT_AT
    notes = _run(_sent(fixtures_dir, decoder_for), {RELAY: coverage})  # the receipt is lost
    assert [n["type"] for n in notes] == ["xcm.sent", "xcm.timeout"]
    assert "timeoutReason" not in notes[1] and "coverage" not in notes[1]


def test_the_coverage_comes_from_the_registry_record() -> None:
    record = NetworkRecord(id=RELAY, covered_from=7, covered_from_timestamp=1_000)
    assert coverage_of_record(record) == Coverage(7, 1_000)
    assert coverage_of_record(NetworkRecord(id=RELAY, tip_number=9)) is None  # older records
    journey = {"origin_context": {"timestamp": 999}, "stops": [ASSET_HUB, RELAY]}
    gap = uncovered_stop(journey, {RELAY: Coverage(7, 1_000)}.get)
    assert gap is not None and gap["chainId"] == RELAY
    assert (
        uncovered_stop(
            {**journey, "origin_context": {"timestamp": 1_000}}, {RELAY: Coverage(7, 1_000)}.get
        )
        is None
    )
    assert (
        uncovered_stop(
            {**journey, "origin_context": {"timestamp": None}}, {RELAY: Coverage(7, 1_000)}.get
        )
        is None
    )
