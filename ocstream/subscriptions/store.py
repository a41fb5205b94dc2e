"""Where subscriptions live: persistent ones in Redis, ephemeral ones in the process holding
their websocket, and a live in-memory view of both for the notify path.

=========================  ======  ==========================================================
key                        type    content
=========================  ======  ==========================================================
``{prefix}subs``           hash    subscription id -> its JSON as the user gave it
``{prefix}subs:version``   string  counter, incremented by every change
``{prefix}subs:changed``   pubsub  the new version, published by every change
``{prefix}subs:owner``     hash    subscription id -> the client that created it
``{prefix}subs:owned``     hash    client -> how many subscriptions it holds
=========================  ======  ==========================================================

A client is what :func:`ocstream.guard.client_key` makes of a request (its bearer token, else
its address); the per-client limit counts what a client created and still exists.

Every change is one Lua script (check, write, ``INCR`` the version, ``PUBLISH`` it), so a batch
is created all or nothing and two workers cannot both take the last slot under the limit. The
message is the new version followed by the ids it changed (``"42 sub-a sub-b"``).

:class:`LiveSubscriptions` keeps every worker's cache in step, one change at a time: a message
that follows the loaded version reads just the ids it names (``HMGET``), and the API hands the
worker that wrote a change the new JSON directly (:meth:`LiveSubscriptions.apply`). A message
that does not follow (one was lost) triggers a full reload, and so does a version that moved
while no message came for a whole ``poll_interval`` (1 s) poll. A full reload also runs every
``resync_interval`` (60 s), for a Redis that lost its data and counted its version up again.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.asyncio import Redis

from ..errors import OcstreamError
from ..transport.client import Backoff
from ..transport.keys import DEFAULT_PREFIX
from .models import Subscription

__all__ = [
    "ConcurrentModification",
    "DuplicateSubscription",
    "EphemeralRegistry",
    "LiveSubscriptions",
    "SubscriptionChanges",
    "SubscriptionError",
    "SubscriptionLimits",
    "SubscriptionNotFound",
    "SubscriptionStore",
    "TooManySubscriptions",
]

log = logging.getLogger(__name__)


# --- errors -------------------------------------------------------------------------------------


class SubscriptionError(OcstreamError):
    """A subscription operation refused; ``status`` is the HTTP status that says why."""

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DuplicateSubscription(SubscriptionError):
    status = 409

    def __init__(self, subscription_id: str) -> None:
        super().__init__(f"Subscription with ID {subscription_id} already exists")
        self.subscription_id = subscription_id


class SubscriptionNotFound(SubscriptionError):
    status = 404

    def __init__(self, subscription_id: str) -> None:
        super().__init__(f"Subscription {subscription_id} not found.")
        self.subscription_id = subscription_id


class TooManySubscriptions(SubscriptionError):
    status = 429

    def __init__(self, kind: str, limit: int) -> None:
        if kind == "client":
            super().__init__(f"too many subscriptions for this client (at most {limit})")
        else:
            super().__init__("too many subscriptions")
        self.kind = kind
        self.limit = limit


class ConcurrentModification(SubscriptionError):
    status = 409

    def __init__(self, subscription_id: str) -> None:
        super().__init__(
            f"Subscription {subscription_id} was changed by another request; retry the request"
        )
        self.subscription_id = subscription_id


class SubscriptionLimits(BaseModel):
    """How many subscriptions a deployment takes (XCM.md §11.2)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Subscriptions stored in Redis, over all workers.
    max_persistent: int = Field(default=5000, ge=0)
    #: Ephemeral (websocket) subscriptions, per worker process.
    max_ephemeral: int = Field(default=5000, ge=0)
    #: Persistent subscriptions one client may hold (0: no per-client limit).
    max_persistent_per_client: int = Field(default=1000, ge=0)


# --- Lua ----------------------------------------------------------------------------------------

