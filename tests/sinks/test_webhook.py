"""Webhook delivery against real aiohttp receivers on 127.0.0.1 and a real Redis (7 and 6.2).

Receivers answer per request from a plan, and count what they received and what they
acknowledged with a 2xx: "delivered exactly once" means one 2xx answer, whatever the retries.
Since receivers listen on loopback, dispatchers allow private targets except in the SSRF tests.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis
from standardwebhooks import Webhook

from ocstream.sinks.webhook import (
    COUNTERS,
    DeliveryIds,
    WebhookDispatcher,
    WebhookSettings,
    delivery_url,
    sign,
    signing_key,
)
from ocstream.transport.client import connect

FAST = (0.0, 0.2, 0.4)  # three attempts: now, +0.2 s, +0.4 s


# -- receivers


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float

    @property
    def delivery_id(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def notification_id(self) -> str | None:
        try:
            value = orjson.loads(self.body).get("id")
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return value if isinstance(value, str) else None


Plan = Callable[[int, "Received"], int | tuple[int, float]]


@dataclass
class Receiver:
    """An aiohttp server that records every POST and answers ``plan(n, request)``: a status,
    or (status, seconds to sleep first). ``n`` counts requests from 1."""

    plan: Plan = lambda n, req: 200  # noqa: E731
    requests: list[Received] = field(default_factory=list)
    port: int = 0
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def acknowledged(self) -> list[Received]:
        return [r for r in self.requests if 200 <= r.status < 300]

    def notifications(self) -> list[dict[str, Any]]:
        """The bodies received, decoded (a notification each, for JSON channels)."""
        return [orjson.loads(r.body) for r in self.requests]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        item = Received(request.path, dict(request.headers), body, 0, time.monotonic())
        self.requests.append(item)
        answer = self.plan(len(self.requests), item)
        status, delay = answer if isinstance(answer, tuple) else (answer, 0.0)
        if delay:
            await asyncio.sleep(delay)
        item.status = status
        return web.Response(status=status, text="nope" if status >= 300 else "ok")

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    started: list[Receiver] = []

    async def make(plan: Plan | None = None) -> Receiver:
        receiver = Receiver() if plan is None else Receiver(plan=plan)
        started.append(await receiver.start())
        return receiver

    yield make
    for receiver in started:
        await receiver.stop()


# -- dispatchers


class Subscriptions(dict[str, dict[str, Any]]):
    """The subscription store: ``get`` is what the dispatcher calls (here a coroutine)."""

    async def fetch(self, subscription_id: str) -> dict[str, Any] | None:
        await asyncio.sleep(0)
        return self.get(subscription_id)

    def webhook(self, subscription_id: str, url: str, **channel: Any) -> dict[str, Any]:
        sub = {
            "id": subscription_id,
            "origin": "urn:ocn:polkadot:1000",
            "destinations": ["urn:ocn:polkadot:2032"],
            "channels": [{"type": "webhook", "url": url, **channel}],
        }
        self[subscription_id] = sub
        return sub


@dataclass
class Env:
    client: Redis
    prefix: str
    subs: Subscriptions
    dispatchers: list[WebhookDispatcher]

    def dispatcher(self, **settings: Any) -> WebhookDispatcher:
        options: dict[str, Any] = {
            "schedule": FAST,
            "timeout": 2.0,
            "allow_private_targets": True,
            "poll_interval": 0.05,
        }
        options.update(settings)
        dispatcher = WebhookDispatcher(
            self.client, self.prefix, WebhookSettings(**options), get_subscription=self.subs.fetch
        )
        self.dispatchers.append(dispatcher)
        return dispatcher

    async def started(self, **settings: Any) -> WebhookDispatcher:
        dispatcher = self.dispatcher(**settings)
        await dispatcher.start()
        return dispatcher


@pytest.fixture
async def env(redis_url: str, prefix: str) -> AsyncIterator[Env]:
    client = connect(redis_url, name="test-webhook")
    environment = Env(client, prefix, Subscriptions(), [])
    yield environment
    for dispatcher in environment.dispatchers:
        await dispatcher.stop()
    await client.aclose()


def notification(n: int = 1, kind: str = "xcm.sent", **extra: Any) -> dict[str, Any]:
    return {
        "id": f"{n:032x}:sent:0",
        "journeyId": f"{n:032x}",
        "type": kind,
        "subscriptionId": "sub-1",
        "legs": [{"from": "urn:ocn:polkadot:1000", "to": "urn:ocn:polkadot:2032", "type": "hrmp"}],
        "origin": {"chainId": "urn:ocn:polkadot:1000", "blockNumber": str(4833171 + n)},
        "destination": {"chainId": "urn:ocn:polkadot:2032"},
        **extra,
    }


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def settle(seconds: float = 0.6) -> None:
    """Leave time for anything that should not happen (a second POST, a retry)."""
    await asyncio.sleep(seconds)


# -- headers, signatures, bodies


async def test_signed_delivery_verifies_with_standard_webhooks(env: Env, receivers: Any) -> None:
    receiver = await receivers()
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    env.subs.webhook(
        "sub-1",
        receiver.url + "//",  # duplicate slashes are collapsed
        secret=secret,
        bearer="t0ken",
        contentType="application/vnd.xcm+json",
    )
    dispatcher = await env.started()
    note = notification(1)
    assert await dispatcher.enqueue("sub-1", 0, note)
    await until(lambda: len(receiver.acknowledged) == 1)

    got = receiver.requests[0]
    assert re.fullmatch(r"/hook/[0-9A-HJKMNP-TV-Z]{26}", got.path), got.path
    headers = {k.lower(): v for k, v in got.headers.items()}
    assert headers["content-type"] == "application/vnd.xcm+json"
    assert headers["authorization"] == "Bearer t0ken"
    assert headers["user-agent"].startswith("ocstream/")
    assert headers["webhook-id"] == got.delivery_id
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    # the receiver's side: the Standard Webhooks library accepts it and returns the payload
    assert Webhook(secret).verify(got.body, got.headers) == note
    assert orjson.loads(got.body) == note and b" " not in got.body  # compact JSON
    await settle(0.3)
    assert len(receiver.requests) == 1
    assert dispatcher.counters["delivered"] == 1
    assert (await dispatcher.gauges())["due"] == 0


async def test_plain_secret_is_signed_with_its_utf8_bytes(env: Env, receivers: Any) -> None:
    receiver = await receivers()
    env.subs.webhook("sub-1", receiver.url, secret="correct horse battery staple")
    dispatcher = await env.started()
    await dispatcher.enqueue("sub-1", 0, notification(2))
    await until(lambda: len(receiver.acknowledged) == 1)
    got = receiver.requests[0]
    # standardwebhooks takes the raw key as bytes
    Webhook(b"correct horse battery staple").verify(got.body, got.headers)
    # and the same check with the standard library only
    msg_id = got.headers["webhook-id"]
    timestamp = got.headers["webhook-timestamp"]
    signed = f"{msg_id}.{timestamp}.".encode() + got.body
    digest = hmac.new(b"correct horse battery staple", signed, hashlib.sha256).digest()
    expected = base64.b64encode(digest).decode()
    offered = [s.split(",", 1)[1] for s in got.headers["webhook-signature"].split()]
    assert any(hmac.compare_digest(expected, s) for s in offered)


async def test_no_signature_headers_without_a_secret(env: Env, receivers: Any) -> None:
    receiver = await receivers()
    env.subs.webhook("sub-1", receiver.url)
    dispatcher = await env.started()
    await dispatcher.enqueue("sub-1", 0, notification(3))
    await until(lambda: len(receiver.acknowledged) == 1)
    headers = {k.lower() for k in receiver.requests[0].headers}
    assert "webhook-signature" not in headers and "authorization" not in headers
    assert receiver.requests[0].headers["Content-Type"] == "application/json"


async def test_template_body(env: Env, receivers: Any) -> None:
    receiver = await receivers()
    template = (
        "{{type}}: {{origin.chainId}} -> {{destination.chainId}} "
        "{{#each legs}}[{{@index}} {{type}}]{{/each}}{{#if messageId}} topic{{/if}}"
    )
    env.subs.webhook("sub-1", receiver.url, template=template, contentType="text/plain")
    dispatcher = await env.started()
    await dispatcher.enqueue("sub-1", 0, notification(4))
    await until(lambda: len(receiver.acknowledged) == 1)
    got = receiver.requests[0]
    assert got.body == b"xcm.sent: urn:ocn:polkadot:1000 -> urn:ocn:polkadot:2032 [0 hrmp]"
    assert got.headers["Content-Type"] == "text/plain"


async def test_template_with_a_missing_property_is_a_dead_letter(env: Env, receivers: Any) -> None:
    receiver = await receivers()
    env.subs.webhook("sub-1", receiver.url, template="{{origin.nope}} happened")
    dispatcher = await env.started()
    await dispatcher.enqueue("sub-1", 0, notification(5))
    await until(lambda: dispatcher.counters["dead_letters"] == 1)
    [dead] = await dispatcher.dead_letters()
    assert dead["reason"].startswith("template: ")
    assert '"nope" not defined' in dead["reason"]
    assert dead["attempts"] == 1
    assert receiver.requests == []
    assert dispatcher.counters["template_errors"] == 1
    assert dispatcher.counters["retries_scheduled"] == 0


async def test_a_header_that_cannot_be_sent_is_a_dead_letter(env: Env, receivers: Any) -> None:
    # A bearer with a line break (the API refuses it; a stored one must not inject a header).
    receiver = await receivers()
    env.subs.webhook("sub-1", receiver.url, bearer="token\r\nX-Injected: 1")
    dispatcher = await env.started()
    await dispatcher.enqueue("sub-1", 0, notification(7))
    await until(lambda: dispatcher.counters["dead_letters"] == 1)
    [dead] = await dispatcher.dead_letters()
    assert dead["reason"] == "header authorization has a CR, LF or NUL in its value"
    assert dead["attempts"] == 1 and receiver.requests == []


async def test_a_template_that_recurses_too_deeply_is_a_dead_letter_at_once(
    env: Env, receivers: Any
) -> None:
    # A subscription stored before templates were compiled at POST (the API refuses this one
    # now): 500 chained {{else if}} made the compiler recurse 2,500 frames deep.
    receiver = await receivers()
    chain = "{{#if type}}x" + "{{else if type}}y" * 500 + "{{/if}}"
    env.subs.webhook("sub-1", receiver.url, template=chain)
    dispatcher = await env.started()
    await dispatcher.enqueue("sub-1", 0, notification(6))
    await until(lambda: dispatcher.counters["dead_letters"] == 1)
    [dead] = await dispatcher.dead_letters()
    assert dead["reason"].startswith("template: blocks nested deeper than 64 levels")
    assert dead["attempts"] == 1 and receiver.requests == []
    assert dispatcher.counters["template_errors"] == 1
    await settle(0.3)
    assert (await dispatcher.gauges())["due"] == 0  # nothing left to retry


async def test_an_unexpected_failure_is_retried_on_the_schedule_then_dead_lettered(
    env: Env, receivers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = await receivers()
    calls = 0

    def deep(n: int) -> int:
        return deep(n + 1)

    class Channel(dict[str, Any]):
        """A channel whose bearer lookup hits a bug (a RecursionError) every time."""

        def get(self, key: str, default: Any = None) -> Any:
            nonlocal calls
            if key == "bearer":
                calls += 1
                deep(0)
            return super().get(key, default)

    async def broken(subscription_id: str) -> dict[str, Any] | None:
        sub = env.subs.webhook(subscription_id, receiver.url)
        sub["channels"] = [Channel(sub["channels"][0])]
        return sub

    dispatcher = WebhookDispatcher(
        env.client,
        env.prefix,
        WebhookSettings(schedule=FAST, allow_private_targets=True, poll_interval=0.05),
        get_subscription=broken,
    )
    env.dispatchers.append(dispatcher)
    await dispatcher.start()
    await dispatcher.enqueue("sub-1", 0, notification(7))
    await until(lambda: dispatcher.counters["dead_letters"] == 1)
    [dead] = await dispatcher.dead_letters()
    assert dead["attempts"] == len(FAST) == calls
    assert dead["reason"].startswith("gave up after 3 attempts: internal error: RecursionError")
    assert receiver.requests == []
    # Each failure is logged with its innermost frames only, not thousands of lines.
    failures = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert len(failures) == 3
    assert all(len(r.getMessage().splitlines()) < 60 for r in failures)


# -- retries


async def test_500_then_200_is_delivered_exactly_once(env: Env, receivers: Any) -> None:
    receiver = await receivers(lambda n, req: 500 if n == 1 else 200)
    env.subs.webhook("sub-1", receiver.url)
    dispatcher = await env.started()
    await dispatcher.enqueue("sub-1", 0, notification(6))
    await until(lambda: len(receiver.acknowledged) == 1)
    await settle()
    assert [r.status for r in receiver.requests] == [500, 200]
    first, second = receiver.requests
    assert first.path == second.path  # the deliveryId stays the same across retries
    assert second.at - first.at >= 0.2 * 0.9  # the schedule's second step, minus jitter
    counters = dispatcher.counters
    assert (counters["failed_attempts"], counters["retries_scheduled"]) == (1, 1)
    assert counters["delivered"] == 1 and counters["dead_letters"] == 0


async def test_a_name_the_connection_cannot_resolve_is_a_failed_attempt(env: Env) -> None:
    # With private targets allowed the check resolves nothing; the connection's own lookup
    # fails, and that is a failed attempt like a refused connection, not an internal error.
    env.subs.webhook("sub-1", "http://no-such-host.invalid/hook")
    dispatcher = await env.started(schedule=(0,))
    await dispatcher.enqueue("sub-1", 0, notification(9))
    await until(lambda: dispatcher.counters["dead_letters"] == 1)
    [dead] = await dispatcher.dead_letters()
    assert dead["reason"].startswith(
        "gave up after 1 attempts: TargetUnresolved: no-such-host.invalid does not resolve"
    )
    assert dispatcher.counters["failed_attempts"] == 1


async def test_a_slow_receiver_times_out_and_the_retry_delivers(env: Env, receivers: Any) -> None:
    receiver = await receivers(lambda n, req: (200, 1.5) if n == 1 else 200)
    env.subs.webhook("sub-1", receiver.url)
    dispatcher = await env.started(timeout=0.3)
    await dispatcher.enqueue("sub-1", 0, notification(7))
    await until(lambda: dispatcher.counters["delivered"] == 1)
    assert dispatcher.counters["failed_attempts"] == 1
    assert len(receiver.requests) == 2
    assert receiver.requests[0].path == receiver.requests[1].path


async def test_exhausted_retries_make_a_dead_letter_and_replay_delivers(
    env: Env, receivers: Any
) -> None:
    healthy = False
    receiver = await receivers(lambda n, req: 200 if healthy else 503)
    env.subs.webhook("sub-1", receiver.url)
    dispatcher = await env.started()
    note = notification(8)
    await dispatcher.enqueue("sub-1", 0, note)
    await until(lambda: dispatcher.counters["dead_letters"] == 1)
    assert len(receiver.requests) == 3  # len(FAST) attempts
    [dead] = await dispatcher.dead_letters()
    assert dead["attempts"] == 3
    assert dead["lastStatus"] == 503
    assert dead["lastError"] == "HTTP 503: nope"
    assert dead["reason"] == "gave up after 3 attempts: HTTP 503: nope"
    assert dead["notification"] == note and dead["notificationId"] == note["id"]
    assert (dead["subscription"], dead["channel"]) == ("sub-1", 0)
    assert dead["lastUrl"] == f"{receiver.url}/{dead['deliveryId']}"
    assert dead["createdAt"] <= dead["lastAttemptAt"] <= dead["deadAt"]
    assert (await dispatcher.gauges())["dead"] == 1

    healthy = True
    assert await dispatcher.replay(dead["deliveryId"])
    await until(lambda: len(receiver.acknowledged) == 1)
    assert receiver.acknowledged[0].delivery_id == dead["deliveryId"]
    assert await dispatcher.dead_letters() == []
    assert not await dispatcher.replay(dead["deliveryId"])  # no longer a dead letter
    assert dispatcher.counters["replayed"] == 1


async def test_dead_letters_are_listed_newest_first_and_paged(env: Env, receivers: Any) -> None:
    receiver = await receivers(lambda n, req: 500)
    env.subs.webhook("sub-1", receiver.url)
    dispatcher = await env.started(schedule=(0,))
    for n in range(5):
        await dispatcher.enqueue("sub-1", 0, notification(100 + n))
        await until(
            cast(Callable[[], bool], lambda n=n: dispatcher.counters["dead_letters"] == n + 1)
        )
    listed = await dispatcher.dead_letters(limit=10)
    assert [d["notificationId"] for d in listed] == [
        notification(100 + n)["id"] for n in reversed(range(5))
    ]
    page = await dispatcher.dead_letters(limit=2, offset=1)
    assert [d["deliveryId"] for d in page] == [d["deliveryId"] for d in listed[1:3]]
    assert await dispatcher.dead_letters(limit=0) == []


async def test_dead_letters_beyond_the_maximum_are_dropped(env: Env, receivers: Any) -> None:
    receiver = await receivers(lambda n, req: 500)
    env.subs.webhook("sub-1", receiver.url)
    dispatcher = await env.started(schedule=(0,), dead_letter_max=2)
    for n in range(4):
        await dispatcher.enqueue("sub-1", 0, notification(200 + n))
        await until(
            cast(Callable[[], bool], lambda n=n: dispatcher.counters["dead_letters"] == n + 1)
        )
    listed = await dispatcher.dead_letters()
    assert [d["notificationId"] for d in listed] == [
        notification(203)["id"],
        notification(202)["id"],
    ]
    keys = [k async for k in env.client.scan_iter(match=f"{env.prefix}wh:d:*")]
    assert len(keys) == 2  # the dropped dead letters' records are gone too


# -- 410 Gone


async def test_410_disables_the_channel_and_later_notifications_are_dropped(
    env: Env, receivers: Any
) -> None:
    gone = {notification(11)["id"]}
    receiver = await receivers(lambda n, req: 410 if req.notification_id in gone else 500)
    env.subs.webhook("sub-1", receiver.url)
    dispatcher = await env.started(schedule=(0, 0.6, 0.6))
    # a delivery waiting for its retry when the channel gets disabled…
    await dispatcher.enqueue("sub-1", 0, notification(10))
    await until(lambda: len(receiver.requests) == 1)
    # …and the 410 that disables it
    await dispatcher.enqueue("sub-1", 0, notification(11))
    await until(lambda: dispatcher.counters["disabled"] == 1)
    state = await dispatcher.disabled("sub-1", 0)
    assert state is not None and state["reason"].startswith("HTTP 410")
    pairs = [("sub-1", 0), ("sub-1", 1), ("sub-2", 0)]
    assert await dispatcher.disabled_channels(pairs) == {("sub-1", 0)}
    [dead] = await dispatcher.dead_letters()
    assert dead["lastStatus"] == 410 and "channel disabled" in dead["reason"]

    assert not await dispatcher.enqueue("sub-1", 0, notification(12))  # dropped at once
    await until(lambda: dispatcher.counters["dropped_disabled"] == 2)  # 12, then 10's retry
    await settle()
    assert [r.notification_id for r in receiver.requests] == [
        notification(10)["id"],
        notification(11)["id"],
    ]
    assert (await dispatcher.gauges())["due"] == 0

    # enabling the channel again: new notifications are delivered
    receiver.plan = lambda n, req: 200
    assert await dispatcher.enable("sub-1", 0)
    assert not await dispatcher.enable("sub-1", 0)
    assert await dispatcher.disabled("sub-1", 0) is None
    assert await dispatcher.disabled_channels(pairs) == set()
    assert await dispatcher.enqueue("sub-1", 0, notification(13))
    await until(lambda: len(receiver.acknowledged) == 1)


# -- at most once, restarts, several workers


async def test_the_same_notification_enqueued_twice_is_delivered_once(
    env: Env, receivers: Any
) -> None:
    receiver = await receivers()
    env.subs.webhook("sub-1", receiver.url)
    dispatcher = await env.started()
    other = env.dispatcher()  # another worker re-emitting it after a crash
    note = notification(20)
    assert await dispatcher.enqueue("sub-1", 0, note)
    assert not await dispatcher.enqueue("sub-1", 0, note)
    assert not await other.enqueue("sub-1", 0, dict(note))
    await until(lambda: len(receiver.acknowledged) == 1)
    await settle()
    assert len(receiver.requests) == 1
    assert dispatcher.counters["dropped_duplicates"] == 1
    assert other.counters["dropped_duplicates"] == 1
    ttl = await env.client.ttl(dispatcher.sent_key("sub-1", 0, note["id"]))
    assert 6 * 86400 < ttl <= 7 * 86400
    # each channel (and each subscription) gets it once
    env.subs["sub-1"]["channels"].append({"type": "webhook", "url": receiver.url})
    assert await dispatcher.enqueue("sub-1", 1, note)
    await until(lambda: len(receiver.acknowledged) == 2)


async def test_a_new_dispatcher_resumes_a_delivery_stopped_mid_retry(
    env: Env, receivers: Any
) -> None:
    receiver = await receivers(lambda n, req: 500 if n == 1 else 200)
    env.subs.webhook("sub-1", receiver.url)
    first = await env.started(schedule=(0, 0.5, 0.5))
    await first.enqueue("sub-1", 0, notification(30))
    await until(lambda: first.counters["retries_scheduled"] == 1)
    await first.stop()
    assert (await first.gauges())["due"] == 1  # waiting in Redis for its second attempt

    second = await env.started(schedule=(0, 0.5, 0.5))  # a new instance, same Redis and prefix
    await until(lambda: second.counters["delivered"] == 1)
    await settle()
    assert [r.status for r in receiver.requests] == [500, 200]
    assert len({r.path for r in receiver.requests}) == 1
    assert first.counters["delivered"] == 0


async def test_stopping_during_a_post_hands_the_delivery_back(env: Env, receivers: Any) -> None:
    receiver = await receivers(lambda n, req: (200, 5.0) if n == 1 else 200)
    env.subs.webhook("sub-1", receiver.url)
    first = await env.started(timeout=10.0, stop_grace=0.2)
    await first.enqueue("sub-1", 0, notification(31))
    await until(lambda: len(receiver.requests) == 1)
    await first.stop()  # cancels the POST and puts the delivery back to due at once
    gauges = await first.gauges()
    assert (gauges["due_now"], gauges["in_flight"]) == (1, 0)
    second = await env.started()
    await until(lambda: second.counters["delivered"] == 1)
    assert len(receiver.requests) == 2


@pytest.mark.parametrize("taken_by", ["claim", "hand-off"])
async def test_a_crashed_workers_lease_expires_and_another_delivers(
    env: Env, receivers: Any, taken_by: str
) -> None:
    """A worker dies holding a lease, whether its loop claimed the delivery or it was handed
    the delivery as it enqueued it: once the lease expires another worker delivers it, and the
    dead worker's late result is refused."""
    receiver = await receivers()
    env.subs.webhook("sub-1", receiver.url)
    held: list[tuple[dict[str, str], str]] = []
    if taken_by == "claim":
        crashed = env.dispatcher(lease=0.3)
        await crashed.enqueue("sub-1", 0, notification(32))
        claimed, _ = await crashed._claim(10)  # claimed, then the worker "dies" without a result
        held.extend(claimed)
    else:
        crashed = await env.started(lease=0.3)
        crashed._start = lambda record, token: held.append((record, token))  # type: ignore[method-assign]  # dies before the attempt
        assert await crashed.enqueue("sub-1", 0, notification(32))
        assert crashed.counters["handed_off"] == 1
        assert crashed._loop_task is not None
        crashed._loop_task.cancel()  # the rest of the worker dies too: no more claims
    assert len(held) == 1
    assert (await crashed.gauges())["in_flight"] == 1
    survivor = await env.started()
    await settle(0.2)
    assert receiver.requests == []  # the lease still holds
    await until(lambda: survivor.counters["delivered"] == 1)
    await settle(0.3)
    assert len(receiver.requests) == 1
    # the crashed worker's late result is refused: the lease is no longer its own
    record, token = held[0]
    await crashed._process(record, token)
    assert crashed.counters["lease_lost"] == 1


