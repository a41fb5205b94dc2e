"""The worker's HTTP side under Redis faults, through the real HTTP server of a real worker
process and a Redis 7 of the test's own: frozen (SIGSTOP), 300 concurrent health checks, data
lost (FLUSHALL, restart without its files), and the embedded mode's first minute."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import redis

from ocstream.embedded import EmbeddedRedis
from tests.own_redis import kill_redis, start_redis, wipe
from tests.workers import Worker, free_port, wait_for

NETWORKS = ["urn:ocn:polkadot:0", "urn:ocn:polkadot:1000"]
PREFIX = "faults:"


def subscription(name: str) -> dict[str, Any]:
    """The deployment guide's subscription, with a log channel (no outside host needed)."""
    return {
        "id": name,
        "origin": "urn:ocn:polkadot:0",
        "senders": "*",
        "destinations": ["urn:ocn:polkadot:1000"],
        "channels": [{"type": "log"}],
    }


def network_config(tmp_path: Path) -> Path:
    """The two networks of ``config/minimal.toml``, on a node that does not answer (a closed
    port): the worker knows them from its config, no ingress has reached them."""
    url = f"ws://127.0.0.1:{free_port()}/"
    path = tmp_path / "networks.toml"
    path.write_text(
        f'[[networks]]\nid = "urn:ocn:polkadot:0"\nprovider = {{ type = "rpc", url = "{url}" }}\n'
        '[[networks]]\nid = "urn:ocn:polkadot:1000"\nrelay = "urn:ocn:polkadot:0"\n'
        f'provider = {{ type = "rpc", url = "{url}" }}\n'
    )
    return path


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = start_redis(tmp_path / "redis")
    yield server
    if server.running:
        os.kill(server.pid, signal.SIGCONT)  # a test that failed while it was frozen
        server.stop()


def start_worker(tmp_path: Path, redis_url: str | None, config: Path) -> Worker:
    worker = Worker(
        "w",
        tmp_path,
        redis_url=redis_url,
        prefix=PREFIX,
        app_id=f"f{uuid.uuid4().hex[:6]}",
        env={"OCSTREAM_CONFIG_FILE": str(config)},
    )
    worker.start()
    worker.wait_assigned()
    # The app's own services (the API's delivery side, the declaration of the networks) start
    # once the worker is ready, as the guide's "Ready" line says.
    wait_for(lambda: "[^Worker]: Ready" in worker.log_text(), 60, "the worker to be ready")
    return worker


