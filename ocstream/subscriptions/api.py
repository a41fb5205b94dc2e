"""The subscriptions HTTP API (XCM.md §12): ``/subs``, ``/subs/{id}``, ``/openapi.json``, ``/docs``.

The handlers are plain aiohttp handlers on :class:`SubscriptionApi`; two ways to serve them:

* in the worker, ``register_api(app, store=..., live=..., registry=...)`` mounts them on the
  faust app as ``@app.page`` views (faust's web server is aiohttp);
* anywhere else, ``SubscriptionApi(...).add_routes(web_app.router)`` on an aiohttp application.

Every path answers with and without a trailing slash. Every error is an ``application/json``
body ``{"error": true, "statusCode": n, "reason": "...", "details": [...]?}`` (pitfall 18),
including 401, 405, 408, 413, 415, 429, Redis outages (503) and unexpected failures (500).

Webhook ``secret`` and ``bearer`` values are written, never read back: every answer shows them
as ``"hasSecret": true`` / ``"hasBearer": true`` (``docs/security.md``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from redis.exceptions import RedisError

from ..guard import MAX_JSON_DEPTH, bearer_token, client_key, json_depth_exceeds, token_matches
from ..ingress.registry import NetworkRegistry
from .jsonpatch import (
    Operation,
    PatchError,
    PatchTestFailed,
    PatchTooLarge,
    apply_patch,
    parse_operations,
    parse_pointer,
)
from .models import Subscription, public_json, unknown_networks
from .openapi import ALLOWED_PATCH_PATHS, docs_page, openapi_document
from .store import (
    ConcurrentModification,
    LiveSubscriptions,
    SubscriptionError,
    SubscriptionNotFound,
    SubscriptionStore,
)

__all__ = [
    "ApiError",
    "ApiSettings",
    "Handler",
    "KnownNetworks",
    "Route",
    "SubscriptionApi",
    "register_api",
    "registry_networks",
]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Returns the URNs of the networks the registry knows (``{prefix}networks``).
KnownNetworks = Callable[[], Awaitable[Collection[str]]]

PATCH_PATHS_ERROR: Final = "Only operations on these paths are allowed: " + ",".join(
    ALLOWED_PATCH_PATHS
)
_PATCH_ATTEMPTS: Final = 10
_MAX_REASON_ERRORS: Final = 3
#: Channel members that are written but never shown (nor readable through a patch).
_HIDDEN: Final = {"secret": "hasSecret", "bearer": "hasBearer"}


class ApiSettings(BaseModel):
    """Access and size rules of the API."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    #: Bearer tokens accepted on POST, PATCH and DELETE; empty: writes are open.
    write_tokens: tuple[str, ...] = Field(default=(), repr=False)
    #: Bearer tokens accepted on GET /subs and /subs/{id} (a write token also works);
    #: None: reads are open. /openapi.json and /docs are always open.
    read_tokens: tuple[str, ...] | None = Field(default=None, repr=False)
    #: Largest request body, in bytes (413 above it); also the largest patched subscription.
    max_body_bytes: int = Field(default=1 << 20, ge=1)
    #: Most subscriptions in one POST array (400 above it).
    max_batch: int = Field(default=100, ge=1)
    #: Most operations in one JSON Patch (400 above it).
    max_patch_operations: int = Field(default=100, ge=1)
    #: Most field errors listed in one 400 answer (the count of the others is given).
    max_errors: int = Field(default=20, ge=1)
    #: Deepest nesting of arrays and objects in a request body (400 above it).
    max_depth: int = Field(default=MAX_JSON_DEPTH, ge=2)
    #: Seconds a client has to send the whole request body (408 after it).
    body_timeout: float = Field(default=30.0, gt=0)

    @field_validator("write_tokens", "read_tokens")
    @classmethod
    def _clean_tokens(cls, tokens: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for token in tokens or ():
            if not token or token != token.strip():
                raise ValueError("a bearer token is a non-empty string without outer spaces")
        return tokens


class ApiError(Exception):
    """An error answer: ``status`` and ``reason``, with ``details`` for field errors."""

    def __init__(
        self,
        status: int,
        reason: str,
        details: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.details = details
        self.headers = dict(headers or {})


def error_response(
    status: int,
    reason: str,
    details: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"error": True, "statusCode": status, "reason": reason}
    if details:
        body["details"] = details
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(value), content_type="application/json")


def _path_text(path: Sequence[str | int]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def validation_details(
    exc: ValidationError, prefix: Sequence[str | int] = ()
) -> list[dict[str, Any]]:
    """The errors of ``exc`` as ``{path, message, type}`` (never the input: it may hold
    secrets)."""
    details = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        kind = error["type"]
        message = "unknown property" if kind == "extra_forbidden" else error["msg"]
        details.append({"path": [*prefix, *error["loc"]], "message": message, "type": kind})
    return details


def _reason(details: list[dict[str, Any]]) -> str:
    parts = []
    for detail in details[:_MAX_REASON_ERRORS]:
        where = _path_text(detail["path"])
        parts.append(f"{where}: {detail['message']}" if where else detail["message"])
    more = len(details) - _MAX_REASON_ERRORS
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _secret_member(pointer: str) -> bool:
    """Whether ``pointer`` names a channel's secret or bearer (or something inside it)."""
    tokens = parse_pointer(pointer)
    return len(tokens) >= 3 and tokens[0] == "channels" and tokens[2] in _HIDDEN


def _refuse_secret_reads(operations: Sequence[Operation]) -> None:
    """Secrets can be replaced or removed by a patch, not read: no ``copy``/``move`` from a
    secret (into a field that is shown) and no ``test`` that compares one."""
    for position, operation in enumerate(operations):
        leaks = (operation.from_ is not None and _secret_member(operation.from_)) or (
            operation.op == "test"
            and (
                _secret_member(operation.path)
                or len(parse_pointer(operation.path)) < 3
                and operation.path.startswith("/channels")
            )
        )
        if leaks:
            raise ApiError(
                400,
                f"operation {position} ({operation.describe()}): a channel's secret and "
                "bearer can be replaced or removed, not copied, moved or tested",
            )


def _keep_hidden(patched: Any, stored: Any) -> None:
    """Turn ``"hasSecret": true`` / ``"hasBearer": true`` in the patched channels (what a
    client read with GET and sent back) into the stored values of the channel at the same
    index; ``false`` just goes away."""
    channels = patched.get("channels") if isinstance(patched, dict) else None
    if not isinstance(channels, list):
        return
    old = stored.get("channels") if isinstance(stored, dict) else None
    old_channels = old if isinstance(old, list) else []
    for index, channel in enumerate(channels):
        if not isinstance(channel, dict):
            continue
        for member, flag in _HIDDEN.items():
            if flag not in channel:
                continue
            keep = channel.pop(flag)
            if keep is not True or member in channel:
                continue
            source = old_channels[index] if index < len(old_channels) else None
            value = source.get(member) if isinstance(source, dict) else None
            if not isinstance(value, str):
                raise ApiError(
                    400,
                    f"channels[{index}].{flag}: the stored channel {index} has no {member} to keep",
                )
            channel[member] = value


def registry_networks(registry: NetworkRegistry | Callable[[], NetworkRegistry]) -> KnownNetworks:
    """:data:`KnownNetworks` reading the registry (or the registry a getter returns) each time:
    networks an ingress adds later count without a restart."""

    async def known() -> Collection[str]:
        target = registry if isinstance(registry, NetworkRegistry) else registry()
        return set((await target.all()).keys())

    return known


@dataclass(frozen=True)
class Route:
    """One path and the handlers of its methods (upper case)."""

    path: str
    handlers: Mapping[str, Handler] = field(default_factory=dict)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        handler = self.handlers.get(request.method)
        if handler is None and request.method == "HEAD":
            handler = self.handlers.get("GET")
        if handler is None:
            return self.not_allowed(request.method)
        return await handler(request)

    def not_allowed(self, method: str) -> web.Response:
        allowed = ", ".join(sorted(self.handlers))
        return error_response(
            405, f"Method {method} is not allowed on {self.path}", headers={"Allow": allowed}
        )


def _guard(handler: Handler) -> Handler:
    """Turn every failure of ``handler`` into a JSON error answer."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.reason, exc.details, exc.headers)
        except SubscriptionError as exc:
            return error_response(exc.status, exc.reason)
        except RedisError as exc:
            log.warning("subscriptions API: Redis failed (%s: %s)", type(exc).__name__, exc)
            return error_response(503, "Subscription storage is unavailable; retry later")
        except Exception:
            log.exception("subscriptions API: %s %s failed", request.method, request.path)
            return error_response(500, "Internal server error")

    guarded.__name__ = getattr(handler, "__name__", "handler")
    guarded.__doc__ = handler.__doc__
    return guarded


class SubscriptionApi:
    """The handlers of the subscriptions API.

    ``store`` holds the persistent subscriptions, ``networks`` tells which networks exist;
    ``live``, when given, is refreshed after each change so that this worker notifies with the
    new filters before the answer goes out (other workers follow within about a second).
    """

    def __init__(
        self,
        *,
        store: SubscriptionStore,
        networks: KnownNetworks,
        live: LiveSubscriptions | None = None,
        settings: ApiSettings | None = None,
        version: str = "0.1.0",
    ) -> None:
        self.store = store
        self.networks = networks
        self.live = live
        self.settings = settings or ApiSettings()
        self.version = version
        self._openapi: bytes | None = None
        self._docs: str | None = None

    # --- routing ---

    def routes(self) -> list[Route]:
        """Every route, each path with and without its trailing slash."""
        collection = {
            "GET": _guard(self.list_subscriptions),
            "POST": _guard(self.create_subscriptions),
        }
        one = {
            "GET": _guard(self.get_subscription),
            "PATCH": _guard(self.patch_subscription),
            "DELETE": _guard(self.delete_subscription),
        }
        openapi = {"GET": _guard(self.openapi)}
        docs = {"GET": _guard(self.docs)}
        routes = []
        for path, handlers in (
            ("/subs", collection),
            ("/subs/{id}", one),
            ("/openapi.json", openapi),
            ("/docs", docs),
        ):
            routes.append(Route(path, handlers))
            routes.append(Route(path + "/", handlers))
        return routes

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Mount the API on an aiohttp router."""
        for route in self.routes():
            router.add_route("*", route.path, route.dispatch)

    # --- request helpers ---

    def _authorize(self, request: web.Request, *, write: bool) -> str | None:
        """Check the bearer token a route needs; returns the verified token (None: the route
        is open, or no token was needed)."""
        settings = self.settings
        tokens: Collection[str]
        if write:
            tokens = settings.write_tokens
        elif settings.read_tokens is not None:
            tokens = (*settings.read_tokens, *settings.write_tokens)
        else:
            tokens = ()
        if not tokens:
            return None
        challenge = {"WWW-Authenticate": 'Bearer realm="ocstream"'}
        given = bearer_token(request)
        if given is None:
            raise ApiError(
                401, "Missing bearer token (Authorization: Bearer <token>)", None, challenge
            )
        if not token_matches(given, tokens):
            raise ApiError(401, "Invalid bearer token", None, challenge)
        return given

    async def _read_json(self, request: web.Request, *, patch: bool = False) -> Any:
        content_type = request.headers.get("Content-Type")
        mime = (content_type or "").split(";", 1)[0].strip().lower()
        # Only JSON types, and one must be given: a browser sends form, text and untyped
        # bodies cross-site without asking first (CORS "simple requests").
        if mime != "application/json" and not mime.endswith("+json"):
            expected = (
                "application/json-patch+json or application/json" if patch else "application/json"
            )
            if not mime:
                raise ApiError(415, f"Missing Content-Type: expected {expected}")
            raise ApiError(415, f"Unsupported content type {mime!r}: expected {expected}")
        settings = self.settings
        limit = settings.max_body_bytes
        too_large = f"Request body is larger than {limit} bytes"
        length = request.content_length
        if length is not None and length > limit:
            raise ApiError(413, too_large)
        body = bytearray()
        try:
            async with asyncio.timeout(settings.body_timeout):
                async for chunk in request.content.iter_chunked(1 << 16):
                    body += chunk
                    if len(body) > limit:
                        raise ApiError(413, too_large)
        except TimeoutError:
            raise ApiError(
                408,
                f"Request body not received within {settings.body_timeout:g} s",
                headers={"Connection": "close"},
            ) from None
        if not body.strip():
            raise ApiError(400, "Request body is empty: expected JSON")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"Request body is not valid JSON: {exc}") from None

    def _check_depth(self, value: Any) -> None:
        """400 for a body nested deeper than ``max_depth`` (after the cheap length checks: this
        one visits every value)."""
        depth = self.settings.max_depth
        if json_depth_exceeds(value, depth):
            raise ApiError(400, f"Request body nests arrays and objects deeper than {depth}")

    def _bounded(self, details: list[dict[str, Any]], unchecked: int = 0) -> list[dict[str, Any]]:
        """At most ``max_errors`` details, then one saying how many were left out (and how
        many items of a batch were not checked at all)."""
        limit = self.settings.max_errors
        if len(details) <= limit and not unchecked:
            return details
        message = f"{max(0, len(details) - limit)} more errors not listed"
        if unchecked:
            message += f"; {unchecked} more subscriptions not checked"
        return [*details[:limit], {"path": [], "message": message, "type": "truncated"}]

    async def _check_networks(
        self, subscriptions: Sequence[Subscription], indexes: Sequence[int | None]
    ) -> None:
        known = await self.networks()
        details: list[dict[str, Any]] = []
        for subscription, index in zip(subscriptions, indexes, strict=True):
            prefix: list[str | int] = [] if index is None else [index]
            for urn in unknown_networks(subscription, known):
                where = "origin" if urn == subscription.origin else "destinations"
                details.append(
                    {
                        "path": [*prefix, where],
                        "message": f"Invalid chain id:{urn}",
                        "type": "chain_id",
                    }
                )
        if details:
            reason = details[0]["message"] if len(details) == 1 else _reason(details)
            raise ApiError(400, reason, self._bounded(details))

    async def _changed(
        self,
        version: int,
        upserts: Mapping[str, bytes] | None = None,
        removed: Sequence[str] = (),
    ) -> None:
        """Bring this worker's live view up to ``version`` before answering: just the change
        when it is the only one since the view's version, else a reload."""
        if self.live is None:
            return
        try:
            if not await self.live.apply(version, upserts, removed):
                await self.live.refresh()
        except Exception as exc:  # the live view's own loop retries
            log.warning("subscriptions: refresh after a change failed (%s)", exc)
            self.live.notify()

    # --- handlers ---

    async def list_subscriptions(self, request: web.Request) -> web.StreamResponse:
        """``GET /subs``: every persistent subscription."""
        self._authorize(request, write=False)
        return json_response(
            [public_json(subscription.to_json()) for subscription in await self.store.list()]
        )

    async def create_subscriptions(self, request: web.Request) -> web.StreamResponse:
        """``POST /subs``: one subscription or an array, all or nothing; 201."""
        token = self._authorize(request, write=True)
        body = await self._read_json(request)
        if isinstance(body, dict):
            items: list[Any] = [body]
            indexes: list[int | None] = [None]
        elif isinstance(body, list):
            if not body:
                raise ApiError(400, "At least 1 subscription is required")
            if len(body) > self.settings.max_batch:
                raise ApiError(
                    400,
                    f"At most {self.settings.max_batch} subscriptions per request "
                    f"(got {len(body)})",
                )
            items, indexes = body, list(range(len(body)))
        else:
            raise ApiError(400, "Request body must be a subscription object or an array of them")
        self._check_depth(body)
        subscriptions: list[Subscription] = []
        details: list[dict[str, Any]] = []
        unchecked = 0
        for position, (item, index) in enumerate(zip(items, indexes, strict=True)):
            if len(details) > self.settings.max_errors:
                unchecked = len(items) - position  # enough to report: not checked
                break
            prefix: list[str | int] = [] if index is None else [index]
            if not isinstance(item, dict):
                details.append(
                    {
                        "path": prefix,
                        "message": "a subscription is a JSON object",
                        "type": "model_type",
                    }
                )
                continue
            try:
                subscription = Subscription.model_validate(item)
            except ValidationError as exc:
                details += validation_details(exc, prefix)
                continue
            if subscription.is_ephemeral:
                details.append(
                    {
                        "path": [*prefix, "ephemeral"],
                        "message": "ephemeral subscriptions are created over the websocket "
                        "API (/ws/subs), not stored",
                        "type": "ephemeral",
                    }
                )
                continue
            subscriptions.append(subscription)
        if details:
            raise ApiError(400, _reason(details), self._bounded(details, unchecked))
        await self._check_networks(subscriptions, indexes)
        version = await self.store.create_many(subscriptions, owner=client_key(request, token))
        await self._changed(version, {s.id: s.to_json_bytes() for s in subscriptions})
        return web.Response(status=201)

    async def get_subscription(self, request: web.Request) -> web.StreamResponse:
        """``GET /subs/{id}``: the subscription as created; 404."""
        self._authorize(request, write=False)
        subscription_id = request.match_info["id"]
        raw = await self.store.get_raw(subscription_id)
        if raw is None:
            raise SubscriptionNotFound(subscription_id)
        return json_response(public_json(orjson.loads(raw)))

    async def patch_subscription(self, request: web.Request) -> web.StreamResponse:
        """``PATCH /subs/{id}``: an RFC 6902 patch on /senders, /destinations, /channels or
        /events, validated like a new subscription; 200 with the result."""
        self._authorize(request, write=True)
        subscription_id = request.match_info["id"]
        document = await self._read_json(request, patch=True)
        limit = self.settings.max_patch_operations
        if isinstance(document, list) and len(document) > limit:
            raise ApiError(400, f"At most {limit} JSON Patch operations per request")
        self._check_depth(document)
        try:
            operations = parse_operations(
                document, allowed_roots=ALLOWED_PATCH_PATHS, roots_error=PATCH_PATHS_ERROR
            )
        except PatchError as exc:
            raise ApiError(400, str(exc)) from None
        _refuse_secret_reads(operations)
        for _ in range(_PATCH_ATTEMPTS):
            raw = await self.store.get_raw(subscription_id)
            if raw is None:
                raise SubscriptionNotFound(subscription_id)
            stored = orjson.loads(raw)
            try:
                patched = apply_patch(stored, operations, max_bytes=self.settings.max_body_bytes)
            except PatchTestFailed as exc:
                raise ApiError(409, f"JSON Patch test failed: {exc}") from None
            except PatchTooLarge as exc:
                raise ApiError(413, f"JSON Patch result too large: {exc}") from None
            except PatchError as exc:
                raise ApiError(400, f"JSON Patch cannot be applied: {exc}") from None
            _keep_hidden(patched, stored)
            try:
                subscription = Subscription.model_validate(patched)
            except ValidationError as exc:
                details = self._bounded(validation_details(exc))
                raise ApiError(400, _reason(details), details) from None
            await self._check_networks([subscription], [None])
            try:
                version = await self.store.replace(subscription, expected=raw)
            except ConcurrentModification:
                continue  # another PATCH won the race: apply ours to its result
            await self._changed(version, {subscription.id: subscription.to_json_bytes()})
            return json_response(public_json(subscription.to_json()))
        raise ConcurrentModification(subscription_id)

    async def delete_subscription(self, request: web.Request) -> web.StreamResponse:
        """``DELETE /subs/{id}``: 200, also for an unknown id."""
        self._authorize(request, write=True)
        subscription_id = request.match_info["id"]
        removed, version = await self.store.delete_versioned(subscription_id)
        if removed:
            await self._changed(version, removed=[subscription_id])
        return web.Response(status=200)

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        """``GET /openapi.json``."""
        if self._openapi is None:
            self._openapi = orjson.dumps(self.openapi_document())
        return web.Response(body=self._openapi, content_type="application/json")

    async def docs(self, request: web.Request) -> web.StreamResponse:
        """``GET /docs``: the OpenAPI document as a page that needs no network."""
        if self._docs is None:
            self._docs = docs_page(self.openapi_document())
        return web.Response(
            text=self._docs,
            content_type="text/html",
            headers={
                "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'",
            },
        )

    def openapi_document(self) -> dict[str, Any]:
        settings = self.settings
        return openapi_document(
            version=self.version,
            secured_writes=bool(settings.write_tokens),
            secured_reads=settings.read_tokens is not None,
        )


def register_api(
    app: Any,
    *,
    store: SubscriptionStore,
    registry: NetworkRegistry | Callable[[], NetworkRegistry],
    live: LiveSubscriptions | None = None,
    settings: ApiSettings | None = None,
    start_live: bool = True,
) -> SubscriptionApi:
    """Mount the subscriptions API on the faust ``app`` (as ``@app.page`` views).

    ``registry`` (or a function returning it, called per request) tells which networks exist.
    With ``live`` and ``start_live``, the web server's startup starts ``live`` and its cleanup
    stops it (``live.start()`` is idempotent, so starting it elsewhere too is harmless).
    """
    from faust.web import View

    from .. import __version__

    api = SubscriptionApi(
        store=store,
        networks=registry_networks(registry),
        live=live,
        settings=settings,
        version=__version__,
    )
    for index, route in enumerate(api.routes()):
        app.page(route.path, name=f"ocstream-subscriptions-{index}")(_faust_view(View, route))
    if live is not None and start_live:
        web_app: web.Application = app.web.web_app

        async def start(_: web.Application) -> None:
            await live.start()

        async def stop(_: web.Application) -> None:
            await live.stop()

        web_app.on_startup.append(start)
        web_app.on_cleanup.append(stop)
    return api


def _faust_view(base: Any, route: Route) -> Any:
    """A faust View class answering every method of ``route`` (405 JSON for the others)."""

    def method(name: str) -> Callable[..., Awaitable[web.StreamResponse]]:
        async def call(self: Any, request: web.Request, **_: Any) -> web.StreamResponse:
            handler = route.handlers.get(name)
            if handler is None:
                return route.not_allowed(name)
            return await handler(request)

        return call

    methods = {name.lower(): method(name) for name in ("GET", "POST", "PUT", "PATCH", "DELETE")}
    return type(
        "SubscriptionsView",
        (base,),
        {
            **methods,
            "__doc__": f"{route.path} (subscriptions API)",
            # The methods that answer something else than 405 (`ocstream topology` lists them).
            "allowed_methods": tuple(route.handlers),
        },
    )