# KEYS: subs hash, version, owner hash, owned counts.
# ARGV: limit, channel, per-client limit (0: none), owner ('' = none), then id, json pairs.
_CREATE = """
local n = (#ARGV - 4) / 2
local seen = {}
for i = 5, #ARGV, 2 do
  local id = ARGV[i]
  if seen[id] or redis.call('HEXISTS', KEYS[1], id) == 1 then
    return {'duplicate', id}
  end
  seen[id] = true
end
local count = redis.call('HLEN', KEYS[1])
if count + n > tonumber(ARGV[1]) then
  return {'limit', tostring(count)}
end
local owner = ARGV[4]
local per_client = tonumber(ARGV[3])
if owner ~= '' and per_client > 0 then
  local owned = tonumber(redis.call('HGET', KEYS[4], owner) or '0')
  if owned + n > per_client then
    return {'client-limit', tostring(owned)}
  end
end
local ids = {}
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  if owner ~= '' then
    redis.call('HSET', KEYS[3], ARGV[i], owner)
  end
  ids[#ids + 1] = ARGV[i]
end
if owner ~= '' then
  redis.call('HINCRBY', KEYS[4], owner, n)
end
local version = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[2], version .. ' ' .. table.concat(ids, ' '))
return {'ok', tostring(version)}
"""

# KEYS: subs hash, version. ARGV: id, json, expected json ('' = any), channel.
_REPLACE = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then
  return {'missing', ''}
end
if ARGV[3] ~= '' and current ~= ARGV[3] then
  return {'conflict', ''}
end
if current == ARGV[2] then
  return {'ok', tostring(redis.call('GET', KEYS[2]) or '0')}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local version = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[4], version .. ' ' .. ARGV[1])
