"""How a worker's services are wired (``ocstream/services.py``), in an app built as the worker
builds it, on real Redis."""

from __future__ import annotations

import inspect
from pathlib import Path

from ocstream.app import build_app
from ocstream.settings import Settings
from ocstream.subscriptions import Subscription, SubscriptionStore
from ocstream.transport.client import connect
from ocstream.transport.settings import TransportSettings

from .subscriptions.conftest import sub
from .workers import free_port


async def test_the_webhook_dispatcher_reads_subscriptions_without_waiting(
    redis_url: str, prefix: str, app_id: str, tmp_path: Path
) -> None:
    """The dispatcher reads the subscription at every attempt from the worker's live view,
    which answers at once: its getter returns the JSON itself, not a coroutine, so no attempt
    sets a timeout's timer for it (``WebhookDispatcher._subscription``). The websocket hub,
    which awaits its getter, gets the same JSON."""
    settings = Settings(
        redis_url=redis_url,
        port=free_port(),
        data_dir=tmp_path,
        app_id=app_id,
        transport=TransportSettings(prefix=prefix),
    )
    app = build_app(settings, redis_url=redis_url)
    client = connect(redis_url, name="test-services")
    try:
        await SubscriptionStore(client, prefix).create(Subscription.model_validate(sub("hook")))
        await app.subscriptions_live.refresh(force=True)
        found = app.webhooks.get_subscription("hook")
        assert not inspect.isawaitable(found)
        assert found == app.subscriptions_live.get("hook").json_view()
        assert found["channels"][0]["url"] == "https://example.org/hook"
        assert app.webhooks.get_subscription("gone") is None
        assert await app.websocket_hub._get_subscription("hook") == found
    finally:
        await client.aclose()