async def call(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[int, Any, float]:
    """One request: status, JSON body (or text), seconds taken."""
    started = time.monotonic()
    async with session.request(method, url, json=body) as response:
        text = await response.text()
        try:
            payload: Any = json.loads(text) if text else None
        except ValueError:
            payload = text
        return response.status, payload, time.monotonic() - started


async def test_a_frozen_redis_gets_quick_answers_from_health_and_the_api(
    tmp_path: Path, own_redis: EmbeddedRedis
) -> None:
    worker = start_worker(tmp_path, own_redis.url, network_config(tmp_path))
    base = f"http://127.0.0.1:{worker.port}"
    # Far above the few seconds the bounded calls take, far below the 120 s they took before.
    timeout = aiohttp.ClientTimeout(total=15)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            status, body, _ = await call(session, "POST", f"{base}/subs", subscription("before"))
            assert status == 201, body
            os.kill(own_redis.pid, signal.SIGSTOP)
            try:
                status, health, took = await call(session, "GET", f"{base}/health")
                print(f"/health with Redis frozen: {status} in {took:.2f}s: {health}")
                assert status == 503 and health["status"] == "down", health
                assert health["reasons"][0].startswith("Redis does not answer"), health
                status, body, took = await call(
                    session, "POST", f"{base}/subs", subscription("frozen")
                )
                print(f"POST /subs with Redis frozen: {status} in {took:.2f}s: {body}")
                assert status == 503, body
                assert body["error"] is True and body["statusCode"] == 503
                assert "unavailable" in body["reason"]
            finally:
                os.kill(own_redis.pid, signal.SIGCONT)

            async def healthy() -> bool:
                status, health, _ = await call(session, "GET", f"{base}/health")
                return status == 200 and health["redis"] == "ok"

            for _ in range(100):
                if await healthy():
                    break
                await asyncio.sleep(0.2)
            assert await healthy()
            status, body, _ = await call(session, "POST", f"{base}/subs", subscription("after"))
            assert status == 201, body
        assert worker.alive()
    finally:
        worker.stop()


async def test_300_concurrent_health_checks_get_truthful_answers(
    tmp_path: Path, own_redis: EmbeddedRedis
) -> None:
    worker = start_worker(tmp_path, own_redis.url, network_config(tmp_path))
    base = f"http://127.0.0.1:{worker.port}"
    connector = aiohttp.TCPConnector(limit=0)  # 300 connections at once, no client-side queue
    try:
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=60)
        ) as session:
            requests = [call(session, "GET", f"{base}/health") for _ in range(300)]
            requests += [call(session, "GET", f"{base}/networks") for _ in range(100)]
            answers = await asyncio.gather(*requests)
        health = answers[:300]
        statuses = Counter((status, body["status"]) for status, body, _ in health)
        print(f"300 concurrent /health: {dict(statuses)}")
        assert not [b for _, b, _ in answers if "Too many connections" in json.dumps(b)]
        # Redis is fine and both networks were never reached: every answer says exactly that.
        assert statuses == {(200, "degraded"): 300}, statuses
        for _, body, _ in health:
            assert body["redis"] == "ok" and len(body["reasons"]) == 2, body
        assert all(status == 200 for status, _, _ in answers[300:])
    finally:
        worker.stop()


async def test_a_redis_back_empty_gets_the_configured_networks_again(
    tmp_path: Path, own_redis: EmbeddedRedis
) -> None:
    worker = start_worker(tmp_path, own_redis.url, network_config(tmp_path))
    base = f"http://127.0.0.1:{worker.port}"
    client = redis.Redis.from_url(own_redis.url, socket_timeout=10)
    key = f"{PREFIX}networks"

    def declared() -> bool:
        return sorted(k.decode() for k in cast(list[bytes], client.hkeys(key))) == NETWORKS

    server = own_redis
    try:
        wait_for(declared, 30, "the configured networks in the registry")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
            # Data lost in place (FLUSHALL), then a restart without any of its files.
            client.flushall()
            assert not client.hkeys(key)
            wait_for(declared, 30, "the networks declared again after FLUSHALL")
            status, body, _ = await call(session, "POST", f"{base}/subs", subscription("one"))
            assert status == 201, body

            port = server.port
            client.close()
            kill_redis(server, signal.SIGKILL)
            wipe(server.data_dir)
            server = start_redis(server.data_dir, port)
            client = redis.Redis.from_url(server.url, socket_timeout=10)
            assert not client.hkeys(key)
            wait_for(declared, 30, "the networks declared again after an empty restart")
            status, body, _ = await call(session, "POST", f"{base}/subs", subscription("two"))
            assert status == 201, body
        assert worker.alive()
        assert "re-declared" in worker.log_text()
    finally:
        client.close()
        worker.stop()
        server.stop()


async def test_embedded_worker_accepts_subscriptions_before_reaching_its_chains(
    tmp_path: Path,
) -> None:
    """``ocstream worker --config F`` with no Redis given: the networks of F are declared at
    start, so the guide's POST answers 201 at once; /health says degraded, and why."""
    worker = start_worker(tmp_path, None, network_config(tmp_path))
    base = f"http://127.0.0.1:{worker.port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
            status, body, _ = await call(session, "POST", f"{base}/subs", subscription("first"))
            assert status == 201, body
            status, health, _ = await call(session, "GET", f"{base}/health")
        print(f"embedded /health, chains unreachable: {health}")
        assert status == 200 and health["status"] == "degraded", health
        for urn in NETWORKS:
            assert health["networks"][urn]["tip"] is None
            assert f"{urn}: never reached (no block published yet)" in health["reasons"]
    finally:
        assert worker.stop() == 0, worker.log_tail()
