"""The subscriptions HTTP API over real HTTP (XCM.md §11, §12): status codes, JSON error bodies,
round trips, JSON Patch, limits, bearer tokens, the OpenAPI document and the faust mounting."""

from __future__ import annotations

import asyncio
import copy
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import faust
import orjson
import pytest
from aiohttp import web
from redis.asyncio import Redis

from ocstream.ingress.registry import NetworkRegistry
from ocstream.subscriptions import (
    ApiSettings,
    LiveSubscriptions,
    SubscriptionApi,
    SubscriptionLimits,
    SubscriptionStore,
    register_api,
    registry_networks,
)
from ocstream.subscriptions.openapi import ErrorBody

from . import payloads as p
from .conftest import Reply, ServeFactory, Server, sub

PATHS_ERROR = "Only operations on these paths are allowed: /senders,/destinations,/channels,/events"


def assert_error(
    reply: Reply, status: int, reason: str | None = None, *, contains: str = ""
) -> Any:
    assert reply.status == status, reply.body
    assert reply.content_type == "application/json"
    payload = reply.json()
    ErrorBody.model_validate(payload)
    assert payload["error"] is True and payload["statusCode"] == status
    if reason is not None:
        assert payload["reason"] == reason
    assert contains in payload["reason"], payload
    return payload


# --- create and read ------------------------------------------------------------------------------


async def test_create_one_and_read_it_back_exactly(server: Server) -> None:
    given = sub(
        events=["xcm.sent", "xcm.received"],
        outboundTTL=60_000,
        channels=[
            {
                "type": "webhook",
                "url": "https://example.org/hook",
                "contentType": "application/vnd.api+json",
                "events": ["xcm.received"],
                "template": "{{type}} from {{origin.chainId}}",
                "bearer": "abc",
                "limit": 2,
                "secret": "whsec_c2VjcmV0",
            },
            {"type": "log"},
        ],
    )
    reply = await server.post("/subs", given)
    assert (reply.status, reply.body) == (201, b"")
    # As posted (senders as written, no defaults added), except that the secret and the
    # bearer are never shown again.
    shown = copy.deepcopy(given)
    hook = shown["channels"][0]
    del hook["bearer"], hook["secret"]
    hook.update(hasBearer=True, hasSecret=True)
    for path in ("/subs/s1", "/subs/s1/"):
        reply = await server.get(path)
        assert reply.status == 200 and reply.content_type == "application/json"
        assert reply.json() == shown
    for path in ("/subs", "/subs/"):
        assert (await server.get(path)).json() == [shown]
    # Stored (and used) as given.
    assert orjson.loads(await server.store.get_raw("s1") or b"") == given
    # This worker's live filters have it before the answer went out.
    assert server.live.get("s1") is not None


async def test_post_with_a_trailing_slash_and_an_array(server: Server) -> None:
    batch = [sub("a"), sub("b", senders="*"), sub("c", destinations=[])]
    assert (await server.post("/subs/", batch)).status == 201
    assert [s["id"] for s in (await server.get("/subs")).json()] == ["a", "b", "c"]
    for item in batch:
        assert (await server.get(f"/subs/{item['id']}")).json() == item


async def test_a_batch_with_an_existing_id_is_refused_and_leaves_nothing(server: Server) -> None:
    assert (await server.post("/subs", sub("taken"))).status == 201
    reply = await server.post("/subs", [sub("new-1"), sub("new-2"), sub("taken")])
    assert_error(reply, 409, "Subscription with ID taken already exists")
    for name in ("new-1", "new-2"):
        assert_error(await server.get(f"/subs/{name}"), 404, f"Subscription {name} not found.")


async def test_a_batch_repeating_an_id_is_refused_and_leaves_nothing(server: Server) -> None:
    reply = await server.post("/subs", [sub("x"), sub("y"), sub("x")])
    assert_error(reply, 409, "Subscription with ID x already exists")
    assert (await server.get("/subs")).json() == []


async def test_one_invalid_item_fails_the_batch_with_its_index(server: Server) -> None:
    reply = await server.post("/subs", [sub("ok"), sub("bad", outboundTTL=10)])
    payload = assert_error(
        reply, 400, contains="XCM outbound message TTL should be at least 6 seconds"
    )
    assert payload["details"][0]["path"] == [1, "outboundTTL"]
    assert payload["reason"].startswith("[1].outboundTTL: ")
    assert_error(await server.get("/subs/ok"), 404)


