"""Persistent webhook delivery (XCM.md §13): retries, leases and dead letters, all in Redis.

::

    dispatcher = WebhookDispatcher(client, "ocs:", WebhookSettings(),
                                   get_subscription=store.get_raw_dict)
    await dispatcher.start()
    await dispatcher.enqueue("my-sub", 0, notification)   # or enqueue_many, for a batch
    ...
    await dispatcher.stop()

**At most once per channel.** :meth:`WebhookDispatcher.enqueue` accepts a notification once per
(subscription, channel, notification ``id``): ``SET NX`` on a marker kept ``dedupe_ttl`` (7 days)
guards it, in the same Lua call that stores the delivery, so a notification re-emitted after a
crash or a replay is not delivered again.

**Everything is in Redis**, so any worker can pick up where another stopped. Keys, under the
dispatcher's prefix ``P``:

=============================  ======  ===========================================================
``P wh:sent:{sub}:{ch}:{nid}`` string  the notification was accepted for that channel (TTL)
``P wh:d:{deliveryId}``        hash    the delivery: subscription, channel, notification, attempt…
``P wh:due``                   zset    deliveryId → when the next attempt is due (ms, Redis clock)
``P wh:inflight``              zset    deliveryId → lease deadline of the worker attempting it
``P wh:lease``                 hash    deliveryId → lease token of that worker
``P wh:dead``                  zset    deliveryId → when it was dead-lettered
``P wh:disabled:{sub}:{ch}``   string  the channel answered 410 Gone (JSON: reason, time)
``P wh:stats``                 hash    ``{sub}|delivered``, ``|failed``, ``|retrying``, ``|dead``
=============================  ======  ===========================================================

**Claiming.** The loop claims due deliveries with one Lua call: it moves each from ``due`` to
``inflight`` with a lease deadline and records its lease token, so two workers never attempt the
same delivery at once. Every result (delivered, retry, dead letter, drop) is written by a Lua call
that first checks the token: a worker whose lease expired cannot overwrite the state another
worker now owns. Expired leases (a crashed worker) go back to ``due`` at the next claim; the
attempt is then repeated, so a receiver may see a delivery twice if a worker dies between its
POST and the result (receivers deduplicate on ``webhook-id``). The lease is ``3 × timeout + 30 s``,
far longer than an attempt can take.

**Hand-off.** A dispatcher whose loop runs and has room (fewer than ``max_concurrency`` attempts
under way, and nothing left waiting in ``due`` since its last claim) does not send what it
enqueues round through ``due``: the enqueue call stores the
delivery already leased to it (``inflight`` and ``lease``, as a claim would) and the dispatcher
attempts it at once. That spares each first attempt a claim (a Lua call, its reply and the loop's
wake-up): in ``benchmarks/webhook.py`` a dispatcher's median from enqueue to receiver went from
1.7–1.8 ms to 1.0–1.2 ms. Everything after the lease is the same: a crash leaves an expiring
lease, a failed attempt is scheduled in ``due``, and a dispatcher stopped before its replies
came hands the deliveries back to ``due``. A dispatcher that only enqueues (its loop not
started) schedules them. The one case that is slower than before: when Redis ran an enqueue but
its reply was lost (the connection dropped), the delivery waits for its lease to expire, as a
crashed worker's would, and the caller's second enqueue finds the marker.

**Each attempt** re-reads the subscription with ``get_subscription``: a deleted subscription, a
removed channel or a channel that is no longer a webhook drops the delivery, a changed URL,
secret or template is used, and the channel's ``events`` (or the subscription's) are checked
again. It then checks the target (:mod:`ocstream.sinks.ssrf`), renders the body and POSTs to
``<url>/<deliveryId>``:

* 2xx → delivered; the delivery is deleted.
* 410 Gone → the channel is disabled (``wh:disabled``) and the delivery is dead-lettered; later
  deliveries to that channel are dropped until :meth:`~WebhookDispatcher.enable`.
* any other status, a timeout or a connection error → the next attempt is scheduled after the
  next step of ``schedule`` (±``jitter``); after the last step → dead letter.
* a refused target (SSRF guard), a template that fails (strict mode) or an invalid ``secret`` →
  dead letter at once: retrying cannot help.

Dead letters keep the delivery with its last error, status, URL and times;
:meth:`~WebhookDispatcher.dead_letters` lists them (newest first) and
:meth:`~WebhookDispatcher.replay` schedules one again from attempt 0. At most
``dead_letter_max`` are kept (the oldest go first).

Scripts use only Redis 6.2 commands and build delivery keys inside Lua, so the keys of one
prefix must live on one Redis (no cluster), as for the transport.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hmac
import importlib.metadata
import inspect
import json
import logging
import random
import re
import secrets
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from redis.asyncio import Redis
from yarl import URL

from ..transport.client import TRANSIENT_ERRORS, Backoff, retryable
from ..transport.scripts import LuaScript, run_pipelined
from .http1 import Http1Client, InvalidHeader
from .ssrf import GuardedResolver, TargetRefused, TargetUnresolved, check_target
from .templates import TemplateError, compile_template

__all__ = [
    "COUNTERS",
    "DEFAULT_SCHEDULE",
    "DeliveryIds",
    "InvalidSecret",
    "WebhookDispatcher",
    "WebhookSettings",
    "delivery_url",
    "sign",
    "signing_key",
]

log = logging.getLogger(__name__)

#: Delay before each attempt, in seconds: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
DEFAULT_SCHEDULE: Final[tuple[float, ...]] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)

#: The counters in :attr:`WebhookDispatcher.counters` (all present from the start).
COUNTERS: Final = (
    "enqueued",  # deliveries accepted by enqueue()
    "handed_off",  # of those, leased to this dispatcher as they were stored and attempted at once
    "dropped_duplicates",  # enqueue() of a notification already accepted for that channel
    "delivered",  # 2xx answers
    "failed_attempts",  # attempts that did not deliver (any reason)
    "retries_scheduled",  # failed attempts followed by another attempt
    "dead_letters",  # deliveries moved to the dead-letter set
    "disabled",  # channels disabled by a 410
    "dropped_disabled",  # deliveries dropped because their channel is disabled
    "dropped_deleted",  # deliveries dropped because the subscription or channel is gone
    "dropped_filtered",  # deliveries dropped because the channel's events exclude the type
    "refused_targets",  # attempts refused by the SSRF guard
    "template_errors",  # attempts whose template failed
    "replayed",  # dead letters scheduled again by replay()
    "lease_lost",  # results discarded because the lease had expired (another worker took over)
)

SubscriptionGetter = Callable[[str], Awaitable[Mapping[str, Any] | None] | Mapping[str, Any] | None]


def _version() -> str:
    module = sys.modules.get("ocstream")
    value = getattr(module, "__version__", None)
    if isinstance(value, str):
        return value
    try:
        return importlib.metadata.version("ocstream")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - not installed
        return "0"


def _default_user_agent() -> str:
    return f"ocstream/{_version()}"


@dataclass
class WebhookSettings:
    """Tunables of webhook delivery. The defaults suit production; tests shorten ``schedule``."""

    #: Seconds one attempt may take: the DNS check, connecting, sending and the answer's headers.
    timeout: float = 10.0
    #: Delay before each attempt (seconds); its length is the number of attempts.
    schedule: Sequence[float] = DEFAULT_SCHEDULE
    #: Each delay is multiplied by a random factor in [1 - jitter, 1 + jitter].
    jitter: float = 0.1
    #: POST to loopback, private, link-local… addresses too (tests; receivers on the LAN).
    allow_private_targets: bool = False
    user_agent: str = field(default_factory=_default_user_agent)
    #: POSTs in flight at once, per dispatcher.
    max_concurrency: int = 64
    #: How long the at-most-once marker of a (subscription, channel, notification) lives.
    dedupe_ttl: float = 7 * 86400.0
    #: Seconds between looks at the due set when nothing wakes the loop (another worker's
    #: enqueue, a retry coming due).
    poll_interval: float = 0.5
    #: Dead letters kept; the oldest are deleted beyond this.
    dead_letter_max: int = 100_000
    #: Longest rendered template body, in characters.
    max_body_chars: int = 1_000_000
    #: Lease of a claimed delivery (seconds); default 3 × timeout + 30.
    lease: float | None = None
    #: Seconds stop() lets in-flight attempts finish before cancelling them; default timeout + 1.
    stop_grace: float | None = None

    def __post_init__(self) -> None:
        if not self.schedule:
            raise ValueError("schedule needs at least one step")
        if any(step < 0 for step in self.schedule):
            raise ValueError("schedule steps must be >= 0")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if self.timeout <= 0 or self.max_concurrency < 1:
            raise ValueError("timeout and max_concurrency must be positive")
        self.schedule = tuple(float(step) for step in self.schedule)

    @property
    def lease_seconds(self) -> float:
        return self.lease if self.lease is not None else 3 * self.timeout + 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt`` (0-based), with jitter."""
        base = self.schedule[attempt]
        if base <= 0 or self.jitter == 0:
            return base
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


