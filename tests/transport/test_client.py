from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import hiredis
import pytest
import redis.asyncio as aioredis
from redis.exceptions import (
    BusyLoadingError,
    DataError,
    InvalidResponse,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ocstream.transport.client import Backoff, connect, refused_for_now, request_client, retryable
from tests.transport.tasks import counting_tasks


def test_backoff_grows_to_its_cap_and_never_overflows() -> None:
    backoff = Backoff(base=0.1, cap=5.0)
    first = backoff.next_delay()
    assert 0.05 <= first <= 0.1
    delays = [backoff.next_delay() for _ in range(5000)]  # days of retries
    assert all(2.5 <= d <= 5.0 for d in delays[20:])
    backoff.reset()
    assert backoff.next_delay() <= 0.1


@pytest.mark.parametrize(
    ("error", "for_now"),
    [
        # How Redis 6.2 words a refused write inside the append script, and Redis 7 (whose
        # codes redis-py strips, raising its own class instead).
        (ResponseError("@user_script: 16: -OOM command not allowed when used memory > x"), True),
        (ResponseError("Error running script (call to f_1): @user_script:9: -READONLY no"), True),
        (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), True),
        (ReadOnlyError("You can't write against a read only replica."), True),
        (
            ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's failing"),
            True,
        ),
        (BusyLoadingError("Redis is loading the dataset in memory"), True),
        (ResponseError("BUSY Redis is busy running a script."), True),
        (ResponseError("NOREPLICAS Not enough good replicas to write."), True),
        # Refused for good: no retry mends these.
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
        (ResponseError("ERR no such key"), False),
        (ResponseError("BUSYKEY Target key name already exists."), False),
        (DataError("Invalid input of type: 'dict'"), False),
        (ValueError("OOM"), False),  # not a reply of Redis at all
    ],
)
def test_refused_for_now_tells_a_passing_refusal_from_a_wrong_write(
    error: Exception, for_now: bool
) -> None:
    assert refused_for_now(error) is for_now


def test_retryable_is_an_outage_or_a_refusal_for_now() -> None:
    assert retryable(RedisConnectionError("gone")) and retryable(RedisTimeoutError("slow"))
    assert retryable(OutOfMemoryError("command not allowed when used memory > 'maxmemory'."))
    assert not retryable(ResponseError("WRONGTYPE Operation against a key"))
    assert not retryable([b"1", b"0"])  # a reply, not an error


def test_commands_are_packed_by_hiredis_as_redis_py_packs_them() -> None:
    from redis.asyncio.connection import Connection

    python_packed = Connection()
    pool: Any = connect("redis://127.0.0.1:1/0").connection_pool  # make_connection: untyped
    packed = pool.make_connection()
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


async def _pipeline_replies(client: Any, prefix: str) -> list[Any]:
    """A pipeline of every kind of reply: strings large and small, integers, nil, nested
    arrays, a map, error replies (a wrong type, an unknown script) between the others."""
    big = bytes(range(256)) * 1000
    async with client.pipeline(transaction=False) as pipe:
        pipe.set(f"{prefix}s", big)
        pipe.get(f"{prefix}s")
        pipe.incr(f"{prefix}n")
        pipe.get(f"{prefix}missing")
        pipe.incr(f"{prefix}s")  # not an integer: an error reply
        pipe.xadd(f"{prefix}x", {"k": "v"}, id="1-1")
        pipe.xadd(f"{prefix}x", {"k": big[:600]}, id="1-2")
        pipe.xrange(f"{prefix}x")
        pipe.hset(f"{prefix}h", mapping={"a": "1", "b": "2"})
        pipe.hgetall(f"{prefix}h")
        pipe.evalsha("0" * 40, 0)  # NOSCRIPT
        pipe.ping()
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    return [(type(r), str(r)) if isinstance(r, Exception) else r for r in replies]


async def test_pipelined_replies_are_what_redis_py_reads(redis_url: str, prefix: str) -> None:
    """Replies taken straight from the hiredis reader (``_HiredisIO.read_response``) are
    the ones redis-py's own connection reads, errors included."""
    ours, theirs = connect(redis_url), aioredis.Redis.from_url(redis_url)
    try:
        expected = await _pipeline_replies(theirs, prefix + "theirs:")
        got = await _pipeline_replies(ours, prefix + "ours:")
        assert got == expected
        assert (ResponseError, "value is not an integer or out of range") in got
        assert any(isinstance(r, tuple) and r[0] is NoScriptError for r in got)
        assert got[1] == bytes(range(256)) * 1000
    finally:
        await ours.aclose()
        await theirs.aclose()


