"""A lean HTTP/1.1 client for webhook POSTs.

The webhook dispatcher needs one thing from HTTP: POST a body with a few headers and learn the
status (and the start of the answer, for the dead-letter entry). aiohttp's client spends about
200 µs of CPU per POST on things a webhook does not use (cookie jars, proxies, redirects,
multipart payloads, a stream reader per response, a task per request body); at two POSTs per
journey that was a tenth of a worker's CPU in ``benchmarks/e2e.py``. :class:`Http1Client` is an
:class:`asyncio.Protocol` per connection and a pool of kept-alive connections per origin:

* The request is written in one ``transport.write``: request line, ``Host``, ``Content-Length``,
  the caller's headers, the body. Header names and values with a CR, LF or NUL, or characters
  outside Latin-1, raise :class:`InvalidHeader` (a ``ValueError``) before anything is sent.
* The response is parsed as it arrives: interim ``1xx`` answers are skipped; the body is read by
  ``Content-Length``, by chunks (``Transfer-Encoding: chunked``, trailers dropped) or until the
  server closes. The first ``keep`` bytes are returned; a body over ``max_body`` bytes is not
  read further and its connection is closed (the status has decided already).
* A connection goes back to the pool when its response was complete, the server did not ask to
  close (``Connection: close``, or HTTP/1.0 without ``keep-alive``), nothing followed the
  response and the whole request had been written (a server may answer before the body is
  in). An idle connection is dropped once the server closes it or after ``keepalive`` seconds
  (checked when its origin is posted to again, and for every origin at most once per
  ``keepalive``). At most ``max_idle`` idle connections are kept per origin.
* A kept-alive connection the server closed while the request was on its way (no byte of an
  answer came back) is retried once on a new connection. Servers close idle connections when
  they like (Node.js after 5 s), and the close can cross the next request on the wire. The
  receiver may, rarely, have read that request: webhooks are at least once, and it deduplicates
  on ``webhook-id``.
* Names are resolved by the given resolver (the SSRF guard's :class:`GuardedResolver`, so a DNS
  answer that changed since :func:`check_target` cannot point the connection inside), cached for
  ``dns_ttl`` seconds; each address is tried in turn. ``https`` uses the default TLS context
  (certificates and host names verified).
* The whole exchange (connect, write, answer) is bounded by ``timeout``; a connection that timed
  out or failed in any way is closed, never reused. Once the status line and headers have come,
  the status is the answer: a body that is slow, cut off or garbled after them only shortens the
  returned start of the body.

Errors are ``OSError``\\ s (connection refused or reset, :class:`ServerDisconnected`,
:class:`BadResponse`) or ``TimeoutError``; the resolver's own (``TargetRefused``,
``TargetUnresolved``) pass through.
Redirects are not followed, cookies are not kept, no proxy is used, bodies are not decompressed.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Mapping
from typing import Final, Protocol

from yarl import URL

from .ssrf import Address

__all__ = ["BadResponse", "Http1Client", "InvalidHeader", "ServerDisconnected"]

_MAX_HEAD: Final = 65536
_FORBIDDEN: Final = frozenset("\r\n\x00")


class InvalidHeader(ValueError):
    """A header name or value that cannot be sent (CR, LF, NUL, non-Latin-1, empty name)."""


class ServerDisconnected(ConnectionError):
    """The server closed the connection before its answer was complete."""


class BadResponse(OSError):
    """The server's answer is not HTTP/1.x."""


class Resolver(Protocol):
    async def resolve(self, host: str, port: int) -> list[Address]: ...


