"""The ingress through Redis outages: killed (SIGTERM and kill -9) and restarted while chains
produce blocks, restarted empty, and a follower crashing on an answer it does not expect.

Three networks, each served by a JSON-RPC server of 20 recorded Polkadot blocks, real Redis 7
of the test's own (AOF fsynced on every write, as a production Redis with persistence), the real
``ocstream ingress`` process. What counts is what reached the ``blocks`` topic: every block of
every network exactly once, in order.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis

from ocstream.ingress.config import IngressConfig
from ocstream.ingress.model import ExtendedBlock
from ocstream.ingress.publish import publish_block
from ocstream.ingress.raw import load_v1_cbor
from ocstream.ingress.registry import NetworkRecord, NetworkRegistry
from ocstream.ingress.service import IngressService
from ocstream.transport import Keyspace, TopicWriter
from ocstream.transport.wire import entry_value
from tests.ingress.rpc_server import RecordedChainServer
from tests.own_redis import kill_redis, start_redis, wipe
from tests.streams import axrange
from tests.workers import free_port, ocstream_env

FIRST = 17844552
LAST = FIRST + 19
NETWORKS = ["urn:ocn:polkadot:0", "urn:ocn:kusama:0", "urn:ocn:westend:0"]


async def chain_servers(fixtures_dir: Path, count: int) -> list[RecordedChainServer]:
    blocks = load_v1_cbor(fixtures_dir / "raw/v1/polkadot-17844552-20.cbor.bin")
    metadata = (fixtures_dir / "metadata/polkadot-9430.scale").read_bytes()
    servers = [
        RecordedChainServer(blocks, spec_version=9430, metadata=metadata) for _ in range(count)
    ]
    for server in servers:
        await server.start()
        await server.finalize(FIRST)
    return servers


def config_text(servers: list[RecordedChainServer], networks: list[str]) -> str:
    return "".join(
        f'[[networks]]\nid = "{urn}"\nprovider = {{ type = "rpc", url = "{server.url}" }}\n'
        for urn, server in zip(networks, servers, strict=True)
    )


async def published(url: str, prefix: str) -> dict[str, list[int]]:
    """Block numbers in the blocks topic, per network, in topic order."""
    client = aioredis.Redis.from_url(url, socket_timeout=10)
    keys = Keyspace(prefix)
    out: dict[str, list[int]] = defaultdict(list)
    try:
        count = int(await client.hget(keys.topics, "blocks") or 0)
        for p in range(count):
            for _, fields in await axrange(client, keys.stream("blocks", p)):
                out[fields[b"k"].decode()].append(
                    ExtendedBlock.from_json_bytes(cast(bytes, entry_value(fields))).number
                )
    finally:
        await client.aclose()
    return dict(out)


async def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            last = await check()
        except (OSError, aioredis.RedisError) as exc:
            last = exc
        else:
            if last:
                return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_every_block_is_published_once_through_redis_kills_and_restarts(
    fixtures_dir: Path, tmp_path: Path
) -> None:
    redis_dir = tmp_path / "redis"
    server = start_redis(redis_dir)
    url, port = server.url, server.port
    servers = await chain_servers(fixtures_dir, len(NETWORKS))
    config = tmp_path / "ingress.toml"
    config.write_text(config_text(servers, NETWORKS))
    prefix = "outage:"
    http_port = free_port()
    log_path = tmp_path / "ingress.log"
    log = log_path.open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "ocstream", "ingress", "--config", str(config), "--redis", url),
        *("--port", str(http_port), "-l", "info"),
        env=ocstream_env(OCSTREAM_TRANSPORT_PREFIX=prefix),
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
    )
    health_url = f"http://127.0.0.1:{http_port}/health"
    try:
        # Each network starts at the finalized head it first sees, #FIRST.
        async def started() -> bool:
            return all(len(n) >= 1 for n in (await published(url, prefix)).values()) and len(
                await published(url, prefix)
            ) == len(NETWORKS)

        await wait_until(started, 60, "the first block of every network")

        async def outage(number: int, sig: signal.Signals) -> None:
            """Finalize block ``number`` on every chain and kill Redis right behind it, while
            the ingress fetches, decodes and publishes it; blocks keep coming while Redis is
            away (4 s: longer than redis-py's own retries)."""
            nonlocal server
            for chain in servers:
                await chain.finalize(number)
            await asyncio.sleep(0.02)
            await asyncio.to_thread(kill_redis, server, sig)
            for n in range(number + 1, number + 5):
                await asyncio.sleep(1.0)
                for chain in servers:
                    await chain.finalize(n)
            server = await asyncio.to_thread(start_redis, redis_dir, port)

        number = FIRST
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for _ in range(3):  # some blocks through a healthy Redis first
                number += 1
                for chain in servers:
                    await chain.finalize(number)
                await asyncio.sleep(0.3)
            number += 1
            await outage(number, sig)
            number += 4
            assert proc.returncode is None, log_path.read_text()
        while number < LAST:
            number += 1
            for chain in servers:
                await chain.finalize(number)
            await asyncio.sleep(0.2)

        async def complete() -> dict[str, list[int]] | None:
            blocks = await published(url, prefix)
            return blocks if all(max(blocks.get(n, [0])) == LAST for n in NETWORKS) else None

        blocks = await wait_until(complete, 90, "every block of every network")
        await asyncio.sleep(1.0)  # a late duplicate would show up now
        blocks = await published(url, prefix)
        for urn in NETWORKS:
            assert blocks[urn] == list(range(FIRST, LAST + 1)), (urn, blocks[urn])
        client = aioredis.Redis.from_url(url, socket_timeout=10)
        registry = NetworkRegistry(client, prefix)
        for urn in NETWORKS:
            record = await registry.get(urn)
            assert record is not None and record.tip_number == LAST
        await client.aclose()

        # The process survived both outages, said so, and says it is healthy again.
        assert proc.returncode is None
        status, body = await asyncio.to_thread(http_get, health_url)
        health = json.loads(body)
        assert status == 200 and health["status"] == "ok", health
        for urn in NETWORKS:
            assert health["networks"][urn]["state"] == "following"
            assert health["networks"][urn]["errors_by_step"].get("redis", 0) >= 1, health
        _, metrics = await asyncio.to_thread(http_get, f"http://127.0.0.1:{http_port}/metrics")
        assert 'oc_catcher_errors_total{origin="urn:ocn:polkadot:0",step="redis"}' in metrics
        text = log_path.read_text()
        assert "Redis failed" in text and "resuming from the stored tip" in text
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)
        log.close()
        for chain in servers:
            await chain.stop()
        server.stop()
    assert proc.returncode == 0, log_path.read_text()[-3000:]


