"""Messages a block sends without a send event, found by the storage the ingress reads.

Two real behaviours, each on recorded blocks served by a JSON-RPC server, followed by the real
follower, then extracted:

* an **old parachain runtime** (statemine 900 on the local network, statemine 9290 on Kusama
  Asset Hub: no ``ParachainSystem.UpwardMessageSent`` in their metadata) sends upward without
  an event. Version discovery on the local network sends ``SubscribeVersion`` to the sibling
  (with ``XcmpQueue.XcmpMessageSent``) and to the relay (with nothing) from the same block;
* a **relay that executes an upward message** queues the downward message it forwards with no
  event and no call (Polkadot #24312577 forwarding Bifrost's transfer to Hydration, the case
  ``head-hops-vmp-bifrost-polkadot-hydra.json``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ocstream.ingress.config import NetworkConfig
from ocstream.ingress.decode import (
    RuntimeDecoder,
    blake2_256,
    build_extended_block,
    read_compact,
    read_header,
)
from ocstream.ingress.follower import encode_compact
from ocstream.ingress.model import ExtendedBlock
from ocstream.ingress.raw import load_sidecar_json, load_v1_cbor
from ocstream.ingress.storage import (
    HRMP_OUTBOUND,
    UPWARD,
    downward_queue,
    queued_at,
    storage_needed,
)
from ocstream.xcm.codec import XcmCodec
from ocstream.xcm.extract import extract
from tests.ingress.rpc_server import RecordedChainServer
from tests.ingress.test_follower import Harness
from tests.xcm.sim import Cluster, received_leg

KUSAMA_AH = "urn:ocn:kusama:1000"
POLKADOT = "urn:ocn:polkadot:0"

# XCM V2 SubscribeVersion {query_id, max_response_weight}: version 0x02, one instruction,
# instruction 26 (0x1a), compact operands. What pallet-xcm sends in version discovery.
SUBSCRIBE_UP = bytes.fromhex("02041a0000")
SUBSCRIBE_SIBLING = bytes.fromhex("02041a0400")


def _hash(data: bytes) -> str:
    return "0x" + blake2_256(data).hex()


def _vec(*items: bytes) -> bytes:
    return encode_compact(len(items)) + b"".join(items)


def _with_event(events: bytes, record: bytes) -> bytes:
    """A ``System.Events`` value with one more record at the end."""
    count, pos = read_compact(events, 0)
    return encode_compact(count + 1) + events[pos:] + record


async def _follow(
    server: RecordedChainServer, redis_url: str, prefix: str, network: dict[str, str], count: int
) -> list[ExtendedBlock]:
    await server.start()
    first = min(server.blocks)
    await server.finalize(first)
    harness = Harness(redis_url, prefix, [server.url])
    harness.follower.network = NetworkConfig.model_validate(
        {**network, "provider": {"type": "rpc", "url": server.url}}
    )
    harness.follower.urn = network["id"]
    harness.start()
    try:
        published = await harness.wait_published(1, key=network["id"])
        await server.finalize(max(server.blocks))
        published = await harness.wait_published(count, key=network["id"])
    finally:
        await harness.stop()
        await server.stop()
    return published


def test_an_old_runtime_reads_its_upward_messages_at_every_block(fixtures_dir: Path) -> None:
    # Kusama Asset Hub #3356195 (statemine 9290) only receives: a DMP and an HRMP message. Its
    # runtime has no UpwardMessageSent, so a reply it sent upward would leave no trace but the
    # storage item. A current runtime (Polkadot Asset Hub 9430) reads nothing for such a block.
    raw = load_sidecar_json(fixtures_dir / "raw/sidecar/kassethub-3356195.json")
    old = RuntimeDecoder(
        (fixtures_dir / "metadata/kassethub-9290.scale").read_bytes(), network=KUSAMA_AH
    )
    current = RuntimeDecoder(
        (fixtures_dir / "metadata/assethub-9430.scale").read_bytes(), network=KUSAMA_AH
    )
    block = build_extended_block(KUSAMA_AH, old, raw.header, raw.extrinsics, raw.events)
    assert not old.has_event("ParachainSystem", "UpwardMessageSent")
    assert old.has_event("XcmpQueue", "XcmpMessageSent")
    assert storage_needed(block, is_relay=False, runtime=old) == [UPWARD]
    assert storage_needed(block, is_relay=False, runtime=current) == []


async def test_an_old_parachain_block_attaches_the_upward_message_next_to_the_hrmp_one(
    redis_url: str, prefix: str, fixtures_dir: Path
) -> None:
    """Version discovery of statemine 900 (local network): one block sends SubscribeVersion to
    the sibling (XcmpQueue.XcmpMessageSent, in Initialization) and to the relay (no event).
    No recording of that block exists: the real Kusama Asset Hub #3356195 (statemine 9290, no
    UpwardMessageSent either) gets the XcmpMessageSent record added to its events, and the node
    serves both storage items with the two messages."""
    metadata = (fixtures_dir / "metadata/kassethub-9290.scale").read_bytes()
    decoder = RuntimeDecoder(metadata, network=KUSAMA_AH)
    raw = load_sidecar_json(fixtures_dir / "raw/sidecar/kassethub-3356195.json")
    pallet, variant = decoder.event_indexes[("XcmpQueue", "XcmpMessageSent")]
    sent = (
        b"\x02"  # Phase::Initialization
        + bytes([pallet, variant])
        + b"\x01"  # message_hash: Some(...)
        + blake2_256(SUBSCRIBE_SIBLING)
        + b"\x00"  # no topics
    )
    assert isinstance(raw.events, bytes)
    header, _ = read_header(raw.header)
    edited = replace(raw, events=_with_event(raw.events, sent), decoded_header=header)
    page = b"\x00" + SUBSCRIBE_SIBLING  # format 0x00: concatenated versioned XCM
    hrmp = _vec((1001).to_bytes(4, "little") + encode_compact(len(page)) + page)
    upward = _vec(encode_compact(len(SUBSCRIBE_UP)) + SUBSCRIBE_UP)
    assert raw.hash is not None
    server = RecordedChainServer(
        [edited],
        spec_version=9290,
        metadata=metadata,
        storage={
            (HRMP_OUTBOUND.key, raw.hash): "0x" + hrmp.hex(),
            (UPWARD.key, raw.hash): "0x" + upward.hex(),
        },
    )
    network = {"id": KUSAMA_AH, "relay": "urn:ocn:kusama:0"}
    [block] = await _follow(server, redis_url, prefix, network, 1)

    assert {item.item for item in block.storage} == {"HrmpOutboundMessages", "UpwardMessages"}
    found = extract(block, XcmCodec(decoder))
    by_transport = {leg.transport: leg for leg in found.sent}
    assert set(by_transport) == {"hrmp", "ump"}, found.sent
    ump = by_transport["ump"]
    assert ump.message_hash == _hash(SUBSCRIBE_UP)
    assert ump.recipient == "urn:ocn:kusama:0"
    assert ump.instructions == {
        "V2": [{"SubscribeVersion": {"query_id": 0, "max_response_weight": 0}}]
    }
    assert ump.sender is None  # sent by a hook, signed by nobody
    assert by_transport["hrmp"].message_hash == _hash(SUBSCRIBE_SIBLING)

    # The relay's receipt of that message (Ump.ExecutedUpward reports the hash) now ends a
    # journey instead of waiting as an orphan.
    cluster = Cluster()
    cluster.publish_legs(found.legs)
    cluster.publish_legs(
        [received_leg("urn:ocn:kusama:0", message_hash=_hash(SUBSCRIBE_UP), from_chain=KUSAMA_AH)]
    )
    cluster.drain()
    received = [n for n in cluster.notifications if n["type"] == "xcm.received"]
    assert [n["destination"]["chainId"] for n in received] == ["urn:ocn:kusama:0"]
    assert received[0]["origin"]["messageHash"] == _hash(SUBSCRIBE_UP)


async def test_a_relay_executing_an_upward_message_attaches_the_downward_queue_it_filled(
    redis_url: str, prefix: str, fixtures_dir: Path
) -> None:
    """Polkadot #24312577 ran Bifrost's upward transfer and, with no event and no call, queued
    its DepositReserveAsset's message to Hydration. That block is recorded only decoded, so
    the real raw Polkadot #19511591 (two MessageQueue.Processed from para 2004) stands in for
    it: its node serves Hydration's queue holding that message, queued at this block, next to
    a queue with an older message and an empty one, which are left out."""
    blocks = load_v1_cbor(fixtures_dir / "raw/v1/ump-0-trapped-19511591.cbor.bin")
    metadata = (fixtures_dir / "metadata/polkadot-1000001.scale").read_bytes()
    manifest = json.loads(
        (fixtures_dir / "cases/head-hops-vmp-bifrost-polkadot-hydra.json").read_text()
    )
    [queue] = [s for s in manifest["storage"] if s["item"].startswith("Dmp.")]
    message = bytes.fromhex(queue["entries"][0]["msg"][2:])
    first = blocks[0]
    assert first.hash is not None and first.number is not None

    def entry(sent_at: int, msg: bytes) -> bytes:
        return sent_at.to_bytes(4, "little") + encode_compact(len(msg)) + msg

    storage = {
        (downward_queue(2034).key, first.hash): "0x" + _vec(entry(first.number, message)).hex(),
        (downward_queue(2000).key, first.hash): "0x" + _vec(entry(first.number - 3, message)).hex(),
        (downward_queue(1000).key, first.hash): "0x00",
    }
    server = RecordedChainServer(blocks, spec_version=1000001, metadata=metadata, storage=storage)
    published = await _follow(server, redis_url, prefix, {"id": POLKADOT}, len(blocks))
    block = next(b for b in published if b.number == first.number)

    assert [item.key for item in block.storage] == [downward_queue(2034).key]
    decoder = RuntimeDecoder(metadata, network=POLKADOT)
    found = extract(block, XcmCodec(decoder))
    [leg] = found.sent
    assert (leg.transport, leg.recipient) == ("dmp", "urn:ocn:polkadot:2034")
    assert leg.message_hash == manifest["messages"][1]["hash"]
    assert leg.topic == manifest["messages"][1]["topic"]
    assert leg.sender is None
    # Candidates for the content link to the upward message the relay ran (docs/matching.md).
    assert leg.hop_candidates == [r.identity for r in found.received]
    assert found.received


def test_queued_at_reads_sent_at_of_every_entry() -> None:
    two = _vec(
        (7).to_bytes(4, "little") + encode_compact(2) + b"\x01\x02",
        (9).to_bytes(4, "little") + encode_compact(1) + b"\x03",
    )
    assert queued_at("0x" + two.hex(), 9)
    assert queued_at("0x" + two.hex(), 7)
    assert not queued_at("0x" + two.hex(), 8)
    assert not queued_at("0x00", 9)
    assert not queued_at(None, 9)
    assert not queued_at("0x0807", 9)  # truncated: not a queue