async def test_unknown_ids(server: Server) -> None:
    assert_error(await server.get("/subs/nope"), 404, "Subscription nope not found.")
    patch = [{"op": "add", "path": "/events", "value": "*"}]
    assert_error(await server.patch("/subs/nope", patch), 404, "Subscription nope not found.")
    for _ in range(2):  # DELETE is idempotent
        reply = await server.delete("/subs/nope")
        assert (reply.status, reply.body) == (200, b"")


async def test_delete(server: Server) -> None:
    await server.post("/subs", sub("gone"))
    assert server.live.get("gone") is not None
    assert (await server.delete("/subs/gone/")).status == 200
    assert_error(await server.get("/subs/gone"), 404)
    assert server.live.get("gone") is None


# --- invalid requests -----------------------------------------------------------------------------


HOOK = {"type": "webhook", "url": "https://example.org/hook"}


@pytest.mark.parametrize(
    ("body", "status", "text", "path"),
    [
        (sub("bad id!"), 400, "pattern", ["id"]),
        (sub("ok\nbad"), 400, "pattern", ["id"]),
        (sub("ok\n"), 400, "pattern", ["id"]),
        (sub("x" * 101), 400, "1 to 100", ["id"]),
        ({k: v for k, v in sub().items() if k != "id"}, 400, "Field required", ["id"]),
        (
            sub(ephemeral=True),
            400,
            "ephemeral subscriptions only supports websocket notifications",
            [],
        ),
        (
            sub(ephemeral=True, channels=[{"type": "websocket"}]),
            400,
            "websocket API",
            ["ephemeral"],
        ),
        (
            sub(outboundTTL=5000),
            400,
            "XCM outbound message TTL should be at least 6 seconds",
            ["outboundTTL"],
        ),
        (sub(outboundTTL="6000"), 400, "valid integer", ["outboundTTL"]),
        (sub(colour="blue"), 400, "unknown property", ["colour"]),
        (
            sub(channels=[{**HOOK, "retries": 3}]),
            400,
            "unknown property",
            ["channels", 0, "webhook", "retries"],
        ),
        (
            sub(channels=[{**HOOK, "url": "ftp://x.org/y"}]),
            400,
            "http:// or https://",
            ["channels", 0, "webhook", "url"],
        ),
        (
            sub(channels=[{**HOOK, "contentType": "image/png"}]),
            400,
            "contentType",
            ["channels", 0, "webhook", "contentType"],
        ),
        (sub(channels=[]), 400, "at least 1 item", ["channels"]),
        (sub(channels=[{"type": "pigeon"}]), 400, "expected tags", ["channels", 0]),
        (sub(senders=[]), 400, "at least 1 sender address", ["senders"]),
        (sub(senders=["not-an-address"]), 400, "invalid sender address", ["senders"]),
        (sub(events=["xcm.relay"]), 400, "unknown event type 'xcm.relay'", ["events"]),
        (sub(events=None), 400, "events must not be null", []),
        (
            sub(origin="urn:ocn:polkadot:9999"),
            400,
            "Invalid chain id:urn:ocn:polkadot:9999",
            ["origin"],
        ),
        (
            sub(destinations=[p.INTERLAY, "urn:ocn:kusama:1000"]),
            400,
            "Invalid chain id:urn:ocn:kusama:1000",
            ["destinations"],
        ),
        (sub(origin="polkadot"), 400, "Invalid chain id:polkadot", ["origin"]),
        ("hello", 400, "must be a subscription object or an array", None),
        (42, 400, "must be a subscription object or an array", None),
        (None, 400, "must be a subscription object or an array", None),
        ([], 400, "At least 1 subscription is required", None),
        ([sub("a"), "b"], 400, "a subscription is a JSON object", [1]),
    ],
)
async def test_invalid_bodies_are_refused_with_a_reason(
    server: Server, body: Any, status: int, text: str, path: list[Any] | None
) -> None:
    reply = await server.post(
        "/subs", raw=orjson.dumps(body), headers={"Content-Type": "application/json"}
    )
    payload = assert_error(reply, status, contains=text)
    if path is not None:
        assert any(d["path"] == path for d in payload["details"]), payload
        for detail in payload["details"]:
            assert set(detail) == {"path", "message", "type"}  # never the input (secrets)
    assert (await server.get("/subs")).json() == []


