"""Redis connections for the transport, built from the broker URL.

``redis://[[user]:password@]host[:port][/db]`` and ``rediss://…`` (TLS) are accepted; user (ACL),
password, database and TLS options (``ssl_cert_reqs``, ``ssl_ca_certs``…) come from the URL as
redis-py understands them. Every client retries a failed command a few times with jittered
exponential backoff; the loops of the consumer, producer and group coordinator add their own
longer backoff on top, so a Redis restart only pauses the worker.

Code that answers an HTTP request uses :func:`request_client` instead: short socket timeouts,
one retry, each command bounded to 2 s in all, and a *blocking* pool of bounded size, so that a
frozen Redis costs a request about two seconds (not the two minutes of four 30 s reads), and a
burst of requests waits for a free connection instead of failing with redis-py's "Too many
connections".
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    DataError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: Errors after which the same call may succeed once Redis is reachable again.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
)

#: Codes of error replies that say Redis refuses writes for now, not that the command is wrong:
#: out of memory under ``maxmemory`` (``OOM``), a replica since a failover (``READONLY``),
#: writes stopped after a failed background save (``MISCONF``), its data still loading after
#: a restart (``LOADING``), a long script running (``BUSY``), too few replicas
#: (``NOREPLICAS``), and a primary or cluster that is not ready (``MASTERDOWN``, ``TRYAGAIN``,
#: ``CLUSTERDOWN``). A script's error carries the code after a ``-`` (Redis 6.2) or first
#: (Redis 7, where redis-py strips it and raises its own class, e.g. ``OutOfMemoryError``).
_REFUSED_FOR_NOW = re.compile(
    r"(?:^|[-\s])(?:OOM|READONLY|MISCONF|LOADING|BUSY|NOREPLICAS|MASTERDOWN|TRYAGAIN|CLUSTERDOWN)\b"
)
_REFUSED_FOR_NOW_CLASSES: tuple[type[BaseException], ...] = (
    OutOfMemoryError,
    ReadOnlyError,
    BusyLoadingError,
    MasterDownError,
    TryAgainError,
    ClusterDownError,
)


def refused_for_now(exc: object) -> bool:
    """Whether an error reply says Redis cannot take writes at the moment (the same write may
    succeed later, as after :data:`TRANSIENT_ERRORS`), rather than that the write is wrong
    (``WRONGTYPE``, ``ERR`` ...), which no retry mends. Anything but an exception: False."""
    if isinstance(exc, _REFUSED_FOR_NOW_CLASSES):
        return True
    return isinstance(exc, ResponseError) and _REFUSED_FOR_NOW.search(str(exc)) is not None


def retryable(exc: object) -> bool:
    """Whether a Redis call that failed with ``exc`` may succeed if made again later: Redis was
    unreachable (:data:`TRANSIENT_ERRORS`) or refused writes for now (:func:`refused_for_now`).
    The loops that wait Redis out (producer, commits, heartbeats, delivery) ask this."""
    return isinstance(exc, TRANSIENT_ERRORS) or refused_for_now(exc)


#: redis-py's asyncio hiredis parser, whose reader holds the replies already received, and
#: what its reader answers when it holds no complete reply (None: another redis-py layout,
#: where every read goes redis-py's way).
_HIREDIS_PARSER: Any = None
_NOT_ENOUGH_DATA: Any = None
try:
    from redis._parsers import hiredis as _redis_hiredis

    _HIREDIS_PARSER = _redis_hiredis._AsyncHiredisParser
    _NOT_ENOUGH_DATA = _redis_hiredis.NOT_ENOUGH_DATA
except (ImportError, AttributeError):  # pragma: no cover - depends on the redis-py release
    _HIREDIS_PARSER = None


class _HiredisIO:
    """Commands packed by hiredis (C) instead of redis-py's Python loop, and replies already
    received read without a timer.

    redis-py's asyncio connections pack every argument in Python (its blocking connections
    already use hiredis). A transport append is one script call with eight arguments per
    record, and that loop was 8 % of a busy worker's CPU; hiredis packs the same bytes about
    seven times faster. What redis-py's encoder refuses (None, bool, lists) is refused here too,
    as a ``DataError``.

    redis-py reads every reply under its own ``asyncio.timeout`` (a timer scheduled and
    cancelled, and a task lookup), also the replies of a pipeline that arrived together with
    the first one: reading the 200 replies of a pipeline of small script calls took twice the
    CPU it takes without that (about 10 against 5 µs per call, ``docs/benchmarks.md``, "Issue 14,
    twelfth round"). :meth:`read_response` takes a reply that the hiredis reader already holds
    complete straight from it, as redis-py's own read would once the timer is set (errors
    raised the same way, the health-check time moved on); only a reply that still has to come
    from the socket goes redis-py's way, under the socket timeout; so do replies read with a
    timeout of their own (pub/sub) and every read of a connection with another parser."""

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,
        *,
        disconnect_on_error: bool = True,
        push_request: bool | None = False,
    ) -> Any:
        parser = self._parser  # type: ignore[attr-defined]
        if (
            timeout is None
            and not disable_decoding
            and _HIREDIS_PARSER is not None
            and type(parser) is _HIREDIS_PARSER
            and parser._connected
        ):
            # RESP3 push messages may come before the reply: handled as redis-py's parser does.
            push_type = getattr(parser, "_hiredis_PushNotificationType", None)
            try:
                while (response := parser._reader.gets()) is not _NOT_ENOUGH_DATA:
                    if push_type is None or not isinstance(response, push_type):
                        return self._received(response)
                    response = await parser.handle_push_response(response)
                    if push_request:
                        return response
            except ResponseError:
                raise  # an error reply: the connection is fine
            except BaseException:
                # A stream hiredis cannot parse, or a connection error: as redis-py does, the
                # connection is not used again.
                await self.disconnect(nowait=True)  # type: ignore[attr-defined]
                raise
        return await super().read_response(  # type: ignore[misc]
            disable_decoding,
            timeout,
            disconnect_on_error=disconnect_on_error,
            push_request=push_request,
        )

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        """redis-py's send, without a task for each write.

        redis-py runs every write as ``asyncio.wait_for(write and drain, socket_timeout)``: a
        task, a timer and a turn of the event loop for each command or pipeline sent, though
        the socket almost always takes the bytes at once. Here the bytes are written first;
        only when the socket left some of them buffered is the drain awaited, under the same
        timeout. Errors end as redis-py's do: the connection is dropped and a
        ``ConnectionError`` or ``TimeoutError`` raised. A connection not yet open (which
        redis-py opens, with its handshake, before any health check), closing, or without a
        socket timeout goes redis-py's way."""
        timeout = self.socket_timeout  # type: ignore[attr-defined]
        if not timeout or not self._open():
            await super().send_packed_command(command, check_health)  # type: ignore[misc]
            return
        if check_health:
            await self.check_health()  # type: ignore[attr-defined]
            if not self._open():  # the check failed and dropped the connection
                await super().send_packed_command(command, False)  # type: ignore[misc]
                return
        writer = self._writer  # type: ignore[attr-defined]
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        try:
            writer.writelines(command)
            if writer.transport.get_write_buffer_size():
                async with asyncio.timeout(timeout):
                    await writer.drain()
        except TimeoutError as exc:
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            if exc.errno:  # the system's timeout (ETIMEDOUT): the connection is dead
                raise RedisConnectionError(f"Error {exc.errno} while writing to socket.") from exc
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise RedisConnectionError(f"Error while writing to socket: {exc}.") from exc
        except (TypeError, AttributeError) as exc:
            # Python 3.12 and early 3.13 releases raise these from a transport closed during
            # the write (CPython gh-136234), as redis-py notes.
            closed = writer.transport.is_closing()
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            if closed:
                raise RedisConnectionError("Connection closed while writing") from exc
            raise
        except BaseException:
            # A write cut short (a cancellation): the stream's state is unknown.
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise

    def _open(self) -> bool:
        """Connected, and not closing."""
        writer = self._writer  # type: ignore[attr-defined]
        return bool(self.is_connected) and not writer.transport.is_closing()  # type: ignore[attr-defined]

    def _received(self, response: Any) -> Any:
        """What redis-py's parser and connection do with a reply once it is read."""
        if isinstance(response, RedisConnectionError):
            raise response
        if isinstance(response, list) and response:
            if isinstance(response[0], RedisConnectionError):
                raise response[0]
        interval = self.health_check_interval  # type: ignore[attr-defined]
        if interval:
            self.next_health_check = asyncio.get_running_loop().time() + interval
        if isinstance(response, ResponseError):
            raise response
        return response

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str):  # "CONFIG GET": the words go as separate arguments
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            pass
        # hiredis takes bytes, str, int, float and memoryview; redis-py also takes bytearray.
        args = tuple(bytes(arg) if isinstance(arg, bytearray) else arg for arg in args)
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise DataError(f"{exc} (command {args[0]!r})") from exc

    def pack_commands(self, commands: Any) -> list[bytes]:
        return [b"".join(self.pack_command(*command)[0] for command in commands)]


