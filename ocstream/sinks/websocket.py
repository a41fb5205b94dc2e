"""The websocket sink: ``/ws/subs`` (ephemeral subscriptions) and ``/ws/subs/{id}`` (attach).

The protocol is XCM.md §12. A notification for a subscription may be matched by any worker, while
its sockets are connected to one worker; the hub therefore fans out through Redis pub/sub::

    hub = WebsocketHub(client, "ocs:", validate=..., get_subscription=...,
                       register_ephemeral=..., unregister_ephemeral=...)
    hub.mount(web_app)                           # routes + start/stop with the aiohttp app
    await hub.publish(subscription_id, payload)  # on any worker: PUBLISH ocs:ws:{id} <json>

Every hub holds one pattern subscription, ``{prefix}ws:*``, and forwards each message, as one text
frame, to the sockets attached to that subscription on this worker. Pub/sub is at-most-once: a
notification published while a worker is disconnected from Redis is not replayed to its sockets
(webhooks are the durable channel). The subscription is re-established with jittered backoff
after Redis restarts.

The callbacks keep this module free of the subscription models; they take and give plain dicts:

* ``validate(fields) -> subscription``: the one validation path of §11.2. On failure it raises an
  exception that carries the §11.3 error object: an exception with a ``body`` mapping (such as
  :class:`SubscriptionRejected`), an exception whose first argument is that mapping, or a
  pydantic ``ValidationError`` (turned into a 400 with ``details``). Any other exception becomes a
  500 error object.
* ``get_subscription(id) -> subscription | None``: a persistent subscription, for ``/ws/subs/{id}``.
* ``register_ephemeral(subscription)`` / ``unregister_ephemeral(id)``: make the matching side
  deliver to (or stop delivering to) an ephemeral subscription. A failing register closes the
  socket with 1013 "server too busy", after sending the error object.

Access: with ``read_tokens``, both routes need one of them, as ``Authorization: Bearer <token>``
or, for browsers (which cannot set headers on a websocket), ``?access_token=<token>``; without
it the handshake is answered 401 (JSON). One client (its verified token, else its address) may
hold at most ``max_per_client`` sockets on a worker; the next one gets a 429 error object and
is closed with 1013 "too many sockets for this client".

Error objects sent on the socket never carry exception texts: an unexpected failure is a 500
"Internal server error" (503 when Redis failed), the details go to the log.

Close codes: 1013 "server too busy" (more than ``max_clients`` sockets, or registering failed),
1007 "subscription not found", 1007 "websocket channel not enabled in subscription",
1001 "server shutdown" (:meth:`WebsocketHub.stop`), 1000 "subscription deleted"
(:meth:`WebsocketHub.close_subscription`), 1013 "client too slow" (a client that does not read
and lets ``queue_size`` frames pile up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import orjson
import pydantic
from aiohttp import WSMsgType, web
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from ..guard import bearer_token, client_key, json_depth_exceeds, json_error, token_matches
from ..transport.client import TRANSIENT_ERRORS, Backoff

logger = logging.getLogger(__name__)

JsonObject = dict[str, Any]
Validate = Callable[[JsonObject], Awaitable[JsonObject]]
GetSubscription = Callable[[str], Awaitable[JsonObject | None]]
RegisterEphemeral = Callable[[JsonObject], Awaitable[None]]
UnregisterEphemeral = Callable[[str], Awaitable[None]]
ClientKind = Literal["ephemeral", "persistent"]

#: Largest frame a client may send (XCM.md §12).
MAX_FRAME_BYTES = 1 << 20

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_INVALID_DATA = 1007
CLOSE_TRY_AGAIN_LATER = 1013


class SubscriptionRejected(Exception):
    """A subscription the callbacks refuse; ``body`` is the §11.3 error object.

    ``raise SubscriptionRejected.bad_request("origin id is required")``
    """

    def __init__(self, body: Mapping[str, Any]) -> None:
        super().__init__(body.get("reason", "subscription rejected"))
        self.body: JsonObject = dict(body)

    @classmethod
    def bad_request(cls, reason: str, **extra: Any) -> SubscriptionRejected:
        return cls({"error": True, "statusCode": 400, "reason": reason, **extra})


def error_body(exc: BaseException) -> JsonObject:
    """The §11.3 error object that ``exc`` carries (see the module docstring)."""
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping) and body.get("error") is True:
        return dict(body)
    if exc.args and isinstance(exc.args[0], Mapping) and exc.args[0].get("error") is True:
        return dict(exc.args[0])
    if isinstance(exc, pydantic.ValidationError):
        details = orjson.loads(
            exc.json(include_url=False, include_context=False, include_input=False)
        )
        return {
            "error": True,
            "statusCode": 400,
            "reason": "invalid subscription",
            "details": details[:20],
        }
    # Anything else is ours: the client gets a plain reason, the log gets the exception.
    if isinstance(exc, RedisError | ConnectionError | TimeoutError):
        logger.warning("ws: subscription storage failed (%s: %s)", type(exc).__name__, exc)
        return {
            "error": True,
            "statusCode": 503,
            "reason": "Subscription storage is unavailable; retry later",
        }
    logger.error("ws: unexpected failure (%s: %s)", type(exc).__name__, exc)
    return {"error": True, "statusCode": 500, "reason": "Internal server error"}


# -- ULIDs: 48-bit millisecond time + 80 random bits, Crockford base32 (26 characters) ----------

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ulid_lock = threading.Lock()
_ulid_last = (0, 0)


def _encode_crockford(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return "".join(reversed(chars))


def new_ulid(now_ms: int | None = None) -> str:
    """A ULID (https://github.com/ulid/spec). Ids made in one process are strictly increasing:
    within one millisecond the random part is incremented instead of redrawn."""
    global _ulid_last
    with _ulid_lock:
        millis = int(time.time() * 1000) if now_ms is None else now_ms
        last_ms, last_random = _ulid_last
        if millis <= last_ms and last_random < (1 << 80) - 1:
            # Same (or an earlier, after a clock step back) millisecond: stay monotonic.
            millis, random_bits = last_ms, last_random + 1
        else:
            random_bits = int.from_bytes(os.urandom(10), "big")
        _ulid_last = (millis, random_bits)
    return _encode_crockford((millis << 80) | random_bits, 26)


# -- one connected socket -----------------------------------------------------------------------


class _Client:
    """A socket and its outgoing queue. Every frame goes through the queue, written by one task,
    so the echo always precedes the notifications and a slow reader never blocks the fan-out."""

    def __init__(self, ws: web.WebSocketResponse, kind: ClientKind, queue_size: int) -> None:
        self.ws = ws
        self.kind: ClientKind = kind
        self.subscription_id: str | None = None
        self.key = ""
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_size)
        self.writer: asyncio.Task[None] | None = None

    def send(self, text: str) -> bool:
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            return False
        return True

    async def write_loop(self) -> None:
        while True:
            text = await self.queue.get()
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return  # the socket is closing; the handler cleans up

    async def close(self, code: int, reason: str) -> None:
        if self.writer is not None:
            self.writer.cancel()
        with contextlib.suppress(ConnectionError, RuntimeError, asyncio.TimeoutError):
            await self.ws.close(code=code, message=reason.encode())


class WebsocketHub:
    """The ``/ws/subs`` endpoints of one worker and the Redis pub/sub fan-out between workers."""

    def __init__(
        self,
        client: Redis,
        prefix: str,
        *,
        max_clients: int = 10_000,
        validate: Validate,
        get_subscription: GetSubscription,
        register_ephemeral: RegisterEphemeral,
        unregister_ephemeral: UnregisterEphemeral,
        queue_size: int = 1000,
        heartbeat: float | None = 30.0,
        read_tokens: tuple[str, ...] | None = None,
        max_per_client: int = 0,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.max_clients = max_clients
        #: Tokens the routes need (None or empty: open).
        self.read_tokens = read_tokens or None
        #: Sockets one client may hold on this worker (0: no per-client limit).
        self.max_per_client = max_per_client
        self._per_client: defaultdict[str, int] = defaultdict(int)
        self._validate = validate
        self._get_subscription = get_subscription
        self._register_ephemeral = register_ephemeral
        self._unregister_ephemeral = unregister_ephemeral
        self._queue_size = queue_size
        self._heartbeat = heartbeat

        self._clients: set[_Client] = set()
        self._attached: defaultdict[str, set[_Client]] = defaultdict(set)
        self._idle = asyncio.Event()
        self._idle.set()
        self._background: set[asyncio.Task[Any]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._stopping = False
        #: Times the fan-out subscription was lost and re-established.
        self.reconnects = 0
        #: Notification frames queued to local sockets.
        self.frames_forwarded = 0
        #: Frames dropped because a client's queue was full (the client is then closed).
        self.frames_dropped = 0

    # -- Redis channels

    def channel(self, subscription_id: str) -> str:
        """The pub/sub channel of a subscription's notifications."""
        return f"{self.prefix}ws:{subscription_id}"

    def _close_channel(self, subscription_id: str) -> str:
        return f"{self.prefix}ws-close:{subscription_id}"

    def _patterns(self) -> tuple[str, str]:
        # The prefix is literal text in a glob pattern.
        escaped = "".join(f"\\{c}" if c in "*?[]\\" else c for c in self.prefix)
        return f"{escaped}ws:*", f"{escaped}ws-close:*"

    async def publish(self, subscription_id: str, notification: Mapping[str, Any]) -> int:
        """Send ``notification`` to every socket attached to the subscription, on any worker.

        The payload gets ``subscriptionId``. Returns the number of hubs that received it
        (Redis' PUBLISH count: 0 when no worker has a listener running).
        """
        payload = orjson.dumps({**notification, "subscriptionId": subscription_id})
        return int(await self.client.publish(self.channel(subscription_id), payload))

    async def publish_many(self, notifications: list[tuple[str, Mapping[str, Any]]]) -> None:
        """:meth:`publish` for each ``(subscription id, notification)``, in this order and in
        one round trip."""
        if not notifications:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for subscription_id, notification in notifications:
                payload = orjson.dumps({**notification, "subscriptionId": subscription_id})
                pipe.publish(self.channel(subscription_id), payload)
            await pipe.execute()

    async def close_subscription(
        self, subscription_id: str, *, reason: str = "subscription deleted"
    ) -> int:
        """Close the sockets of a subscription on every worker (1000 with ``reason``), for
        ``DELETE /subs/{id}``. Returns the number of hubs that received the request."""
        return int(await self.client.publish(self._close_channel(subscription_id), reason))

    # -- lifecycle

    @property
    def subscribed(self) -> bool:
        """True while the fan-out pattern subscription is established."""
        return self._subscribed.is_set()

    async def start(self, *, timeout: float = 5.0) -> None:
        """Start the fan-out listener and wait (up to ``timeout``) until it is subscribed. If
        Redis is not reachable yet, it keeps retrying in the background."""
        self._stopping = False
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(), name="ocstream-ws-fanout")
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout)
        except TimeoutError:
            logger.warning(
                "ws fan-out: not subscribed after %.1fs; retrying in background", timeout
            )

    async def stop(self, *, timeout: float = 10.0) -> None:
        """Close every socket with 1001 "server shutdown", refuse new ones and stop the
        listener. Waits (up to ``timeout``) for the handlers to unregister their ephemeral
        subscriptions."""
        self._stopping = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        self._subscribed.clear()
        clients = list(self._clients)
        if clients:
            logger.info("ws: closing %d sockets (server shutdown)", len(clients))
        await asyncio.gather(
            *(client.close(CLOSE_GOING_AWAY, "server shutdown") for client in clients),
            return_exceptions=True,
        )
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            logger.warning("ws: %d handlers still running after stop", len(self._clients))
        for task in list(self._background):
            task.cancel()

    # -- mounting on an aiohttp application (faust: app.web.web_app)

    def routes(self, path: str = "/ws/subs") -> list[web.RouteDef]:
        return [
            web.get(path, self.handle_ephemeral, name="ws-subs-ephemeral"),
            web.get(path + "/{id}", self.handle_attach, name="ws-subs-attach"),
        ]

    def mount(self, web_app: web.Application, *, path: str = "/ws/subs") -> None:
        """Add the routes and start/stop the hub with ``web_app``. Call it before the server is
        set up (aiohttp freezes the router then): for faust, right after building the app."""
        web_app.router.add_routes(self.routes(path))
        web_app.on_startup.append(self._on_startup)
        web_app.on_shutdown.append(self._on_shutdown)

    async def _on_startup(self, web_app: web.Application) -> None:
        await self.start()

    async def _on_shutdown(self, web_app: web.Application) -> None:
        await self.stop()

    # -- metrics

    def clients_by_type(self) -> dict[str, int]:
        counts = {"ephemeral": 0, "persistent": 0}
        for client in self._clients:
            counts[client.kind] += 1
        return counts

    def render_metrics(self) -> str:
        """Prometheus text exposition of this worker's websocket gauges and counters."""
        from ocstream import metrics

        return metrics.render(lambda: metrics.websocket_families(self)).decode()

    # -- handlers

    async def handle_ephemeral(self, request: web.Request) -> web.StreamResponse:
        """``/ws/subs``: the first valid message creates an ephemeral subscription."""
        refused = self._refuse(request)
        if refused is not None:
            return refused
        ws, client = await self._accept(request, "ephemeral")
        if client is None:
            return ws
        try:
            async for message in ws:
                text = _message_text(message)
                if text is None:
                    continue
                if client.subscription_id is None:
                    if not await self._subscribe_ephemeral(client, text):
                        break
                else:
                    client.send(_id_frame(client.subscription_id))
        finally:
            await self._release(client)
        return ws

    async def handle_attach(self, request: web.Request) -> web.StreamResponse:
        """``/ws/subs/{id}``: stream an existing subscription with a websocket channel."""
        refused = self._refuse(request)
        if refused is not None:
            return refused
        ws, client = await self._accept(request, "persistent")
        if client is None:
            return ws
        subscription_id = request.match_info["id"]
        try:
            try:
                subscription = await self._get_subscription(subscription_id)
            except Exception:
                logger.exception("ws: reading subscription=%s failed", subscription_id)
                await client.close(CLOSE_TRY_AGAIN_LATER, "server too busy")
                return ws
            if subscription is None:
                await client.close(CLOSE_INVALID_DATA, "subscription not found")
                return ws
            if not _has_websocket_channel(subscription):
                reason = "websocket channel not enabled in subscription"
                await client.close(CLOSE_INVALID_DATA, reason)
                return ws
            self._attach(client, subscription_id)
            logger.info("ws ⇄ attached subscription=%s (%s)", subscription_id, request.remote)
            async for message in ws:
                if _message_text(message) is not None:
                    client.send(_id_frame(subscription_id))
        finally:
            await self._release(client)
        return ws

    def _refuse(self, request: web.Request) -> web.Response | None:
        """The 401 answer to a handshake without a valid read token (None: it may go on)."""
        if self.read_tokens is None:
            return None
        given = bearer_token(request, query=True)
        if token_matches(given, self.read_tokens):
            return None
        reason = "Missing bearer token" if given is None else "Invalid bearer token"
        return json_error(
            401,
            f"{reason} (Authorization: Bearer <token> or ?access_token=<token>)",
            {"WWW-Authenticate": 'Bearer realm="ocstream"'},
        )

    def _client_key(self, request: web.Request) -> str:
        token = bearer_token(request, query=True) if self.read_tokens is not None else None
        return client_key(request, token if token_matches(token, self.read_tokens or ()) else None)

    async def _accept(
        self, request: web.Request, kind: ClientKind
    ) -> tuple[web.WebSocketResponse, _Client | None]:
        """The handshake, then either a registered client or a socket closed at once."""
        # aiohttp refuses a message whose size is >= max_msg_size: + 1 lets 1 MiB itself in.
        ws = web.WebSocketResponse(
            max_msg_size=MAX_FRAME_BYTES + 1, compress=False, heartbeat=self._heartbeat
        )
        await ws.prepare(request)
        # No await between the check and the add: concurrent handshakes cannot both pass.
        if self._stopping:
            await ws.close(code=CLOSE_GOING_AWAY, message=b"server shutdown")
            return ws, None
        if len(self._clients) >= self.max_clients:
            logger.warning("ws: refused a client, %d connected (max)", len(self._clients))
            await ws.close(code=CLOSE_TRY_AGAIN_LATER, message=b"server too busy")
            return ws, None
        key = self._client_key(request)
        if self.max_per_client and self._per_client[key] >= self.max_per_client:
            logger.warning(
                "ws: refused a client of %s, %d sockets (its max)", key, self.max_per_client
            )
            body = {
                "error": True,
                "statusCode": 429,
                "reason": f"too many sockets for this client (at most {self.max_per_client})",
            }
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(_json(body))
            await ws.close(code=CLOSE_TRY_AGAIN_LATER, message=b"too many sockets for this client")
            return ws, None
        client = _Client(ws, kind, self._queue_size)
        client.key = key
        self._per_client[key] += 1
        self._clients.add(client)
        self._idle.clear()
        client.writer = asyncio.create_task(client.write_loop())
        return ws, client

    async def _subscribe_ephemeral(self, client: _Client, text: str) -> bool:
        """Create the ephemeral subscription from the first message. False: close the socket."""
        try:
            fields = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            client.send(_json(_bad_request(f"invalid JSON: {exc}")))
            return True
        if not isinstance(fields, dict):
            client.send(_json(_bad_request("expected a JSON object with the subscription")))
            return True
        if json_depth_exceeds(fields):
            client.send(_json(_bad_request("the subscription nests too deeply")))
            return True
        subscription_id = new_ulid()
        candidate = {
            **fields,
            "id": subscription_id,
            "ephemeral": True,
            "channels": [{"type": "websocket"}],
        }
        try:
            subscription = await self._validate(candidate)
        except Exception as exc:
            client.send(_json(error_body(exc)))
            return True
        try:
            await self._register_ephemeral(subscription)
        except Exception as exc:
            logger.warning(
                "ws: registering ephemeral subscription=%s failed: %s", subscription_id, exc
            )
            client.send(_json(error_body(exc)))
            await self._drain(client)
            await client.close(CLOSE_TRY_AGAIN_LATER, "server too busy")
            return False
        client.subscription_id = subscription_id
        client.send(_json(subscription))
        self._attach(client, subscription_id)
        logger.info(
            "ws ⇄ ephemeral subscription=%s origin=%s destinations=%s",
            subscription_id,
            subscription.get("origin"),
            subscription.get("destinations"),
        )
        return True

    def _attach(self, client: _Client, subscription_id: str) -> None:
        client.subscription_id = subscription_id
        self._attached[subscription_id].add(client)

    async def _release(self, client: _Client) -> None:
        if client.writer is not None:
            client.writer.cancel()
        if client in self._clients:
            self._per_client[client.key] -= 1
            if self._per_client[client.key] <= 0:
                del self._per_client[client.key]
        self._clients.discard(client)
        subscription_id = client.subscription_id
        if subscription_id is not None:
            attached = self._attached.get(subscription_id)
            if attached is not None:
                attached.discard(client)
                if not attached:
                    del self._attached[subscription_id]
            if client.kind == "ephemeral":
                try:
                    await self._unregister_ephemeral(subscription_id)
                except Exception:
                    logger.exception("ws: unregistering subscription=%s failed", subscription_id)
                else:
                    logger.info("ws ✕ ephemeral subscription=%s closed", subscription_id)
        if not self._clients:
            self._idle.set()

    async def _drain(self, client: _Client, timeout: float = 1.0) -> None:
        """Wait until the client's queued frames are written (before closing it)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not client.queue.empty() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)

    # -- fan-out

    async def _listen(self) -> None:
        backoff = Backoff(base=0.1, cap=5.0)
        patterns = self._patterns()
        while not self._stopping:
            pubsub: PubSub = self.client.pubsub()
            try:
                await pubsub.psubscribe(*patterns)
                confirmed = 0
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    kind = message["type"]
                    if kind == "pmessage":
                        self._dispatch(message["channel"], message["data"])
                    elif kind == "psubscribe":
                        # redis-py re-subscribes by itself after a short outage; a second
                        # round of confirmations is that, not a new subscription of ours.
                        confirmed += 1
                        if confirmed == len(patterns):
                            if self.reconnects:
                                logger.info("ws fan-out: subscribed again to %s", patterns[0])
                            self._subscribed.set()
                            backoff.reset()
            except TRANSIENT_ERRORS as exc:
                self._subscribed.clear()
                self.reconnects += 1
                await backoff.wait(logger, "ws fan-out subscription", exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis 8.2

    def _dispatch(self, channel: bytes | str, data: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        text = data.decode() if isinstance(data, bytes) else data
        notifications = f"{self.prefix}ws:"
        closes = f"{self.prefix}ws-close:"
        if name.startswith(notifications):
            for client in list(self._attached.get(name[len(notifications) :], ())):
                if client.send(text):
                    self.frames_forwarded += 1
                else:
                    self.frames_dropped += 1
                    logger.warning(
                        "ws: subscription=%s client too slow (%d frames queued); closing it",
                        client.subscription_id,
                        client.queue.qsize(),
                    )
                    self._spawn(client.close(CLOSE_TRY_AGAIN_LATER, "client too slow"))
        elif name.startswith(closes):
            for client in list(self._attached.get(name[len(closes) :], ())):
                self._spawn(client.close(CLOSE_NORMAL, text))

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        async def run() -> None:
            await coroutine

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _message_text(message: Any) -> str | None:
    if message.type == WSMsgType.TEXT:
        return str(message.data)
    if message.type == WSMsgType.BINARY:
        return bytes(message.data).decode("utf-8", errors="replace")
    return None


def _has_websocket_channel(subscription: Mapping[str, Any]) -> bool:
    channels = subscription.get("channels") or []
    return any(isinstance(c, Mapping) and c.get("type") == "websocket" for c in channels)


def _bad_request(reason: str) -> JsonObject:
    return {"error": True, "statusCode": 400, "reason": reason}


def _id_frame(subscription_id: str) -> str:
    return _json({"id": subscription_id})


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


__all__ = [
    "MAX_FRAME_BYTES",
    "SubscriptionRejected",
    "WebsocketHub",
    "error_body",
    "new_ulid",
]