@pytest.mark.parametrize(
    ("raw", "headers", "status", "text"),
    [
        (b'{"id": "a",', {"Content-Type": "application/json"}, 400, "not valid JSON"),
        (b"{'id': 'a'}", {"Content-Type": "application/json"}, 400, "not valid JSON"),
        (b'{"outboundTTL": NaN}', {"Content-Type": "application/json"}, 400, "not valid JSON"),
        (b"\xff\xfe", {"Content-Type": "application/json"}, 400, "not valid JSON"),
        # Raw bytes (aiohttp's default type for them) and untyped bodies are refused: a
        # browser may send those cross-site without asking first.
        (b'{"id": "a"}', {}, 415, "'application/octet-stream': expected application/json"),
        (b'"unterminated', {"Content-Type": "application/json-patch+json"}, 400, "not valid JSON"),
        (b"", {"Content-Type": "application/json"}, 400, "empty"),
        (
            b"id=a",
            {"Content-Type": "application/x-www-form-urlencoded"},
            415,
            "expected application/json",
        ),
        (b'{"id": "a"}', {"Content-Type": "text/plain"}, 415, "text/plain"),
        (b"--x--", {"Content-Type": "multipart/form-data; boundary=x"}, 415, "multipart"),
    ],
)
async def test_undecodable_bodies(
    server: Server, raw: bytes, headers: dict[str, str], status: int, text: str
) -> None:
    assert_error(await server.post("/subs", raw=raw, headers=headers), status, contains=text)


async def test_json_content_types_with_parameters_are_accepted(server: Server) -> None:
    for content_type in ("application/json; charset=utf-8", "Application/JSON"):
        body = orjson.dumps(sub(uuid.uuid4().hex))
        reply = await server.post("/subs", raw=body, headers={"Content-Type": content_type})
        assert reply.status == 201
    # No content type at all: 415 (as for any type that is not JSON).
    async with server.session.post(
        server.base + "/subs",
        data=orjson.dumps(sub("untyped")),
        skip_auto_headers=["Content-Type"],
    ) as response:
        assert "Content-Type" not in response.request_info.headers
        assert response.status == 415
        reason = (await response.json())["reason"]
        assert reason == "Missing Content-Type: expected application/json"
    async with server.session.patch(
        server.base + "/subs/x", data=b"[]", skip_auto_headers=["Content-Type"]
    ) as response:
        assert response.status == 415