# Parser states.
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection, one request at a time."""

    def __init__(self, keep: int, max_body: int) -> None:
        self.keep = keep
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.received = 0  # bytes of the current answer
        self._waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self._buffer = bytearray()
        self._state = _DONE
        self._status = 0  # the current answer's, once its status line and headers came
        self._reusable = False
        self._remaining = 0  # bytes left of the body (_LENGTH) or of the chunk (_CHUNK_DATA)
        self._body_seen = 0
        self._snippet = bytearray()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            # Bytes nobody asked for: the connection's framing cannot be trusted any more.
            self.close()
            return
        self.received += len(data)
        self._buffer += data
        try:
            self._parse()
        except BadResponse as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        self._closed_by_server()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed_by_server(exc)

    # -- requests

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes, bool]]:
        """Write one request; the future gives (status, start of body, reusable)."""
        assert self.transport is not None and self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self._state = _HEAD
        self.received = 0
        self._buffer.clear()
        self._snippet.clear()
        self._body_seen = 0
        self._status = 0
        self.transport.write(data)
        return self._waiter

    def release(self) -> None:
        """The caller is done with the answer (successful or not)."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.cancel()
            self.close()

    def flushed(self) -> bool:
        """Whether the request was written out entirely. A server may answer before the body
        is in (a 413, say); what is left of it must not be read as the next request."""
        return self.transport is not None and not self.transport.get_write_buffer_size()

    def partial(self) -> tuple[int, bytes] | None:
        """The status and the body's start so far, or None before the status and headers."""
        return (self._status, bytes(self._snippet)) if self._status else None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- parsing

    def _closed_by_server(self, exc: Exception | None = None) -> None:
        self.closed = True
        if self._state == _UNTIL_CLOSE:
            self._finish(reusable=False)
        elif self._waiter is not None and not self._waiter.done():
            reason = f": {exc}" if exc else ""
            self._fail(ServerDisconnected(f"server closed the connection{reason}"))

    def _fail(self, exc: Exception) -> None:
        self._state = _DONE
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()

    def _finish(self, reusable: bool) -> None:
        self._state = _DONE
        if self._buffer:  # more than the answer: nothing more may be read from here
            reusable = False
        if not reusable:
            self.close()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((self._status, bytes(self._snippet), reusable))

    def _body(self, chunk: bytes | bytearray) -> bool:
        """Keep the start of the body; False once more than ``max_body`` came."""
        if len(self._snippet) < self.keep:
            self._snippet += chunk[: self.keep - len(self._snippet)]
        self._body_seen += len(chunk)
        return self._body_seen <= self.max_body

    def _parse(self) -> None:
        buffer = self._buffer
        while True:
            state = self._state
            if state == _HEAD:
                end, gap = buffer.find(b"\r\n\r\n"), 4
                if end < 0:  # some servers end lines with a bare LF
                    end, gap = buffer.find(b"\n\n"), 2
                if end < 0:
                    if len(buffer) > _MAX_HEAD:
                        raise BadResponse("response head over 64 KiB")
                    return
                head = bytes(buffer[:end])
                del buffer[: end + gap]
                self._head(head)
            elif state == _LENGTH or state == _CHUNK_DATA:
                if not buffer:
                    return
                take = min(self._remaining, len(buffer))
                within = self._body(buffer[:take])
                del buffer[:take]
                self._remaining -= take
                if not self._remaining and state == _LENGTH:  # the whole body, however long
                    self._finish(self._reusable)
                    return
                if not within:
                    self._finish(reusable=False)
                    return
                if not self._remaining:
                    self._state = _CHUNK_END
            elif state == _CHUNK_SIZE:
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > 1024:
                        raise BadResponse("chunk size line over 1 KiB")
                    return
                line = bytes(buffer[:end]).split(b";", 1)[0].strip()
                del buffer[: end + 2]
                try:
                    size = int(line, 16)
                except ValueError:
                    raise BadResponse(f"bad chunk size {line[:20]!r}") from None
                if size < 0:
                    raise BadResponse("negative chunk size")
                self._remaining = size
                self._state = _CHUNK_DATA if size else _TRAILERS
            elif state == _CHUNK_END:
                if len(buffer) < 2:
                    return
                if buffer[:2] != b"\r\n":
                    raise BadResponse("chunk not followed by CRLF")
                del buffer[:2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > _MAX_HEAD:
                        raise BadResponse("trailers over 64 KiB")
                    return
                del buffer[: end + 2]
                if end == 0:  # the empty line after the trailers (if any)
                    self._finish(self._reusable)
                    return
            elif state == _UNTIL_CLOSE:
                if buffer:
                    within = self._body(buffer)
                    buffer.clear()
                    if not within:
                        self._finish(reusable=False)
                return
            else:
                return

    def _head(self, head: bytes) -> None:
        lines = head.replace(b"\r\n", b"\n").split(b"\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise BadResponse(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
        try:
            status = int(parts[1])
        except ValueError:
            raise BadResponse(f"bad status {parts[1][:10]!r}") from None
        if not 100 <= status <= 999:
            raise BadResponse(f"bad status {status}")
        if 100 <= status < 200:
            if status == 101:
                raise BadResponse("unexpected 101 Switching Protocols")
            return  # an interim answer; the real one follows (state stays _HEAD)
        length: int | None = None
        chunked = False
        connection = b""
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise BadResponse(f"bad header line {line[:60]!r}")
            name = name.strip().lower()
            value = value.strip()
            if name == b"content-length":
                if not value.isdigit() or (length is not None and length != int(value)):
                    raise BadResponse(f"bad Content-Length {value[:20]!r}")
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.lower().split(b",")[-1].strip() == b"chunked"
                if not chunked:
                    length = None
            elif name == b"connection":
                connection = value.lower()
        self._status = status
        http11 = parts[0] == b"HTTP/1.1"
        self._reusable = (b"close" not in connection) if http11 else (b"keep-alive" in connection)
        if status in (204, 304):
            self._finish(self._reusable)
        elif chunked:
            self._state = _CHUNK_SIZE
        elif length is not None:
            self._remaining = length
            if length:
                self._state = _LENGTH
            else:
                self._finish(self._reusable)
        else:
            self._reusable = False
            self._state = _UNTIL_CLOSE


def _header_block(url: URL, body_length: int, headers: Mapping[str, str]) -> bytes:
    path = url.raw_path_qs or "/"
    lines = [f"POST {path} HTTP/1.1", f"Host: {url.host_port_subcomponent}"]
    for name, value in headers.items():
        if not name or _FORBIDDEN.intersection(name) or ":" in name or " " in name:
            raise InvalidHeader(f"header name {name[:40]!r} cannot be sent")
        if _FORBIDDEN.intersection(value):
            raise InvalidHeader(f"header {name} has a CR, LF or NUL in its value")
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {body_length}\r\n\r\n")
    try:
        return "\r\n".join(lines).encode("latin-1")
    except UnicodeEncodeError as exc:
        raise InvalidHeader(f"a header has a character outside Latin-1 ({exc.reason})") from None


class Http1Client:
    """Kept-alive HTTP/1.1 connections per origin, for POSTs (see the module doc)."""

    def __init__(
        self,
        resolver: Resolver | None = None,
        *,
        keepalive: float = 15.0,
        max_idle: int = 64,
        dns_ttl: float = 10.0,
        keep: int = 300,
        max_body: int = 65536,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.resolver = resolver
        self.keepalive = keepalive
        self.max_idle = max_idle
        self.dns_ttl = dns_ttl
        self.keep = keep
        self.max_body = max_body
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], deque[_Connection]] = {}
        self._dns: dict[tuple[str, int], tuple[float, list[Address]]] = {}
        self._closed = False
        self._swept = time.monotonic()
        #: Connections opened (for tests and the benchmark: reuse shows as few openings).
        self.connections_opened = 0

    async def post(
        self, url: URL, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> tuple[int, str]:
        """POST ``body`` to ``url``; return the status and the start of the answer's body."""
        if self._closed:
            raise RuntimeError("the HTTP client is closed")
        scheme = url.scheme
        host = url.raw_host
        port = url.port
        if scheme not in ("http", "https") or not host or port is None:
            raise ValueError(f"cannot POST to {url}")
        data = _header_block(url, len(body), headers) + body
        key = (scheme, host, port)
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(timeout):
                conn = self._take(key)
                if conn is not None:
                    try:
                        status, snippet, reusable = await self._exchange(conn, data)
                    except ServerDisconnected:
                        if conn.received:
                            raise
                        conn = None  # closed under us while idle: once more, on a new one
                if conn is None:
                    conn = await self._connect(scheme, host, port, url.host or host)
                    status, snippet, reusable = await self._exchange(conn, data)
        except OSError:
            # The status decides: a slow, cut or garbled body after it changes nothing.
            partial = conn.partial() if conn is not None else None
            if partial is None:
                raise
            status, snippet = partial
            reusable = False
        assert conn is not None  # the exchange above answered on it
        if reusable and not conn.closed and not self._closed and conn.flushed():
            self._give(key, conn)
        else:
            conn.close()
        return status, snippet.decode("utf-8", "replace").strip()

    async def close(self) -> None:
        """Close every idle connection; later posts raise."""
        self._closed = True
        for pool in self._idle.values():
            for conn in pool:
                conn.close()
        self._idle.clear()

    # -- connections

    @staticmethod
    async def _exchange(conn: _Connection, data: bytes) -> tuple[int, bytes, bool]:
        try:
            return await conn.request(data)
        finally:
            conn.release()

    def _take(self, key: tuple[str, str, int]) -> _Connection | None:
        pool = self._idle.get(key)
        if pool is None:
            return None
        horizon = time.monotonic() - self.keepalive
        found = None
        while pool:
            conn = pool.pop()  # the most recently used: the least likely to be closed
            if conn.closed or conn.idle_since < horizon:
                conn.close()
                continue
            found = conn
            break
        if not pool:
            del self._idle[key]
        return found

    def _give(self, key: tuple[str, str, int], conn: _Connection) -> None:
        now = time.monotonic()
        pool = self._idle.setdefault(key, deque())
        conn.idle_since = now
        pool.append(conn)
        while len(pool) > self.max_idle or (pool and pool[0].closed):
            pool.popleft().close()
        if now - self._swept > self.keepalive:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Close the connections idle for longer than ``keepalive`` at every origin (an origin
        not posted to again would keep them open otherwise), and forget empty origins."""
        self._swept = now
        horizon = now - self.keepalive
        for key in list(self._idle):
            pool = self._idle[key]
            while pool and (pool[0].closed or pool[0].idle_since < horizon):
                pool.popleft().close()
            if not pool:
                del self._idle[key]

    async def _addresses(self, host: str, port: int) -> list[Address]:
        if self.resolver is None:
            return [(host, port, 0)]
        cached = self._dns.get((host, port))
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        addresses = await self.resolver.resolve(host, port)
        if len(self._dns) > 1024:
            self._dns.clear()
        self._dns[(host, port)] = (now + self.dns_ttl, addresses)
        return addresses

    async def _connect(self, scheme: str, host: str, port: int, server_name: str) -> _Connection:
        context: ssl.SSLContext | None = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        loop = asyncio.get_running_loop()
        error: OSError | None = None
        for address, address_port, family in await self._addresses(host, port):
            try:
                _, conn = await loop.create_connection(
                    lambda: _Connection(self.keep, self.max_body),
                    address,
                    address_port,
                    family=family,
                    ssl=context,
                    server_hostname=server_name if context is not None else None,
                )
            except OSError as exc:
                error = exc
                continue
            self.connections_opened += 1
            return conn
        raise error or OSError(f"{host} has no address to connect to")
