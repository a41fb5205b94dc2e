"""Subscriptions: the schema, their storage in Redis, the live view the notify path reads, and
the HTTP API (XCM.md §10.5, §11, §12; ``docs/api.md``).

Mounting the API on the worker's faust app::

    client = connect(redis_url, name="ocstream-subscriptions")
    store = SubscriptionStore(client, prefix)
    live = LiveSubscriptions(client, prefix)
    register_api(app, store=store, live=live, registry=NetworkRegistry(client, prefix))

The notify path: ``for sub in live.matching(notification)``, then ``sub.wants(type, i)`` per
channel ``i``.
"""

from __future__ import annotations

from .api import ApiError, ApiSettings, SubscriptionApi, register_api, registry_networks
from .models import (
    EVENT_TYPES,
    Channel,
    LogChannel,
    Subscription,
    WebhookChannel,
    WebsocketChannel,
    unknown_networks,
)
from .store import (
    ConcurrentModification,
    DuplicateSubscription,
    EphemeralRegistry,
    LiveSubscriptions,
    SubscriptionChanges,
    SubscriptionError,
    SubscriptionLimits,
    SubscriptionNotFound,
    SubscriptionStore,
    TooManySubscriptions,
)

__all__ = [
    "EVENT_TYPES",
    "ApiError",
    "ApiSettings",
    "Channel",
    "ConcurrentModification",
    "DuplicateSubscription",
    "EphemeralRegistry",
    "LiveSubscriptions",
    "LogChannel",
    "Subscription",
    "SubscriptionApi",
    "SubscriptionChanges",
    "SubscriptionError",
    "SubscriptionLimits",
    "SubscriptionNotFound",
    "SubscriptionStore",
    "TooManySubscriptions",
    "WebhookChannel",
    "WebsocketChannel",
    "register_api",
    "registry_networks",
    "unknown_networks",
]