async def test_bodies_over_the_limit_are_413(serve: ServeFactory) -> None:
    server = await serve(ApiSettings(max_body_bytes=4096))
    big = sub(channels=[{**HOOK, "template": "x" * 5000}])
    assert_error(await server.post("/subs", big), 413, "Request body is larger than 4096 bytes")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while reading
        data = orjson.dumps(big)
        for start in range(0, len(data), 1000):
            yield data[start : start + 1000]

    async with server.session.post(
        server.base + "/subs", data=chunks(), headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 413 and "Content-Length" not in response.request_info.headers
        assert (await response.json())["reason"] == "Request body is larger than 4096 bytes"
    patch = [{"op": "add", "path": "/events", "value": ["xcm.sent"] * 1000}]
    assert_error(await server.patch("/subs/x", patch), 413)
    assert (await server.get("/subs")).json() == []


async def test_the_default_body_limit_is_one_mebibyte(server: Server) -> None:
    senders = [p.SIGNER_GENERIC] * 25_000  # about 1.2 MB
    assert_error(await server.post("/subs", sub(senders=senders)), 413, contains="1048576")
    assert (await server.post("/subs", sub(senders=senders[:10_000]))).status == 201


async def test_the_subscription_limit_is_429(serve: ServeFactory) -> None:
    server = await serve(limits=SubscriptionLimits(max_persistent=3))
    assert (await server.post("/subs", [sub("a"), sub("b")])).status == 201
    assert_error(await server.post("/subs", [sub("c"), sub("d")]), 429, "too many subscriptions")
    assert_error(await server.get("/subs/c"), 404)
    assert (await server.post("/subs", sub("c"))).status == 201
    assert_error(await server.post("/subs", sub("d")), 429, "too many subscriptions")
    assert (await server.delete("/subs/a")).status == 200
    assert (await server.post("/subs", sub("d"))).status == 201


# --- PATCH ----------------------------------------------------------------------------------------


async def test_patch_allowed_operations(server: Server) -> None:
    await server.post("/subs", sub("s", senders=[p.SIGNER_GENERIC]))
    expected = sub("s", senders=[p.SIGNER_GENERIC])

    reply = await server.patch(
        "/subs/s", [{"op": "add", "path": "/senders/-", "value": p.PROXIED_KEY}]
    )
    expected["senders"] = [p.SIGNER_GENERIC, p.PROXIED_KEY]
    assert (reply.status, reply.json()) == (200, expected)
    assert server.live.get("s") is not None
    assert server.live.get("s").sender_keys() == {p.SIGNER_KEY, p.PROXIED_KEY}  # type: ignore[union-attr]

    reply = await server.patch("/subs/s", [{"op": "remove", "path": "/senders"}])
    del expected["senders"]
    assert (reply.status, reply.json()) == (200, expected)
    assert server.live.get("s").sender_keys() is None  # type: ignore[union-attr]

    hook = {"type": "webhook", "url": "https://other.example/x", "events": ["xcm.timeout"]}
    reply = await server.patch("/subs/s", [{"op": "replace", "path": "/channels/0", "value": hook}])
    expected["channels"] = [hook]
    assert (reply.status, reply.json()) == (200, expected)

    reply = await server.patch(
        "/subs/s/",
        [
            {"op": "test", "path": "/channels/0/url", "value": "https://other.example/x"},
            {"op": "add", "path": "/events", "value": ["xcm.sent"]},
            {"op": "add", "path": "/destinations/-", "value": p.HYDRATION},
            {"op": "copy", "from": "/channels/0", "path": "/channels/-"},
            {"op": "move", "from": "/destinations/0", "path": "/destinations/-"},
        ],
        headers={"Content-Type": "application/json-patch+json"},
    )
    expected.update(
        events=["xcm.sent"], destinations=[p.HYDRATION, p.INTERLAY], channels=[hook, hook]
    )
    assert (reply.status, reply.json()) == (200, expected)
    assert (await server.get("/subs/s")).json() == expected


async def test_patch_results_are_validated_and_deduplicated(server: Server) -> None:
    await server.post("/subs", sub("s"))
    reply = await server.patch(
        "/subs/s",
        [
            {"op": "add", "path": "/senders/-", "value": p.SIGNER_POLKADOT},  # same account
            {"op": "add", "path": "/destinations/-", "value": p.INTERLAY},
        ],
    )
    assert reply.status == 200
    assert reply.json()["senders"] == [p.SIGNER_GENERIC]
    assert reply.json()["destinations"] == [p.INTERLAY]
    before = (await server.get("/subs/s")).json()
    cases: list[tuple[list[dict[str, Any]], int, str]] = [
        (
            [{"op": "remove", "path": "/channels/0"}],
            400,
            "channels: List should have at least 1 item",
        ),
        ([{"op": "add", "path": "/events", "value": []}], 400, "at least 1 event type is required"),
        ([{"op": "add", "path": "/senders/-", "value": "nope"}], 400, "invalid sender address"),
        (
            [{"op": "add", "path": "/destinations/-", "value": "urn:ocn:kusama:7"}],
            400,
            "Invalid chain id:urn:ocn:kusama:7",
        ),
        ([{"op": "add", "path": "/channels/0/extra", "value": 1}], 400, "unknown property"),
        (
            [{"op": "replace", "path": "/channels/0", "value": {"type": "webhook", "url": "nope"}}],
            400,
            "url",
        ),
        ([{"op": "remove", "path": "/senders/3"}], 400, "out of range"),
        ([{"op": "remove", "path": "/events"}], 400, "/events does not exist"),
        ([{"op": "test", "path": "/senders/0", "value": "x"}], 409, "JSON Patch test failed"),
    ]
    for operations, status, text in cases:
        assert_error(await server.patch("/subs/s", operations), status, contains=text)
    assert (await server.get("/subs/s")).json() == before


@pytest.mark.parametrize(
    "operations",
    [
        [{"op": "replace", "path": "/id", "value": "other"}],
        [{"op": "add", "path": "/sendersX", "value": ["x"]}],
        [{"op": "replace", "path": "/origin", "value": p.INTERLAY}],
        [{"op": "add", "path": "/ephemeral", "value": True}],
        [{"op": "add", "path": "/outboundTTL", "value": 60000}],
        [{"op": "remove", "path": ""}],
        [{"op": "move", "from": "/id", "path": "/events"}],
        [{"op": "add", "path": "/events", "value": "*"}, {"op": "remove", "path": "/id"}],
    ],
)
async def test_patch_outside_the_allowed_paths_is_400(
    server: Server, operations: list[dict[str, Any]]
) -> None:
    await server.post("/subs", sub("s"))
    assert_error(await server.patch("/subs/s", operations), 400, PATHS_ERROR)
    assert (await server.get("/subs/s")).json() == sub("s")


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"op": "add", "path": "/events", "value": "*"}, "array of operations"),
        ([{"op": "upsert", "path": "/events"}], "'op' must be one of"),
        ([{"op": "add", "path": "/events"}], "missing value"),
        ([{"op": "copy", "path": "/events"}], "missing from"),
        (["add"], "an operation is an object"),
    ],
)
async def test_malformed_patches_are_400(server: Server, body: Any, text: str) -> None:
    await server.post("/subs", sub("s"))
    assert_error(await server.patch("/subs/s", body), 400, contains=text)