async def test_two_dispatchers_post_each_delivery_once(env: Env, receivers: Any) -> None:
    receiver = await receivers(lambda n, req: (200, 0.02))
    env.subs.webhook("sub-1", receiver.url)
    a = await env.started(max_concurrency=4)
    b = await env.started(max_concurrency=4)
    for n in range(40):
        await (a if n % 2 else b).enqueue("sub-1", 0, notification(300 + n))
    await until(lambda: a.counters["delivered"] + b.counters["delivered"] == 40)
    await settle(0.3)
    paths = [r.path for r in receiver.requests]
    assert len(paths) == 40 and len(set(paths)) == 40
    assert {r.notification_id for r in receiver.requests} == {
        notification(300 + n)["id"] for n in range(40)
    }
    assert a.counters["delivered"] > 0 and b.counters["delivered"] > 0


# -- hand-off: what a running dispatcher enqueues is leased to it at once


async def test_a_running_dispatcher_attempts_what_it_enqueues_up_to_its_room(
    env: Env, receivers: Any
) -> None:
    receiver = await receivers(lambda n, req: (200, 0.5))
    env.subs.webhook("sub-1", receiver.url)
    dispatcher = await env.started(max_concurrency=2)
    results = await dispatcher.enqueue_many([("sub-1", 0, notification(400 + n)) for n in range(3)])
    assert results == [True, True, True]
    assert (dispatcher.counters["enqueued"], dispatcher.counters["handed_off"]) == (3, 2)
    # two leased to this dispatcher as they were stored, the third waits in due for room
    leases = cast(dict[bytes, bytes], await env.client.hgetall(f"{env.prefix}wh:lease"))
    assert len(leases) == 2 and all(t.decode().startswith(dispatcher.name) for t in leases.values())
    gauges = await dispatcher.gauges()
    assert (gauges["in_flight"], gauges["due"], gauges["active"]) == (2, 1, 2)
    await until(lambda: dispatcher.counters["delivered"] == 3)
    await settle(0.3)
    assert sorted(r.notification_id or "" for r in receiver.requests) == sorted(
        notification(400 + n)["id"] for n in range(3)
    )
    assert len({r.path for r in receiver.requests}) == 3
    gauges = await dispatcher.gauges()
    assert (gauges["in_flight"], gauges["due"]) == (0, 0)