# --------------------------------------------------------------------------------------------
# Ids, URLs and signatures

_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class DeliveryIds:
    """ULID-style ids: 26 Crockford base32 characters, 48 bits of milliseconds then 80 random
    bits. Ids from one generator sort in creation order (within a millisecond the random part
    is incremented)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_random = 0

    def new(self, now_ms: int | None = None) -> str:
        ms = int(time.time() * 1000) if now_ms is None else now_ms
        with self._lock:
            if ms <= self._last_ms:
                ms = self._last_ms
                rnd = self._last_random + 1
                if rnd >= 1 << 80:
                    ms, rnd = ms + 1, secrets.randbits(79)
            else:
                rnd = secrets.randbits(79)  # headroom for increments within a millisecond
            self._last_ms, self._last_random = ms, rnd
        value = ((ms & ((1 << 48) - 1)) << 80) | rnd
        chars = []
        for _ in range(26):
            chars.append(_CROCKFORD[value & 31])
            value >>= 5
        return "".join(reversed(chars))

    @staticmethod
    def timestamp_ms(delivery_id: str) -> int:
        """The creation time encoded in an id."""
        value = 0
        for char in delivery_id.upper():
            value = value * 32 + _CROCKFORD.index(char)
        return value >> 80


@functools.lru_cache(maxsize=1024)
def _url_parts(url: str) -> tuple[str, str]:
    parsed = URL(url)
    path = re.sub(r"/{2,}", "/", f"{parsed.raw_path}/")
    query = parsed.raw_query_string
    return f"{parsed.scheme}://{parsed.raw_authority}{path}", f"?{query}" if query else ""


def delivery_url(url: str, delivery_id: str) -> str:
    """``<url>/<deliveryId>``: the id appended to the path, duplicate slashes collapsed, the
    query string kept (fragments are never sent)."""
    head, query = _url_parts(url)
    return f"{head}{delivery_id.lstrip('/')}{query}"


class InvalidSecret(ValueError):
    """A ``whsec_`` secret whose remainder is not base64."""


def signing_key(secret: str) -> bytes:
    """The HMAC key of a channel ``secret``.

    ``whsec_<base64>`` (the Standard Webhooks form): the base64-decoded bytes. Anything else:
    the secret's UTF-8 bytes.
    """
    if secret.startswith("whsec_"):
        encoded = secret[len("whsec_") :]
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidSecret(f"the secret after whsec_ is not base64: {exc}") from exc
    else:
        key = secret.encode()
    if not key:
        raise InvalidSecret("the secret is empty")
    return key


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks ``webhook-signature`` value: ``v1,`` + base64(HMAC-SHA256(key,
    ``{id}.{timestamp}.{body}``))."""
    digest = hmac.digest(key, f"{message_id}.{timestamp}.".encode() + body, "sha256")
    return "v1," + base64.b64encode(digest).decode()


