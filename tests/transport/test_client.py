from __future__ import annotations

import pytest
from redis.exceptions import DataError

from ocstream.transport.client import Backoff, connect, request_client


def test_backoff_grows_to_its_cap_and_never_overflows() -> None:
    backoff = Backoff(base=0.1, cap=5.0)
    first = backoff.next_delay()
    assert 0.05 <= first <= 0.1
    delays = [backoff.next_delay() for _ in range(5000)]  # days of retries
    assert all(2.5 <= d <= 5.0 for d in delays[20:])
    backoff.reset()
    assert backoff.next_delay() <= 0.1


def test_commands_are_packed_by_hiredis_as_redis_py_packs_them() -> None:
    from redis.asyncio.connection import Connection

    python_packed = Connection()
    packed = connect("redis://127.0.0.1:1/0").connection_pool.make_connection()
    assert type(packed).__name__ == "HiredisConnection"
    for args in [
        ("SET", "kä", "välue"),
        ("EVALSHA", "a" * 40, 2, b"k1", "k2", "t", 1_700_000_000_000, "z", bytes(range(256))),
        ("XADD", "s", "*", "f", 1.25, "g", -3),
        ("CONFIG GET", "maxmemory"),
        (b"CLIENT SETNAME", b"x"),
        ("SET", "k", bytearray(b"ab")),
        ("SET", "k", memoryview(b"ab")),
    ]:
        assert b"".join(packed.pack_command(*args)) == b"".join(python_packed.pack_command(*args))
    commands = [("SET", "k", "v"), ("GET", "k")]
    assert b"".join(packed.pack_commands(commands)) == b"".join(
        python_packed.pack_commands(commands)
    )
    for bad in (None, True, [1, 2], {"a": 1}):
        with pytest.raises(DataError):
            packed.pack_command("SET", "k", bad)


@pytest.mark.parametrize("url", ["rediss://127.0.0.1:1/0", "unix:///tmp/none.sock"])
def test_tls_and_unix_urls_keep_their_connection_kind(url: str) -> None:
    kind = connect(url).connection_pool.connection_class
    assert kind.__name__.startswith("Hiredis")
    assert kind.__mro__[2].__name__ in {"SSLConnection", "UnixDomainSocketConnection"}
    assert request_client(url, name="t").connection_pool.connection_class is kind


async def test_a_client_round_trips_through_redis(redis_url: str, prefix: str) -> None:
    client = connect(redis_url)
    try:
        big = bytes(range(256)) * 4000  # above redis-py's own chunking cutoff
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(f"{prefix}a", "välue")
            pipe.set(f"{prefix}b", big)
            pipe.get(f"{prefix}a")
            pipe.get(f"{prefix}b")
            replies = await pipe.execute()
        assert replies == [True, True, "välue".encode(), big]
        with pytest.raises(DataError):
            await client.set(f"{prefix}c", None)  # type: ignore[arg-type]
        assert await client.exists(f"{prefix}c") == 0
    finally:
        await client.aclose()