async def test_no_hand_off_overtakes_what_waits_in_due(env: Env, receivers: Any) -> None:
    """A dispatcher whose last claim left deliveries due sends what it enqueues to ``due``
    behind them, room or not, until a claim finds nothing more due: new deliveries do not keep
    overtaking a backlog (retries, overflow, another worker's)."""
    receiver = await receivers(lambda n, req: (200, 0.3))
    env.subs.webhook("sub-1", receiver.url)
    api = env.dispatcher()  # schedules, never runs the loop
    await api.enqueue_many([("sub-1", 0, notification(450 + n)) for n in range(2)])
    dispatcher = await env.started(max_concurrency=1, poll_interval=5.0)
    await until(lambda: len(receiver.requests) == 1)  # its first claim took one of two
    dispatcher.settings.max_concurrency = 3  # room now, before the loop claims again
    assert await dispatcher.enqueue("sub-1", 0, notification(452))
    assert dispatcher.counters["handed_off"] == 0  # behind the one still due
    await until(lambda: dispatcher.counters["delivered"] == 3)
    order = [r.notification_id for r in receiver.requests]
    assert order == [notification(450 + n)["id"] for n in range(3)]
    # the backlog claimed, a new delivery is handed off again
    assert await dispatcher.enqueue("sub-1", 0, notification(453))
    assert dispatcher.counters["handed_off"] == 1
    await until(lambda: dispatcher.counters["delivered"] == 4)