async def test_health_reports_redis_down_and_a_stale_network(
    fixtures_dir: Path, tmp_path: Path
) -> None:
    """The ingress's /health while Redis is away (down, 503, with the reason), and a network
    that stopped producing blocks (degraded after ``stale_after``)."""
    redis_dir = tmp_path / "redis"
    server = start_redis(redis_dir)
    servers = await chain_servers(fixtures_dir, 1)
    config = IngressConfig.model_validate(
        {"networks": [{"id": NETWORKS[0], "provider": {"type": "rpc", "url": servers[0].url}}]}
    )
    service = IngressService(
        config, redis_url=server.url, prefix="health:", partitions=2, stale_after=3.0
    )
    await service.start()
    try:
        await wait_until(
            lambda: _tip(service, NETWORKS[0], FIRST), 30, "the first block to be published"
        )
        health = await service.health()
        assert health["status"] == "ok" and health["reasons"] == [], health

        # No new block for longer than stale_after: degraded, and why.
        async def degraded() -> dict[str, Any] | None:
            health = await service.health()
            return health if health["status"] == "degraded" else None

        health = await wait_until(degraded, 30, "the network to be reported stale")
        assert "no block published for" in health["reasons"][0], health
        await servers[0].finalize(FIRST + 1)
        await wait_until(lambda: _tip(service, NETWORKS[0], FIRST + 1), 30, "the next block")
        assert (await service.health())["status"] == "ok"
        # Redis gone: down, with the reason, and the follower retrying.
        port = server.port
        await asyncio.to_thread(kill_redis, server, signal.SIGKILL)
        await servers[0].finalize(FIRST + 2)
        health = await service.health()
        assert health["status"] == "down" and health["redis"] is False, health
        assert health["reasons"][0].startswith("Redis does not answer"), health

        async def retrying() -> bool:
            health = await service.health()
            state: str = health["networks"][NETWORKS[0]]["state"]
            return state == "retrying"

        await wait_until(retrying, 30, "the follower to notice and retry")
        server = await asyncio.to_thread(start_redis, redis_dir, port)
        await wait_until(lambda: _tip(service, NETWORKS[0], FIRST + 2), 30, "the block after")
        assert (await service.health())["status"] == "ok"
    finally:
        await service.stop()
        await servers[0].stop()
        server.stop()


async def _tip(service: IngressService, urn: str, number: int) -> bool:
    follower = next(f for f in service.followers if f.urn == urn)
    return follower.record is not None and follower.record.tip_number == number


