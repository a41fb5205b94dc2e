"""The webhook HTTP client (ocstream.sinks.http1) against real servers.

An aiohttp server checks what a request carries; raw asyncio servers answer with the shapes an
HTTP/1.1 server may send (chunks, trailers, interim answers, bytes one at a time, a close instead
of an answer, a body that never ends); a TLS server uses a certificate made for the test. The
parser is also fed random splits of random answers (hypothesis) through a recording transport.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from ocstream.sinks.http1 import BadResponse, Http1Client, InvalidHeader, ServerDisconnected
from ocstream.sinks.http1 import _Connection as Connection
from ocstream.sinks.ssrf import GuardedResolver, TargetRefused

pytestmark = pytest.mark.asyncio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request (head and Content-Length body), or None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


class RawServer:
    """A TCP server whose ``handler(reader, writer, n)`` answers the connection's n-th request
    (from 0) after it was read; ``requests`` keeps every request, ``connections`` counts."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[bytes] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = 0
        try:
            while (request := await read_request(reader)) is not None:
                self.requests.append(request)
                await self.handler(reader, writer, n)
                n += 1
                if writer.is_closing():
                    break
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: Any) -> None:
        assert self.server is not None
        self.server.close()


def answer(data: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(data)
        await writer.drain()

    return handler


@pytest.fixture
async def client() -> AsyncIterator[Http1Client]:
    c = Http1Client()
    yield c
    await c.close()


HEADERS = {"content-type": "application/json", "webhook-id": "msg_1"}


async def test_posts_body_and_headers_and_reuses_the_connection(client: Http1Client) -> None:
    seen: list[tuple[str, dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        seen.append((request.path_qs, dict(request.headers), await request.read()))
        return web.Response(status=202, text="accepted")

    app = web.Application()
    app.router.add_post("/{tail:.*}", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        for i in range(3):
            status, text = await client.post(
                URL(f"http://127.0.0.1:{port}/hook/{i}?a=b%20c", encoded=True),
                b'{"n": %d}' % i,
                HEADERS,
                5.0,
            )
            assert (status, text) == (202, "accepted")
    finally:
        await runner.cleanup()
    assert [s[0] for s in seen] == ["/hook/0?a=b%20c", "/hook/1?a=b%20c", "/hook/2?a=b%20c"]
    assert seen[2][2] == b'{"n": 2}'
    assert seen[0][1]["Host"] == f"127.0.0.1:{port}"
    assert seen[0][1]["webhook-id"] == "msg_1"
    assert seen[0][1]["Content-Length"] == "8"
    assert client.connections_opened == 1


@pytest.mark.parametrize(
    ("response", "status", "text", "reused"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, "hello", True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", 204, "", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, "", True),
        (
            b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Trailer: 1\r\n\r\n",
            500,
            "abcdefg",
            True,
        ),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
            201,
            "ok",
            True,
        ),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", 200, "ok", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, "ok", False),
        (
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
            200,
            "ok",
            True,
        ),
        (b"HTTP/1.1 204 No Content\r\n\r\nextra", 204, "", False),
        (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", 200, "ok", True),
    ],
    ids=[
        "length",
        "204",
        "empty",
        "chunked+trailers",
        "100-continue",
        "connection-close",
        "http10",
        "http10-keepalive",
        "bytes-after-answer",
        "bare-lf",
    ],  # fmt: skip
)
async def test_answer_shapes(
    client: Http1Client, response: bytes, status: int, text: str, reused: bool
) -> None:
    server = RawServer(answer(response))
    async with server as base:
        for _ in range(2):
            assert await client.post(URL(base + "/x"), b"{}", HEADERS, 5.0) == (status, text)
    assert server.connections == (1 if reused else 2)
    assert client.connections_opened == server.connections


async def test_answer_one_byte_at_a_time(client: Http1Client) -> None:
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.001)

    server = RawServer(handler)
    async with server as base:
        assert await client.post(URL(base), b"{}", HEADERS, 5.0) == (200, "hello!")
        assert await client.post(URL(base), b"{}", HEADERS, 5.0) == (200, "hello!")
    assert server.connections == 1


async def test_body_until_close_and_a_body_too_long() -> None:
    client = Http1Client(keep=10, max_body=1000)

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 503 Busy\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
        await writer.drain()
        await reader.read()  # until the client hangs up

    async def close_after(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        writer.write(b"HTTP/1.1 404 Not Found\r\n\r\nnothing here at all")
        await writer.drain()
        writer.close()

    until_close = RawServer(close_after)
    try:
        async with until_close as base:
            assert await client.post(URL(base), b"{}", HEADERS, 5.0) == (404, "nothing he")
        long = RawServer(endless)
        async with long as base:
            # The status decides once 1000 bytes of body are in; no waiting for the rest.
            assert await client.post(URL(base), b"{}", HEADERS, 2.0) == (503, "x" * 10)
            assert await client.post(URL(base), b"{}", HEADERS, 2.0) == (503, "x" * 10)
        assert long.connections == 2
    finally:
        await client.close()


async def test_timeouts(client: Http1Client) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.read()  # until the client hangs up

    async def slow_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await reader.read()

    server = RawServer(silent)
    async with server as base:
        with pytest.raises(TimeoutError):
            await client.post(URL(base), b"{}", HEADERS, 0.2)
    slow = RawServer(slow_body)
    async with slow as base:
        # The status came: it is the answer, with the part of the body that came.
        assert await client.post(URL(base), b"{}", HEADERS, 0.2) == (200, "abc")
        assert await client.post(URL(base), b"{}", HEADERS, 0.2) == (200, "abc")
    assert slow.connections == 2  # a timed-out connection is never reused


@pytest.mark.parametrize(
    "response",
    [
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ],
)
async def test_bad_answers_raise(client: Http1Client, response: bytes) -> None:
    server = RawServer(answer(response))
    async with server as base:
        with pytest.raises(BadResponse):
            await client.post(URL(base), b"{}", HEADERS, 2.0)


async def test_bad_chunk_after_the_status_keeps_the_status(client: Http1Client) -> None:
    response = b"HTTP/1.1 502 Bad\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX"
    server = RawServer(answer(response))
    async with server as base:
        assert await client.post(URL(base), b"{}", HEADERS, 2.0) == (502, "ok")


async def test_close_without_an_answer(client: Http1Client) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.close()

    server = RawServer(hang_up)
    async with server as base:
        with pytest.raises(ServerDisconnected):
            await client.post(URL(base), b"{}", HEADERS, 2.0)
    assert len(server.requests) == 1  # a new connection's request is not sent twice


async def test_kept_alive_connection_closed_under_the_request_is_retried_once(
    client: Http1Client,
) -> None:
    async def second_hangs_up(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        if n == 0:
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()
        else:
            writer.close()  # the server's idle close crossing the next request

    server = RawServer(second_hangs_up)
    async with server as base:
        assert await client.post(URL(base), b"{}", HEADERS, 2.0) == (204, "")
        assert await client.post(URL(base), b"{}", HEADERS, 2.0) == (204, "")
    assert server.connections == 2
    assert len(server.requests) == 3


def age(client: Http1Client, seconds: float) -> None:
    """Make the client's idle connections, and its last sweep, ``seconds`` older: what waiting
    that long would do to them, without the wait."""
    for pool in client._idle.values():
        for conn in pool:
            conn.idle_since -= seconds
    client._swept -= seconds


async def test_idle_connections_expire_and_closed_ones_are_not_taken() -> None:
    client = Http1Client(keepalive=5.0)
    server = RawServer(answer(b"HTTP/1.1 204 No Content\r\n\r\n"))
    try:
        async with server as base:
            await client.post(URL(base), b"{}", HEADERS, 2.0)
            await client.post(URL(base), b"{}", HEADERS, 2.0)
            assert server.connections == 1
            age(client, 4.0)  # still within the keepalive: taken again
            await client.post(URL(base), b"{}", HEADERS, 2.0)
            assert server.connections == 1
            age(client, 6.0)  # idle for longer: closed, and a new one made
            await client.post(URL(base), b"{}", HEADERS, 2.0)
            assert server.connections == 2
            # Unasked-for bytes on an idle connection: it is closed and not taken again.
            (idle,) = client._idle[("http", "127.0.0.1", URL(base).port or 0)]
            idle.data_received(b"HTTP/1.1 200 OK\r\n\r\n")
            assert idle.closed
            await client.post(URL(base), b"{}", HEADERS, 2.0)
            assert server.connections == 3
    finally:
        await client.close()
    with pytest.raises(RuntimeError):
        await client.post(URL(base), b"{}", HEADERS, 2.0)


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Bearer x\r\nX-Injected: 1"},
        {"x-a\nb": "1"},
        {"": "1"},
        {"content-type": "application/json\x00"},
        {"authorization": "Bearer ☃"},
    ],
)
async def test_headers_that_cannot_be_sent(client: Http1Client, headers: dict[str, str]) -> None:
    server = RawServer(answer(b"HTTP/1.1 204 No Content\r\n\r\n"))
    async with server as base:
        with pytest.raises(InvalidHeader):
            await client.post(URL(base), b"{}", headers, 2.0)
    assert server.connections == 0


async def test_connection_refused_and_next_address(client: Http1Client) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        await client.post(URL(f"http://127.0.0.1:{closed_port}/"), b"{}", HEADERS, 2.0)

    class TwoAddresses:
        async def resolve(self, host: str, port: int) -> list[tuple[str, int, int]]:
            return [("127.0.0.1", closed_port, socket.AF_INET), ("127.0.0.1", port, socket.AF_INET)]

    server = RawServer(answer(b"HTTP/1.1 204 No Content\r\n\r\n"))
    async with server as base:
        port = URL(base).port or 0
        named = Http1Client(TwoAddresses())
        try:
            assert await named.post(URL(f"http://hook.test:{port}/"), b"{}", HEADERS, 2.0) == (
                204,
                "",
            )
        finally:
            await named.close()
    assert b"Host: hook.test:" in server.requests[0]


async def test_guarded_resolver_refuses_a_name_for_loopback() -> None:
    guarded = Http1Client(GuardedResolver(allow_private=False))
    try:
        with pytest.raises(TargetRefused):
            await guarded.post(URL("http://localhost:9/"), b"{}", HEADERS, 2.0)
    finally:
        await guarded.close()


async def test_https_verifies_the_certificate(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecure")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    url = URL(f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/")
    default = Http1Client()
    trusting_ctx = ssl.create_default_context(cafile=str(cert))
    trusting = Http1Client(ssl_context=trusting_ctx)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await default.post(url, b"{}", HEADERS, 5.0)
        assert await trusting.post(url, b"{}", HEADERS, 5.0) == (200, "secure")
        assert await trusting.post(url, b"{}", HEADERS, 5.0) == (200, "secure")
        assert trusting.connections_opened == 1
    finally:
        await default.close()
        await trusting.close()
        server.close()


# -- the parser alone, on random answers split at random places


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing


answers = st.tuples(
    st.integers(200, 599).filter(lambda s: s not in (204, 304)),  # 204/304 have no body
    st.binary(max_size=300),
    st.sampled_from(["length", "chunked", "close"]),
    st.lists(st.integers(1, 50), max_size=8),  # chunk sizes
    st.lists(st.integers(1, 400), max_size=6),  # split points
)


@settings(max_examples=200, deadline=None)
@given(answers)
async def test_parser_random_answers(example: tuple[int, bytes, str, list[int], list[int]]) -> None:
    status, body, framing, sizes, splits = example
    head = f"HTTP/1.1 {status} Whatever\r\nServer: x\r\n".encode()
    if framing == "length":
        data = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    elif framing == "chunked":
        data = head + b"Transfer-Encoding: chunked\r\n\r\n"
        rest = body
        for size in [*sizes, len(body)]:
            piece, rest = rest[:size], rest[size:]
            if piece:
                data += b"%x\r\n" % len(piece) + piece + b"\r\n"
        data += b"0\r\n\r\n"
    else:
        data = head + b"\r\n" + body
    conn = Connection(keep=100, max_body=65536)
    transport = RecordingTransport()
    conn.connection_made(transport)
    future = conn.request(b"POST / HTTP/1.1\r\n\r\n")
    cuts = sorted({min(s, len(data)) for s in splits}) + [len(data)]
    start = 0
    for cut in cuts:
        if cut > start:
            conn.data_received(data[start:cut])
            start = cut
    if framing == "close":
        assert not future.done()
        conn.eof_received()
    assert future.done()
    assert future.result() == (status, body[:100], framing != "close")
    assert transport.written == b"POST / HTTP/1.1\r\n\r\n"
    assert transport.closing == (framing == "close")


async def test_an_answer_before_the_body_is_written_closes_the_connection(
    client: Http1Client,
) -> None:
    """A server that answers after the head (a 413) while the body is still being written:
    what is left of the body must not reach it as a next request, so the connection is not
    kept."""
    opened: list[asyncio.StreamWriter] = []
    done = asyncio.Event()

    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opened.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 3\r\n\r\nbig")
        await writer.drain()
        await done.wait()  # reads nothing more and keeps the connection open
        writer.close()

    server = await asyncio.start_server(early, "127.0.0.1", 0)
    url = URL(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/")
    try:
        body = b"x" * (64 * 1024 * 1024)  # more than the socket buffers take
        assert await client.post(url, body, HEADERS, 5.0) == (413, "big")
        # On the same connection this would wait behind the unread body, and time out.
        assert await client.post(url, b"{}", HEADERS, 1.0) == (413, "big")
        assert len(opened) == 2 and client.connections_opened == 2
    finally:
        done.set()
        server.close()


async def test_idle_connections_of_every_origin_are_swept() -> None:
    client = Http1Client(keepalive=5.0)
    first = RawServer(answer(b"HTTP/1.1 204 No Content\r\n\r\n"))
    second = RawServer(answer(b"HTTP/1.1 204 No Content\r\n\r\n"))
    try:
        async with first as a, second as b:
            await client.post(URL(a), b"{}", HEADERS, 2.0)
            assert len(client._idle) == 1
            age(client, 6.0)
            await client.post(URL(b), b"{}", HEADERS, 2.0)
            # The first origin's connection expired and was closed without a post to it.
            assert list(client._idle) == [("http", "127.0.0.1", URL(b).port)]
    finally:
        await client.close()