async def test_concurrent_patches_are_all_applied(server: Server) -> None:
    await server.post("/subs", sub("s"))
    keys = ["0x" + f"{i:02x}" * 32 for i in range(1, 6)]
    replies = await asyncio.gather(
        *(
            server.patch("/subs/s", [{"op": "add", "path": "/senders/-", "value": key}])
            for key in keys
        )
    )
    assert [reply.status for reply in replies] == [200] * 5
    assert sorted((await server.get("/subs/s")).json()["senders"][1:]) == keys


# --- tokens ---------------------------------------------------------------------------------------


async def test_write_tokens(serve: ServeFactory) -> None:
    server = await serve(ApiSettings(write_tokens=("w-secret-1", "w-secret-2")))
    for token in (None, "wrong", "w-secret-1x", ""):
        reply = await server.post("/subs", sub("s"), token=token)
        payload = assert_error(reply, 401)
        assert "bearer token" in payload["reason"]
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    basic = await server.post("/subs", sub("s"), headers={"Authorization": "Basic w-secret-1"})
    assert_error(basic, 401, "Invalid bearer token")
    assert (await server.post("/subs", sub("s"), token="w-secret-1")).status == 201
    assert (await server.get("/subs/s")).status == 200  # reads stay open
    assert (await server.get("/subs")).status == 200
    patch = [{"op": "add", "path": "/events", "value": "*"}]
    assert_error(await server.patch("/subs/s", patch), 401)
    assert_error(await server.delete("/subs/s", token="nope"), 401)
    assert (await server.patch("/subs/s", patch, token="w-secret-2")).status == 200
    assert (await server.delete("/subs/s", token="w-secret-2")).status == 200


async def test_read_tokens(serve: ServeFactory) -> None:
    server = await serve(ApiSettings(write_tokens=("writer",), read_tokens=("reader",)))
    assert_error(await server.get("/subs"), 401, contains="Missing bearer token")
    assert_error(await server.get("/subs/x", token="wrong"), 401, "Invalid bearer token")
    assert (await server.get("/subs", token="reader")).status == 200
    assert (await server.get("/subs", token="writer")).status == 200
    assert_error(await server.post("/subs", sub("s"), token="reader"), 401)
    assert (await server.get("/openapi.json")).status == 200
    assert (await server.get("/docs")).status == 200


def test_tokens_must_be_clean_strings() -> None:
    with pytest.raises(ValueError):
        ApiSettings(write_tokens=("",))
    with pytest.raises(ValueError):
        ApiSettings(read_tokens=(" padded",))
    assert "secret" not in repr(ApiSettings(write_tokens=("secret",)))


# --- other routes and failures --------------------------------------------------------------------


async def test_other_methods_are_405_json(server: Server) -> None:
    reply = await server.request("PUT", "/subs/x", sub("x"))
    assert_error(reply, 405, "Method PUT is not allowed on /subs/{id}")
    assert reply.headers["Allow"] == "DELETE, GET, PATCH"
    assert_error(await server.request("DELETE", "/subs"), 405)


