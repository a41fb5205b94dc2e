"""Wiring of the worker's user-facing services onto the faust app.

:func:`install` mounts the subscriptions API, the websocket endpoints, the dashboard and the
operations views, and adds the delivery service (live subscriptions, the websocket fan-out, and
on a delivering worker the webhook dispatcher and the per-subscription timers) to the app, so
it starts and stops with the worker. Building these objects opens no connection: ``ocstream
topology`` and faust's commands build the same app.
"""

from __future__ import annotations

import logging
from typing import Any

from .delivery import Delivery
from .guard import harden
from .ingress.registry import NetworkRegistry
from .ops import register_ops
from .settings import Settings
from .sinks.log import LogSink
from .sinks.webhook import WebhookDispatcher, WebhookSettings
from .sinks.websocket import SubscriptionRejected, WebsocketHub
from .subscriptions import (
    ApiSettings,
    LiveSubscriptions,
    Subscription,
    SubscriptionChanges,
    SubscriptionError,
    SubscriptionLimits,
    SubscriptionStore,
    register_api,
    unknown_networks,
)
from .transport.client import connect, request_client
from .webui import register_webui

__all__ = ["install"]

log = logging.getLogger("ocstream.services")


def webhook_options(settings: Settings) -> dict[str, Any]:
    """The webhook settings the worker was given, as ``WebhookSettings`` names them; those
    not given keep the dispatcher's defaults."""
    given = {
        "timeout": settings.webhook_timeout,
        "schedule": settings.webhook_schedule,
        "max_concurrency": settings.webhook_concurrency,
    }
    return {name: value for name, value in given.items() if value is not None}


def install(app: Any, settings: Settings, *, redis_url: str) -> None:
    client = connect(redis_url, name=f"{settings.app_id}-services")
    # The API's requests have their own bounded pool with short timeouts: a frozen Redis
    # answers them 503 in about two seconds, and a burst waits for a connection instead of
    # failing with "Too many connections".
    api_client = request_client(redis_url, name=f"{settings.app_id}-api")
    prefix = settings.transport.prefix
    store = SubscriptionStore(
        api_client, prefix, SubscriptionLimits(max_persistent_per_client=settings.subs_per_client)
    )
    live = LiveSubscriptions(client, prefix)
    registry = NetworkRegistry(client, prefix)
    read_tokens = settings.read_tokens or None
    register_api(
        app,
        store=store,
        live=live,
        registry=NetworkRegistry(api_client, prefix),
        settings=ApiSettings(
            write_tokens=settings.api_tokens,
            read_tokens=read_tokens,
            body_timeout=settings.body_timeout,
        ),
        start_live=False,  # the delivery service starts it, with the worker
    )

    def subscription_json(subscription_id: str) -> dict[str, Any] | None:
        """A persistent subscription's JSON, for the webhook dispatcher (at every attempt) and
        the websocket hub, which only read it. The dispatcher calls it as it is: a getter
        that answers at once spares each attempt a coroutine and a timeout's timer."""
        found = live.get(subscription_id)
        return found.json_view() if found is not None else None

    async def get_subscription(subscription_id: str) -> dict[str, Any] | None:
        return subscription_json(subscription_id)  # the hub awaits its getter

    webhooks = WebhookDispatcher(
        client,
        prefix,
        WebhookSettings(
            allow_private_targets=settings.webhook_allow_private,
            **webhook_options(settings),
        ),
        get_subscription=subscription_json,
    )

    async def validate(data: dict[str, Any]) -> dict[str, Any]:
        subscription = Subscription.model_validate(data)  # a ValidationError becomes a 400
        unknown = unknown_networks(subscription, (await registry.all()).keys())
        if unknown:
            raise SubscriptionRejected.bad_request(f"Invalid chain id:{unknown[0]}")
        return subscription.to_json()

    async def register_ephemeral(data: dict[str, Any]) -> None:
        try:
            # Answered once this worker listens to the notifications of its origin.
            await delivery.add_ephemeral(Subscription.model_validate(data))
        except SubscriptionError as exc:
            raise SubscriptionRejected(
                {"error": True, "statusCode": exc.status, "reason": exc.reason}
            ) from exc

    async def unregister_ephemeral(subscription_id: str) -> None:
        await delivery.remove_ephemeral(subscription_id)

    hub = WebsocketHub(
        client,
        prefix,
        validate=validate,
        get_subscription=get_subscription,
        register_ephemeral=register_ephemeral,
        unregister_ephemeral=unregister_ephemeral,
        # A write token reads too, as on GET /subs.
        read_tokens=None if read_tokens is None else (*read_tokens, *settings.api_tokens),
        max_per_client=settings.ws_per_client,
    )

    async def on_change(changes: SubscriptionChanges) -> None:
        # A deleted subscription's sockets close on every worker (its webhook deliveries are
        # dropped by the dispatcher, which re-reads the subscription at each attempt).
        for subscription_id in changes.removed:
            await hub.close_subscription(subscription_id)

    live.add_listener(on_change)
    web_app = app.web.web_app
    allowed_hosts = settings.effective_allowed_hosts()
    if allowed_hosts is None and not (settings.api_tokens and settings.read_tokens):
        log.warning(
            "the HTTP server accepts any Host and %s: set allowed_hosts and tokens "
            "before exposing it (docs/security.md)",
            "open writes" if not settings.api_tokens else "open reads",
        )
    harden(
        web_app,
        allowed_hosts=allowed_hosts,
        runner=getattr(app.web, "_runner", None),
        header_timeout=settings.header_timeout,
    )
    hub.mount(web_app)
    register_webui(web_app)
    # A worker that does not deliver (--role match) leaves the webhook dispatcher and the
    # subscriptions' timers to those that do; it still serves its own websockets.
    delivers = settings.role != "match"
    delivery = Delivery(
        client=client,
        prefix=prefix,
        subscriptions=live,
        webhooks=webhooks,
        hub=hub,
        log_sink=LogSink(logging.getLogger("ocstream.notifications")),
        services=(webhooks,) if delivers else (),
        run_timers=delivers,
    )
    # faust starts the instances in this list with the app (what @app.service does for classes).
    app._extra_services.append(delivery)
    app.delivery = delivery
    app.webhooks = webhooks
    app.websocket_hub = hub
    app.subscriptions_live = live
    app.subscriptions_store = store
    register_ops(
        app,
        admin_tokens=settings.admin_tokens,
        stale_after=settings.health_stale_after,
        redis_url=redis_url,
    )
