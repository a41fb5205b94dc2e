"""The XCM dataflow in two real worker processes on real Redis, fed real recorded blocks.

Recorded blocks are published to ``blocks`` the way the ingress publishes them (through
``ocstream.testing``), destination first; the workers must extract, match across partitions and
emit each journey's notifications once, time out the journey that has no receipt, and
dead-letter what they cannot read while the rest flows.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from hashlib import blake2b
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import zstandard

from ocstream.delivery import ORIGIN_HEADER
from ocstream.ingress.model import ExtendedBlock
from ocstream.testing import blocks_from_case, publish_blocks_sync, register_network_sync
from ocstream.transport.keys import Keyspace
from ocstream.transport.wire import (
    DICT_ID,
    ZSTD_MAGIC,
    Record,
    decode_headers,
    entry_value,
    partition_for_key,
)
from ocstream.transport.writer import TopicWriter, append_records
from ocstream.xcm.keys import leg_key, spread_origin
from ocstream.xcm.legs import SentLeg, leg_record
from ocstream.xcm.matching import TABLES
from tests.streams import xrange

from ..workers import Worker, group_assignment, publish_records, wait_for
from .sim import relayed_leg

PARTITIONS = 4
UPWARD_MESSAGES_KEY = "0x45323df7cc47150b3930e2666b0aa313549294c71991aee810463ccf34a0f1d1"
NETWORKS = {
    "urn:ocn:polkadot:1000": "assethub-9430.scale",
    "urn:ocn:polkadot:2032": "interlay-1025002.scale",
    "urn:ocn:polkadot:0": "polkadot-9430.scale",
}


#: The key of the records a test writes to ``xcm-legs`` that the matcher must refuse.
JUNK = "junk"


def read_records(redis_url: str, prefix: str, topic: str) -> list[tuple[int, str, Any]]:
    """``(partition, key, value)`` of every record of a topic (but the junk of ``xcm-legs``)."""
    client = redis.Redis.from_url(redis_url)
    keys = Keyspace(prefix)
    found = []
    for partition in range(PARTITIONS):
        for _, fields in xrange(client, keys.stream(topic, partition)):
            key = fields.get(b"k", b"").decode()
            if key != JUNK or topic != "xcm-legs":
                found.append((partition, key, json.loads(cast(bytes, entry_value(fields)))))
    client.close()
    return found


def notification_records(redis_url: str, prefix: str) -> list[tuple[list[Any], dict[str, Any]]]:
    """``(headers, notification)`` of every record of ``xcm-notifications``."""
    client = redis.Redis.from_url(redis_url)
    keys = Keyspace(prefix)
    found = []
    for partition in range(PARTITIONS):
        for _, fields in xrange(client, keys.stream("xcm-notifications", partition)):
            value = json.loads(cast(bytes, entry_value(fields)))
            found.append((decode_headers(fields.get(b"h")), value))
    client.close()
    return found


def compressed_with(redis_url: str, prefix: str) -> set[int]:
    """The dictionary ids that the zstd values the workers wrote name (0: none): every
    stream but ``blocks``, which the test writes."""
    client = redis.Redis.from_url(redis_url)
    found = set()
    for key in cast(Iterator[bytes], client.scan_iter(match=f"{prefix}t:*", _type="stream")):
        if key.startswith(f"{prefix}t:blocks:".encode()):
            continue
        for _, fields in xrange(client, key):
            packed = fields.get(b"z")
            if packed is not None and packed.startswith(ZSTD_MAGIC):
                found.add(zstandard.get_frame_parameters(packed).dict_id)
    client.close()
    return found


def read_topic(redis_url: str, prefix: str, topic: str) -> list[dict[str, Any]]:
    return [value for _, _, value in read_records(redis_url, prefix, topic)]


def register_and_load(
    redis_url: str, prefix: str, fixtures_dir: Path
) -> tuple[list[ExtendedBlock], list[ExtendedBlock]]:
    """Register the recorded networks with their metadata; the blocks of the recorded Asset
    Hub -> Interlay (HRMP) and Asset Hub -> Polkadot (UMP) cases."""
    for network, metadata in NETWORKS.items():
        spec = int(metadata.removesuffix(".scale").rsplit("-", 1)[1])
        register_network_sync(
            redis_url,
            network,
            spec_version=spec,
            metadata=(fixtures_dir / "metadata" / metadata).read_bytes(),
            prefix=prefix,
        )
    cases = fixtures_dir / "cases"
    hrmp = blocks_from_case(cases / "v1-hrmp-assethub-interlay.json", fixtures_dir)
    ump = blocks_from_case(cases / "v1-ump-assethub-polkadot.json", fixtures_dir)
    return hrmp, ump


@pytest.mark.parametrize(
    "batches", [{}, {"OCSTREAM_XCM_BATCH_RECORDS": "1"}], ids=["default-batches", "batches-of-1"]
)
def test_two_workers_match_recorded_journeys(
    redis_url: str,
    prefix: str,
    app_id: str,
    tmp_path: Path,
    fixtures_dir: Path,
    batches: dict[str, str],
) -> None:
    """Also with ``OCSTREAM_XCM_BATCH_RECORDS=1``: every record its own batch and flush.

    w1 writes values as a version without the compression dictionary does
    (``OCSTREAM_TRANSPORT_COMPRESSION=zstd``), w2 with it: in a rolling upgrade the two share
    every topic and changelog, and each reads what the other wrote."""
    hrmp, ump = register_and_load(redis_url, prefix, fixtures_dir)
    env = {"OCSTREAM_XCM_JOURNEY_TTL": "8", "OCSTREAM_XCM_SWEEP_INTERVAL": "2", **batches}
    codecs = {"w1": {"OCSTREAM_TRANSPORT_COMPRESSION": "zstd"}, "w2": {}}
    workers = [
        Worker(
            name,
            tmp_path,
            redis_url=redis_url,
            prefix=prefix,
            app_id=app_id,
            env={**env, **codecs[name]},
            dataflow="xcm,demo",  # the demo's page tells when a worker is assigned
        )
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

        # Bad input: a value that is not a block; a block of a network nobody registered; an
        # Asset Hub block whose upward message is not XCM; one of a runtime with no metadata.
        def fake(network: str, number: int, spec: int, upward: str) -> ExtendedBlock:
            return ExtendedBlock.model_validate(
                {
                    "network": network,
                    "number": number,
                    "hash": "0x" + f"{number:064x}",
                    "parent_hash": "0x" + "cd" * 32,
                    "spec_version": spec,
                    "storage": [
                        {
                            "pallet": "ParachainSystem",
                            "item": "UpwardMessages",
                            "key": UPWARD_MESSAGES_KEY,
                            "value": upward,
                        }
                    ],
                }
            )

        bad = [
            fake("urn:ocn:polkadot:2099", 5, 9430, "0x0408ffff"),
            fake("urn:ocn:polkadot:1000", 6, 9430, "0x0408ffff"),
            fake("urn:ocn:polkadot:1000", 7, 1234, "0x0408ffff"),
        ]
        publish_blocks_sync(redis_url, bad, prefix=prefix, partitions=PARTITIONS)

        class Damaged(Record):
            """A record whose compressed value is not zlib (a foreign writer's, or damaged)."""

            def fields(self, *, compacted: bool = False) -> list[bytes | str | int]:
                return ["t", self.timestamp_ms, "k", self.key or b"", "z", b"\x78not zlib"]

        async def garbage() -> None:
            async with TopicWriter.from_url(redis_url, prefix=prefix) as writer:
                await writer.send_many("blocks", [("urn:ocn:polkadot:1000", b"{not json")])
                key = b"urn:ocn:polkadot:1000"
                p = await writer.partition_for("blocks", key, None)
                damaged = Damaged(key, b"", int(time.time() * 1000))
                await append_records(writer.client, writer.keys, [("blocks", p, damaged)])
                # Records the matcher cannot take: not JSON, a damaged compressed value, and a
                # sent leg without an identity. Each is dead-lettered; nothing stops.
                junk = [(JUNK, b"{not json"), (JUNK, b'{"kind": "sent", "leg": {"a": 1}}')]
                await writer.send_many("xcm-legs", junk)
                p = await writer.partition_for("xcm-legs", JUNK.encode(), None)
                damaged = Damaged(JUNK.encode(), b"", int(time.time() * 1000))
                await append_records(writer.client, writer.keys, [("xcm-legs", p, damaged)])

        asyncio.run(garbage())

        def settled() -> list[dict[str, Any]] | None:
            notes = read_topic(redis_url, prefix, "xcm-notifications")
            types = Counter(n["type"] for n in {n["id"]: n for n in notes}.values())
            if types.get("xcm.timeout", 0) >= 3 and types.get("xcm.received"):
                return notes
            return None

        notes = wait_for(settled, 90, "a receipt and three timeouts")
        # Each notification record names its journey's origin in a header: the delivering
        # worker decodes only those a subscription follows (ocstream/delivery.py).
        records = notification_records(redis_url, prefix)
        assert len(records) == len(notes)
        for headers, value in records:
            assert headers == [(ORIGIN_HEADER, value["origin"]["chainId"].encode())], value

        # Each worker's /xcm/pending/ view counts its partitions: nothing is pending any more,
        # and the counters of the two add up to the terminal notifications.
        def views() -> list[dict[str, Any]]:
            return [json.loads(worker.get("/xcm/pending/")) for worker in workers]

        def drained() -> list[dict[str, Any]] | None:
            found = views()
            done = sum(v["counters"].get("timeout", 0) for v in found) >= 3
            return found if done and all(v["pending_journeys"] == 0 for v in found) else None

        pending = wait_for(drained, 30, "no pending journey in /xcm/pending/")
        assert sum(v["counters"].get("received", 0) for v in pending) == 1, pending
        assert sum(v["counters"].get("timeout", 0) for v in pending) == 3, pending
        assert all(set(v["tables"]) >= {"journeys", "outbound", "inbound"} for v in pending)
        # Both kinds of frames are in what the workers wrote: without a dictionary (w1's) and
        # with it (w2's).
        dictionaries = compressed_with(redis_url, prefix)
        assert dictionaries >= {0, DICT_ID}, dictionaries
    finally:
        for worker in workers:
            worker.stop()
    by_id = {n["id"]: n for n in notes}
    journeys: dict[str, list[str]] = {}
    for note in by_id.values():
        journeys.setdefault(note["journeyId"], []).append(note["type"])
    hashes = {n["journeyId"]: n["origin"]["messageHash"] for n in by_id.values()}
    found = sorted((hashes[jid], sorted(types)) for jid, types in journeys.items())
    garbage_hash = "0x" + blake2b(b"\xff\xff", digest_size=32).hexdigest()
    assert found == sorted(
        [
            # Asset Hub -> Interlay: matched although the receipt was published first.
            (
                "0x19f82753eb9718974dd2d6dfc5e3b238625d012c1a8de5e3347f56079f143867",
                ["xcm.received", "xcm.sent"],
            ),
            # Asset Hub -> relay (UMP) whose receipt was never published: timed out.
            (
                "0xfbc0ad07a5d82bfb829330eb25dbf93280e00fe602d5e0b93d57c0293926b041",
                ["xcm.sent", "xcm.timeout"],
            ),
            # Bytes that are not XCM (and bytes of a runtime with no metadata): dead-lettered,
            # yet tracked by hash, two identical messages as two journeys.
            (garbage_hash, ["xcm.sent", "xcm.timeout"]),
            (garbage_hash, ["xcm.sent", "xcm.timeout"]),
        ]
    ), journeys
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
    # Extraction keyed each new journey's sent leg by a shard of its origin (keys.py), on the
    # partition the key names; the matcher's own records (index, close, tick, sweep) by chain.
    legs = read_records(redis_url, prefix, "xcm-legs")
    sent = [(p, key, SentLeg.model_validate(v["leg"])) for p, key, v in legs if v["kind"] == "sent"]
    assert len(sent) == 4
    for partition, key, leg in sent:
        assert key == leg_key(leg, PARTITIONS) and spread_origin(key) == leg.origin, key
        assert partition == partition_for_key(key.encode(), PARTITIONS)
    assert all(v["kind"] == "sent" or spread_origin(key) is None for _, key, v in legs)
    dead = read_topic(redis_url, prefix, "xcm-dead-letters")
    kinds_dead = Counter(d["kind"] for d in dead)
    assert kinds_dead["bad-block"] == 2, dead  # not JSON; a damaged compressed value
    assert kinds_dead["unknown-network"] == 1, dead
    assert kinds_dead["unknown-runtime"] == 1, dead
    assert kinds_dead["undecodable"] == 2, dead  # the garbage entry in blocks #6 and #7
    refused = sorted(d["reason"].split(":")[0] for d in dead if d["kind"] == "bad-record")
    assert refused == [
        "ValidationError",
        "not a JSON record keyed by a chain",
        "not a JSON record keyed by a chain",
    ], dead
    unknown = next(d for d in dead if d["kind"] == "unknown-network")
    assert "urn:ocn:polkadot:2099" in unknown["reason"]
    runtime = next(d for d in dead if d["kind"] == "unknown-runtime")
    assert "1234" in runtime["reason"]


def test_waiting_legs_have_no_standbys_and_survive_a_takeover(
    redis_url: str, prefix: str, app_id: str, tmp_path: Path, fixtures_dir: Path
) -> None:
    """With the default one standby replica, the tables of legs waiting for their journey
    (``inbound``, ``relay``: ``OCSTREAM_XCM_NO_STANDBY_TABLES``) get none. Each worker holds
    their changelogs' partitions where it holds the legs' (its actives) and nowhere else,
    while it holds every partition of the journeys table's (its actives and its standbys). A
    receipt left waiting in ``inbound`` by a worker that is then killed is recovered by the
    survivor from the changelog alone, and matched when its origin's block comes."""
    hrmp, _ = register_and_load(redis_url, prefix, fixtures_dir)
    workers = [
        Worker(name, tmp_path, redis_url=redis_url, prefix=prefix, app_id=app_id, dataflow="xcm")
        for name in ("w1", "w2")
    ]

    def changelog(table: str) -> str:
        return f"{app_id}-xcm-{table}-changelog"

    def held_by(pids: set[int]) -> dict[int, dict[str, set[int]]] | None:
        found = group_assignment(redis_url, prefix, app_id)
        if set(found) != pids:
            return None
        legs = [p for topics in found.values() for p in topics.get("xcm-legs", set())]
        return found if sorted(legs) == list(range(PARTITIONS)) else None

    client = redis.Redis.from_url(redis_url)
    keys = Keyspace(prefix)
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_assigned()
        found = wait_for(
            lambda: held_by({w.pid for w in workers}), 60, "an assignment of both workers"
        )
        for topics in found.values():
            actives = topics["xcm-legs"]
            assert len(actives) == PARTITIONS // 2, found
            for table in ("inbound", "relay"):
                assert topics.get(changelog(table)) == actives, (table, found)
            for table in ("journeys", "outbound", "seen", "hop"):
                assert topics.get(changelog(table)) == set(range(PARTITIONS)), (table, found)

        # The receipt first: it waits in the inbound table of its chain's partition.
        destination = [b for b in hrmp if b.network == "urn:ocn:polkadot:2032"]
        origin = [b for b in hrmp if b.network == "urn:ocn:polkadot:1000"]
        publish_blocks_sync(redis_url, destination, prefix=prefix, partitions=PARTITIONS)

        def waiting() -> tuple[int] | None:
            for p in range(PARTITIONS):
                entries = xrange(client, keys.stream(changelog("inbound"), p))
                if any(entry_value(fields) is not None for _, fields in entries):
                    return (p,)
            return None

        (partition,) = wait_for(waiting, 60, "the receipt waiting in the inbound table")
        owner = next(w for w in workers if partition in found[w.pid]["xcm-legs"])
        survivor = next(w for w in workers if w is not owner)
        owner.kill()
        wait_for(lambda: held_by({survivor.pid}), 60, "the survivor holding every partition")

        publish_blocks_sync(redis_url, origin, prefix=prefix, partitions=PARTITIONS)

        def received() -> list[dict[str, Any]] | None:
            notes = {n["id"]: n for n in read_topic(redis_url, prefix, "xcm-notifications")}
            done = [n for n in notes.values() if n["type"] == "xcm.received"]
            return done or None

        (note,) = wait_for(received, 60, "the waiting receipt matched by the survivor")
        assert note["origin"]["chainId"] == "urn:ocn:polkadot:1000"
        assert note["destination"]["chainId"] == "urn:ocn:polkadot:2032"
        assert note["destination"]["messageHash"] == (
            "0x19f82753eb9718974dd2d6dfc5e3b238625d012c1a8de5e3347f56079f143867"
        )
        assert survivor.alive()
    finally:
        client.close()
        for worker in workers:
            worker.stop()


# The sweep does not depend on the Redis version: Redis 7 only, to keep the suite's time.
@pytest.mark.parametrize("redis_url", ["redis7"], indirect=True)
def test_sweeps_read_what_expires_not_what_is_kept(
    redis_url: str, prefix: str, app_id: str, tmp_path: Path, fixtures_dir: Path
) -> None:
    """The sweep finds expired entries through the expiry index (``ocstream/xcm/expiry.py``):
    everything with a short time to live is swept, on whichever worker holds it, while the
    ``seen`` entries, kept for an hour here, are never read again; after a rebalance the worker
    that takes partitions rebuilds their index; and after the workers are replaced, the new
    ones rebuild it from their stores and sweep what the old ones wrote."""
    hrmp, ump = register_and_load(redis_url, prefix, fixtures_dir)
    env = {
        "OCSTREAM_XCM_SWEEP_INTERVAL": "1",
        "OCSTREAM_XCM_JOURNEY_TTL": "6",
        "OCSTREAM_XCM_PENDING_TTL": "3",
        "OCSTREAM_XCM_CLOSED_TTL": "2",
        "OCSTREAM_XCM_LATE_TTL": "2",
        "OCSTREAM_XCM_SEEN_TTL": "3600",
        # and the worker's young garbage collections every second (ocstream/runtime.py)
        "OCSTREAM_GC_YOUNG_EVERY": "1",
    }

    def workers(generation: str) -> list[Worker]:
        started = [
            Worker(
                f"{name}{generation}",
                tmp_path / name,  # the same data directory across generations
                redis_url=redis_url,
                prefix=prefix,
                app_id=app_id,
                env=env,
                dataflow="xcm,demo",
            ).start()
            for name in ("w1", "w2")
        ]
        for worker in started:
            worker.wait_assigned()
        return started

    def engine_counters(worker: Worker) -> dict[str, int]:
        return dict(json.loads(worker.get("/xcm/pending/"))["counters"])

    def held(running: list[Worker]) -> tuple[Counter[str], Counter[str]]:
        tables: Counter[str] = Counter()
        counters: Counter[str] = Counter()
        for worker in running:
            view = json.loads(worker.get("/xcm/pending/"))
            tables.update(view["tables"])
            counters.update(view["counters"])
        return tables, counters

    def only_seen_left(running: list[Worker]) -> tuple[Counter[str], Counter[str]] | None:
        tables, counters = held(running)
        others = {name: n for name, n in tables.items() if name != "seen" and n}
        return (tables, counters) if not others and tables["seen"] else None

    def swept_after(running: list[Worker], more: int) -> None:
        """Wait until every worker has run ``more`` sweeps from now."""
        for worker in running:
            start = engine_counters(worker).get("sweeps", 0)

            def swept(w: Worker = worker, s: int = start) -> bool:
                return engine_counters(w).get("sweeps", 0) >= s + more

            wait_for(swept, 30, f"{more} sweeps on {worker.name}")

    def notified(kind: str, count: int) -> bool:
        notes = read_topic(redis_url, prefix, "xcm-notifications")
        seen: int = sum(n["type"] == kind for n in {n["id"]: n for n in notes}.values())
        return seen >= count

    running = workers("a")
    try:
        publish_blocks_sync(redis_url, hrmp, prefix=prefix, partitions=PARTITIONS)
        # A relayed leg whose journey never comes: it waits under its hash and topic (keys of
        # the form {chain}:{id}, whose chain the sweep reads from the URN) until it expires.
        orphan = relayed_leg(
            "urn:ocn:polkadot:0",
            "urn:ocn:polkadot:2004",
            "urn:ocn:polkadot:1000",
            message_hash="0x" + "5a" * 32,
            topic="0x" + "a5" * 32,
            number=7,
        )
        records = [(leg_key(orphan, PARTITIONS), leg_record(orphan))]
        publish_records(redis_url, prefix, "xcm-legs", records, PARTITIONS)
        wait_for(lambda: notified("xcm.received", 1), 60, "the receipt")
        wait_for(lambda: held(running)[1]["relay_pending"] >= 1, 60, "the relayed leg waiting")
        tables, counters = wait_for(
            lambda: only_seen_left(running), 60, "everything but seen entries swept"
        )
        # The ingress's blocks were read as it vouched for them (values taken as they are).
        assert counters["blocks_vouched"] == counters["blocks"] >= len(hrmp), counters
        assert counters["expiry_index_rebuilds"] >= PARTITIONS, counters
        assert counters["relay_expired"] >= 1, counters
        # The rebuild read the partitions that hold something, and did not open (so create
        # empty) a database for each table and partition: this one journey's records are in
        # a few (about 6 of the 24 pairs; all 24 when the rebuild opened them).
        databases = {p.name for p in tmp_path.rglob("*.db") if p.is_dir()}
        assert 0 < len(databases) <= PARTITIONS * len(TABLES) // 2, sorted(databases)
        # Nothing is due any more: once the index entries of what was swept have been seen
        # gone (one more sweep each), further sweeps read nothing, however much is kept.
        swept_after(running, 2)
        checked = held(running)[1]["sweep_checked"]
        assert checked > 0
        swept_after(running, 4)
        tables_after, counters_after = held(running)
        assert tables_after["seen"] == tables["seen"] > 0
        assert counters_after["sweep_checked"] == checked, (checked, counters_after)
        # Meanwhile (4 s and more) each worker collected its young generations on the clock,
        # and timed them for /metrics; none was started by allocation counts.
        for worker in running:
            samples = worker.samples()
            gc_counts = {
                labels["generation"]: value
                for name, labels, value in samples
                if name == "ocstream_gc_collections_total"
            }
            assert gc_counts["1"] >= 3 and gc_counts["0"] == 0, (worker.name, gc_counts)
            # ... and watched its event loop: a wake-up every 50 ms, on /metrics.
            wakeups = [
                value
                for name, _, value in samples
                if name == "ocstream_event_loop_lag_seconds_count"
            ]
            assert wakeups and wakeups[0] >= 40, (worker.name, wakeups)

        # A rebalance: w2 leaves, w1 takes its partitions (changed by recovery, not by w1's
        # matcher) and rebuilds the index of all it now holds.
        rebuilt = engine_counters(running[0])["expiry_index_rebuilds"]
        assert running[1].stop() == 0, running[1].log_tail()
        running = running[:1]

        def rebuilt_all() -> bool:
            return engine_counters(running[0])["expiry_index_rebuilds"] >= rebuilt + PARTITIONS

        wait_for(rebuilt_all, 60, "w1 to rebuild the index of every partition after w2 left")

        # A journey still pending when the workers are replaced: its entries were indexed by
        # a process that is gone, and are found by the new ones' rebuild.
        publish_blocks_sync(
            redis_url,
            [b for b in ump if b.number == 4818937],
            prefix=prefix,
            partitions=PARTITIONS,
        )
        wait_for(lambda: notified("xcm.sent", 2), 60, "the second journey's send")
        for worker in running:
            assert worker.stop() == 0, worker.log_tail()
        running = workers("b")
        wait_for(lambda: notified("xcm.timeout", 1), 60, "the second journey's timeout")
        _, counters = wait_for(
            lambda: only_seen_left(running), 60, "the second journey's entries swept"
        )
        assert counters["expiry_index_rebuilds"] >= PARTITIONS, counters
    finally:
        for worker in running:
            worker.stop()