async def test_a_handed_off_delivery_is_signed_and_retried_like_a_claimed_one(
    env: Env, receivers: Any
) -> None:
    receiver = await receivers(lambda n, req: 503 if n == 1 else 200)
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    env.subs.webhook("sub-1", receiver.url, secret=secret)
    dispatcher = await env.started()
    assert await dispatcher.enqueue("sub-1", 0, notification(410))
    assert dispatcher.counters["handed_off"] == 1
    await until(lambda: dispatcher.counters["delivered"] == 1)
    assert [r.status for r in receiver.requests] == [503, 200]
    assert receiver.requests[0].path == receiver.requests[1].path  # the same delivery id
    for request in receiver.requests:
        Webhook(secret).verify(request.body, request.headers)
    # the hash keeps the notification the hand-off attempted first
    assert receiver.requests[1].body == receiver.requests[0].body
    assert receiver.notifications()[0]["id"] == notification(410)["id"]


async def test_a_dispatcher_that_is_not_running_schedules_what_it_enqueues(
    env: Env, receivers: Any
) -> None:
    receiver = await receivers()
    env.subs.webhook("sub-1", receiver.url)
    api = env.dispatcher()  # an API process: enqueues, never runs the loop
    assert await api.enqueue("sub-1", 0, notification(430))
    assert api.counters["handed_off"] == 0
    assert (await api.gauges())["due_now"] == 1
    worker = await env.started()
    await until(lambda: worker.counters["delivered"] == 1)
    assert worker.counters["handed_off"] == 0