async def test_a_crashing_follower_is_restarted_and_reported(
    fixtures_dir: Path, tmp_path: Path, redis_url: str, prefix: str
) -> None:
    """An error the follower does not handle (a node answering null for the runtime version)
    does not end its task for good: it is logged with its traceback, counted as a crash,
    reported by /health, and the follower is started again until the node answers."""
    servers = await chain_servers(fixtures_dir, 1)
    config = IngressConfig.model_validate(
        {"networks": [{"id": NETWORKS[0], "provider": {"type": "rpc", "url": servers[0].url}}]}
    )
    service = IngressService(config, redis_url=redis_url, prefix=prefix, partitions=2)
    await service.start()
    try:
        await wait_until(lambda: _tip(service, NETWORKS[0], FIRST), 30, "the first block")
        servers[0].mode = "no-runtime-version"
        await servers[0].finalize(FIRST + 2)

        async def crashed() -> dict[str, Any] | None:
            health = await service.health()
            network = health["networks"][NETWORKS[0]]
            return health if network["errors_by_step"].get("crash", 0) >= 2 else None

        health = await wait_until(crashed, 30, "two crashes")
        assert health["status"] == "degraded", health
        assert "TypeError" in health["reasons"][0], health
        servers[0].mode = "ok"
        await wait_until(lambda: _tip(service, NETWORKS[0], FIRST + 2), 60, "the restart")
        blocks = await published(redis_url, prefix)
        assert blocks[NETWORKS[0]] == [FIRST, FIRST + 1, FIRST + 2]
        assert (await service.health())["status"] == "ok"
    finally:
        await service.stop()
        await servers[0].stop()


async def test_a_redis_that_comes_back_empty_gets_the_network_back(
    fixtures_dir: Path, tmp_path: Path
) -> None:
    """Redis restarted without its data: the ingress puts back the blocks topic, the network's
    record and its runtime metadata, and goes on after the last block it published (not from
    the chain's current head, and not from scratch)."""
    redis_dir = tmp_path / "redis"
    server = start_redis(redis_dir)
    servers = await chain_servers(fixtures_dir, 1)
    config = IngressConfig.model_validate(
        {"networks": [{"id": NETWORKS[0], "provider": {"type": "rpc", "url": servers[0].url}}]}
    )
    prefix = "empty:"
    service = IngressService(
        config, redis_url=server.url, prefix=prefix, partitions=2, redeclare_interval=0.5
    )
    await service.start()
    try:
        await servers[0].finalize(FIRST + 3)
        await wait_until(lambda: _tip(service, NETWORKS[0], FIRST + 3), 30, "four blocks")
        port = server.port
        await asyncio.to_thread(kill_redis, server, signal.SIGKILL)
        wipe(redis_dir)
        server = await asyncio.to_thread(start_redis, redis_dir, port)
        client = aioredis.Redis.from_url(server.url, socket_timeout=10)
        registry = NetworkRegistry(client, prefix)
        try:
            # Before any new block: the record (with its tip), the metadata and the topic.
            async def restored() -> NetworkRecord | None:
                return await registry.get(NETWORKS[0])

            record = await wait_until(restored, 30, "the network record")
            assert record.tip_number == FIRST + 3 and record.genesis_hash == servers[0].genesis
            await wait_until(
                lambda: registry.has_metadata(NETWORKS[0], 9430), 30, "the runtime metadata"
            )
            assert await client.hget(Keyspace(prefix).topics, "blocks") == b"2"
            await servers[0].finalize(FIRST + 6)
            await wait_until(lambda: _tip(service, NETWORKS[0], FIRST + 6), 30, "new blocks")
            blocks = await published(server.url, prefix)
            assert blocks[NETWORKS[0]] == [FIRST + 4, FIRST + 5, FIRST + 6]
        finally:
            await client.aclose()
    finally:
        await service.stop()
        await servers[0].stop()
        server.stop()


async def test_publishing_a_block_twice_appends_it_once(redis_url: str, prefix: str) -> None:
    """The retry of a publish whose answer was lost (Redis applied it) must not append the
    block again: the script sees the stored tip already there."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=10)
    writer = TopicWriter(client, prefix=prefix, default_partitions=2)
    registry = NetworkRegistry(client, prefix)
    try:
        record = NetworkRecord(id=NETWORKS[0], tip_number=7, tip_hash="0x07")
        assert await publish_block(writer, registry, "blocks", record, b"block 7") is True
        assert await publish_block(writer, registry, "blocks", record, b"block 7") is False
        older = record.model_copy(update={"tip_number": 6})
        assert await publish_block(writer, registry, "blocks", older, b"block 6") is False
        after = record.model_copy(update={"tip_number": 8})
        assert await publish_block(writer, registry, "blocks", after, b"block 8") is True
        values = []
        for p in range(2):
            values += [
                entry_value(f) for _, f in await axrange(client, writer.keys.stream("blocks", p))
            ]
        assert values == [b"block 7", b"block 8"]
        stored = await registry.get(NETWORKS[0])
        assert stored is not None and stored.tip_number == 8
    finally:
        await client.aclose()