async def test_replies_already_received_take_no_timer(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py sets a timer for every reply it reads; the transport's client only for a
    reply it has to wait for, not for the rest of a pipeline that came with it."""
    import redis.asyncio.connection as connection

    timers = 0
    real = connection.async_timeout  # type: ignore[attr-defined]  # imported there, not exported

    def counted(delay: float | None) -> Any:
        nonlocal timers
        timers += 1
        return real(delay)

    monkeypatch.setattr(connection, "async_timeout", counted)

    async def pings(client: Any) -> int:
        nonlocal timers
        await client.ping()  # connected before counting
        timers = 0
        async with client.pipeline(transaction=False) as pipe:
            for _ in range(100):
                pipe.ping()
            assert len(await pipe.execute()) == 100
        return timers

    ours, theirs = connect(redis_url), aioredis.Redis.from_url(redis_url, socket_timeout=30)
    try:
        assert await pings(theirs) == 100
        assert await pings(ours) < 10  # the first reply, and any that came in a later read
    finally:
        await ours.aclose()
        await theirs.aclose()


async def test_a_stream_that_cannot_be_parsed_drops_the_connection(redis_url: str) -> None:
    client = connect(redis_url)
    try:
        await client.ping()
        pool: Any = client.connection_pool  # get_connection: untyped in redis-py
        connection = await pool.get_connection()
        try:
            connection._parser._reader.feed(b"?not a reply\r\n")  # what no Redis sends
            with pytest.raises(InvalidResponse):
                await connection.read_response()
            assert not connection.is_connected
        finally:
            await client.connection_pool.release(connection)
        assert await client.ping() is True  # a new connection
    finally:
        await client.aclose()


async def test_a_write_takes_no_task(redis_url: str) -> None:
    """redis-py writes each command or pipeline inside ``asyncio.wait_for``: a task each.
    The transport's client writes without one when the socket takes the bytes."""

    async def tasks_for_100_commands(client: Any) -> int:
        await client.ping()  # connected before counting
        with counting_tasks() as created:
            for _ in range(50):
                await client.set("oc:test:write", "v")
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(50):
                    pipe.get("oc:test:write")
                await pipe.execute()
            return created()

    ours, theirs = connect(redis_url), aioredis.Redis.from_url(redis_url, socket_timeout=30)
    try:
        assert await tasks_for_100_commands(theirs) == 51
        assert await tasks_for_100_commands(ours) == 0
    finally:
        await ours.delete("oc:test:write")
        await ours.aclose()
        await theirs.aclose()


class _StandIn:
    """Enough of a Redis server for a client's handshake, on a real socket: it answers HELLO
    (RESP3, as redis-py asks), PING and anything else with OK, and records each command's
    name. After ``ECHO stop`` it answers that and reads nothing more from that connection."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    async def __aexit__(self, *_: object) -> None:
        for writer in self._writers:
            writer.close()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        commands = hiredis.Reader()
        while data := await reader.read(65536):
            commands.feed(data)
            while (command := commands.gets()) is not False:
                name = command[0].upper()
                self.seen.append(name)
                if command == [b"ECHO", b"stop"]:
                    writer.write(b"$4\r\nstop\r\n")
                    return
                if name == b"HELLO":
                    writer.write(b"%1\r\n$5\r\nproto\r\n:3\r\n")
                else:
                    writer.write(b"+PONG\r\n" if name == b"PING" else b"+OK\r\n")


@contextlib.asynccontextmanager
async def _held_connection(client: Any) -> AsyncIterator[Any]:
    """One of ``client``'s connections, open, taken from its pool until the block ends."""
    await client.ping()
    connection = await client.connection_pool.get_connection()
    try:
        yield connection
    finally:
        await client.connection_pool.release(connection)


async def test_a_write_the_server_does_not_read_times_out_and_drops_the_connection() -> None:
    """When the socket cannot take the bytes, the write waits for room for the socket
    timeout at most, then fails as redis-py's does and drops the connection."""
    async with _StandIn() as url:
        client = connect(url, socket_timeout=0.5)
        try:
            async with _held_connection(client) as connection:
                await connection.send_command("ECHO", "stop", check_health=False)
                assert await connection.read_response() == b"stop"  # and it reads no more
                started = asyncio.get_running_loop().time()
                with pytest.raises(RedisTimeoutError, match="writing"):
                    # far more than the socket buffers of both ends hold
                    await connection.send_command(
                        "SET", "k", b"x" * (64 * 2**20), check_health=False
                    )
                assert asyncio.get_running_loop().time() - started < 5
                assert not connection.is_connected
        finally:
            await client.aclose()


async def test_a_write_to_a_closed_connection_is_a_connection_error(redis_url: str) -> None:
    """A connection whose transport is closing is left to redis-py, which refuses to write."""
    client = connect(redis_url)
    try:
        async with _held_connection(client) as connection:
            connection._writer.transport.abort()  # closing at once, before any loop turn
            with pytest.raises(RedisConnectionError):
                await connection.send_command("PING", check_health=False)
        assert await client.ping() is True  # a new connection
    finally:
        await client.aclose()


async def test_a_write_the_socket_refuses_ends_as_a_connection_error(redis_url: str) -> None:
    """A socket that can no longer send, under a transport that does not know it yet: the
    write goes the transport client's own way. An asyncio transport reports a failed send by
    closing itself, not by raising, so the write returns; the reply's read then ends with
    redis-py's ``ConnectionError`` and the connection dropped, and the next command gets a
    new connection."""
    client = connect(redis_url)
    try:
        async with _held_connection(client) as connection:
            transport = connection._writer.transport
            transport.get_extra_info("socket").shutdown(socket.SHUT_WR)
            assert not transport.is_closing()
            await connection.send_command("PING", check_health=False)
            assert transport.is_closing()  # the send failed (EPIPE) and closed it
            with pytest.raises(RedisConnectionError):
                await connection.read_response()
            assert not connection.is_connected
        assert await client.ping() is True
    finally:
        await client.aclose()


async def test_a_new_connection_opens_as_redis_py_opens_it() -> None:
    """A connection's first command is written by redis-py, which connects, shakes hands and
    only then checks the connection's health: the server sees the same commands, in the same
    order, from both clients."""
    standin = _StandIn()
    orders = []
    async with standin as url:
        for client in (
            aioredis.Redis.from_url(
                url, socket_timeout=30, health_check_interval=15, client_name="ocstream"
            ),
            connect(url),
        ):
            standin.seen.clear()
            try:
                await client.set("k", "v")
                await client.set("k", "w")  # on the open connection
            finally:
                await client.aclose()
            orders.append(list(standin.seen))
    assert orders[0][-2:] == [b"SET", b"SET"]
    assert orders[1] == orders[0]