def _encode_notification(notification: Mapping[str, Any]) -> bytes:
    """Compact JSON in the notification's own key order (stored once: every attempt sends the
    same bytes)."""
    try:
        return orjson.dumps(notification)
    except TypeError:  # integers beyond 64 bits
        return json.dumps(notification, separators=(",", ":"), ensure_ascii=False).encode()


# --------------------------------------------------------------------------------------------
# Lua

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: sent marker, disabled flag, delivery hash, due, inflight, lease
# ARGV: marker ttl (s), deliveryId, subscription, channel, notificationId, type, notification,
#       lease (ms; 0: schedule it), lease token
# Returns 1 (scheduled), 2 (leased to the caller, who attempts it now), 0 (already accepted) or
# -1 (channel disabled).
ENQUEUE = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'EX', ARGV[1]) then return 0 end
redis.call('HSET', KEYS[3], 'deliveryId', ARGV[2], 'subscription', ARGV[3], 'channel', ARGV[4],
  'notificationId', ARGV[5], 'type', ARGV[6], 'notification', ARGV[7], 'attempt', 0,
  'createdAt', now)
local lease = tonumber(ARGV[8])
if lease > 0 then
  redis.call('ZADD', KEYS[5], now + lease, ARGV[2])
  redis.call('HSET', KEYS[6], ARGV[2], ARGV[9])
  return 2
end
redis.call('ZADD', KEYS[4], now, ARGV[2])
return 1
"""
)

# KEYS: due, inflight, lease
# ARGV: max deliveries, lease (ms), lease token, delivery hash prefix, disabled key prefix
# Returns {deliveries (each a flat field/value list plus '_disabled'), ms until the next due
# delivery (-1: none), leases expired}.
CLAIM = (
    _NOW
    + """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZADD', KEYS[1], now, id)
end
local out = {}
local limit = tonumber(ARGV[1])
if limit > 0 then
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    redis.call('ZREM', KEYS[1], id)
    local key = ARGV[4] .. id
    local fields = redis.call('HGETALL', key)
    if #fields > 0 then
      redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), id)
      redis.call('HSET', KEYS[3], id, ARGV[3])
      local sc = redis.call('HMGET', key, 'subscription', 'channel')
      local disabled = redis.call('EXISTS', ARGV[5] .. tostring(sc[1]) .. ':' .. tostring(sc[2]))
      fields[#fields + 1] = '_disabled'
      fields[#fields + 1] = tostring(disabled)
      out[#out + 1] = fields
    end
  end
end
local wait = -1
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt > 0 then wait = math.max(0, tonumber(nxt[2]) - now) end
return {out, wait, #expired}
"""
)

# KEYS: inflight, lease, delivery hash, due, dead
# ARGV: deliveryId, lease token, action (delete|retry|dead|release|defer), delay (ms),
#       dead-letter max, delivery hash prefix, then field/value pairs to set
# Returns 1, or 0 if the lease is not (or no longer) ours.
# The per-subscription figures of ``wh:stats`` (hash ``{sub}|{name}`` -> integer), kept by
# FINISH and REPLAY: ``delivered`` and ``failed`` count (2xx answers; attempts that did not
# deliver), ``retrying`` and ``dead`` are the deliveries now waiting for a retry and now in the
# dead-letter set.
_STATS = """
local function stat(sub, name, n)
  if sub then redis.call('HINCRBY', KEYS[6], sub .. '|' .. name, n) end
end
"""

# KEYS: inflight, lease, delivery hash, due, dead, stats
# ARGV: deliveryId, lease token, action (delete|retry|dead), delay (ms), dead-letter max,
#       delivery hash prefix, counted names (space-separated: delivered, failed), then the
#       field/value pairs to store
FINISH = (
    _NOW
    + _STATS
    + """
local id = ARGV[1]
if redis.call('HGET', KEYS[2], id) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], id)
redis.call('HDEL', KEYS[2], id)
local action = ARGV[3]
local sub = redis.call('HGET', KEYS[3], 'subscription')
local before = tonumber(redis.call('HGET', KEYS[3], 'attempt') or '0') or 0
for name in string.gmatch(ARGV[7], '%S+') do stat(sub, name, 1) end
if action == 'delete' then
  if before > 0 then stat(sub, 'retrying', -1) end
  redis.call('DEL', KEYS[3])
  return 1
end
if #ARGV > 7 then redis.call('HSET', KEYS[3], unpack(ARGV, 8)) end
if action == 'dead' then
  if before > 0 then stat(sub, 'retrying', -1) end
  stat(sub, 'dead', 1)
  redis.call('HSET', KEYS[3], 'deadAt', now)
  redis.call('ZADD', KEYS[5], now, id)
  local excess = redis.call('ZCARD', KEYS[5]) - tonumber(ARGV[5])
  if excess > 0 then
    for _, old in ipairs(redis.call('ZRANGE', KEYS[5], 0, excess - 1)) do
      redis.call('ZREM', KEYS[5], old)
      stat(redis.call('HGET', ARGV[6] .. old, 'subscription'), 'dead', -1)
      redis.call('DEL', ARGV[6] .. old)
    end
  end
else
  local after = tonumber(redis.call('HGET', KEYS[3], 'attempt') or '0') or 0
  if before == 0 and after > 0 then stat(sub, 'retrying', 1) end
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[4]), id)
end
return 1
"""
)

# KEYS: dead, due, delivery hash, (unused), (unused), stats.  ARGV: deliveryId.
# Returns 1 if it was a dead letter.
REPLAY = (
    _NOW
    + _STATS
    + """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