_HIREDIS_CLASSES: dict[type, type] = {}


def _through_hiredis(pool: ConnectionPool) -> None:
    """Make ``pool``'s connections (plain, TLS or Unix socket, as the URL chose) pack commands
    with hiredis and take received replies from its reader (:class:`_HiredisIO`)."""
    base = pool.connection_class
    if issubclass(base, _HiredisIO):
        return
    if base not in _HIREDIS_CLASSES:
        _HIREDIS_CLASSES[base] = type(f"Hiredis{base.__name__}", (_HiredisIO, base), {})
    pool.connection_class = _HIREDIS_CLASSES[base]


def connect(url: str, *, socket_timeout: float | None = 30.0, name: str = "ocstream") -> Redis:
    """A client for ``url`` with retries on connection errors."""
    client = Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=5.0,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=15,
        client_name=name,
    )
    _through_hiredis(client.connection_pool)
    return client


#: Seconds a request-path Redis read or connect may take before it fails (one retry).
REQUEST_TIMEOUT = 1.0
#: Seconds a whole request-path command may take, retries and health check included.
COMMAND_TIMEOUT = 2.0


class BoundedRedis(Redis):
    """A client whose every command (retries, the pool wait and the connection's health check
    included) ends within ``command_timeout`` seconds, with redis-py's ``TimeoutError``."""

    command_timeout: float = COMMAND_TIMEOUT

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            async with asyncio.timeout(self.command_timeout):
                return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        except TimeoutError as exc:  # asyncio's, not redis-py's (a RedisError, passed on)
            raise RedisTimeoutError(f"no answer within {self.command_timeout:g}s") from exc


