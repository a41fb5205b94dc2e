"""Delivery: notifications from the XCM dataflow to subscribers' channels.

The agent ``xcm_deliver`` (``topology/delivery.py``) hands the notifications of
``xcm-notifications`` to :meth:`Delivery.deliver_many`, a batch at a time, which

* finds the subscriptions that want each one (origin, final destination, sender, event types;
  the subscriptions are the live view of Redis, so a change on any worker applies within a
  second);
* keeps **one terminal per journey and subscription**: the first of ``xcm.received``,
  ``xcm.timeout`` (the engine's, or the subscription's own ``outboundTTL``) and a failed
  ``xcm.hop`` is delivered, later ones are counted as late and dropped;
* runs each subscription's ``outboundTTL`` as a persisted timer (a Redis sorted set) that fires
  an ``xcm.timeout`` for that subscription alone when no receipt came first;
* hands the notification, with ``subscriptionId`` added, to each wanted channel: the webhook
  dispatcher (persistent retries), the websocket hub (fan-out to every worker's sockets), or the
  log. A notification id reaches a channel at most once.

**Two round trips per batch.** The bookkeeping of a notification for every subscription that
selects it (the terminal marker, the timer, the per-channel markers) is one Lua call, and the
calls of a batch go in one pipeline, in the batch's order; then the channels get theirs in a
second round trip (the webhook enqueues share the dispatcher's pipeline, the websocket
publishes share one). A batch with nothing to keep (webhooks only, no terminal, no timer) skips
the first. A journey's
notifications come in order, so its ``xcm.sent`` sets its timer before its receipt removes it.
Every step may run again after a Redis error (the agent then delivers the whole batch again):
a terminal marker holds its notification id, so the same terminal goes on; the markers and the
dispatcher's keep each channel at most once.

**Websocket subscriptions** (ephemeral) live in the worker that holds their socket, which may not
be the one delivering. A worker that holds some subscribes to the pub/sub channels
``dlv:notes:{origin}`` of their origins, and only while it holds them. The delivering worker
asks Redis how many listen to the origins of a batch (``PUBSUB NUMSUB``, in the bookkeeping
round trip, or next to the channels' one when there is no bookkeeping) and publishes a
notification only where someone listens: with no websocket open anywhere, nothing is
published, and no worker decodes notifications it has no use for. A socket is answered only
once its worker's subscription to the channel is confirmed, so a notification produced after
that reaches it.

**Decoded only where followed.** The agent hands the records over as bytes with the origin
from their ``origin`` header (:data:`ORIGIN_HEADER`, written by the matcher):
:meth:`Delivery.deliver_encoded` decodes a notification only when a persistent subscription
follows its origin, and gives the fan-out the record's own bytes. Where the matcher knew
that one does, it also wrote the notification's *selector* (:data:`SELECT_HEADER`): the few
fields that selecting and booking it read (:func:`selector`). Delivery then reads those 0.4
kB instead of the whole notification (4 kB, decoded in 10 µs on a quiet core and five times
that in a busy worker); webhooks get the record's bytes as they are, and the notification is
decoded only for a channel that takes it as an object (a persistent websocket or log channel)
or for a body that cannot be made from its bytes.

Redis keys (prefix ``ocs:``): ``dlv:term:{sub}:{journey}`` (terminal delivered),
``dlv:sent:{sub}:{channel}:{notification}`` (websocket/log deduplication), ``dlv:ttl`` (zset of
``{sub}|{journey}`` by deadline), ``dlv:ttl:notes`` (the ``xcm.sent`` each timer repeats) and
the pub/sub channels ``dlv:notes:{origin}``.

Ephemeral subscriptions (a websocket's) do not get ``outboundTTL`` timers: they end with their
socket, and a timer could fire on a worker that does not know them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from mode import Service
from redis.asyncio import Redis

from .transport.client import TRANSIENT_ERRORS, Backoff, retryable
from .transport.scripts import LuaScript, ScriptCall, run_pipelined

__all__ = [
    "BOOKKEEPING_SECONDS",
    "ORIGIN_HEADER",
    "SELECT_HEADER",
    "Delivery",
    "Encoded",
    "EncodedNote",
    "is_terminal",
    "notification_headers",
    "selector",
]

log = logging.getLogger("ocstream.delivery")

#: How long delivery bookkeeping is kept (a journey lives at most a day, bridges included).
BOOKKEEPING_SECONDS = 7 * 86400

#: Most fan-out messages taken from the pub/sub connection before they are delivered together.
FANOUT_BATCH = 256

# The bookkeeping of one notification for the subscriptions that select it, before their
# channels get it. Keys are made here, under the prefix (one Redis per prefix, as for the
# webhook dispatcher's scripts).
# KEYS: timers (zset ``{sub}|{journey}`` -> deadline), timer notifications (hash)
# ARGV: key prefix, journey, notification id, marker ttl (s), terminal ('1' or '0'), the
#       notification (JSON, for the timers it starts; else ''), then per subscription: its id,
#       its timer's deadline ('' for none), n, and the n indexes of its websocket and log
#       channels that want the notification (each gets a marker)
# Returns per subscription: 0 when the notification is a terminal that comes late for it, else
# 1 followed by 1 (first time) or 0 (sent before) per marked channel.
BOOK = """
local prefix, journey, note, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local terminal = ARGV[5] == '1'
local out = {}
local i = 7
while i <= #ARGV do
  local sub, deadline, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local member = sub .. '|' .. journey
  local go = 1
  if terminal then
    -- The marker holds the terminal's id: a retry of this same delivery goes on, any other
    -- terminal of the journey is late.
    local key = prefix .. 'dlv:term:' .. sub .. ':' .. journey
    if not redis.call('SET', key, note, 'NX', 'EX', ttl) and redis.call('GET', key) ~= note then
      go = 0
    else
      redis.call('ZREM', KEYS[1], member)
      redis.call('HDEL', KEYS[2], member)
    end
  elseif deadline ~= '' then
    redis.call('HSET', KEYS[2], member, ARGV[6])
    redis.call('ZADD', KEYS[1], 'NX', deadline, member)
  end
  out[#out + 1] = go
  if go == 1 then
    for j = 1, n do
      local key = prefix .. 'dlv:sent:' .. sub .. ':' .. ARGV[i + 2 + j] .. ':' .. note
      out[#out + 1] = redis.call('SET', key, 1, 'NX', 'EX', ttl) and 1 or 0
    end
  end
  i = i + 3 + n
end
return out
"""

_book = LuaScript(BOOK)


def is_terminal(notification: Mapping[str, Any]) -> bool:
    """Whether a notification ends its journey for a subscriber."""
    kind = notification.get("type")
    if kind in ("xcm.received", "xcm.timeout"):
        return True
    waypoint = notification.get("waypoint") or {}
    if kind == "xcm.bridge" and notification.get("bridgeStatus") == "accepted":
        # Accepted onto a bridge that is the journey's last leg (e.g. to Ethereum): ocstream
        # follows it no further, so that is where the journey ends (docs/matching.md).
        return bool(waypoint.get("legIndex") == len(notification.get("legs") or []) - 1)
    return bool(kind in ("xcm.hop", "xcm.bridge") and waypoint.get("outcome") == "Fail")


#: The header of an ``xcm-notifications`` record that names the origin chain of its journey, so
#: that delivery can tell without decoding the notification whether anyone follows it
#: (:meth:`Delivery.deliver_encoded`).
ORIGIN_HEADER = "origin"

#: The header of an ``xcm-notifications`` record that holds its selector (:func:`selector`, as
#: JSON): written by the matcher where a persistent subscription follows the origin, so that
#: delivery need not decode the whole notification to select and book it.
SELECT_HEADER = "select"

#: A notification's bytes as the topic holds them, or what reads them when first needed (a
#: record taken from a direct feed is decompressed only then: most are never read).
Encoded = bytes | Callable[[], bytes | None]

#: A notification record as :meth:`Delivery.deliver_encoded` takes it: ``(origin, bytes)`` or
#: ``(origin, bytes, selector)``, from the record's headers.
EncodedNote = tuple[str | None, Encoded] | tuple[str | None, Encoded, bytes | None]

#: Where the fan-out publishes a notification: its decoded form, or its bytes.
_Fanout = list[tuple[str, Mapping[str, Any] | Encoded]]


def _bytes_of(encoded: Encoded) -> bytes | None:
    """A notification's bytes, read now if they were not yet (None: a record without a
    value)."""
    return encoded() if callable(encoded) else encoded


def _read(fanout: _Fanout) -> Iterator[tuple[str, Mapping[str, Any] | bytes]]:
    """The fan-out's notifications, their bytes read where they were not yet (a record
    without a value has nothing to publish)."""
    for channel, notification in fanout:
        if isinstance(notification, Mapping):
            yield channel, notification
        elif (raw := _bytes_of(notification)) is not None:
            yield channel, raw


def notification_headers(
    notification: Mapping[str, Any], followed: Callable[[str], bool] | None = None
) -> list[tuple[str, bytes]]:
    """The headers to write a notification's record with: its origin (:data:`ORIGIN_HEADER`;
    no headers when it names none), and its selector (:data:`SELECT_HEADER`) when ``followed``
    says a persistent subscription follows that origin (the matcher asks its worker's
    subscriptions; one that knows none, or answers wrongly, costs delivery a decode, never a
    wrong delivery)."""
    origin = _origin(notification)
    if origin is None:
        return []
    headers = [(ORIGIN_HEADER, origin.encode())]
    if followed is not None and followed(origin):
        headers.append((SELECT_HEADER, orjson.dumps(selector(notification))))
    return headers


def selector(notification: Mapping[str, Any]) -> dict[str, Any]:
    """What selecting and booking ``notification`` reads of it, in the same places: ``id``,
    ``journeyId``, ``type``, ``bridgeStatus``, the origin's and destination's ``chainId``, the
    last leg's ``to`` (and the number of legs), the sender's public keys and the waypoint's
    ``legIndex`` and ``outcome``. The subscriptions' filters (:meth:`Subscription.matches`),
    :func:`is_terminal` and the bookkeeping give the same answers on it as on the whole
    notification, whatever its shape (``tests/test_delivery.py`` checks that)."""
    out: dict[str, Any] = {}
    for key in ("id", "journeyId", "type", "bridgeStatus"):
        if key in notification:
            out[key] = notification[key]
    for key in ("origin", "destination"):
        place = notification.get(key)
        if isinstance(place, Mapping) and "chainId" in place:
            out[key] = {"chainId": place["chainId"]}
    legs = notification.get("legs")
    if isinstance(legs, list):
        last = legs[-1] if legs else None
        to = last.get("to") if isinstance(last, Mapping) else None
        out["legs"] = [None] * (len(legs) - 1) + [{"to": to}] if legs else []
    elif legs:
        out["legs"] = legs
    sender = notification.get("sender")
    if isinstance(sender, Mapping):
        out["sender"] = {
            key: _keys_of(sender[key]) for key in ("signer", "extraSigners") if key in sender
        }
    waypoint = notification.get("waypoint")
    if isinstance(waypoint, Mapping):
        out["waypoint"] = {k: waypoint[k] for k in ("legIndex", "outcome") if k in waypoint}
    elif waypoint:
        out["waypoint"] = waypoint
    return out


def _keys_of(value: Any) -> Any:
    """A signer's (or each extra signer's) ``publicKey`` alone."""
    if isinstance(value, Mapping):
        return {"publicKey": value["publicKey"]} if "publicKey" in value else {}
    if isinstance(value, list):
        return [_keys_of(item) if isinstance(item, Mapping) else None for item in value]
    return value


def _origin(notification: Mapping[str, Any]) -> str | None:
    origin = notification.get("origin")
    chain = origin.get("chainId") if isinstance(origin, Mapping) else None
    return chain if isinstance(chain, str) else None


def _encode(notification: Mapping[str, Any]) -> bytes:
    try:
        return orjson.dumps(notification)
    except TypeError:  # integers beyond 64 bits
        return json.dumps(notification, separators=(",", ":"), ensure_ascii=False).encode()


class _Ephemeral(Protocol):
    def origins(self) -> set[str]: ...

    def add(self, subscription: Any) -> None: ...

    def remove(self, subscription_id: str) -> Any: ...


class _Subscriptions(Protocol):
    @property
    def ephemeral(self) -> _Ephemeral: ...

    def matching(self, notification: Mapping[str, Any]) -> list[Any]: ...

    def has_persistent_origin(self, chain: str) -> bool: ...

    def get(self, subscription_id: str) -> Any: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class _Webhooks(Protocol):
    async def enqueue_many(
        self,
        deliveries: Sequence[tuple[str, int, Mapping[str, Any]]],
        bodies: Sequence[bytes | None] | None = None,
    ) -> list[bool | Exception]: ...


class _Hub(Protocol):
    async def publish_many(self, notifications: list[tuple[str, Mapping[str, Any]]]) -> None: ...


class _Log(Protocol):
    async def deliver(self, subscription_id: str, notification: dict[str, Any]) -> None: ...


def _with_subscription(raw: bytes | None, subscription_id: str) -> bytes | None:
    """The JSON of ``{**notification, "subscriptionId": id}`` made from the notification's own
    bytes, or None where that is not sure (then the webhook encodes the payload itself).

    The matcher writes notifications with orjson, so the bytes are what encoding the decoded
    notification again would give; adding the key at the end spares a webhook delivery that
    encoding (about 30 µs for a 4 kB ``xcm.sent``)."""
    if raw is None or not _extensible(raw):
        return None
    return raw[:-1] + b',"subscriptionId":' + orjson.dumps(subscription_id) + b"}"


def _extensible(raw: bytes) -> bool:
    """Whether :func:`_with_subscription` can add the key to these bytes: a JSON object that
    has no ``subscriptionId`` already (it would be replaced, not added)."""
    return raw.startswith(b'{"') and raw.endswith(b"}") and b'"subscriptionId"' not in raw


def _selector_of(selected: bytes | None) -> dict[str, Any] | None:
    """A record's selector, decoded; None without one, or for one that is not a JSON object
    (the notification is then decoded instead)."""
    if selected is None:
        return None
    try:
        found = orjson.loads(selected)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


@dataclass(slots=True)
class _Pair:
    """One notification for one subscription, on its way through a batch."""

    subscription: Any
    notification: dict[str, Any]
    kind: str
    terminal: bool
    channels: list[int]  # the subscription's channels that want this kind
    marked: list[int]  # those that get a marker (websocket, log)
    deadline: str = ""  # of the subscription's timer that this xcm.sent starts
    marks: list[int] | Exception | None = None  # BOOK's reply: go on?, then per marked channel
    sent: int = 0
    raw: bytes | None = None  # the notification's bytes as the topic held them, if at hand
    #: ``notification`` is the record's selector, and this decodes the whole notification
    #: (once for all the pairs of the record); None: ``notification`` is the whole one.
    whole: _Whole | None = None

    @property
    def booked(self) -> bool:
        """Whether BOOK has something to keep for it (a webhook dedupes itself)."""
        return bool(self.terminal or self.deadline or self.marked)

    def full(self) -> dict[str, Any]:
        """The whole notification (decoded now if only its selector was)."""
        return self.notification if self.whole is None else self.whole.get()


class _Whole:
    """A notification's bytes, decoded the first time they are asked for."""

    __slots__ = ("raw", "_value")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._value: dict[str, Any] | None = None

    def get(self) -> dict[str, Any]:
        if self._value is None:
            self._value = _json_object(self.raw)
        return self._value


