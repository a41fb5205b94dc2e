"""The XCM dataflow in two real worker processes on real Redis, fed real recorded blocks.

Recorded blocks are published to ``blocks`` the way the ingress publishes them (through
``ocstream.testing``), destination first; the workers must extract, match across partitions and
emit each journey's notifications once, time out the journey that has no receipt, and
dead-letter what they cannot read while the rest flows.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import redis

from ocstream.ingress.model import ExtendedBlock
from ocstream.testing import blocks_from_case, publish_blocks_sync, register_network_sync
from ocstream.transport.keys import Keyspace

from ..workers import Worker, wait_for

PARTITIONS = 4
NETWORKS = {
    "urn:ocn:polkadot:1000": "assethub-9430.scale",
    "urn:ocn:polkadot:2032": "interlay-1025002.scale",
    "urn:ocn:polkadot:0": "polkadot-9430.scale",
}


def read_topic(redis_url: str, prefix: str, topic: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(redis_url)
    keys = Keyspace(prefix)
    found = []
    for partition in range(PARTITIONS):
        for _, fields in client.xrange(keys.stream(topic, partition)):
            found.append(json.loads(fields[b"v"]))
    client.close()
    return found


def test_two_workers_match_recorded_journeys(
    redis_url: str, prefix: str, app_id: str, tmp_path: Path, fixtures_dir: Path
) -> None:
    for network, metadata in NETWORKS.items():
        spec = int(metadata.removesuffix(".scale").rsplit("-", 1)[1])
        register_network_sync(
            redis_url,
            network,
            spec_version=spec,
            metadata=(fixtures_dir / "metadata" / metadata).read_bytes(),
            prefix=prefix,
        )
    hrmp = blocks_from_case(fixtures_dir / "cases" / "v1-hrmp-assethub-interlay.json", fixtures_dir)
    ump = blocks_from_case(fixtures_dir / "cases" / "v1-ump-assethub-polkadot.json", fixtures_dir)
    env = {"OCSTREAM_XCM_JOURNEY_TTL": "8", "OCSTREAM_XCM_SWEEP_INTERVAL": "2"}
    workers = [
        Worker(name, tmp_path, redis_url=redis_url, prefix=prefix, app_id=app_id, env=env)
        for name in ("w1", "w2")
    ]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_assigned()
        # The receipt first, then its origin: matching must not depend on arrival order.
        destination = [b for b in hrmp if b.network == "urn:ocn:polkadot:2032"]
        origin = [b for b in hrmp if b.network == "urn:ocn:polkadot:1000"]
        publish_blocks_sync(redis_url, destination, prefix=prefix, partitions=PARTITIONS)
        publish_blocks_sync(redis_url, origin, prefix=prefix, partitions=PARTITIONS)
        # Only the origin block of the UMP case: its journey has no receipt and must time out.
        ump_origin = [b for b in ump if b.number == 4818937]
        publish_blocks_sync(redis_url, ump_origin, prefix=prefix, partitions=PARTITIONS)
        # Bad input: a value that is not a block, and a block of a network with no metadata
        # whose storage holds bytes that are not XCM.
        client = redis.Redis.from_url(redis_url)
        stranger = ExtendedBlock.model_validate(
            {
                "network": "urn:ocn:polkadot:2099",
                "number": 5,
                "hash": "0x" + "ab" * 32,
                "parent_hash": "0x" + "cd" * 32,
                "spec_version": 7,
                "events": [],
                "storage": [
                    {
                        "pallet": "ParachainSystem",
                        "item": "UpwardMessages",
                        "key": "0x45323df7cc47150b3930e2666b0aa313549294c71991aee810463ccf34a0f1d1",
                        "value": "0x0408ffff",
                    }
                ],
            }
        )
        publish_blocks_sync(redis_url, [stranger], prefix=prefix, partitions=PARTITIONS)
        client.close()
        from ocstream.transport.writer import TopicWriter  # noqa: PLC0415

        async def garbage() -> None:
            async with TopicWriter.from_url(redis_url, prefix=prefix) as writer:
                await writer.send_many("blocks", [("urn:ocn:polkadot:1000", b"{not json")])

        import asyncio  # noqa: PLC0415

        asyncio.run(garbage())

        def settled() -> list[dict[str, Any]] | None:
            notes = read_topic(redis_url, prefix, "xcm-notifications")
            types = Counter(n["type"] for n in {n["id"]: n for n in notes}.values())
            if types.get("xcm.timeout", 0) >= 2 and types.get("xcm.received"):
                return notes
            return None

        notes = wait_for(settled, 90, "a receipt and two timeouts")
    finally:
        for worker in workers:
            worker.stop()
    by_id = {n["id"]: n for n in notes}
    journeys: dict[tuple[str, str], list[str]] = {}
    for note in by_id.values():
        key = (note["origin"]["chainId"], note["origin"]["messageHash"])
        journeys.setdefault(key, []).append(note["type"])
    kinds = {key[0]: sorted(types) for key, types in journeys.items()}
    assert len(journeys) == 3, journeys
    by_origin_hash = {key[1]: sorted(types) for key, types in journeys.items()}
    # AH -> Interlay: matched; AH -> relay (UMP, receipt not published): timed out.
    assert by_origin_hash["0x19f82753eb9718974dd2d6dfc5e3b238625d012c1a8de5e3347f56079f143867"] == [
        "xcm.received",
        "xcm.sent",
    ]
    assert by_origin_hash["0xfbc0ad07a5d82bfb829330eb25dbf93280e00fe602d5e0b93d57c0293926b041"] == [
        "xcm.sent",
        "xcm.timeout",
    ]
    # The unknown network's bytes could not be decoded, yet its message is tracked by hash
    # (with no instructions) and times out like any other.
    assert kinds["urn:ocn:polkadot:2099"] == ["xcm.sent", "xcm.timeout"]
    received = next(n for n in by_id.values() if n["type"] == "xcm.received")
    assert received["origin"]["chainId"] == "urn:ocn:polkadot:1000"
    assert received["destination"]["chainId"] == "urn:ocn:polkadot:2032"
    assert received["destination"]["blockNumber"] == "3787659"
    assert received["waypoint"]["outcome"] == "Success"
    expected_hash = "0x19f82753eb9718974dd2d6dfc5e3b238625d012c1a8de5e3347f56079f143867"
    assert received["destination"]["messageHash"] == expected_hash
    assert received["sender"]["signer"]["publicKey"] == (
        "0x8e7f870a8cac3fa165c8531a304fcc59c7e29aec176fb03f630ceeea397b1368"
    )
    timeout = next(
        n
        for n in by_id.values()
        if n["type"] == "xcm.timeout" and n["origin"]["chainId"] == "urn:ocn:polkadot:1000"
    )
    assert timeout["legs"] == [
        {"from": "urn:ocn:polkadot:1000", "to": "urn:ocn:polkadot:0", "type": "vmp"}
    ]
    dead = read_topic(redis_url, prefix, "xcm-dead-letters")
    kinds_dead = {d["kind"] for d in dead}
    assert "bad-block" in kinds_dead, dead
    assert "undecodable" in kinds_dead, dead
    stranger_letter = next(d for d in dead if d["kind"] == "undecodable")
    assert "urn:ocn:polkadot:2099" in stranger_letter["reason"]