async def test_openapi_document(server: Server) -> None:
    reply = await server.get("/openapi.json")
    assert reply.status == 200 and reply.content_type == "application/json"
    document = reply.json()
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) >= {"/subs", "/subs/{id}", "/openapi.json", "/docs"}
    assert set(document["paths"]["/subs"]) == {"get", "post"}
    assert {"get", "patch", "delete"} <= set(document["paths"]["/subs/{id}"])
    schemas = document["components"]["schemas"]
    assert {"Subscription", "WebhookChannel", "WebsocketChannel", "LogChannel", "ErrorBody"} <= set(
        schemas
    )
    assert schemas["Subscription"]["additionalProperties"] is False
    assert schemas["Subscription"]["properties"]["id"]["pattern"] == r"^[A-Za-z0-9:.\-_]{1,100}$"

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if "$ref" in node else []
            return own + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(document):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas
    assert (await server.get("/openapi.json/")).json() == document


async def test_docs_page_is_self_contained(server: Server) -> None:
    reply = await server.get("/docs")
    assert reply.status == 200 and reply.content_type.startswith("text/html")
    page = reply.body.decode()
    assert '<script type="application/json" id="openapi">' in page
    assert "/subs/{id}" in page and "createSubscriptions" in page
    assert "<script src" not in page and "<link" not in page and "//cdn" not in page
    assert "default-src 'none'" in reply.headers["Content-Security-Policy"]


async def test_redis_outage_is_503_json(registry: NetworkRegistry, prefix: str) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=0.5)
    api = SubscriptionApi(
        store=SubscriptionStore(dead, prefix), networks=registry_networks(registry)
    )
    app = web.Application()
    api.add_routes(app.router)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            async with session.get(url + "/subs") as response:
                reply = Reply(response.status, response.headers, await response.read())
            assert_error(reply, 503, "Subscription storage is unavailable; retry later")
            async with session.post(url + "/subs", json=sub("s")) as response:
                assert response.status == 503
    finally:
        await runner.cleanup()
        await dead.aclose()


# --- mounted on a faust app -----------------------------------------------------------------------


async def test_register_api_mounts_on_the_faust_web_server(
    client: Redis, prefix: str, registry: NetworkRegistry
) -> None:
    app = faust.App(f"t{uuid.uuid4().hex[:8]}", broker="memory://", web_port=6066)
    store = SubscriptionStore(client, prefix)
    live = LiveSubscriptions(client, prefix)
    register_api(app, store=store, live=live, registry=lambda: registry)
    # The faust web driver's aiohttp application, served the way the worker serves it.
    web_app: web.Application = app.web.web_app  # type: ignore[attr-defined]
    runner = web.AppRunner(web_app)
    await runner.setup()  # runs on_startup: starts the live view
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        assert live.started
        async with aiohttp.ClientSession() as session:

            async def call(method: str, path: str, body: Any = None) -> Reply:
                async with session.request(method, base + path, json=body) as response:
                    return Reply(response.status, response.headers, await response.read())

            given = sub("via-faust")
            assert (await call("POST", "/subs", given)).status == 201
            assert (await call("POST", "/subs/", sub("via-faust-2"))).status == 201
            for path in ("/subs/via-faust", "/subs/via-faust/"):
                assert (await call("GET", path)).json() == given
            assert len((await call("GET", "/subs")).json()) == 2
            assert len((await call("GET", "/subs/")).json()) == 2
            assert live.get("via-faust") is not None
            patched = copy.deepcopy(given)
            patched["events"] = ["xcm.sent"]
            reply = await call(
                "PATCH",
                "/subs/via-faust",
                [{"op": "add", "path": "/events", "value": ["xcm.sent"]}],
            )
            assert reply.json() == patched
            assert_error(
                await call(
                    "PATCH", "/subs/via-faust", [{"op": "add", "path": "/id", "value": "x"}]
                ),
                400,
                PATHS_ERROR,
            )
            assert_error(await call("PUT", "/subs/via-faust"), 405)
            assert_error(await call("POST", "/subs", [sub("via-faust")]), 409)
            assert (await call("DELETE", "/subs/via-faust")).status == 200
            assert_error(
                await call("GET", "/subs/via-faust"), 404, "Subscription via-faust not found."
            )
            assert (await call("GET", "/openapi.json")).json()["openapi"] == "3.1.0"
            assert (await call("GET", "/docs/")).status == 200
    finally:
        await runner.cleanup()  # runs on_cleanup: stops the live view
    assert not live.started
