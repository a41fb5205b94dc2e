"""Abuse and access rules of the worker's HTTP server (``docs/security.md``, issue 12 points
5-11), through the worker's own faust web server (its aiohttp runner, middlewares and routes as
``ocstream worker`` builds them) on real Redis."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import orjson
import pytest

from ocstream.app import build_app
from ocstream.errors import ConfigError
from ocstream.ingress.registry import NetworkRegistry
from ocstream.settings import Settings, load_settings
from ocstream.subscriptions import Subscription
from ocstream.transport.client import connect
from ocstream.transport.settings import TransportSettings
from ocstream.xcm.ss58 import public_key_of

from .subscriptions import payloads as p
from .subscriptions.conftest import Reply, eventually, put_networks, send, sub
from .test_dashboard import chromium_or_fail, dump_dom_showing, run_chromium
from .workers import free_port

NETWORKS = ("urn:ocn:polkadot:0", p.ASSET_HUB, p.INTERLAY)
#: The first message of an ephemeral websocket subscription.
QUERY = {"origin": p.ASSET_HUB, "senders": "*", "destinations": [p.INTERLAY]}
SECRET = "whsec_c2VjcmV0LWtleS1ieXRlcw=="


@dataclass
class Worker:
    """A worker's web server, built by :func:`ocstream.app.build_app`, on a free port."""

    app: Any
    settings: Settings
    session: aiohttp.ClientSession

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> Reply:
        return await send(
            self.session, method, self.base + path, body, raw=raw, headers=headers, token=token
        )


WorkerFactory = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def worker(
    redis_url: str, prefix: str, app_id: str, tmp_path: Path
) -> AsyncIterator[WorkerFactory]:
    started: list[Worker] = []
    client = connect(redis_url, name="test-security")
    await put_networks(NetworkRegistry(client, prefix), NETWORKS)

    async def start(*, url: str | None = None, **options: Any) -> Worker:
        settings = Settings(
            redis_url=url or redis_url,
            port=free_port(),
            data_dir=tmp_path / f"w{len(started)}",
            app_id=f"{app_id}{len(started)}",
            transport=TransportSettings(prefix=prefix),
            **options,
        )
        app = build_app(settings, redis_url=settings.redis_url or "")
        await app.web.start_server()
        await app.subscriptions_live.start()
        found = Worker(app, settings, aiohttp.ClientSession())
        started.append(found)
        return found

    yield start
    for found in started:
        await found.session.close()
        await found.app.subscriptions_live.stop()
        await found.app.web.stop_server()
    await client.aclose()


# --- 5. JSON Patch copy bomb ------------------------------------------------------------------


async def test_a_json_patch_copy_bomb_stops_at_the_size_limit(worker: WorkerFactory) -> None:
    w = await worker()
    assert (await w.call("POST", "/subs", sub())).status == 201
    # Each copy doubles /senders: 22 of them would make it 4 million entries.
    bomb = [{"op": "copy", "from": "/senders", "path": "/senders/0"} for _ in range(22)]
    started = time.perf_counter()
    answer = await w.call("PATCH", "/subs/s1", bomb)
    took = time.perf_counter() - started
    assert answer.status == 413, answer.body
    assert "larger than 1048576 bytes" in answer.json()["reason"]
    assert took < 10, took  # the worker was not busy for long (17 s before the cap)
    assert (await w.call("GET", "/subs/s1")).json() == sub()  # nothing changed
    too_many = [{"op": "test", "path": "/senders/0", "value": p.SIGNER_GENERIC}] * 101
    answer = await w.call("PATCH", "/subs/s1", too_many)
    assert answer.status == 400 and answer.json()["reason"] == (
        "At most 100 JSON Patch operations per request"
    )


# --- 6. secrets, read tokens, Host, content type ------------------------------------------------


