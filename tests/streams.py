"""Reading a stream in tests: redis-py types ``XRANGE``'s reply loosely (an optional union), and
the tests' clients do not decode responses, so an entry is ``(id, {field: value})`` in bytes."""

from __future__ import annotations

from typing import Any, cast

import redis
import redis.asyncio as aioredis

#: ``XRANGE``'s entries as a client that does not decode responses returns them.
Entries = list[tuple[bytes, dict[bytes, bytes]]]


def xrange(client: redis.Redis, name: bytes | str, **options: Any) -> Entries:
    """The entries of stream ``name``, oldest first (``options``: XRANGE's ``min``, ``max``,
    ``count``)."""
    return cast(Entries, client.xrange(name, **options))


async def axrange(client: aioredis.Redis, name: bytes | str, **options: Any) -> Entries:
    """The entries of stream ``name``, oldest first (asyncio client; options as above)."""
    return cast(Entries, await client.xrange(name, **options))