async def test_a_dispatcher_stopped_before_its_enqueue_replies_hands_them_back(
    env: Env, receivers: Any
) -> None:
    receiver = await receivers()
    env.subs.webhook("sub-1", receiver.url)
    first = await env.started()
    enqueued = asyncio.ensure_future(first.enqueue("sub-1", 0, notification(440)))
    await asyncio.sleep(0)  # one loop turn: the enqueue is queued, its reply not in yet
    assert first._reserved == 1  # ... and with a lease: a hand-off waiting for its reply
    await first.stop()
    assert await enqueued
    assert first.counters["handed_off"] == 0 and receiver.requests == []
    gauges = await first.gauges()
    assert (gauges["due_now"], gauges["in_flight"]) == (1, 0)
    second = await env.started()
    await until(lambda: second.counters["delivered"] == 1)
    assert len(receiver.requests) == 1


# -- SSRF guard


async def test_loopback_and_private_targets_are_refused(env: Env, receivers: Any) -> None:
    receiver = await receivers()
    env.subs.webhook("sub-lo", receiver.url)  # really listening on 127.0.0.1
    env.subs.webhook("sub-10", "http://10.0.0.1/hook")
    env.subs.webhook("sub-ftp", "ftp://example.org/hook")
    dispatcher = await env.started(allow_private_targets=False)
    await dispatcher.enqueue("sub-lo", 0, notification(40))
    await dispatcher.enqueue("sub-10", 0, notification(41))
    await dispatcher.enqueue("sub-ftp", 0, notification(42))
    await until(lambda: dispatcher.counters["dead_letters"] == 3)
    reasons = {d["subscription"]: d["reason"] for d in await dispatcher.dead_letters()}
    assert reasons == {
        "sub-lo": "target refused: 127.0.0.1 is a loopback address",
        "sub-10": "target refused: 10.0.0.1 is a private address",
        "sub-ftp": "target refused: scheme 'ftp' is not http or https",
    }
    await settle(0.3)
    assert receiver.requests == []
    assert dispatcher.counters["refused_targets"] == 3
    assert dispatcher.counters["retries_scheduled"] == 0