async def test_secrets_are_never_read_back_and_patches_keep_them(worker: WorkerFactory) -> None:
    w = await worker(api_tokens=("w",))
    hook = {"type": "webhook", "url": "https://example.org/a", "secret": SECRET, "bearer": "b1"}
    given = sub(channels=[hook, {"type": "log"}])
    assert (await w.call("POST", "/subs", given, token="w")).status == 201
    shown = copy.deepcopy(given)
    shown["channels"][0] = {
        "type": "webhook",
        "url": "https://example.org/a",
        "hasSecret": True,
        "hasBearer": True,
    }
    listed = await w.call("GET", "/subs")
    assert listed.json() == [shown]
    one = await w.call("GET", "/subs/s1")
    assert one.json() == shown
    for answer in (listed, one):
        assert SECRET.encode() not in answer.body and b"b1" not in answer.body

    async def stored() -> dict[str, Any]:
        raw = await w.app.subscriptions_store.get_raw("s1")
        return dict(orjson.loads(raw))

    # A patch that does not touch the channel keeps its secret (and answers without it).
    answer = await w.call(
        "PATCH", "/subs/s1", [{"op": "add", "path": "/events", "value": ["xcm.sent"]}], token="w"
    )
    assert answer.status == 200 and SECRET.encode() not in answer.body
    assert answer.json()["channels"][0]["hasSecret"] is True
    assert (await stored())["channels"][0]["secret"] == SECRET
    # A channel read back with GET and sent again keeps the stored secret and bearer.
    edited = copy.deepcopy(shown["channels"])
    edited[0]["url"] = "https://example.org/b"
    answer = await w.call(
        "PATCH", "/subs/s1", [{"op": "replace", "path": "/channels", "value": edited}], token="w"
    )
    assert answer.status == 200, answer.body
    channel = (await stored())["channels"][0]
    assert (channel["url"], channel["secret"], channel["bearer"]) == (
        "https://example.org/b",
        SECRET,
        "b1",
    )
    # The live view (what deliveries use) has it too.
    live = w.app.subscriptions_live.get("s1")
    assert live.channels[0].secret == SECRET and live.channels[0].url.endswith("/b")
    # A patch cannot read a secret: no copy or move out of it, no test on it.
    for operation in (
        {"op": "copy", "from": "/channels/0/secret", "path": "/channels/0/template"},
        {"op": "move", "from": "/channels/0/bearer", "path": "/senders/0"},
        {"op": "test", "path": "/channels/0/secret", "value": SECRET},
        {"op": "test", "path": "/channels/0", "value": hook},
        {"op": "test", "path": "/channels", "value": [hook]},
    ):
        answer = await w.call("PATCH", "/subs/s1", [operation], token="w")
        assert answer.status == 400, (operation, answer.body)
        assert "not copied, moved or tested" in answer.json()["reason"]
    # "hasSecret" where nothing is stored is refused; removing a secret works.
    answer = await w.call(
        "PATCH",
        "/subs/s1",
        [{"op": "add", "path": "/channels/1/hasSecret", "value": True}],
        token="w",
    )
    assert answer.status == 400 and "has no secret to keep" in answer.json()["reason"]
    answer = await w.call(
        "PATCH", "/subs/s1", [{"op": "remove", "path": "/channels/0/secret"}], token="w"
    )
    assert answer.status == 200 and "hasSecret" not in answer.json()["channels"][0]
    assert "secret" not in (await stored())["channels"][0]


async def test_read_tokens_guard_the_read_routes_and_websockets(worker: WorkerFactory) -> None:
    w = await worker(api_tokens=("w",), read_tokens=("r",))
    given = sub(channels=[{"type": "websocket"}])
    assert (await w.call("POST", "/subs", given, token="w")).status == 201
    for path in ("/subs", "/subs/s1"):
        answer = await w.call("GET", path)
        assert answer.status == 401 and answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await w.call("GET", path, token="nope")).status == 401
        assert (await w.call("GET", path, token="r")).status == 200
        assert (await w.call("GET", path, token="w")).status == 200  # a write token reads
    assert (await w.call("DELETE", "/subs/s1", token="r")).status == 401  # no write with it
    for path in ("/ws/subs", "/ws/subs/s1"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with w.session.ws_connect(w.base + path):
                pass
        assert refused.value.status == 401
        async with w.session.ws_connect(w.base + path + "?access_token=r") as ws:
            await ws.send_json(QUERY)
            await ws.send_str("{}")
            frame = await ws.receive(timeout=5)
            assert frame.type == aiohttp.WSMsgType.TEXT, frame
        async with w.session.ws_connect(w.base + path, headers={"Authorization": "Bearer r"}) as ws:
            await ws.send_str("{}")
            assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT


def test_read_tokens_and_hosts_come_from_the_environment_and_the_file(tmp_path: Path) -> None:
    config = tmp_path / "worker.toml"
    config.write_text(
        '[worker]\nread_tokens = ["file-r"]\nallowed_hosts = ["api.example.org"]\n'
        "subs_per_client = 7\nws_per_client = 3\nheader_timeout = 5\nbody_timeout = 6\n"
    )
    from_file = load_settings({"config_file": str(config)}, environ={})
    assert from_file.read_tokens == ("file-r",)
    assert from_file.effective_allowed_hosts() == ("api.example.org",)
    assert (from_file.subs_per_client, from_file.ws_per_client) == (7, 3)
    assert (from_file.header_timeout, from_file.body_timeout) == (5, 6)
    from_env = load_settings(
        {"config_file": str(config)},
        environ={"OCSTREAM_READ_TOKENS": "a, b", "OCSTREAM_ALLOWED_HOSTS": "x.org,*"},
    )
    assert from_env.read_tokens == ("a", "b")
    assert from_env.effective_allowed_hosts() is None  # "*": any
    assert Settings().effective_allowed_hosts() == ("127.0.0.1", "localhost", "::1")
    assert Settings(address="0.0.0.0").effective_allowed_hosts() is None
    with pytest.raises(ConfigError):
        load_settings(environ={"OCSTREAM_WS_PER_CLIENT": "-1"})


async def test_the_host_header_must_name_this_server(worker: WorkerFactory) -> None:
    w = await worker()
    port = w.settings.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}"):
        assert (await w.call("GET", "/subs", headers={"Host": host})).status == 200, host
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
        answer = await w.call("GET", "/subs", headers={"Host": host})
        assert answer.status == 421 and answer.json()["reason"].startswith("Host not allowed")
    # The websocket too (a rebinding page could open one).
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with w.session.ws_connect(w.base + "/ws/subs", headers={"Host": "evil.example"}):
            pass
    assert refused.value.status == 421
    named = await worker(allowed_hosts=("api.example.org",))
    assert (await named.call("GET", "/subs", headers={"Host": "api.example.org"})).status == 200
    assert (await named.call("GET", "/subs", headers={"Host": "localhost"})).status == 421