def request_client(
    url: str,
    *,
    name: str,
    timeout: float = REQUEST_TIMEOUT,
    max_connections: int = 32,
    pool_timeout: float = 2.0,
    command_timeout: float = COMMAND_TIMEOUT,
) -> Redis:
    """A client for code that answers HTTP requests (see the module docstring).

    Each read and each connect is bounded by ``timeout``, a failed command is retried once,
    and at most ``max_connections`` connections are opened: a caller beyond that waits up to
    ``pool_timeout`` for one to be released, then gets a ``ConnectionError`` ("No connection
    available"). A whole command, retries included, is bounded by ``command_timeout``. Every
    failure is a ``RedisError``, which the views turn into a 503. (Pipelines are bounded by
    the socket timeouts only.)
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.2), retries=1),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=15,
        client_name=name,
    )
    _through_hiredis(pool)
    client = BoundedRedis(connection_pool=pool)
    client.auto_close_connection_pool = True  # closing the client closes its pool (from_pool)
    client.command_timeout = command_timeout
    return client


@dataclass
class Backoff:
    """Jittered exponential backoff for the transport's long-running loops.

    ``await backoff.wait(log, "fetch", exc)`` sleeps and logs one line; ``reset()`` after a
    success.
    """

    base: float = 0.1
    cap: float = 5.0
    attempts: int = 0

    def reset(self) -> None:
        self.attempts = 0

    def next_delay(self) -> float:
        # The exponent stops growing once the cap is reached: a loop that retries for days
        # must not overflow.
        delay = min(self.cap, self.base * (2 ** min(self.attempts, 32)))
        self.attempts += 1
        return random.uniform(delay / 2, delay)

    async def wait(self, log: logging.Logger, what: str, exc: BaseException) -> None:
        delay = self.next_delay()
        log.warning("↻ %s failed (%s: %s); retrying in %.2fs", what, type(exc).__name__, exc, delay)
        await asyncio.sleep(delay)
