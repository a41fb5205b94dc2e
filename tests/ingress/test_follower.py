"""The chain follower against a JSON-RPC server serving 20 recorded Polkadot blocks.

Real blocks (raw SCALE, ``polkadot-17844552-20.cbor.bin``), real metadata, real Redis (7 and 6.2),
real websockets. Each test checks what reached the ``blocks`` topic.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from ocstream.ingress.config import NetworkConfig
from ocstream.ingress.decode import DecoderCache
from ocstream.ingress.follower import ChainFollower
from ocstream.ingress.metrics import IngressMetrics
from ocstream.ingress.model import NORMALISED_HEADER, ExtendedBlock
from ocstream.ingress.raw import RawBlock, load_v1_cbor
from ocstream.ingress.registry import NetworkRecord, NetworkRegistry
from ocstream.transport import Keyspace, TopicWriter
from ocstream.transport.wire import decode_headers, entry_value
from ocstream.xcm.coverage import Coverage, coverage_of_record
from tests.ingress.rpc_server import RecordedChainServer
from tests.streams import axrange

URN = "urn:ocn:polkadot:0"
FIRST = 17844552


@pytest.fixture(scope="module")
def recorded(fixtures_dir: Path) -> tuple[list[RawBlock], bytes]:
    blocks = load_v1_cbor(fixtures_dir / "raw/v1/polkadot-17844552-20.cbor.bin")
    metadata = (fixtures_dir / "metadata/polkadot-9430.scale").read_bytes()
    return blocks, metadata


@pytest.fixture
async def servers(
    recorded: tuple[list[RawBlock], bytes],
) -> AsyncIterator[Callable[[], Awaitable[RecordedChainServer]]]:
    started: list[RecordedChainServer] = []

    async def start() -> RecordedChainServer:
        blocks, metadata = recorded
        server = RecordedChainServer(blocks, spec_version=9430, metadata=metadata)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


class Harness:
    def __init__(self, redis_url: str, prefix: str, urls: list[str], **options: Any) -> None:
        self.client = aioredis.Redis.from_url(redis_url)
        self.prefix = prefix
        self.writer = TopicWriter(self.client, prefix=prefix)
        self.registry = NetworkRegistry(self.client, prefix)
        self.metrics = IngressMetrics()
        self.decoders = DecoderCache()
        network = NetworkConfig.model_validate(
            {"id": URN, "provider": {"type": "rpc", "url": urls}, "batchSize": 4}
        )
        self.follower = ChainFollower(
            network,
            writer=self.writer,
            registry=self.registry,
            decoders=self.decoders,
            metrics=self.metrics,
            **options,
        )
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.follower.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        await self.client.aclose()

    async def published(self, key: str = URN) -> list[ExtendedBlock]:
        keys = Keyspace(self.prefix)
        count = await self.writer.topics.get("blocks") or 0
        blocks = []
        for p in range(count):
            for _, fields in await axrange(self.client, keys.stream("blocks", p)):
                assert fields[b"k"] == key.encode()
                # The ingress vouches for its values, and reading them as they are gives the
                # same block as normalising them again.
                assert decode_headers(fields.get(b"h")) == [(NORMALISED_HEADER, b"1")]
                block = ExtendedBlock.from_json_bytes(cast(bytes, entry_value(fields)))
                assert (
                    ExtendedBlock.from_json_bytes(cast(bytes, entry_value(fields)), normalised=True)
                    == block
                )
                blocks.append(block)
        return blocks

    async def wait_published(
        self, count: int, timeout: float = 30, key: str = URN
    ) -> list[ExtendedBlock]:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            blocks = await self.published(key)
            if len(blocks) >= count:
                return blocks
            await asyncio.sleep(0.05)
        raise AssertionError(f"only {len(await self.published(key))} of {count} blocks published")


def numbers(blocks: list[ExtendedBlock]) -> list[int]:
    return [b.number for b in blocks]


async def test_every_finalized_block_is_published_once_in_order(
    redis_url: str, prefix: str, servers: Any, recorded: tuple[list[RawBlock], bytes]
) -> None:
    server = await servers()
    await server.finalize(FIRST + 2)
    harness = Harness(redis_url, prefix, [server.url])
    harness.start()
    try:
        # A new network starts at the finalized head it first sees, then follows every block.
        await harness.wait_published(1)
        await server.finalize(FIRST + 19)
        blocks = await harness.wait_published(18)
        await asyncio.sleep(0.3)  # nothing more may come: there are no more finalized blocks
        blocks = await harness.published()
        assert numbers(blocks) == list(range(FIRST + 2, FIRST + 20))
        raw = {b.number: b for b in recorded[0]}
        for block in blocks:
            assert block.hash == raw[block.number].hash
            assert len(block.extrinsics) == len(raw[block.number].extrinsics)
            assert block.spec_version == 9430 and block.timestamp
        record = await harness.registry.get(URN)
        assert record is not None and record.tip_number == FIRST + 19
        assert record.genesis_hash == server.genesis
        assert record.ss58_prefix == 0  # System.SS58Prefix of the Polkadot relay runtime
        assert await harness.registry.metadata(URN, 9430) == recorded[1]
        assert harness.decoders.builds == 1
        assert harness.metrics.networks[URN].blocks_published == 18
    finally:
        await harness.stop()


async def test_a_disconnect_and_a_restart_leave_no_gap(
    redis_url: str, prefix: str, servers: Any
) -> None:
    server = await servers()
    await server.finalize(FIRST)
    harness = Harness(redis_url, prefix, [server.url], max_backoff=0.2)
    harness.start()
    try:
        await harness.wait_published(1)
        await server.finalize(FIRST + 5)
        await harness.wait_published(6)
        await server.drop_connections()
        await server.finalize(FIRST + 9)  # finalized while the follower was away
        await harness.wait_published(10)
    finally:
        await harness.stop()
    assert harness.metrics.networks[URN].reconnects >= 1
    # A new process (the same registry) resumes from the stored tip after a long pause.
    await server.finalize(FIRST + 19)
    again = Harness(redis_url, prefix, [server.url])
    again.start()
    try:
        blocks = await again.wait_published(20)
        assert numbers(blocks) == list(range(FIRST, FIRST + 20))
    finally:
        await again.stop()


async def test_fails_over_to_the_next_url_and_refuses_another_chain(
    redis_url: str, prefix: str, servers: Any
) -> None:
    bad = await servers()
    bad.mode = "garbage"
    good = await servers()
    await good.finalize(FIRST + 3)
    harness = Harness(redis_url, prefix, [bad.url, good.url], max_backoff=0.2)
    harness.start()
    try:
        blocks = await harness.wait_published(1)
        assert numbers(blocks) == [FIRST + 3]
        assert bad.requests and harness.metrics.networks[URN].errors >= 1
    finally:
        await harness.stop()

    # The registry knows this network's genesis: a node of another chain is refused.
    other = await servers()
    other.genesis = "0x" + "ab" * 32
    await other.finalize(FIRST + 5)
    refused = Harness(redis_url, prefix, [other.url], max_backoff=0.2)
    refused.start()
    try:
        await asyncio.sleep(1.0)  # the time it would need to publish: it must not
        assert numbers(await refused.published()) == [FIRST + 3]
        assert refused.metrics.networks[URN].errors >= 1
        assert "chain_getBlock" not in other.requests
    finally:
        await refused.stop()


async def test_a_silent_node_trips_the_watchdog(redis_url: str, prefix: str, servers: Any) -> None:
    server = await servers()
    await server.finalize(FIRST)
    harness = Harness(redis_url, prefix, [server.url], watchdog=0.5, max_backoff=0.2)
    harness.start()
    try:
        await harness.wait_published(1)
        # Finality stalls: no notification comes, and the watchdog reconnects.
        deadline = asyncio.get_running_loop().time() + 10
        while harness.metrics.networks[URN].reconnects == 0:
            assert asyncio.get_running_loop().time() < deadline, "no reconnect after silence"
            await asyncio.sleep(0.05)
        await server.finalize(FIRST + 2)
        assert numbers(await harness.wait_published(3)) == [FIRST, FIRST + 1, FIRST + 2]
    finally:
        await harness.stop()


async def test_registry_round_trip(redis_url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    registry = NetworkRegistry(client, prefix)
    record = NetworkRecord(id=URN, genesis_hash="0x01", tip_number=5, tip_hash="0x02")
    await registry.put(record)
    assert await registry.get(URN) == record
    assert await registry.all() == {URN: record}
    await registry.put_metadata(URN, 7, b"meta\x0e")
    assert await registry.metadata(URN, 7) == b"meta\x0e"
    assert await registry.metadata(URN, 8) is None
    await client.aclose()


@pytest.mark.parametrize(
    ("case", "recording", "metadata", "spec", "network"),
    [
        (
            "v1-hrmp-assethub-interlay.json",
            "hrmp-out-1000.cbor.bin",
            "assethub-9430.scale",
            9430,
            {"id": "urn:ocn:polkadot:1000", "relay": "urn:ocn:polkadot:0"},
        ),
        (
            "v1-dmp-hop-polkadot-hydra.json",
            "polkadot-hop-19777220.cbor.bin",
            "polkadot-1000001.scale",
            1000001,
            {"id": "urn:ocn:polkadot:0"},
        ),
    ],
)
async def test_sent_blocks_carry_their_storage_items(
    redis_url: str,
    prefix: str,
    fixtures_dir: Path,
    case: str,
    recording: str,
    metadata: str,
    spec: int,
    network: dict[str, str],
) -> None:
    manifest = json.loads((fixtures_dir / "cases" / case).read_text())
    blocks = load_v1_cbor(fixtures_dir / "raw/v1" / recording)
    expected = [s for s in manifest["storage"] if s["chain"] == network["id"]]
    assert expected, "the case names a storage item of this chain"
    server = RecordedChainServer(
        blocks,
        spec_version=spec,
        metadata=(fixtures_dir / "metadata" / metadata).read_bytes(),
        storage={(s["key"], s["block_hash"]): s["value"] for s in expected},
    )
    await server.start()
    await server.finalize(cast(int, blocks[0].number))  # v1 recordings: numbered
    harness = Harness(redis_url, prefix, [server.url])
    harness.follower.network = NetworkConfig.model_validate(
        {**network, "provider": {"type": "rpc", "url": server.url}}
    )
    harness.follower.urn = network["id"]
    harness.start()
    try:
        await harness.wait_published(1, key=network["id"])  # it starts at the first block
        await server.finalize(cast(int, blocks[-1].number))
        published = await harness.wait_published(len(blocks), key=network["id"])
    finally:
        await harness.stop()
        await server.stop()
    by_hash = {b.hash: b for b in published}
    for item in expected:
        block = by_hash[item["block_hash"]]
        attached = {s.key: s for s in block.storage}
        assert item["key"] in attached, f"{item['item']} missing from #{block.number}"
        assert attached[item["key"]].value == item["value"]
        assert f"{attached[item['key']].pallet}.{attached[item['key']].item}" in item["item"]
    # Blocks that send nothing carry no storage.
    assert all(
        not b.storage for b in published if b.hash not in {i["block_hash"] for i in expected}
    )


async def test_a_runtime_upgrade_loads_the_new_metadata_before_decoding(
    redis_url: str, prefix: str, servers: Any, fixtures_dir: Path
) -> None:
    server = await servers()  # Polkadot #17844552.. recorded under spec 9430
    upgraded = load_v1_cbor(fixtures_dir / "raw/v1/dmp-out-event-19505060.cbor.bin")
    server.add_blocks(
        upgraded,
        spec_version=1000001,
        metadata=(fixtures_dir / "metadata/polkadot-1000001.scale").read_bytes(),
    )
    await server.finalize(FIRST + 1)
    harness = Harness(redis_url, prefix, [server.url])
    after = Harness(redis_url, prefix, [server.url])
    harness.start()
    try:
        await harness.wait_published(1)
        await server.finalize(FIRST + 2)
        await harness.wait_published(2)
        # The recording has no blocks in between: move the stored tip to just before the
        # upgraded runtime's blocks, as if the follower had published everything up to there.
        await harness.stop()
        record = await harness.registry.get(URN)
        assert record is not None
        await after.registry.put(
            record.model_copy(update={"tip_number": cast(int, upgraded[0].number) - 1})
        )
        after.start()
        await server.finalize(upgraded[-1].number)
        blocks = await after.wait_published(2 + len(upgraded))
    finally:
        await harness.stop()
        await after.stop()
    assert [b.spec_version for b in blocks] == [9430, 9430] + [1000001] * len(upgraded)
    assert numbers(blocks[2:]) == [b.number for b in upgraded]
    # The new runtime's events decode with its own types (XcmPallet.Sent at Initialization).
    assert any(e.module == "XcmPallet" and e.name == "Sent" for e in blocks[2].events)
    assert await after.registry.metadata(URN, 1000001) is not None
    assert after.decoders.builds == 1  # only the upgraded runtime, in the new process


async def test_undecodable_metadata_is_retried_while_other_networks_keep_flowing(
    redis_url: str,
    prefix: str,
    fixtures_dir: Path,
    recorded: tuple[list[RawBlock], bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    blocks, metadata = recorded
    good = RecordedChainServer(blocks, spec_version=9430, metadata=metadata)
    # A node whose runtime ships metadata V16 only, which the decoder cannot read.
    v16 = (fixtures_dir / "metadata/assethub-2000007.scale").read_bytes()
    bad = RecordedChainServer(blocks, spec_version=2000007, metadata=v16, genesis="0x" + "cd" * 32)
    for server in (good, bad):
        await server.start()
        await server.finalize(FIRST)
    healthy = Harness(redis_url, prefix, [good.url], max_backoff=0.2)
    broken = Harness(redis_url, prefix, [bad.url], max_backoff=0.2)
    broken.follower.urn = "urn:ocn:polkadot:1000"
    broken.follower.metrics = broken.metrics.networks["urn:ocn:polkadot:1000"]
    healthy.start()
    broken.start()
    try:
        await healthy.wait_published(1)
        await good.finalize(FIRST + 5)
        await bad.finalize(FIRST + 5)
        await healthy.wait_published(6)
        deadline = asyncio.get_running_loop().time() + 10
        while broken.follower.metrics.errors < 2:  # it keeps retrying
            assert asyncio.get_running_loop().time() < deadline, "the broken network gave up"
            await asyncio.sleep(0.05)
    finally:
        await healthy.stop()
        await broken.stop()
        await good.stop()
        await bad.stop()
    assert broken.follower.metrics.blocks_published == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("urn:ocn:polkadot:1000" in m and "V16 is not supported" in m for m in messages), (
        messages[-5:]
    )


# -- where coverage begins (the start-up boundary, ocstream/xcm/coverage.py) ---------------------
# A fresh ingress starts at the finalized head it first sees, so what was received before that
# block was never published: the registry says so (covered_from, covered_from_timestamp). A
# restart that resumes from the tip keeps the start; a gap skipped with recovery off moves it.


async def test_the_first_block_of_each_unbroken_stretch_is_recorded(
    redis_url: str, prefix: str, servers: Any
) -> None:
    server = await servers()
    await server.finalize(FIRST + 2)
    first = Harness(redis_url, prefix, [server.url])
    first.start()
    try:
        await first.wait_published(1)
        await server.finalize(FIRST + 4)
        blocks = await first.wait_published(3)
    finally:
        await first.stop()
    start = blocks[0]
    assert start.number == FIRST + 2 and start.timestamp
    record = await first.registry.get(URN)
    assert record is not None
    assert (record.covered_from, record.covered_from_timestamp) == (FIRST + 2, start.timestamp)
    assert coverage_of_record(record) == Coverage(FIRST + 2, start.timestamp)

    # A restart resumes from the tip: nothing was skipped, the coverage still starts there.
    await server.finalize(FIRST + 7)
    again = Harness(redis_url, prefix, [server.url])
    again.start()
    try:
        blocks = await again.wait_published(6)
    finally:
        await again.stop()
    assert numbers(blocks) == list(range(FIRST + 2, FIRST + 8))
    record = await again.registry.get(URN)
    assert record is not None and record.covered_from == FIRST + 2

    # With recovery off, a restart skips the blocks finalized meanwhile: a new stretch.
    await server.finalize(FIRST + 12)
    skipping = Harness(redis_url, prefix, [server.url])
    skipping.follower.network = NetworkConfig.model_validate(
        {"id": URN, "provider": {"type": "rpc", "url": server.url}, "recovery": False}
    )
    skipping.start()
    try:
        blocks = await skipping.wait_published(7)
    finally:
        await skipping.stop()
    assert blocks[-1].number == FIRST + 12
    record = await skipping.registry.get(URN)
    assert record is not None
    assert (record.covered_from, record.covered_from_timestamp) == (
        FIRST + 12,
        blocks[-1].timestamp,
    )