async def test_writes_need_a_json_content_type(worker: WorkerFactory) -> None:
    w = await worker()
    body = orjson.dumps(sub())
    for headers in (
        {},
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/x-www-form-urlencoded"},
    ):
        answer = await w.call("POST", "/subs", raw=body, headers=headers)
        assert answer.status == 415, (headers, answer.body)
    assert (await w.call("GET", "/subs")).json() == []
    answer = await w.call("POST", "/subs", raw=body, headers={"Content-Type": "application/json"})
    assert answer.status == 201


# --- 7. error amplification -------------------------------------------------------------------


async def test_huge_arrays_get_a_short_answer(worker: WorkerFactory) -> None:
    w = await worker()
    flood = b"[" + b",".join([b"{}"] * ((1 << 20) // 3 - 1)) + b"]"
    assert len(flood) <= 1 << 20
    answer = await w.call("POST", "/subs", raw=flood, headers={"Content-Type": "application/json"})
    assert answer.status == 400 and len(answer.body) < 200, len(answer.body)
    assert answer.json()["reason"].startswith("At most 100 subscriptions per request")
    # Within the batch limit, at most 20 errors are listed, then a count.
    answer = await w.call("POST", "/subs", [{}] * 100)
    details = answer.json()["details"]
    assert answer.status == 400 and len(details) == 21
    assert details[-1]["type"] == "truncated" and len(answer.body) < 4000
    # Each {} has 4 errors: the items after the sixth were not even checked.
    assert details[-1]["message"] == "4 more errors not listed; 94 more subscriptions not checked"
    assert (await w.call("GET", "/subs")).json() == []


# --- 8. templates ---------------------------------------------------------------------------


async def test_templates_are_compiled_when_written(worker: WorkerFactory) -> None:
    w = await worker()
    chain = "{{#if a}}x" + "{{else if a}}y" * 500 + "{{/if}}"
    hook = {"type": "webhook", "url": "https://example.org/hook", "template": chain}
    answer = await w.call("POST", "/subs", sub(channels=[hook]))
    assert answer.status == 400
    assert "nested deeper than 64 levels" in answer.json()["reason"]
    assert (await w.call("POST", "/subs", sub())).status == 201
    for template in (chain, "{{#each x}}never closed", "{{> partial}}"):
        answer = await w.call(
            "PATCH",
            "/subs/s1",
            [{"op": "add", "path": "/channels/0/template", "value": template}],
        )
        assert answer.status == 400 and "template: " in answer.json()["reason"], answer.body
    assert (await w.call("GET", "/subs/s1")).json() == sub()


# --- 9. quotas ----------------------------------------------------------------------------------


async def test_per_client_quotas(worker: WorkerFactory) -> None:
    w = await worker(api_tokens=("alice", "bob"), subs_per_client=3, ws_per_client=2)
    batch = [sub(f"a{i}") for i in range(3)]
    assert (await w.call("POST", "/subs", batch, token="alice")).status == 201
    answer = await w.call("POST", "/subs", sub("a3"), token="alice")
    assert answer.status == 429
    assert answer.json()["reason"] == "too many subscriptions for this client (at most 3)"
    assert (await w.call("POST", "/subs", sub("b0"), token="bob")).status == 201  # own quota
    assert (await w.call("DELETE", "/subs/a0", token="alice")).status == 200
    assert (await w.call("POST", "/subs", sub("a3"), token="alice")).status == 201
    assert await w.app.subscriptions_store.owned("token:" + _hash("alice")) == 3

    # Websockets: per client (here its address: reads are open) and worker.
    url = w.base + "/ws/subs"
    async with w.session.ws_connect(url) as one, w.session.ws_connect(url) as two:
        for ws in (one, two):
            await ws.send_json(QUERY)
            assert "id" in (await ws.receive_json(timeout=5))
        async with w.session.ws_connect(url) as third:
            refused = await third.receive_json(timeout=5)
            assert refused["statusCode"] == 429
            assert refused["reason"] == "too many sockets for this client (at most 2)"
            closing = await third.receive(timeout=5)
            assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1013
    async with w.session.ws_connect(url) as again:  # the slots are free again
        await again.send_json(QUERY)
        assert "id" in (await again.receive_json(timeout=5))


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


# --- 10. slow clients -------------------------------------------------------------------------


async def _closed_after(port: int, head: bytes, drip: bytes, limit: float) -> float | None:
    """Send ``head``, then ``drip`` a byte every 0.2 s; the seconds until the server closed the
    connection (None: still open after ``limit``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        writer.write(head)
        while time.monotonic() - started < limit:
            try:
                data = await asyncio.wait_for(reader.read(4096), 0.2)
            except TimeoutError:
                writer.write(drip[:1])
                drip = drip[1:] or b"x"
                continue
            if data == b"":
                return time.monotonic() - started
        return None
    except ConnectionError:
        return time.monotonic() - started
    finally:
        writer.close()


async def test_slow_clients_are_cut_off(worker: WorkerFactory) -> None:
    w = await worker(header_timeout=1.0, body_timeout=1.0)
    port = w.settings.port
    # Headers sent a byte at a time never finish: the connection is closed.
    head = b"GET /subs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    assert await _closed_after(port, head, b"X-Slow: " + b"a" * 500, limit=20) is not None
    # A body that does not arrive: 408.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /subs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    answer = await asyncio.wait_for(reader.read(4096), 20)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"Request body not received within 1 s" in answer
    # A websocket is not a slow request: it stays open past the header timeout.
    async with w.session.ws_connect(w.base + "/ws/subs") as ws:
        await asyncio.sleep(2.5)
        await ws.send_json(QUERY)
        assert "id" in (await ws.receive_json(timeout=5))
    # A normal request still works.
    assert (await w.call("GET", "/subs")).status == 200


# --- 11. the smaller points ---------------------------------------------------------------------


async def test_deep_values_are_400(worker: WorkerFactory) -> None:
    w = await worker()
    assert (await w.call("POST", "/subs", sub())).status == 201
    deep = b"[" * 900 + b'"xcm.sent"' + b"]" * 900  # deeper than orjson writes
    patch = b'[{"op": "add", "path": "/events", "value": ' + deep + b"}]"
    json_type = {"Content-Type": "application/json"}
    answer = await w.call("PATCH", "/subs/s1", raw=patch, headers=json_type)
    assert answer.status == 400
    assert answer.json()["reason"] == "Request body nests arrays and objects deeper than 32"
    posted = orjson.dumps(sub("s2", senders="DEEP")).replace(b'"DEEP"', deep)
    answer = await w.call("POST", "/subs", raw=posted, headers=json_type)
    assert answer.status == 400
    assert (await w.call("GET", "/subs")).json() == [sub()]


async def test_admin_routes_refuse_huge_numbers(worker: WorkerFactory) -> None:
    w = await worker(admin_tokens=("adm",))
    path = "/admin/webhooks/dead-letters"
    assert (await w.call("GET", path, token="adm")).json() == []
    for query in ("?offset=100000000000000000000", "?limit=1e9", "?offset=%C2%B2", "?offset=-"):
        answer = await w.call("GET", path + query, token="adm")
        assert answer.status == 400, (query, answer.body)
        assert answer.headers["Content-Type"].startswith("application/json")
    assert (await w.call("GET", path + "?offset=5&limit=3", token="adm")).json() == []
    for channel in ("99999999999999999999", "²", "1000"):
        answer = await w.call("POST", f"/admin/webhooks/s1/{channel}/enable", token="adm")
        assert answer.status == 400, (channel, answer.body)
    answer = await w.call("POST", "/admin/webhooks/s1/2/enable", token="adm")
    assert answer.json() == {"enabled": ["s1", 2]}


async def test_redis_down_gives_json_503_and_clean_websocket_errors(
    worker: WorkerFactory,
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    w = await worker(url=dead)
    answer = await w.call("GET", "/networks")
    assert answer.status == 503 and answer.headers["Content-Type"].startswith("application/json")
    assert answer.json()["reason"] == "the network registry is unavailable; retry later"
    async with w.session.ws_connect(w.base + "/ws/subs") as ws:
        await ws.send_json(QUERY)
        frame = await ws.receive_json(timeout=30)
    assert frame == {
        "error": True,
        "statusCode": 503,
        "reason": "Subscription storage is unavailable; retry later",
    }


async def test_unknown_methods_and_paths_answer_json(worker: WorkerFactory) -> None:
    w = await worker()
    for method, path, status in (
        ("OPTIONS", "/subs", 405),
        ("TRACE", "/subs", 405),
        ("TRACE", "/health", 405),
        ("PUT", "/networks", 405),
        ("GET", "/no-such-page", 404),
    ):
        answer = await w.call(method, path)
        assert answer.status == status, (method, path, answer.status)
        assert answer.headers["Content-Type"].startswith("application/json"), (method, path)
        body = answer.json()
        assert body["error"] is True and body["statusCode"] == status
        if status == 405:
            assert "GET" in answer.headers["Allow"]


async def test_writes_update_the_live_view_without_a_reload(
    worker: WorkerFactory, redis_url: str, prefix: str
) -> None:
    w = await worker()
    other = await worker()  # a second worker: it learns of the changes from the messages
    store = w.app.subscriptions_store
    await store.create_many([Subscription.model_validate(sub(f"o{i}")) for i in range(20)])
    for worker_ in (w, other):
        await worker_.app.subscriptions_live.refresh()
    reloads = [x.app.subscriptions_live.reloads for x in (w, other)]
    assert (await w.call("POST", "/subs", sub("n1"))).status == 201
    answer = await w.call(
        "PATCH", "/subs/n1", [{"op": "replace", "path": "/destinations", "value": [p.ASSET_HUB]}]
    )
    assert answer.status == 200
    assert (await w.call("DELETE", "/subs/o3")).status == 200
    await store.delete("o4")  # a change that did not go through this API
    notification = {
        "origin": {"chainId": p.ASSET_HUB},
        "destination": {"chainId": p.ASSET_HUB},
        "sender": {"signer": {"publicKey": public_key_of(p.SIGNER_GENERIC)}},
    }
    version = await store.version()
    for worker_ in (w, other):
        live = worker_.app.subscriptions_live
        caught_up = cast(Callable[[], bool], lambda live=live: live.version == version)
        await eventually(caught_up, 10, f"version {version}")
        assert live.get("n1").destinations == [p.ASSET_HUB]
        assert live.get("o3") is None and live.get("o4") is None
        assert len(live.persistent()) == 19
        assert [s.id for s in live.matching(notification)] == ["n1"]
    # Every change was taken in by itself, on both workers: no full reload.
    assert [x.app.subscriptions_live.reloads for x in (w, other)] == reloads
    # A change nobody announced (written straight into Redis): the next write sees the gap
    # and reloads everything.
    client = connect(redis_url, name="test-security-raw")
    await client.hset(f"{prefix}subs", "raw", orjson.dumps(sub("raw")))
    await client.incr(f"{prefix}subs:version")
    await client.aclose()
    assert (await w.call("DELETE", "/subs/o5")).status == 200
    live = w.app.subscriptions_live
    assert live.reloads == reloads[0] + 1
    assert live.get("raw") is not None and live.get("o5") is None


async def test_the_dashboard_reads_with_a_token_from_its_address(
    worker: WorkerFactory, tmp_path: Path
) -> None:
    binary = chromium_or_fail()
    w = await worker(api_tokens=("w",), read_tokens=("r",))
    assert (await w.call("POST", "/subs", sub("dash-sub"), token="w")).status == 201
    page = w.base + "/dashboard/"
    dom = await run_chromium(binary, tmp_path / "without", "--dump-dom", page)
    assert "Could not load /subs: GET /subs answered 401" in dom
    assert 'data-subscription="dash-sub"' not in dom
    dom = await dump_dom_showing(
        binary, tmp_path / "with", page + "#token=r", "ephemeral subscription"
    )
    assert 'data-subscription="dash-sub"' in dom
    assert "ephemeral subscription" in dom, "the live feed did not subscribe with the token"