# -- the subscription is re-read at each attempt


async def test_a_deleted_subscription_drops_the_delivery(env: Env, receivers: Any) -> None:
    receiver = await receivers(lambda n, req: 500)
    env.subs.webhook("sub-1", receiver.url)
    dispatcher = await env.started(schedule=(0, 0.3, 0.3))
    await dispatcher.enqueue("sub-1", 0, notification(50))
    await until(lambda: len(receiver.requests) == 1)
    del env.subs["sub-1"]  # deleted while the delivery waits for its retry
    await until(lambda: dispatcher.counters["dropped_deleted"] == 1)
    # never known, or its channel gone, or no longer a webhook: dropped too
    await dispatcher.enqueue("nobody", 0, notification(51))
    env.subs.webhook("sub-2", receiver.url)
    await dispatcher.enqueue("sub-2", 3, notification(52))
    env.subs["sub-3"] = {"id": "sub-3", "channels": [{"type": "log"}]}
    await dispatcher.enqueue("sub-3", 0, notification(53))
    await until(lambda: dispatcher.counters["dropped_deleted"] == 4)
    await settle(0.3)
    assert len(receiver.requests) == 1
    assert await dispatcher.dead_letters() == []
    gauges = await dispatcher.gauges()
    assert (gauges["due"], gauges["in_flight"]) == (0, 0)
    assert [k async for k in env.client.scan_iter(match=f"{env.prefix}wh:d:*")] == []