def _json_object(raw: bytes) -> dict[str, Any]:
    """A notification's bytes decoded; ``ValueError`` when they are not a JSON object."""
    value = orjson.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"a notification is a JSON object, not {value!r:.80}")
    return value


class Delivery(Service):
    """Routes notifications to channels; a faust app service (started with the worker).

    ``run_timers`` False leaves the ``outboundTTL`` timers to other workers (a worker that does
    not deliver, ``--role match``); ``services`` are started and stopped with this one (the
    webhook dispatcher of a delivering worker)."""

    def __init__(
        self,
        *,
        client: Redis,
        prefix: str,
        subscriptions: _Subscriptions,
        webhooks: _Webhooks | None = None,
        hub: _Hub | None = None,
        log_sink: _Log | None = None,
        services: tuple[Any, ...] = (),
        timer_interval: float = 1.0,
        run_timers: bool = True,
        follow_timeout: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.client = client
        self.prefix = prefix
        self.subscriptions = subscriptions
        self.webhooks = webhooks
        self.hub = hub
        self.log_sink = log_sink
        self.timer_interval = timer_interval
        self.run_timers = run_timers
        #: How long registering a websocket subscription waits for Redis to confirm the
        #: fan-out channel of its origin (then it goes on, and the fan-out keeps trying).
        self.follow_timeout = follow_timeout
        self.counters: Counter[str] = Counter()
        self._services = services
        self._ttl_key = f"{prefix}dlv:ttl"
        self._ttl_notes = f"{prefix}dlv:ttl:notes"
        #: Timers this worker claimed and could not deliver nor put back (Redis refused the
        #: write): put back before its next pass takes any.
        self._ttl_unreturned: dict[str, float] = {}
        self._notes = f"{prefix}dlv:notes:"
        # The fan-out's pub/sub connection (None while no websocket subscription is held),
        # the channels asked of it and those Redis confirmed.
        self._pubsub: Any = None
        self._requested: set[str] = set()
        self._confirmed: set[str] = set()
        self._confirmation = asyncio.Condition()
        self._resync = asyncio.Event()
        self._listener_running = False

    async def on_start(self) -> None:
        await self.subscriptions.start()
        for service in self._services:
            await service.start()
        if self.run_timers:
            self.add_future(self._timers())
        self.add_future(self._listen())

    async def on_stop(self) -> None:
        for service in reversed(self._services):
            try:
                await service.stop()
            except Exception:  # stopping must go on for the others
                log.exception("stopping %r failed", service)
        await self.subscriptions.stop()

    def notes_channel(self, origin: str) -> str:
        """The pub/sub channel of the notifications from ``origin``, for websocket
        subscriptions on other workers."""
        return f"{self._notes}{origin}"

    # -- delivering --

    async def deliver(self, notification: dict[str, Any]) -> int:
        """Deliver one notification (:meth:`deliver_many`)."""
        return await self.deliver_many([notification])

    async def deliver_many(self, notifications: Sequence[dict[str, Any]]) -> int:
        """Deliver notifications, in their order, to every subscription that wants them;
        returns how many channel deliveries that made.

        A Redis error raises (deliver the same batch again: see the module docstring); a
        notification that fails otherwise is logged and counted in ``errors``, and the others
        go on. Ephemeral subscriptions get the notifications through the fan-out, on whichever
        worker holds them (this one included)."""
        pairs: list[_Pair] = []
        fanout: _Fanout = []
        for notification in notifications:
            self._select(notification, _origin(notification), None, pairs, fanout)
        return await self._deliver_pairs(pairs, fanout)

    async def deliver_encoded(self, records: Sequence[EncodedNote]) -> int:
        """:meth:`deliver_many` for notifications as the topic holds them: ``(origin chain, JSON
        bytes)`` or ``(origin chain, JSON bytes, selector)``, the origin from the record's
        ``origin`` header (None when it has none), the selector from its ``select`` header
        (:data:`SELECT_HEADER`; None or absent when it has none), the bytes given as they are
        or as a function that reads them (called only if they are needed, at most once per
        notification here).

        A notification is decoded only where a persistent subscription follows its origin;
        otherwise all it can need is the fan-out, which publishes the bytes as they are. Most
        notifications of a busy network have no subscriber, and decoding one of 4 kB took 30
        µs, more than the rest of its delivery. Where one follows, the selector, when there is
        one, stands in for the notification until a channel needs the whole of it. Bytes that
        are not a JSON object are logged and counted in ``errors``."""
        pairs: list[_Pair] = []
        fanout: _Fanout = []
        for item in records:
            origin, record = item[0], item[1]
            if origin is not None and not self.subscriptions.has_persistent_origin(origin):
                fanout.append((self.notes_channel(origin), record))
                continue
            raw = _bytes_of(record)
            selected = _selector_of(item[2] if len(item) > 2 and origin else None)
            whole = _Whole(raw) if raw is not None and selected is not None else None
            try:
                if raw is None:
                    raise ValueError("a record without a value")
                notification = selected if selected is not None else _json_object(raw)
            except ValueError as exc:
                self._failed(None, None, exc)
                continue
            if origin is None:
                origin = _origin(notification)
            self._select(notification, origin, raw, pairs, fanout, whole)
        return await self._deliver_pairs(pairs, fanout)

    def _select(
        self,
        notification: dict[str, Any],
        origin: str | None,
        raw: bytes | None,
        pairs: list[_Pair],
        fanout: _Fanout,
        whole: _Whole | None = None,
    ) -> None:
        """Add the pairs of the persistent subscriptions that select ``notification`` (the
        record's selector when ``whole`` is given), and its fan-out (as ``raw`` when its bytes
        are at hand)."""
        try:
            selected: list[_Pair] = []
            for subscription in self.subscriptions.matching(notification):
                if not getattr(subscription, "is_ephemeral", False):
                    pair = self._pair(subscription, notification, raw)
                    pair.whole = whole
                    selected.append(pair)
            if whole is not None and selected:
                if any(pair.marked for pair in selected) or raw is None or not _extensible(raw):
                    whole.get()  # a channel will need it: decoded (or refused) before booking
            pairs += selected
            if origin is not None:
                fanout.append((self.notes_channel(origin), notification if raw is None else raw))
        except Exception:
            self._failed(notification, None)

    async def deliver_to(self, subscription: Any, notification: dict[str, Any]) -> int:
        """Deliver one notification to one subscription (its filters already applied)."""
        try:
            pair = self._pair(subscription, notification)
        except Exception:
            self._failed(notification, subscription)
            return 0
        return await self._deliver_pairs([pair], [])

    def _pair(
        self, subscription: Any, notification: dict[str, Any], raw: bytes | None = None
    ) -> _Pair:
        kind = str(notification["type"])
        channels = list(subscription.channel_indexes(kind))
        marked = [i for i in channels if subscription.channels[i].type != "webhook"]
        pair = _Pair(
            subscription, notification, kind, is_terminal(notification), channels, marked, raw=raw
        )
        if (
            not pair.terminal
            and kind == "xcm.sent"
            and getattr(subscription, "outboundTTL", None)
            and not getattr(subscription, "is_ephemeral", False)
        ):
            pair.deadline = repr(time.time() + subscription.outboundTTL / 1000)
        if pair.booked and not isinstance(notification.get("id"), str):
            raise ValueError("a notification needs a string 'id'")
        return pair

    def _failed(
        self, notification: Any, subscription: Any, error: BaseException | None = None
    ) -> None:
        """Log and count a notification that could not be delivered (called in the ``except``
        block of its error, or with ``error``)."""
        note_id = notification.get("id") if isinstance(notification, Mapping) else None
        where = f" to subscription {subscription.id}" if subscription is not None else ""
        log.error("delivering %s%s failed", note_id, where, exc_info=error or True)
        self.counters["errors"] += 1

    async def _deliver_pairs(self, pairs: list[_Pair], fanout: _Fanout) -> int:
        listened = await self._book(pairs, {channel for channel, _ in fanout})
        hooks: list[tuple[str, int, Mapping[str, Any]]] = []
        bodies: list[bytes | None] = []
        hook_pairs: list[_Pair] = []
        sockets: list[tuple[str, Mapping[str, Any]]] = []
        for pair in pairs:
            if isinstance(pair.marks, Exception):
                self._failed(pair.notification, pair.subscription, pair.marks)
                continue
            marks = iter(pair.marks or (1,))
            if not next(marks):
                self.counters["late"] += 1  # this subscription already had its terminal
                continue
            subscription = pair.subscription
            payload: dict[str, Any] | None = None  # the whole notification, for this subscription
            for index in pair.channels:
                channel = subscription.channels[index]
                if channel.type == "webhook":
                    if self.webhooks is not None:
                        body = _with_subscription(pair.raw, subscription.id)
                        if body is not None:  # the dispatcher reads only the id and the type
                            given = {**pair.notification, "subscriptionId": subscription.id}
                        else:
                            given = payload = payload or self._payload(pair)
                        hooks.append((subscription.id, index, given))
                        bodies.append(body)
                        hook_pairs.append(pair)
                    continue
                payload = payload or self._payload(pair)
                if not next(marks):
                    self.counters["duplicates"] += 1
                    continue
                if channel.type == "websocket" and self.hub is not None:
                    sockets.append((subscription.id, payload))
                    pair.sent += 1
                elif channel.type == "log" and self.log_sink is not None:
                    await self.log_sink.deliver(subscription.id, payload)
                    pair.sent += 1
        steps: list[Awaitable[Any]] = []
        if hooks:
            assert self.webhooks is not None
            steps.append(self.webhooks.enqueue_many(hooks, bodies))
        if sockets:
            assert self.hub is not None
            steps.append(self.hub.publish_many(sockets))
        published = list(_read([(c, n) for c, n in fanout if c in listened]))
        if published:
            steps.append(self._publish(published))
        outcomes: list[Any] = await asyncio.gather(*steps, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome  # the batch goes again; the markers keep what was done once
        if hooks:
            enqueued: list[bool | Exception] = outcomes[0]
            for pair, result in zip(hook_pairs, enqueued, strict=True):
                if isinstance(result, Exception) and retryable(result):
                    raise result
                if isinstance(result, Exception):
                    self._failed(pair.notification, pair.subscription, result)
                elif result:
                    pair.sent += 1
        for pair in pairs:
            if pair.sent:
                self.counters[f"delivered_{pair.kind}"] += pair.sent
        self.counters["fanned_out"] += len(published)
        return sum(pair.sent for pair in pairs)

    def _payload(self, pair: _Pair) -> dict[str, Any]:
        return {**pair.full(), "subscriptionId": pair.subscription.id}

    async def _book(self, pairs: list[_Pair], channels: set[str]) -> set[str]:
        """Run the bookkeeping of ``pairs`` (one BOOK call per notification; the replies go to
        the pairs' ``marks``) and, in the same round trip, find which of ``channels`` someone
        listens to; returns those."""
        groups: list[list[_Pair]] = []  # the pairs of one notification, in order
        for pair in pairs:
            if not pair.booked:
                continue
            if groups and groups[-1][0].notification is pair.notification:
                groups[-1].append(pair)
            else:
                groups.append([pair])
        if not groups and not channels:
            return set()
        keys = [self._ttl_key, self._ttl_notes]
        calls: list[ScriptCall] = [(_book, keys, self._book_args(group)) for group in groups]
        asked = sorted(channels)
        # One transaction: Redis books all of the batch or none of it. Run call by call, a
        # batch that takes Redis over its maxmemory half way had its first notifications'
        # at-most-once markers set and the rest refused; the batch went again and found
        # those markers, so their websocket and log deliveries were never made.
        replies = await run_pipelined(
            self.client, calls, atomic=True, reads=[("PUBSUB NUMSUB", *asked)] if asked else ()
        )
        listened: set[str] = set()
        if asked:
            counts = replies.pop(0)
            if isinstance(counts, Exception):
                raise counts
            for channel, count in counts:
                if int(count) > 0:
                    listened.add(channel.decode() if isinstance(channel, bytes) else channel)
        for group, reply in zip(groups, replies, strict=True):
            if retryable(reply):
                raise reply  # Redis away or not taking writes (OOM, READONLY): all goes again
            if isinstance(reply, Exception):
                for pair in group:
                    pair.marks = reply
                continue
            flags = iter(int(flag) for flag in reply)
            for pair in group:
                go = next(flags)
                pair.marks = [go, *(next(flags) for _ in pair.marked)] if go else [0]
        return listened

    def _book_args(self, group: list[_Pair]) -> list[Any]:
        first = group[0]
        notification = first.notification
        stored = b""
        if any(pair.deadline for pair in group):  # the xcm.sent the timer repeats, whole
            stored = first.raw if first.whole is not None and first.raw else _encode(notification)
        args: list[Any] = [
            self.prefix,
            str(notification.get("journeyId", "")),
            str(notification["id"]),
            BOOKKEEPING_SECONDS,
            "1" if group[0].terminal else "0",
            stored,
        ]
        for pair in group:
            args += [pair.subscription.id, pair.deadline, len(pair.marked), *pair.marked]
        return args

    async def _publish(self, notifications: list[tuple[str, Mapping[str, Any] | bytes]]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for channel, notification in notifications:
                encoded = notification if isinstance(notification, bytes) else _encode(notification)
                pipe.publish(channel, encoded)
            await pipe.execute()

    # -- websocket subscriptions of this worker --

    async def add_ephemeral(self, subscription: Any) -> None:
        """Hold an ephemeral subscription here: registers it and waits until the fan-out
        listens to its origin (up to ``follow_timeout``), so that what is delivered from now
        on, by any worker, reaches it."""
        self.subscriptions.ephemeral.add(subscription)
        await self.follow_ephemeral()

    async def remove_ephemeral(self, subscription_id: str) -> None:
        self.subscriptions.ephemeral.remove(subscription_id)
        await self.follow_ephemeral()

    def _wanted(self) -> set[str]:
        return {self.notes_channel(origin) for origin in self.subscriptions.ephemeral.origins()}

    async def follow_ephemeral(self) -> bool:
        """Bring the fan-out's channels in line with the ephemeral subscriptions held here and
        wait (up to ``follow_timeout``) until Redis confirmed every channel they need; False
        if it did not in time (the fan-out keeps trying), or if the fan-out is not running
        (this service is not started: it subscribes to what is wanted when it starts)."""
        if not self._listener_running:
            return False
        pubsub = self._pubsub
        if pubsub is None:
            self._resync.set()  # the listener connects and subscribes
        else:
            try:
                await self._reconcile(pubsub)
            except TRANSIENT_ERRORS:
                pass  # the listener reconnects and subscribes to everything wanted
        try:
            async with asyncio.timeout(self.follow_timeout):
                async with self._confirmation:
                    await self._confirmation.wait_for(lambda: self._wanted() <= self._confirmed)
        except TimeoutError:
            log.warning(
                "websocket fan-out: Redis did not confirm %s within %.1fs; still trying",
                sorted(self._wanted() - self._confirmed),
                self.follow_timeout,
            )
            return False
        return True

    async def _reconcile(self, pubsub: Any) -> None:
        wanted = self._wanted()
        new, gone = wanted - self._requested, self._requested - wanted
        self._requested = wanted
        self._confirmed -= gone
        if new:
            await pubsub.subscribe(*new)
        if gone:
            await pubsub.unsubscribe(*gone)

    async def _listen(self) -> None:
        """The fan-out: while this worker holds ephemeral subscriptions, receive the
        notifications of their origins (``dlv:notes:{origin}``) and deliver them; resubscribes
        after a Redis outage. Holds no connection while there is nothing to listen to."""
        self._listener_running = True
        try:
            await self._fan_in()
        finally:
            self._listener_running = False

    async def _fan_in(self) -> None:
        backoff = Backoff()
        while not self.should_stop:
            if not self._wanted():
                await self._resync.wait()
                self._resync.clear()
                continue
            pubsub = self.client.pubsub()
            failure: BaseException | None = None
            try:
                self._requested = set()
                await self._reconcile(pubsub)
                self._pubsub = pubsub
                backoff.reset()
                while not self.should_stop:
                    if self._resync.is_set():
                        self._resync.clear()
                        await self._reconcile(pubsub)
                    if not self._requested:
                        break  # no websocket subscription left: let the connection go
                    message = await pubsub.get_message(timeout=1.0)
                    notes: list[dict[str, Any]] = []
                    while message is not None:
                        await self._take(message, notes)
                        if len(notes) >= FANOUT_BATCH:
                            break
                        message = await pubsub.get_message(timeout=0)
                    if notes:
                        try:
                            await self._deliver_ephemeral(notes)
                        except TRANSIENT_ERRORS:
                            raise
                        except Exception:
                            log.exception("websocket fan-out: delivering failed")
                            self.counters["errors"] += len(notes)
            except TRANSIENT_ERRORS as exc:
                failure = exc  # pub/sub is at most once: what came meanwhile is lost
            finally:
                self._drop(pubsub)
                with contextlib.suppress(Exception):  # the connection may already be gone
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis 8.2
            if failure is not None:
                delay = backoff.next_delay()
                log.warning("websocket fan-out: Redis error (%s), again in %.1fs", failure, delay)
                await self.sleep(delay)

    def _drop(self, pubsub: Any) -> None:
        if self._pubsub is pubsub:
            self._pubsub = None
        self._requested = set()
        self._confirmed = set()

    async def _take(self, message: Mapping[str, Any], notes: list[dict[str, Any]]) -> None:
        kind = message.get("type")
        channel = message.get("channel")
        name = channel.decode() if isinstance(channel, bytes) else str(channel)
        if kind == "message":
            try:
                notes.append(orjson.loads(message["data"]))
            except orjson.JSONDecodeError:
                log.warning("websocket fan-out: a message on %s is not JSON, dropped", name)
        elif kind in ("subscribe", "unsubscribe"):
            async with self._confirmation:
                if kind == "subscribe" and name in self._requested:
                    self._confirmed.add(name)
                elif kind == "unsubscribe" and name not in self._requested:
                    self._confirmed.discard(name)
                self._confirmation.notify_all()

    async def _deliver_ephemeral(self, notifications: list[dict[str, Any]]) -> None:
        pairs: list[_Pair] = []
        for notification in notifications:
            try:
                for subscription in self.subscriptions.matching(notification):
                    if getattr(subscription, "is_ephemeral", False):
                        pairs.append(self._pair(subscription, notification))
            except Exception:
                self._failed(notification, None)
        if pairs:
            await self._deliver_pairs(pairs, [])

    # -- per-subscription timeouts --

    async def _timers(self) -> None:
        backoff = Backoff()
        while not self.should_stop:
            try:
                fired = await self.fire_due_timers()
                backoff.reset()
                if not fired:
                    await self.sleep(self.timer_interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if retryable(exc):
                    delay = backoff.next_delay()
                    log.warning(
                        "subscription timers: Redis error (%s), retrying in %.1fs", exc, delay
                    )
                    await self.sleep(delay)
                    continue
                log.exception("subscription timers failed; retrying")
                await self.sleep(self.timer_interval)

    async def fire_due_timers(self, now: float | None = None) -> int:
        """Deliver ``xcm.timeout`` for each subscription timer that is due; returns how many.

        Several workers run this loop: ``ZREM`` tells which one claimed a timer."""
        now = time.time() if now is None else now
        if self._ttl_unreturned:
            await self.client.zadd(self._ttl_key, self._ttl_unreturned)
            self._ttl_unreturned = {}
        due = await self.client.zrangebyscore(self._ttl_key, 0, now, start=0, num=100)
        fired = 0
        for raw in due:
            member = raw.decode() if isinstance(raw, bytes) else str(raw)
            note = await self.client.hget(self._ttl_notes, member)
            if not await self.client.zrem(self._ttl_key, member):
                continue  # another worker took it
            subscription_id = member.split("|", 1)[0]
            subscription = self.subscriptions.get(subscription_id)
            if note is None or subscription is None:
                await self.client.hdel(self._ttl_notes, member)
                continue
            sent = orjson.loads(note)
            timeout = {
                **sent,
                "type": "xcm.timeout",
                "id": f"{sent['journeyId']}:timeout:{len(sent.get('legs') or [1]) - 1}",
            }
            try:
                await self.deliver_to(subscription, timeout)
            except BaseException:
                # Not delivered: put the timer back (due now) for the next pass, or another
                # worker, to fire it again; if Redis refuses that too (the same outage, or
                # out of memory, where the claim's ZREM went through), the next pass does.
                try:
                    await self.client.zadd(self._ttl_key, {member: now})
                except Exception:
                    self._ttl_unreturned[member] = now
                raise
            await self.client.hdel(self._ttl_notes, member)
            self.counters["subscription_timeouts"] += 1
            fired += 1
        return fired
