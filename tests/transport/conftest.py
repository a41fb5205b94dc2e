"""Fixtures shared by the transport's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the test's Redis, closed after the test whatever its outcome."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()
