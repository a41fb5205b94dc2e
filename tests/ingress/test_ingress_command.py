"""``ocstream ingress`` as a process: follows a recorded chain, serves /health and /metrics."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import urllib.request
from pathlib import Path

import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from ocstream.ingress.raw import load_v1_cbor
from ocstream.transport import Keyspace
from tests.conftest import SYSTEM_REDIS_URL
from tests.ingress.rpc_server import RecordedChainServer
from tests.workers import free_port, ocstream_env

FIRST = 17844552


def fetch(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status, response.read().decode()


async def test_ingress_process_publishes_and_reports(
    redis_url: str, prefix: str, fixtures_dir: Path, tmp_path: Path
) -> None:
    blocks = load_v1_cbor(fixtures_dir / "raw/v1/polkadot-17844552-20.cbor.bin")
    metadata = (fixtures_dir / "metadata/polkadot-9430.scale").read_bytes()
    server = RecordedChainServer(blocks, spec_version=9430, metadata=metadata)
    url = await server.start()
    await server.finalize(FIRST + 4)
    config = tmp_path / "ingress.toml"
    config.write_text(
        f'[[networks]]\nid = "urn:ocn:polkadot:0"\nprovider = {{ type = "rpc", url = "{url}" }}\n'
    )
    port = free_port()
    env = ocstream_env(OCSTREAM_TRANSPORT_PREFIX=prefix)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ocstream",
        "ingress",
        "--config",
        str(config),
        "--redis",
        redis_url,
        "--port",
        str(port),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    client = aioredis.Redis.from_url(redis_url)
    keys = Keyspace(prefix)
    try:

        async def published() -> int:
            count = int(await client.hget(keys.topics, "blocks") or 0)
            return sum([await client.xlen(keys.stream("blocks", p)) for p in range(count)])

        async def wait_published(count: int) -> int:
            for _ in range(300):
                if (n := await published()) >= count:
                    return n
                await asyncio.sleep(0.1)
            return await published()

        # It starts at the finalized head it first sees (#FIRST+4), then follows every block.
        assert await wait_published(1) == 1
        await server.finalize(FIRST + 9)
        assert await wait_published(6) == 6
        status, body = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/health")
        health = json.loads(body)
        assert status == 200 and health["redis"] is True
        assert health["networks"]["urn:ocn:polkadot:0"]["tip"] == FIRST + 9
        _, metrics = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/metrics")
        assert (
            'ocstream_ingress_blocks_published_total{network="urn:ocn:polkadot:0"} 6.0' in metrics
        )
        # The worker's collector policy (ocstream/gctune.py): no collection started by
        # allocation counts, and one of the young generations once the runtime was loaded.
        collections = {
            sample.labels["generation"]: sample.value
            for family in text_string_to_metric_families(metrics)
            for sample in family.samples
            if sample.name == "ocstream_gc_collections_total"
        }
        assert collections["0"] == 0 and collections["1"] >= 1, collections
        # Its event loop is watched too (ocstream/looplag.py).
        assert "ocstream_event_loop_lag_seconds_count" in metrics
        assert "ocstream_event_loop_lag_max_seconds" in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(proc.communicate(), 30)
        await client.aclose()
        await server.stop()
    assert proc.returncode == 0, output.decode()


async def test_ingress_without_a_config_says_so(tmp_path: Path) -> None:
    env = ocstream_env()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ocstream",
        "ingress",
        "--redis",
        SYSTEM_REDIS_URL,
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"needs --config" in err


async def test_an_embedded_worker_runs_the_ingress_itself(
    fixtures_dir: Path, tmp_path: Path
) -> None:
    from tests.workers import Worker

    blocks = load_v1_cbor(fixtures_dir / "raw/v1/polkadot-17844552-20.cbor.bin")
    metadata = (fixtures_dir / "metadata/polkadot-9430.scale").read_bytes()
    server = RecordedChainServer(blocks, spec_version=9430, metadata=metadata)
    url = await server.start()
    await server.finalize(FIRST)
    config = tmp_path / "solo.toml"
    config.write_text(
        f'[[networks]]\nid = "urn:ocn:polkadot:0"\nprovider = {{ type = "rpc", url = "{url}" }}\n'
    )
    # No --redis: the worker starts its embedded Redis and follows the network itself.
    worker = Worker(
        "solo",
        tmp_path,
        redis_url=None,
        prefix="ocs:",
        app_id="solo",
        env={"OCSTREAM_CONFIG_FILE": str(config)},
    )
    worker.start()
    try:
        await asyncio.to_thread(worker.wait_assigned)
        redis_url = (worker.data_dir / "redis" / "url").read_text().strip()
        client = aioredis.Redis.from_url(redis_url)
        keys = Keyspace("ocs:")

        async def published() -> int:
            count = int(await client.hget(keys.topics, "blocks") or 0)
            return sum([await client.xlen(keys.stream("blocks", p)) for p in range(count)])

        for _ in range(300):
            if await published() >= 1:
                break
            await asyncio.sleep(0.1)
        await server.finalize(FIRST + 3)
        for _ in range(300):
            if await published() >= 4:
                break
            await asyncio.sleep(0.1)
        assert await published() == 4
        networks = json.loads(await asyncio.to_thread(worker.get, "/networks"))
        assert networks["urn:ocn:polkadot:0"]["tip_number"] == FIRST + 3
        health = json.loads(await asyncio.to_thread(worker.get, "/ingress/health"))
        assert health["networks"]["urn:ocn:polkadot:0"]["published"] == 4
        metrics = await asyncio.to_thread(worker.get, "/metrics")
        assert "ocstream_ingress_blocks_published_total" in metrics
        await client.aclose()
    finally:
        code = await asyncio.to_thread(worker.stop)
        await server.stop()
    assert code == 0, worker.log_tail()