return {'ok', tostring(version)}
"""

# KEYS: subs hash, version, owner hash, owned counts. ARGV: channel, ids.
# Returns {removed, version}.
_DELETE = """
local removed = 0
local ids = {}
for i = 2, #ARGV do
  local gone = redis.call('HDEL', KEYS[1], ARGV[i])
  removed = removed + gone
  if gone == 1 then
    ids[#ids + 1] = ARGV[i]
  end
  local owner = redis.call('HGET', KEYS[3], ARGV[i])
  if owner then
    redis.call('HDEL', KEYS[3], ARGV[i])
    if gone == 1 and redis.call('HINCRBY', KEYS[4], owner, -1) <= 0 then
      redis.call('HDEL', KEYS[4], owner)
    end
  end
end
local version
if removed > 0 then
  version = redis.call('INCR', KEYS[2])
  redis.call('PUBLISH', ARGV[1], version .. ' ' .. table.concat(ids, ' '))
else
  version = tonumber(redis.call('GET', KEYS[2]) or '0')
end
return {removed, version}
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def _bytes(value: Any) -> bytes:
    return bytes(value) if isinstance(value, bytes | bytearray) else str(value).encode()


def _parse(raw: bytes) -> Subscription:
    return Subscription.model_validate_json(raw)


# --- the store ----------------------------------------------------------------------------------


class SubscriptionStore:
    """Persistent subscriptions in Redis, shared by every worker.

    Writes go through Lua scripts: ``create_many`` is all or nothing, ``replace`` can be a
    compare-and-set on the stored JSON, ``delete`` is idempotent. Reads validate the stored JSON
    with the model again.
    """

    def __init__(
        self,
        client: Redis,
        prefix: str = DEFAULT_PREFIX,
        limits: SubscriptionLimits | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.limits = limits or SubscriptionLimits()
        self.hash_key = f"{prefix}subs"
        self.version_key = f"{prefix}subs:version"
        self.channel = f"{prefix}subs:changed"
        self.owner_key = f"{prefix}subs:owner"
        self.owned_key = f"{prefix}subs:owned"
        self._create = client.register_script(_CREATE)
        self._replace = client.register_script(_REPLACE)
        self._delete = client.register_script(_DELETE)

    async def create(self, subscription: Subscription) -> int:
        return await self.create_many([subscription])

    async def create_many(
        self, subscriptions: Sequence[Subscription], *, owner: str | None = None
    ) -> int:
        """Store every subscription, or none: a duplicate id (in the batch or already stored)
        raises :class:`DuplicateSubscription`, going over the limit (the global one, or with
        ``owner`` the per-client one) :class:`TooManySubscriptions`. Returns the new version."""
        if not subscriptions:
            raise ValueError("no subscriptions to create")
        seen: set[str] = set()
        per_client = self.limits.max_persistent_per_client
        args: list[str | bytes | int] = [
            self.limits.max_persistent,
            self.channel,
            per_client,
            owner or "",
        ]
        for subscription in subscriptions:
            if subscription.is_ephemeral:
                raise SubscriptionError("ephemeral subscriptions are not stored")
            if subscription.id in seen:
                raise DuplicateSubscription(subscription.id)
            seen.add(subscription.id)
            args += [subscription.id, subscription.to_json_bytes()]
        if len(subscriptions) > self.limits.max_persistent:
            raise TooManySubscriptions("persistent", self.limits.max_persistent)
        if owner and per_client and len(subscriptions) > per_client:
            raise TooManySubscriptions("client", per_client)
        status, value = await self._create(
            keys=[self.hash_key, self.version_key, self.owner_key, self.owned_key], args=args
        )
        status, value = _text(status), _text(value)
        if status == "duplicate":
            raise DuplicateSubscription(value)
        if status == "limit":
            raise TooManySubscriptions("persistent", self.limits.max_persistent)
        if status == "client-limit":
            raise TooManySubscriptions("client", per_client)
        return int(value)

    async def get_raw(self, subscription_id: str) -> bytes | None:
        raw = await self.client.hget(self.hash_key, subscription_id)
        return None if raw is None else _bytes(raw)

    async def get(self, subscription_id: str) -> Subscription | None:
        raw = await self.get_raw(subscription_id)
        return None if raw is None else _parse(raw)

    async def list(self) -> list[Subscription]:
        """Every stored subscription, by id. Entries that no longer validate are skipped (and
        logged)."""
        raw = await self.client.hgetall(self.hash_key)
        subscriptions: list[Subscription] = []
        for key, value in sorted(raw.items(), key=lambda item: _text(item[0])):
            try:
                subscriptions.append(_parse(_bytes(value)))
            except ValidationError as exc:
                log.warning("subscription %s in Redis is invalid, skipped: %s", _text(key), exc)
        return subscriptions

    async def replace(self, subscription: Subscription, *, expected: bytes | None = None) -> int:
        """Overwrite a stored subscription (PATCH). With ``expected``, only if the stored JSON is
        still exactly that (else :class:`ConcurrentModification`). Raises
        :class:`SubscriptionNotFound` if it is gone. Returns the version."""
        if subscription.is_ephemeral:
            raise SubscriptionError("ephemeral subscriptions are not stored")
        status, value = await self._replace(
            keys=[self.hash_key, self.version_key],
            args=[subscription.id, subscription.to_json_bytes(), expected or b"", self.channel],
        )
        status = _text(status)
        if status == "missing":
            raise SubscriptionNotFound(subscription.id)
        if status == "conflict":
            raise ConcurrentModification(subscription.id)
        return int(_text(value))

    async def delete(self, subscription_id: str) -> bool:
        """Remove a subscription; True if it existed. Deleting an unknown id is no error."""
        removed, _ = await self.delete_versioned(subscription_id)
        return removed

    async def delete_versioned(self, subscription_id: str) -> tuple[bool, int]:
        """:meth:`delete`, also returning the version after it."""
        removed, version = await self._delete(
            keys=[self.hash_key, self.version_key, self.owner_key, self.owned_key],
            args=[self.channel, subscription_id],
        )
        return int(removed) > 0, int(version)

    async def owned(self, owner: str) -> int:
        """How many stored subscriptions ``owner`` created."""
        raw = await self.client.hget(self.owned_key, owner)
        return 0 if raw is None else int(_text(raw))

    async def count(self) -> int:
        return int(await self.client.hlen(self.hash_key))

    async def version(self) -> int:
        raw = await self.client.get(self.version_key)
        return 0 if raw is None else int(_text(raw))


# --- ephemeral subscriptions ----------------------------------------------------------------------


class EphemeralRegistry:
    """The ephemeral subscriptions of this process (one per ``/ws/subs`` socket), never stored.

    At most ``limit`` at a time; ids must not collide with each other (the websocket API gives
    them ULIDs).
    """

    def __init__(self, limit: int = 5000) -> None:
        self.limit = limit
        self._subscriptions: dict[str, Subscription] = {}
        self._by_origin: dict[str, dict[str, Subscription]] = {}

    def add(self, subscription: Subscription) -> None:
        if not subscription.is_ephemeral:
            raise SubscriptionError("only ephemeral subscriptions are registered here")
        if subscription.id in self._subscriptions:
            raise DuplicateSubscription(subscription.id)
        if len(self._subscriptions) >= self.limit:
            raise TooManySubscriptions("ephemeral", self.limit)
        self._subscriptions[subscription.id] = subscription
        self._by_origin.setdefault(subscription.origin, {})[subscription.id] = subscription

    def remove(self, subscription_id: str) -> Subscription | None:
        subscription = self._subscriptions.pop(subscription_id, None)
        if subscription is not None:
            same_origin = self._by_origin.get(subscription.origin, {})
            same_origin.pop(subscription_id, None)
            if not same_origin:
                self._by_origin.pop(subscription.origin, None)
        return subscription

    def get(self, subscription_id: str) -> Subscription | None:
        return self._subscriptions.get(subscription_id)

    def all(self) -> list[Subscription]:
        return list(self._subscriptions.values())

    def with_origin(self, origin: str) -> Iterable[Subscription]:
        return tuple(self._by_origin.get(origin, {}).values())

    def origins(self) -> set[str]:
        """The origins of the ephemeral subscriptions held here."""
        return set(self._by_origin)

    def __len__(self) -> int:
        return len(self._subscriptions)

    def __contains__(self, subscription_id: object) -> bool:
        return subscription_id in self._subscriptions


# --- the live view ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubscriptionChanges:
    """What a reload of the persistent subscriptions changed (ids)."""

    added: frozenset[str] = field(default_factory=frozenset)
    updated: frozenset[str] = field(default_factory=frozenset)
    removed: frozenset[str] = field(default_factory=frozenset)

    def __bool__(self) -> bool:
        return bool(self.added or self.updated or self.removed)


ChangeListener = Callable[[SubscriptionChanges], Awaitable[None] | None]


class LiveSubscriptions:
    """Every subscription this worker must notify: the persistent ones, cached from Redis and
    kept current, and the ephemeral ones of this process (:attr:`ephemeral`).

    ``await start()`` loads the cache (a Redis that does not answer is retried in the
    background) and keeps it current; ``await stop()`` ends that. ``matching(notification)``
    is the notify path: the subscriptions whose origin, final destination and senders select it.
    """

    def __init__(
        self,
        client: Redis,
        prefix: str = DEFAULT_PREFIX,
        *,
        ephemeral: EphemeralRegistry | None = None,
        poll_interval: float = 1.0,
        resync_interval: float = 60.0,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.ephemeral = ephemeral if ephemeral is not None else EphemeralRegistry()
        self.poll_interval = poll_interval
        self.resync_interval = resync_interval
        self.hash_key = f"{prefix}subs"
        self.version_key = f"{prefix}subs:version"
        self.channel = f"{prefix}subs:changed"
        self._version: int | None = None
        self._raw: dict[str, bytes] = {}
        self._subscriptions: dict[str, Subscription] = {}
        self._by_origin: dict[str, dict[str, Subscription]] = {}
        self._listeners: list[ChangeListener] = []
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_full = 0.0
        self._stalled: int | None = None
        self._stopping = False
        #: Full reloads done (the first load included), and changes taken in one by one.
        self.reloads = 0
        self.increments = 0

    # --- lifecycle ---

    @property
    def started(self) -> bool:
        return bool(self._tasks)

    async def start(self) -> None:
        """Load the subscriptions and keep them current. Idempotent."""
        if self._tasks:
            return
        self._stopping = False
        try:
            await self.refresh(force=True)
        except Exception as exc:  # the refresher retries with backoff
            log.warning(
                "subscriptions: first load failed (%s: %s); retrying", type(exc).__name__, exc
            )
        self._tasks = [
            asyncio.create_task(self._listen(), name="subscriptions-listen"),
            asyncio.create_task(self._refresher(), name="subscriptions-refresh"),
        ]

    async def stop(self) -> None:
        self._stopping = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait for the first successful load."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    def add_listener(self, listener: ChangeListener) -> None:
        """Call ``listener(changes)`` after each reload that changed persistent subscriptions
        (e.g. to close the websockets of a deleted subscription)."""
        self._listeners.append(listener)

    def notify(self) -> None:
        """Ask for a reload check now (this process just changed something)."""
        self._wake.set()

    # --- reads ---

    @property
    def version(self) -> int | None:
        """The version of the loaded persistent subscriptions; None before the first load."""
        return self._version

    def all(self) -> list[Subscription]:
        return [*self._subscriptions.values(), *self.ephemeral.all()]

    def persistent(self) -> list[Subscription]:
        return list(self._subscriptions.values())

    def get(self, subscription_id: str) -> Subscription | None:
        found = self._subscriptions.get(subscription_id)
        return found if found is not None else self.ephemeral.get(subscription_id)

    def has_persistent_origin(self, chain: str) -> bool:
        """Whether a persistent subscription follows messages from ``chain``: the only ones a
        delivering worker reads a notification for (websocket subscriptions get theirs from
        the fan-out, on the worker holding them)."""
        return chain in self._by_origin

    def matching(self, notification: Mapping[str, Any]) -> list[Subscription]:
        """The subscriptions that select ``notification`` (XCM.md §10.5 filters 1, 2 and 4);
        filter 3, the type per channel, is :meth:`Subscription.wants`."""
        origin = notification.get("origin")
        chain = origin.get("chainId") if isinstance(origin, Mapping) else None
        if not isinstance(chain, str):
            return []
        same_origin = self._by_origin.get(chain)
        persistent = same_origin.values() if same_origin is not None else ()
        candidates = [*persistent, *self.ephemeral.with_origin(chain)]
        return [subscription for subscription in candidates if subscription.matches(notification)]

    def __len__(self) -> int:
        return len(self._subscriptions) + len(self.ephemeral)

    # --- loading ---

    async def refresh(self, *, force: bool = False, grace: bool = False) -> bool:
        """Reload the persistent subscriptions if their version moved (always with ``force``).
        With ``grace`` (the periodic poll), a moved version is reloaded only if it was already
        behind at the previous poll with nothing taken in since: the change messages usually
        bring it in one change at a time. Returns whether a reload happened."""
        async with self._lock:
            if not force and self._version is not None:
                current = await self.client.get(self.version_key)
                if (0 if current is None else int(_text(current))) == self._version:
                    self._stalled = None
                    return False
                if grace and self._stalled != self._version:
                    self._stalled = self._version
                    return False
            self._stalled = None
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.get(self.version_key)
                pipe.hgetall(self.hash_key)
                version_raw, entries = await pipe.execute()
            version = 0 if version_raw is None else int(_text(version_raw))
            changes = self._load(version, {_text(k): _bytes(v) for k, v in entries.items()})
            self._last_full = time.monotonic()
            self.reloads += 1
            self._ready.set()
        if changes:
            await self._tell(changes)
        return True

    async def apply(
        self,
        version: int,
        upserts: Mapping[str, bytes] | None = None,
        removed: Iterable[str] = (),
    ) -> bool:
        """Take in a change this process just wrote (the API), without reloading every
        subscription: ``upserts`` (id -> stored JSON) and ``removed`` ids, which the store
        reported as ``version``. Applied only if it is the one change after the loaded version
        (False otherwise: call :meth:`refresh`, which reloads everything). A version already
        loaded is a no-op (True)."""
        async with self._lock:
            if self._version is None:
                return False
            if version <= self._version:
                return True
            if version != self._version + 1:
                return False
            changes = self._apply(version, dict(upserts or {}), set(removed))
        if changes:
            await self._tell(changes)
        return True

    async def apply_ids(self, version: int, ids: Sequence[str]) -> bool:
        """Take in the change a message announced: ``ids`` changed at ``version``; reads just
        those (a missing one was deleted). Same rules as :meth:`apply`."""
        async with self._lock:
            if self._version is None:
                return False
            if version <= self._version:
                return True
            if version != self._version + 1:
                return False
            values = await self.client.hmget(self.hash_key, list(ids))
            upserts = {i: _bytes(v) for i, v in zip(ids, values, strict=True) if v is not None}
            removed = {i for i, v in zip(ids, values, strict=True) if v is None}
            changes = self._apply(version, upserts, removed)
        if changes:
            await self._tell(changes)
        return True

    async def _on_message(self, data: Any) -> None:
        """A change message: ``"<version> <id> ..."``; anything else, or a change that does
        not follow the loaded version, wakes the refresher for a full reload."""
        parts = _text(data).split()
        try:
            version = int(parts[0])
        except (IndexError, ValueError):
            version = -1
        done = False
        if version >= 0 and len(parts) > 1:
            try:
                done = await self.apply_ids(version, parts[1:])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("subscriptions: taking in change %s failed (%s)", version, exc)
        if not done:
            self._wake.set()

    def _apply(
        self, version: int, upserts: dict[str, bytes], removed: set[str]
    ) -> SubscriptionChanges:
        """Change the cache for these ids only: O(changed ids), whatever the total."""
        added: set[str] = set()
        updated: set[str] = set()
        gone: set[str] = set()
        for subscription_id in removed:
            self._forget(subscription_id)
            if self._raw.pop(subscription_id, None) is not None:
                gone.add(subscription_id)
        for subscription_id, value in upserts.items():
            previous = self._raw.get(subscription_id)
            if previous == value:
                continue
            self._forget(subscription_id)
            self._raw[subscription_id] = value
            (added if previous is None else updated).add(subscription_id)
            try:
                subscription = _parse(value)
            except ValidationError as exc:
                log.warning(
                    "subscription %s in Redis is invalid, skipped: %s", subscription_id, exc
                )
                continue
            self._subscriptions[subscription_id] = subscription
            self._by_origin.setdefault(subscription.origin, {})[subscription_id] = subscription
        self.increments += 1
        self._version = version
        return SubscriptionChanges(
            added=frozenset(added), updated=frozenset(updated), removed=frozenset(gone)
        )

    def _forget(self, subscription_id: str) -> None:
        old = self._subscriptions.pop(subscription_id, None)
        if old is not None:
            same_origin = self._by_origin.get(old.origin)
            if same_origin is not None:
                same_origin.pop(subscription_id, None)
                if not same_origin:
                    del self._by_origin[old.origin]

    def _load(self, version: int, raw: dict[str, bytes]) -> SubscriptionChanges:
        old_raw = self._raw
        subscriptions: dict[str, Subscription] = {}
        for subscription_id, value in raw.items():
            known = self._subscriptions.get(subscription_id)
            if known is not None and old_raw.get(subscription_id) == value:
                subscriptions[subscription_id] = known
                continue
            try:
                subscriptions[subscription_id] = _parse(value)
            except ValidationError as exc:
                log.warning(
                    "subscription %s in Redis is invalid, skipped: %s", subscription_id, exc
                )
        by_origin: dict[str, dict[str, Subscription]] = {}
        for subscription in subscriptions.values():
            by_origin.setdefault(subscription.origin, {})[subscription.id] = subscription
        changes = SubscriptionChanges(
            added=frozenset(raw.keys() - old_raw.keys()),
            updated=frozenset(k for k in raw.keys() & old_raw.keys() if raw[k] != old_raw[k]),
            removed=frozenset(old_raw.keys() - raw.keys()),
        )
        self._raw = raw
        self._subscriptions = subscriptions
        self._by_origin = by_origin
        if self._version != version or changes:
            log.debug("subscriptions: version %s, %d persistent", version, len(subscriptions))
        self._version = version
        return changes

    async def _tell(self, changes: SubscriptionChanges) -> None:
        for listener in list(self._listeners):
            try:
                result = listener(changes)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("subscriptions: change listener %r failed", listener)

    async def _refresher(self) -> None:
        backoff = Backoff(base=0.2, cap=5.0)
        failing = False
        while not self._stopping:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation
            # that arrives as the event is set, and this loop would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()
            woken = self._wake.is_set()  # asked for (a lost message): no grace
            self._wake.clear()
            try:
                force = time.monotonic() - self._last_full >= self.resync_interval
                await self.refresh(force=force, grace=not woken)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failing = True
                await backoff.wait(log, "subscriptions refresh", exc)
                continue
            if failing:
                log.info("subscriptions: reloading works again (version %s)", self._version)
                failing = False
                backoff.reset()

    async def _listen(self) -> None:
        backoff = Backoff(base=0.2, cap=5.0)
        while not self._stopping:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                # Changes made while (re)subscribing were not heard: check the version now.
                self._wake.set()
                backoff.reset()
                while not self._stopping:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=max(self.poll_interval, 0.1)
                    )
                    if message is not None and message.get("type") == "message":
                        await self._on_message(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await backoff.wait(log, "subscriptions pub/sub", exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis 8.2