stat(redis.call('HGET', KEYS[3], 'subscription'), 'dead', -1)
redis.call('HSET', KEYS[3], 'attempt', 0, 'replayedAt', now)
redis.call('HINCRBY', KEYS[3], 'replays', 1)
redis.call('HDEL', KEYS[3], 'deadAt', 'deadReason')
redis.call('ZADD', KEYS[2], now, ARGV[1])
return 1
"""
)

_enqueue = LuaScript(ENQUEUE)
_claim = LuaScript(CLAIM)
_finish = LuaScript(FINISH)
_replay = LuaScript(REPLAY)


# --------------------------------------------------------------------------------------------
# Dispatcher


@dataclass(slots=True)
class _Outcome:
    action: str  # delete | retry | dead | defer
    counter: str | None = None
    status: int | None = None
    error: str | None = None
    reason: str | None = None  # why it is a dead letter, when that differs from ``error``
    url: str | None = None
    delay: float = 0.0
    attempted: bool = False  # a POST (or a try at one) happened: the attempt counts


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(value: Any, default: int | None = None) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _as_mapping(value: Any) -> Mapping[str, Any] | None:
    if value is None or isinstance(value, Mapping):
        return value
    dump = getattr(value, "model_dump", None)  # a pydantic subscription model
    if callable(dump):
        dumped = dump()
        return dumped if isinstance(dumped, Mapping) else None
    raise TypeError(f"get_subscription returned {type(value).__name__}, not a mapping")


class WebhookDispatcher:
    """Schedules, POSTs, retries and dead-letters webhook deliveries (see the module doc).

    ``client`` is a ``redis.asyncio.Redis`` (e.g. from :func:`ocstream.transport.client.connect`);
    it is not closed by :meth:`stop`. ``get_subscription(id)`` returns the subscription's current
    JSON (a mapping with ``channels``), or None once it is deleted; it may be a coroutine
    function. POSTs go through the dispatcher's own :class:`~ocstream.sinks.http1.Http1Client`,
    whose connections resolve names with the SSRF-guarded resolver.
    """

    def __init__(
        self,
        client: Redis,
        prefix: str,
        settings: WebhookSettings | None = None,
        *,
        get_subscription: SubscriptionGetter,
        name: str | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.settings = settings or WebhookSettings()
        self.get_subscription = get_subscription
        self.name = name or f"wh-{secrets.token_hex(4)}"
        self.counters: Counter[str] = Counter({name: 0 for name in COUNTERS})
        self.ids = DeliveryIds()
        self._http: Http1Client | None = None
        self._k_due = f"{prefix}wh:due"
        self._k_inflight = f"{prefix}wh:inflight"
        self._k_lease = f"{prefix}wh:lease"
        self._k_dead = f"{prefix}wh:dead"
        self._k_delivery = f"{prefix}wh:d:"
        self._k_disabled = f"{prefix}wh:disabled:"
        self._k_stats = f"{prefix}wh:stats"
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._claims = 0
        self._reserved = 0  # attempts promised to hand-offs waiting for their replies
        self._due_backlog = False  # deliveries are due now that the loop has not claimed yet
        # Enqueues and results are written by one task, many per round trip (a pipeline).
        self._results: list[tuple[LuaScript, list[str], list[Any], asyncio.Future[Any]]] = []
        self._results_ready = asyncio.Event()
        self._writer_task: asyncio.Task[None] | None = None

    # -- keys

    def sent_key(self, subscription_id: str, channel_index: int, notification_id: str) -> str:
        return f"{self.prefix}wh:sent:{subscription_id}:{channel_index}:{notification_id}"

    def disabled_key(self, subscription_id: str, channel_index: int) -> str:
        return f"{self._k_disabled}{subscription_id}:{channel_index}"

    def delivery_key(self, delivery_id: str) -> str:
        return f"{self._k_delivery}{delivery_id}"

    # -- producing

    async def enqueue(
        self, subscription_id: str, channel_index: int, notification: Mapping[str, Any]
    ) -> bool:
        """Schedule the notification for the channel now; False if it was already accepted for
        that channel (at most once per notification ``id``) or the channel is disabled."""
        (result,) = await self.enqueue_many([(subscription_id, channel_index, notification)])
        if isinstance(result, BaseException):
            raise result
        return result

    async def enqueue_many(
        self,
        deliveries: Sequence[tuple[str, int, Mapping[str, Any]]],
        bodies: Sequence[bytes | None] | None = None,
    ) -> list[bool | Exception]:
        """:meth:`enqueue` for each ``(subscription, channel, notification)``, in this order and
        in one round trip (the writer's pipeline). Returns, in the same order, what
        :meth:`enqueue` would return, or the exception it would raise: a Redis outage fails
        them all with the same error, and the caller may enqueue them all again (the markers
        keep that at most once). ``bodies``, when given, holds each notification's JSON
        already encoded (None: encode it here)."""
        results: list[bool | Exception | None] = [None] * len(deliveries)
        pending: list[tuple[int, asyncio.Future[Any], dict[str, str] | None]] = []
        # Hand-off: while this dispatcher's loop runs and has room, the deliveries are leased
        # to it as they are stored and attempted at once, without the claim's round trip.
        # The room is reserved until the replies are in, so the loop does not claim it too.
        room = 0
        if self._running() and not self._due_backlog:
            room = min(self._room(), len(deliveries))
        self._reserved += room
        token = self._next_token() if room else ""
        lease_ms = int(self.settings.lease_seconds * 1000)
        try:
            for position, (subscription_id, channel_index, notification) in enumerate(deliveries):
                notification_id = notification.get("id")
                if not isinstance(notification_id, str) or not notification_id:
                    results[position] = ValueError("a notification needs a non-empty string 'id'")
                    continue
                kind = notification.get("type")
                kind = kind if isinstance(kind, str) else ""
                delivery_id = self.ids.new()
                body = bodies[position] if bodies is not None else None
                if body is None:
                    body = _encode_notification(notification)
                record: dict[str, str] | None = None
                if room:
                    room -= 1
                    record = {
                        "deliveryId": delivery_id,
                        "subscription": subscription_id,
                        "channel": str(channel_index),
                        "notificationId": notification_id,
                        "type": kind,
                        "notification": body.decode(),
                        "attempt": "0",
                    }
                future = self._queue(
                    _enqueue,
                    [
                        self.sent_key(subscription_id, channel_index, notification_id),
                        self.disabled_key(subscription_id, channel_index),
                        self.delivery_key(delivery_id),
                        self._k_due,
                        self._k_inflight,
                        self._k_lease,
                    ],
                    [
                        max(1, int(self.settings.dedupe_ttl)),
                        delivery_id,
                        subscription_id,
                        channel_index,
                        notification_id,
                        kind,
                        body,
                        lease_ms if record is not None else 0,
                        token,
                    ],
                )
                pending.append((position, future, record))
            replies = await asyncio.gather(*(f for _, f, _ in pending), return_exceptions=True)
        finally:
            if token:
                self._reserved -= room + sum(1 for *_, record in pending if record is not None)
                self._wake.set()  # the loop may have waited for the reserved room
        scheduled = False
        released = []
        for (position, _, record), reply in zip(pending, replies, strict=True):
            if isinstance(reply, BaseException):
                if not isinstance(reply, Exception):  # a cancellation
                    raise reply
                results[position] = reply
            elif reply in (1, 2):
                self.counters["enqueued"] += 1
                results[position] = True
                if reply != 2 or record is None:
                    scheduled = True
                    self._due_backlog = True  # the loop's next claim says when it is gone
                elif self._stopping:  # stopped meanwhile: back to due, for whoever runs
                    released.append(record)
                else:
                    self.counters["handed_off"] += 1
                    self._start(record, token)
            else:
                self.counters["dropped_duplicates" if reply == 0 else "dropped_disabled"] += 1
                results[position] = False
        if scheduled:
            self._wake.set()
        for record in released:
            await self._write(record["deliveryId"], token, _Outcome("release"), record)
        return [False if r is None else r for r in results]

    def _running(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done() and not self._stopping

    def _room(self) -> int:
        """How many more attempts may start now (``max_concurrency``, less those running and
        those reserved by hand-offs waiting for their replies)."""
        return max(0, self.settings.max_concurrency - len(self._tasks) - self._reserved)

    def _next_token(self) -> str:
        self._claims += 1
        return f"{self.name}:{self._claims}"

    def _start(self, record: dict[str, str], token: str) -> None:
        task = asyncio.create_task(self._process(record, token))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- running

    async def start(self) -> None:
        """Start the delivery loop in a task (see :meth:`run`)."""
        if self._loop_task is not None and not self._loop_task.done():
            return
        self._stopping = False
        self._loop_task = asyncio.create_task(self.run(), name=f"webhook-dispatcher-{self.name}")

    async def stop(self) -> None:
        """Stop claiming, let attempts in flight finish (up to ``stop_grace``), then cancel the
        rest: their deliveries go back to due at once, for another worker."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            # The loop notices within poll_interval; cancelling it in the middle of a claim
            # would leave the claimed deliveries leased to nobody until the lease expires.
            done, _ = await asyncio.wait({self._loop_task}, timeout=self.settings.poll_interval + 5)
            if not done:
                self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        await self._drain()
        if self._writer_task is not None:  # it writes what is queued, then ends
            self._results_ready.set()
            await asyncio.gather(self._writer_task, return_exceptions=True)
            self._writer_task = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _drain(self) -> None:
        if not self._tasks:
            return
        grace = self.settings.stop_grace
        grace = self.settings.timeout + 1 if grace is None else grace
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def run(self) -> None:
        """The delivery loop: claim due deliveries and attempt them, up to ``max_concurrency``
        at once, until :meth:`stop` (or cancellation)."""
        backoff = Backoff(base=0.2, cap=5.0)
        settings = self.settings
        while not self._stopping:
            free = self._room()
            if free <= 0:
                if self._tasks:
                    await asyncio.wait(
                        set(self._tasks),
                        timeout=settings.poll_interval,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                else:  # all of it reserved by hand-offs, which wake the loop when done
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), settings.poll_interval)
                continue
            self._wake.clear()
            batch = min(free, 100)
            try:
                claimed, wait_ms = await self._claim(batch)
            except Exception as exc:
                # Redis away or refusing writes for now (out of memory, a replica): one line
                # per try; anything else with its traceback. The loop goes on either way.
                if not retryable(exc):
                    log.exception("webhook: claiming due deliveries failed")
                await backoff.wait(log, "webhook claim", exc)
                continue
            backoff.reset()
            for record, token in claimed:
                self._start(record, token)
            if len(claimed) == batch:
                continue  # there may be more due now
            timeout = settings.poll_interval
            if wait_ms >= 0:
                timeout = min(timeout, wait_ms / 1000)
            if timeout > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)

    async def _claim(self, limit: int) -> tuple[list[tuple[dict[str, str], str]], int]:
        token = self._next_token()
        raw = await _claim(
            self.client,
            [self._k_due, self._k_inflight, self._k_lease],
            [
                limit,
                int(self.settings.lease_seconds * 1000),
                token,
                self._k_delivery,
                self._k_disabled,
            ],
        )
        deliveries, wait_ms, expired = raw
        # More is due now than this claim took: hand-offs wait until the loop has caught up,
        # so that new deliveries do not keep overtaking retries and overflow already due.
        self._due_backlog = int(wait_ms) == 0
        if expired:
            log.warning("webhook: %d expired lease(s) put back to due", expired)
        out = []
        for flat in deliveries:
            record = {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}
            out.append((record, token))
        return out, int(wait_ms)

    # -- one attempt

    async def _process(self, record: dict[str, str], token: str) -> None:
        delivery_id = record["deliveryId"]
        try:
            outcome = await self._attempt(record)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self._write(delivery_id, token, _Outcome("release"), record)
            raise
        except Exception as exc:  # a bug must not kill the loop
            # Counted as a failed attempt: retried on the schedule, then a dead letter (a
            # failure that repeats must not be retried forever). The log shows the innermost
            # frames only: a RecursionError's full traceback is thousands of lines.
            frames = "".join(traceback.format_exception(exc, limit=-6))
            log.error("webhook: delivery %s failed unexpectedly: %s", delivery_id, frames[-4000:])
            error = f"internal error: {type(exc).__name__}: {str(exc)[:300]}"
            outcome = _Outcome("retry", error=error, attempted=True)
        attempts = _int(record.get("attempt"), 0) or 0
        if outcome.attempted and outcome.action != "delete":
            self.counters["failed_attempts"] += 1
            attempts += 1
            if outcome.action == "retry":
                if attempts >= len(self.settings.schedule):
                    outcome.action = "dead"
                    outcome.reason = f"gave up after {attempts} attempts: {outcome.error}"
                else:
                    outcome.delay = self.settings.delay(attempts)
                    self.counters["retries_scheduled"] += 1
        if outcome.action == "dead":
            log.warning(
                "webhook: delivery %s (subscription %s, channel %s) dead-lettered: %s",
                delivery_id,
                record.get("subscription"),
                record.get("channel"),
                outcome.reason or outcome.error,
            )
        record["attempt"] = str(attempts)
        await self._write(delivery_id, token, outcome, record)
        # counted once the outcome is stored, so a reader who sees a count (a
        # test, /metrics) also finds the delivery in its new state
        if outcome.counter:
            self.counters[outcome.counter] += 1
        if outcome.action == "dead":
            self.counters["dead_letters"] += 1

    async def _write(
        self, delivery_id: str, token: str, outcome: _Outcome, record: Mapping[str, str]
    ) -> None:
        fields: list[Any] = []
        if outcome.action in ("retry", "dead", "defer"):
            fields += ["attempt", record.get("attempt", "0")]
            if outcome.attempted:
                fields += ["lastAttemptAt", int(time.time() * 1000)]
                fields += ["lastStatus", "" if outcome.status is None else outcome.status]
            if outcome.error is not None:
                fields += ["lastError", outcome.error[:2000]]
            if outcome.url is not None:
                fields += ["lastUrl", outcome.url]
            if outcome.action == "dead":
                fields += ["deadReason", (outcome.reason or outcome.error or "")[:2000]]
        action = "retry" if outcome.action in ("defer", "release") else outcome.action
        counted = []  # the wh:stats figures this outcome adds one to
        if outcome.counter == "delivered":
            counted.append("delivered")
        if outcome.attempted and outcome.action != "delete":
            counted.append("failed")
        delay_ms = int(outcome.delay * 1000) if outcome.action != "release" else 0
        backoff = Backoff(base=0.1, cap=2.0)
        for attempt in range(8):
            try:
                ok = await self._submit(
                    _finish,
                    [
                        self._k_inflight,
                        self._k_lease,
                        self.delivery_key(delivery_id),
                        self._k_due,
                        self._k_dead,
                        self._k_stats,
                    ],
                    [
                        delivery_id,
                        token,
                        action,
                        delay_ms,
                        self.settings.dead_letter_max,
                        self._k_delivery,
                        " ".join(counted),
                        *fields,
                    ],
                )
                break
            except Exception as exc:
                # Redis away, or refusing writes for now (out of memory, a replica): retried
                # a while; anything else is a bug to see, not to retry.
                if not retryable(exc):
                    raise
                if attempt == 7 or self._stopping and outcome.action == "release":
                    log.warning(
                        "webhook: could not record the result of %s (%s); its lease will "
                        "expire and it will be attempted again",
                        delivery_id,
                        exc,
                    )
                    return
                await backoff.wait(log, "webhook result", exc)
        if not ok:
            self.counters["lease_lost"] += 1
            log.warning("webhook: lease of %s expired before its result was recorded", delivery_id)

    async def _submit(self, script: LuaScript, keys: list[str], args: list[Any]) -> Any:
        """Run a script call through the writer task, which sends all the calls queued
        meanwhile in one pipeline; returns the call's reply (or raises its error)."""
        return await self._queue(script, keys, args)

    def _queue(self, script: LuaScript, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        """Queue a script call for the writer task (calls are sent in the order queued); the
        future gets the call's reply or error."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._results.append((script, keys, args, future))
        self._results_ready.set()
        if self._writer_task is None or self._writer_task.done():
            self._writer_task = asyncio.create_task(
                self._write_results(), name=f"webhook-results-{self.name}"
            )
        return future

    async def _write_results(self) -> None:
        while True:
            if not self._results:
                if self._stopping:
                    return
                await self._results_ready.wait()
                self._results_ready.clear()
                continue
            batch, self._results = self._results, []
            try:
                replies = await run_pipelined(
                    self.client, [(script, keys, args) for script, keys, args, _ in batch]
                )
            except Exception as exc:  # the callers retry (or give up) one by one
                replies = [exc] * len(batch)
            for (_, _, _, future), reply in zip(batch, replies, strict=True):
                if future.done():
                    continue
                if isinstance(reply, BaseException):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)

    async def _subscription(self, subscription_id: str) -> Mapping[str, Any] | None:
        """The subscription as ``get_subscription`` gives it; a getter that waits gets
        ``timeout`` seconds (a worker's live view answers at once, without a timer)."""
        value = self.get_subscription(subscription_id)
        if inspect.isawaitable(value):
            async with asyncio.timeout(self.settings.timeout):
                value = await value
        return _as_mapping(value)

    async def _attempt(self, record: Mapping[str, str]) -> _Outcome:
        delivery_id = record["deliveryId"]
        if record.get("_disabled") == "1":
            return _Outcome("delete", "dropped_disabled")
        subscription_id = record.get("subscription", "")
        channel_index = _int(record.get("channel"), -1)
        try:
            subscription = await self._subscription(subscription_id)
        except Exception as exc:
            log.warning("webhook: reading subscription %s failed: %s", subscription_id, exc)
            return _Outcome("defer", error=f"reading the subscription failed: {exc}", delay=5.0)
        if subscription is None:
            return _Outcome("delete", "dropped_deleted")
        channels = subscription.get("channels")
        if (
            channel_index is None
            or not isinstance(channels, Sequence)
            or not 0 <= channel_index < len(channels)
            or not isinstance(channels[channel_index], Mapping)
            or channels[channel_index].get("type") != "webhook"
        ):
            return _Outcome("delete", "dropped_deleted")
        channel: Mapping[str, Any] = channels[channel_index]
        events = channel.get("events")
        if events is None:
            events = subscription.get("events")
        kind = record.get("type", "")
        if isinstance(events, list) and kind and kind not in events:
            return _Outcome("delete", "dropped_filtered")

        url = channel.get("url")
        if not isinstance(url, str):
            return _Outcome("dead", error="the channel has no url", attempted=True)
        try:
            target = delivery_url(url, delivery_id)
        except (ValueError, TypeError) as exc:
            error = f"target refused: invalid URL ({exc})"
            return _Outcome("dead", "refused_targets", error=error, attempted=True)

        body = record.get("notification", "").encode()
        template = channel.get("template")
        if isinstance(template, str) and template:
            try:
                body = (
                    compile_template(template)
                    .render(orjson.loads(body), max_chars=self.settings.max_body_chars)
                    .encode()
                )
            except (TemplateError, RecursionError, MemoryError, ValueError) as exc:
                # Any failure of the template is the template's: retrying cannot help.
                error = f"template: {exc}"[:1000]
                return _Outcome("dead", "template_errors", error=error, url=target, attempted=True)

        content_type = channel.get("contentType") or "application/json"
        headers = {"content-type": str(content_type), "user-agent": self.settings.user_agent}
        bearer = channel.get("bearer")
        if isinstance(bearer, str) and bearer:
            headers["authorization"] = f"Bearer {bearer}"
        secret = channel.get("secret")
        if isinstance(secret, str) and secret:
            try:
                key = signing_key(secret)
            except InvalidSecret as exc:
                error = f"invalid secret: {exc}"
                return _Outcome("dead", error=error, url=target, attempted=True)
            timestamp = int(time.time())
            headers["webhook-id"] = delivery_id
            headers["webhook-timestamp"] = str(timestamp)
            headers["webhook-signature"] = sign(key, delivery_id, timestamp, body)

        try:
            # The channel's URL, not the target: they share scheme, user info and host, and
            # the channel's is parsed once (the delivery id makes each target new). Only a
            # name to resolve waits, for at most ``timeout``.
            await check_target(url, self.settings.allow_private_targets, self.settings.timeout)
        except TargetRefused as exc:
            return _Outcome("dead", "refused_targets", error=str(exc), url=target, attempted=True)
        except (TargetUnresolved, TimeoutError) as exc:
            error = str(exc) if isinstance(exc, TargetUnresolved) else "DNS timeout"
            return _Outcome("retry", error=error, url=target, attempted=True)

        return await self._post(target, body, headers, record)

    async def _post(
        self, target: str, body: bytes, headers: dict[str, str], record: Mapping[str, str]
    ) -> _Outcome:
        if self._http is None:  # made on the first POST (and again after a stop)
            # No cookies, no proxy from the environment, no redirects, no decompression: a
            # receiver's answer cannot make the dispatcher send anything anywhere else.
            self._http = Http1Client(GuardedResolver(self.settings.allow_private_targets))
        timeout = self.settings.timeout
        try:
            status, snippet = await self._http.post(
                URL(target, encoded=True), body, headers, timeout
            )
        except TargetRefused as exc:
            return _Outcome("dead", "refused_targets", error=str(exc), url=target, attempted=True)
        except InvalidHeader as exc:
            return _Outcome("dead", error=str(exc), url=target, attempted=True)
        except TimeoutError:
            return _Outcome(
                "retry", error=f"timeout after {timeout:g} s", url=target, attempted=True
            )
        except (OSError, TargetUnresolved) as exc:  # the connection's own lookup failed too
            error = f"{type(exc).__name__}: {exc}"
            return _Outcome("retry", error=error, url=target, attempted=True)
        if 200 <= status < 300:
            return _Outcome("delete", "delivered", status=status)
        error = f"HTTP {status}" + (f": {snippet}" if snippet else "")
        if status == 410:
            await self._disable(record, error)
            return _Outcome(
                "dead", "disabled", status=status, error=f"{error} (channel disabled)", url=target,
                attempted=True,
            )  # fmt: skip
        return _Outcome("retry", status=status, error=error, url=target, attempted=True)

    async def _disable(self, record: Mapping[str, str], reason: str) -> None:
        subscription_id = record.get("subscription", "")
        channel_index = _int(record.get("channel"), 0) or 0
        value = orjson.dumps(
            {"reason": reason, "at": int(time.time() * 1000), "deliveryId": record["deliveryId"]}
        )
        with contextlib.suppress(*TRANSIENT_ERRORS):
            await self.client.set(self.disabled_key(subscription_id, channel_index), value)
        log.warning(
            "webhook: subscription %s channel %s answered 410 Gone: disabled",
            subscription_id,
            channel_index,
        )

    # -- admin

    async def dead_letters(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Dead letters, newest first: the delivery with ``attempts``, ``lastError``,
        ``lastStatus``, ``lastUrl``, ``createdAt``, ``lastAttemptAt`` and ``deadAt`` (ms)."""
        if limit <= 0:
            return []
        ids = await self.client.zrevrange(self._k_dead, offset, offset + limit - 1)
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for raw_id in ids:
            pipe.hgetall(self.delivery_key(_text(raw_id)))
        records = await pipe.execute()
        out: list[dict[str, Any]] = []
        for raw_id, raw in zip(ids, records, strict=True):
            if not raw:
                continue
            record = {_text(k): _text(v) for k, v in raw.items()}
            out.append(self._present(_text(raw_id), record))
        return out

    @staticmethod
    def _present(delivery_id: str, record: Mapping[str, str]) -> dict[str, Any]:
        try:
            notification: Any = orjson.loads(record.get("notification", "null"))
        except orjson.JSONDecodeError:
            notification = record.get("notification")
        return {
            "deliveryId": delivery_id,
            "subscription": record.get("subscription"),
            "channel": _int(record.get("channel")),
            "notificationId": record.get("notificationId"),
            "type": record.get("type") or None,
            "notification": notification,
            "attempts": _int(record.get("attempt"), 0),
            "lastError": record.get("lastError"),
            "lastStatus": _int(record.get("lastStatus")),
            "lastUrl": record.get("lastUrl"),
            "reason": record.get("deadReason"),
            "createdAt": _int(record.get("createdAt")),
            "lastAttemptAt": _int(record.get("lastAttemptAt")),
            "deadAt": _int(record.get("deadAt")),
            "replays": _int(record.get("replays"), 0),
        }

    async def replay(self, delivery_id: str) -> bool:
        """Schedule a dead letter again, now, from attempt 0; False if it is not a dead letter."""
        done = await _replay(
            self.client,
            [
                self._k_dead,
                self._k_due,
                self.delivery_key(delivery_id),
                self._k_dead,
                self._k_dead,
                self._k_stats,
            ],
            [delivery_id],
        )
        if done == 1:
            self.counters["replayed"] += 1
            self._wake.set()
            return True
        return False

    async def enable(self, subscription_id: str, channel_index: int) -> bool:
        """Re-enable a channel disabled by a 410; False if it was not disabled."""
        removed = await self.client.delete(self.disabled_key(subscription_id, channel_index))
        return bool(removed)

    async def disabled(self, subscription_id: str, channel_index: int) -> dict[str, Any] | None:
        """Why and when the channel was disabled, or None if it is enabled."""
        raw = await self.client.get(self.disabled_key(subscription_id, channel_index))
        if raw is None:
            return None
        value = orjson.loads(raw)
        return value if isinstance(value, dict) else {"reason": str(value)}

    async def disabled_channels(self, channels: Sequence[tuple[str, int]]) -> set[tuple[str, int]]:
        """Which of ``(subscription id, channel index)`` are disabled, in one round trip."""
        if not channels:
            return set()
        raw = await self.client.mget([self.disabled_key(s, i) for s, i in channels])
        return {channel for channel, value in zip(channels, raw, strict=True) if value is not None}

    async def subscription_status(self) -> dict[str, dict[str, int]]:
        """Per subscription: ``delivered`` (2xx answers) and ``failed`` (attempts that did not
        deliver) since the stats began, ``retrying`` (deliveries now waiting for another
        attempt) and ``dead`` (now in the dead-letter set). All workers write the same hash."""
        raw = await self.client.hgetall(self._k_stats)
        out: dict[str, dict[str, int]] = {}
        for field_name, value in raw.items():
            subscription, _, name = _text(field_name).rpartition("|")
            figures = out.setdefault(
                subscription, {"delivered": 0, "failed": 0, "retrying": 0, "dead": 0}
            )
            figures[name] = max(0, _int(_text(value), 0) or 0)
        return out

    async def gauges(self) -> dict[str, int]:
        """``due`` (scheduled), ``due_now`` (overdue), ``in_flight`` (leased, all workers),
        ``dead`` (dead letters) and ``active`` (POSTs in flight in this dispatcher)."""
        now_ms = int(time.time() * 1000)
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(self._k_due)
        pipe.zcount(self._k_due, "-inf", now_ms)
        pipe.zcard(self._k_inflight)
        pipe.zcard(self._k_dead)
        due, due_now, in_flight, dead = await pipe.execute()
        return {
            "due": int(due),
            "due_now": int(due_now),
            "in_flight": int(in_flight),
            "dead": int(dead),
            "active": len(self._tasks),
        }