async def test_a_changed_url_is_followed_and_events_are_rechecked(env: Env, receivers: Any) -> None:
    old = await receivers(lambda n, req: 500)
    new = await receivers()
    env.subs.webhook("sub-1", old.url)
    dispatcher = await env.started(schedule=(0, 0.3, 0.3))
    await dispatcher.enqueue("sub-1", 0, notification(60))
    await until(lambda: len(old.requests) == 1)
    env.subs["sub-1"]["channels"][0]["url"] = new.url  # PATCHed while waiting
    await until(lambda: len(new.acknowledged) == 1)
    assert new.requests[0].delivery_id == old.requests[0].delivery_id

    env.subs["sub-1"]["channels"][0]["events"] = ["xcm.received"]
    await dispatcher.enqueue("sub-1", 0, notification(61, kind="xcm.sent"))
    await dispatcher.enqueue("sub-1", 0, notification(62, kind="xcm.received"))
    await until(lambda: len(new.acknowledged) == 2)
    await until(lambda: dispatcher.counters["dropped_filtered"] == 1)
    assert new.acknowledged[1].notification_id == notification(62)["id"]


@pytest.mark.parametrize("store", ["down", "hanging"])
async def test_a_failing_subscription_store_defers_without_using_an_attempt(
    env: Env, receivers: Any, store: str
) -> None:
    """A store that raises, or that does not answer within ``timeout`` (a getter that waits
    gets a timer), defers the delivery: not lost, no attempt used."""
    receiver = await receivers()
    env.subs.webhook("sub-1", receiver.url)
    calls = 0

    async def flaky(subscription_id: str) -> dict[str, Any] | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            if store == "down":
                raise ConnectionError("store down")
            await asyncio.sleep(30)
        return env.subs.get(subscription_id)

    dispatcher = WebhookDispatcher(
        env.client,
        env.prefix,
        WebhookSettings(schedule=(0,), timeout=0.3, allow_private_targets=True, poll_interval=0.05),
        get_subscription=flaky,
    )
    env.dispatchers.append(dispatcher)
    await dispatcher.start()
    started = time.monotonic()
    await dispatcher.enqueue("sub-1", 0, notification(70))
    await until(lambda: calls == 1 and not dispatcher._tasks, timeout=5)
    assert time.monotonic() - started < 5  # not the hanging getter's 30 s
    (due,) = await _due_ids(env)  # deferred by 5 s; bring it forward instead of waiting
    error = await env.client.hget(f"{env.prefix}wh:d:{due}", "lastError")
    assert error is not None and b"reading the subscription failed" in error
    assert dispatcher.counters["failed_attempts"] == 0
    await env.client.zadd(f"{env.prefix}wh:due", {due: 0})
    await until(lambda: dispatcher.counters["delivered"] == 1)
    assert dispatcher.counters["dead_letters"] == 0  # one-step schedule, yet not exhausted


async def test_an_attempt_sets_no_timer_where_nothing_waits(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that answers at once (a worker's live view) and a target given as an address
    need no timeout: the attempt gets as far as the target check without setting a timer."""
    env.subs.webhook("sub-1", "http://127.0.0.1:9/never")
    dispatcher = env.dispatcher(allow_private_targets=False)
    dispatcher.get_subscription = env.subs.get  # a plain function

    def no_timer(delay: float | None) -> Any:
        raise AssertionError("a timer was set")

    record = {"deliveryId": "01J0000000000000000000TEST", "subscription": "sub-1", "channel": "0"}
    record |= {"type": "xcm.sent", "notification": orjson.dumps(notification(72)).decode()}
    monkeypatch.setattr(asyncio, "timeout", no_timer)
    outcome = await dispatcher._attempt(record)
    monkeypatch.undo()
    assert (outcome.action, outcome.counter) == ("dead", "refused_targets")  # 127.0.0.1, checked


async def _due_ids(env: Env) -> list[str]:
    for _ in range(100):
        ids = cast(list[bytes], await env.client.zrange(f"{env.prefix}wh:due", 0, -1))
        if ids:
            return [i.decode() for i in ids]
        await asyncio.sleep(0.02)
    raise AssertionError("nothing due")


async def test_counters_and_gauges(env: Env, receivers: Any) -> None:
    dispatcher = env.dispatcher()
    assert set(dispatcher.counters) == set(COUNTERS)
    assert all(v == 0 for v in dispatcher.counters.values())
    assert await dispatcher.gauges() == {
        "due": 0,
        "due_now": 0,
        "in_flight": 0,
        "dead": 0,
        "active": 0,
    }
    env.subs.webhook("sub-1", "http://127.0.0.1:9/never")
    await dispatcher.enqueue("sub-1", 0, notification(80))
    gauges = await dispatcher.gauges()
    assert (gauges["due"], gauges["due_now"]) == (1, 1)
    assert dispatcher.counters["enqueued"] == 1
    with pytest.raises(ValueError):
        await dispatcher.enqueue("sub-1", 0, {"type": "xcm.sent"})  # no id


# -- pieces


def test_delivery_url() -> None:
    assert delivery_url("https://x.org/hook", "ID") == "https://x.org/hook/ID"
    assert delivery_url("https://x.org/hook/", "ID") == "https://x.org/hook/ID"
    assert delivery_url("https://x.org//a//b///", "ID") == "https://x.org/a/b/ID"
    assert delivery_url("https://x.org", "ID") == "https://x.org/ID"
    assert delivery_url("http://x.org:8080/h?k=v&a=%20", "ID") == "http://x.org:8080/h/ID?k=v&a=%20"
    assert delivery_url("https://x.org/p%2Fq", "ID") == "https://x.org/p%2Fq/ID"


def test_delivery_ids_are_sortable_ulids() -> None:
    ids = DeliveryIds()
    now = int(time.time() * 1000)
    made = [ids.new(now) for _ in range(1000)] + [ids.new(now + 1), ids.new(now - 5)]
    assert made == sorted(made) and len(set(made)) == len(made)
    assert all(re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", i) for i in made)
    assert DeliveryIds.timestamp_ms(made[0]) == now
    assert DeliveryIds.timestamp_ms(made[-1]) == now + 1  # never goes back in time


def _crockford_digits(value: int) -> str:
    """26 Crockford base32 digits of a 130-bit value, five bits at a time (the reference)."""
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    return "".join(alphabet[(value >> (5 * (25 - i))) & 31] for i in range(26))


@given(ms=st.integers(0, (1 << 48) - 1), rnd=st.integers(0, (1 << 79) - 1))
def test_delivery_ids_encode_time_and_random_bits_digit_by_digit(ms: int, rnd: int) -> None:
    ids = DeliveryIds()
    ids._last_ms, ids._last_random = ms, rnd - 1  # the next id of this ms takes rnd
    made = ids.new(ms)
    assert made == _crockford_digits((ms << 80) | rnd)
    assert DeliveryIds.timestamp_ms(made) == ms


def test_signing_keys_and_signatures() -> None:
    raw = os.urandom(24)
    assert signing_key("whsec_" + base64.b64encode(raw).decode()) == raw
    assert signing_key("whsec_" + base64.b64encode(raw).decode().rstrip("=")) == raw
    assert signing_key("plain") == b"plain"
    for bad in ("whsec_!!!", "whsec_", ""):
        with pytest.raises(ValueError):
            signing_key(bad)
    signature = sign(b"k", "msg_1", 1700000000, b'{"a":1}')
    digest = hmac.new(b"k", b'msg_1.1700000000.{"a":1}', hashlib.sha256).digest()
    assert signature == "v1," + base64.b64encode(digest).decode()


def test_settings_validation() -> None:
    assert len(WebhookSettings().schedule) == 8
    assert WebhookSettings().user_agent.startswith("ocstream/")
    assert WebhookSettings(timeout=10).lease_seconds == 60
    for bad in ({"schedule": ()}, {"schedule": (0, -1)}, {"jitter": 1.5}, {"timeout": 0}):
        with pytest.raises(ValueError):
            WebhookSettings(**bad)
    settings = WebhookSettings(schedule=(0, 100), jitter=0.1)
    delays = [settings.delay(1) for _ in range(200)]
    assert all(90 <= d <= 110 for d in delays) and len(set(delays)) > 1
    assert settings.delay(0) == 0


# -- per-subscription status (the dashboard's webhook panel)


async def test_subscription_status_counts_delivered_retrying_and_dead(
    env: Env, receivers: Any
) -> None:
    ok = await receivers(lambda n, req: 200)
    flaky_healthy = False
    flaky = await receivers(lambda n, req: 200 if flaky_healthy else 503)
    broken = await receivers(lambda n, req: 500)
    env.subs.webhook("good", ok.url)
    env.subs.webhook("flaky", flaky.url)
    env.subs.webhook("broken", broken.url)
    # The flaky receiver's retry comes 30 s later: the delivery stays "retrying" meanwhile.
    dispatcher = await env.started(schedule=(0, 30), dead_letter_max=2)
    for n in range(3):
        await dispatcher.enqueue("good", 0, notification(300 + n))
    await dispatcher.enqueue("flaky", 0, notification(310))
    for n in range(3):
        await dispatcher.enqueue("broken", 0, notification(320 + n))
    await until(
        lambda: (
            dispatcher.counters["delivered"] == 3 and dispatcher.counters["retries_scheduled"] == 4
        )
    )
    status = await dispatcher.subscription_status()
    assert status["good"] == {"delivered": 3, "failed": 0, "retrying": 0, "dead": 0}
    assert status["flaky"] == {"delivered": 0, "failed": 1, "retrying": 1, "dead": 0}
    assert status["broken"]["retrying"] == 3 and status["broken"]["failed"] == 3
    await dispatcher.stop()

    # A second dispatcher with one attempt only: the retries due now die at their next attempt.
    flaky_healthy = True
    due = cast(list[bytes], await env.client.zrange(f"{env.prefix}wh:due", 0, -1))
    await env.client.zadd(f"{env.prefix}wh:due", {m: 0 for m in due})
    dispatcher2 = await env.started(schedule=(0, 0), dead_letter_max=2)
    await until(lambda: dispatcher2.counters["dead_letters"] == 3 and len(flaky.acknowledged) == 1)
    status = await dispatcher2.subscription_status()
    assert status["flaky"] == {"delivered": 1, "failed": 1, "retrying": 0, "dead": 0}
    # Three dead letters, two kept (dead_letter_max): the figure follows the set.
    assert status["broken"] == {"delivered": 0, "failed": 6, "retrying": 0, "dead": 2}
    [newest, _] = await dispatcher2.dead_letters()
    assert await dispatcher2.replay(newest["deliveryId"])
    status = await dispatcher2.subscription_status()
    assert status["broken"]["dead"] == 1
