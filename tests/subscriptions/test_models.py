"""The subscription schema (XCM.md §11) and the notify-time filters (§10.5) on real payloads."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from ocstream.subscriptions import (
    EVENT_TYPES,
    LogChannel,
    Subscription,
    WebhookChannel,
    unknown_networks,
)
from ocstream.subscriptions.jsonpatch import (
    PatchError,
    PatchTestFailed,
    apply_patch,
    json_equal,
    parse_operations,
)
from ocstream.xcm.notifications import NOTIFICATION_TYPES

from . import payloads as p


def body(**changes: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "id": "ah-transfers",
        "origin": p.ASSET_HUB,
        "destinations": [p.INTERLAY],
        "channels": [{"type": "log"}],
    }
    value.update(changes)
    return {k: v for k, v in value.items() if v is not ...}


def errors(value: Any) -> list[tuple[tuple[str | int, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        Subscription.model_validate(value)
    return [(tuple(e["loc"]), e["msg"]) for e in caught.value.errors()]


def messages(value: Any) -> str:
    return " | ".join(message for _, message in errors(value))


# --- schema ---------------------------------------------------------------------------------------


def test_event_types_are_the_notification_types() -> None:
    assert set(EVENT_TYPES) == set(NOTIFICATION_TYPES)


def test_a_full_subscription_round_trips_exactly_as_given() -> None:
    given = {
        "id": "Unique-sub:name_1.v2",
        "origin": p.ASSET_HUB,
        "senders": [p.SIGNER_GENERIC, "0x" + "ab" * 20],
        "destinations": [p.INTERLAY, p.HYDRATION],
        "events": ["xcm.received", "xcm.timeout"],
        "ephemeral": False,
        "outboundTTL": 600_000,
        "channels": [
            {
                "type": "webhook",
                "url": "https://example.org/hook?x=1",
                "contentType": "Text/Plain",
                "events": "*",
                "template": "{{type}} {{origin.chainId}}",
                "bearer": "token",
                "limit": 0,
                "secret": "whsec_c2VjcmV0LWtleQ==",
            },
            {"type": "websocket"},
            {"type": "log"},
        ],
    }
    subscription = Subscription.model_validate(copy.deepcopy(given))
    assert subscription.to_json() == given
    assert Subscription.model_validate_json(subscription.to_json_bytes()).to_json() == given


def test_defaults_are_not_added_to_the_echo_but_apply() -> None:
    subscription = Subscription.model_validate(
        body(channels=[{"type": "webhook", "url": "http://h.example/x"}])
    )
    assert subscription.to_json()["channels"] == [{"type": "webhook", "url": "http://h.example/x"}]
    channel = subscription.channels[0]
    assert isinstance(channel, WebhookChannel)
    assert (channel.contentType, channel.limit, channel.signing_key()) == (
        "application/json",
        5,
        None,
    )


def test_signing_key_of_a_standard_webhooks_secret() -> None:
    assert WebhookChannel(type="webhook", url="https://a.b", secret="whsec_AQID").signing_key() == (
        b"\x01\x02\x03"
    )
    assert WebhookChannel(type="webhook", url="https://a.b", secret="plain").signing_key() == (
        b"plain"
    )
    assert "base64" in messages(
        body(channels=[{"type": "webhook", "url": "https://a.b", "secret": "whsec_!!"}])
    )


def test_lists_are_deduplicated_in_order_and_senders_by_account() -> None:
    subscription = Subscription.model_validate(
        body(
            senders=[p.SIGNER_GENERIC, p.SIGNER_POLKADOT, p.SIGNER_KEY.upper().replace("0X", "0x")],
            destinations=[p.INTERLAY, p.HYDRATION, p.INTERLAY],
            events=["xcm.sent", "xcm.hop", "xcm.sent"],
        )
    )
    # Three spellings of one account: the first, as written, stays.
    assert subscription.senders == [p.SIGNER_GENERIC]
    assert subscription.sender_keys() == frozenset({p.SIGNER_KEY})
    assert subscription.destinations == [p.INTERLAY, p.HYDRATION]
    assert subscription.events == ["xcm.sent", "xcm.hop"]


@pytest.mark.parametrize(
    ("changes", "where", "text"),
    [
        ({"id": "bad id!"}, ("id",), "pattern"),
        ({"id": "ok\nbad"}, ("id",), "pattern"),
        ({"id": "ok\n"}, ("id",), "pattern"),
        ({"id": "x" * 101}, ("id",), "1 to 100"),
        ({"id": ""}, ("id",), "1 to 100"),
        ({"id": ...}, ("id",), "Field required"),
        ({"origin": "polkadot"}, ("origin",), "Invalid chain id:polkadot"),
        ({"origin": "urn:ocn:polkadot:0\n"}, ("origin",), "Invalid chain id"),
        (
            {"destinations": ["urn:ocn:polkadot:1000", "nope"]},
            ("destinations",),
            "Invalid chain id:nope",
        ),
        ({"senders": []}, ("senders",), "at least 1 sender address"),
        ({"senders": "all"}, ("senders",), "at least 1 sender address"),
        (
            {"senders": ["14DqgdKU6Zfh1UjdU4PYwpoHi2QTp37R6djehfbhXe9zoyQX"]},
            ("senders",),
            "bad checksum",
        ),
        ({"senders": ["0x1234"]}, ("senders",), "invalid hex account"),
        ({"events": []}, ("events",), "at least 1 event type is required [xcm.sent,xcm.received"),
        ({"events": ["xcm.bogus"]}, ("events",), "unknown event type 'xcm.bogus'"),
        ({"events": "all"}, ("events",), "at least 1 event type"),
        (
            {"outboundTTL": 5000},
            ("outboundTTL",),
            "XCM outbound message TTL should be at least 6 seconds",
        ),
        ({"outboundTTL": 2**53}, ("outboundTTL",), "at most 9007199254740991"),
        ({"outboundTTL": "6000"}, ("outboundTTL",), "valid integer"),
        ({"outboundTTL": 6000.0}, ("outboundTTL",), "valid integer"),
        ({"ephemeral": "true"}, ("ephemeral",), "valid boolean"),
        ({"ephemeral": 1}, ("ephemeral",), "valid boolean"),
        ({"channels": []}, ("channels",), "at least 1 item"),
        (
            {"channels": [{"type": "email"}]},
            ("channels", 0),
            "does not match any of the expected tags",
        ),
        (
            {"channels": [{"type": "log", "level": "info"}]},
            ("channels", 0, "log", "level"),
            "Extra inputs",
        ),
        ({"colour": "blue"}, ("colour",), "Extra inputs"),
        ({"senders": None}, (), "senders must not be null"),
    ],
)
def test_invalid_subscriptions_name_the_problem(
    changes: dict[str, Any], where: tuple[str | int, ...], text: str
) -> None:
    found = errors(body(**changes))
    assert any(loc == where and text in message for loc, message in found), found


@pytest.mark.parametrize(
    ("channel", "text"),
    [
        ({"url": "ftp://example.org/x"}, "http:// or https://"),
        ({"url": "javascript:alert(1)//https://x"}, "http:// or https://"),
        ({"url": " https://example.org"}, "http:// or https://"),
        ({"url": "https://example.org/\nHost: evil"}, "http:// or https://"),
        ({"url": "https://"}, "http:// or https://"),
        ({"url": "http"}, "at least 5"),
        ({"url": "https://e.org/" + "a" * 2000}, "at most 2000"),
        ({"contentType": "image/png"}, "contentType must match"),
        ({"contentType": "application/json\nX: y"}, "contentType must match"),
        ({"contentType": "application/json; charset=utf-8"}, "contentType must match"),
        ({"contentType": "text/" + "a" * 250}, "at most 250"),
        ({"events": []}, "at least 1 event type"),
        ({"template": "abc"}, "at least 5"),
        ({"bearer": ""}, "at least 1"),
        ({"limit": -1}, "greater than or equal to 0"),
        ({"limit": 2**53}, "less than or equal to 9007199254740991"),
        ({"secret": ""}, "at least 1"),
        ({"headers": {}}, "Extra inputs"),
    ],
)
def test_invalid_webhook_channels(channel: dict[str, Any], text: str) -> None:
    webhook = {"type": "webhook", "url": "https://example.org/hook", **channel}
    assert text in messages(body(channels=[webhook]))


def test_ephemeral_subscriptions_only_take_one_websocket_channel() -> None:
    rule = "ephemeral subscriptions only supports websocket notifications"
    hook = {"type": "webhook", "url": "https://example.org/hook"}
    assert rule in messages(body(ephemeral=True, channels=[hook]))
    assert rule in messages(body(ephemeral=True, channels=[{"type": "log"}]))
    assert rule in messages(body(ephemeral=True, channels=[{"type": "websocket"}] * 2))
    ok = Subscription.model_validate(body(ephemeral=True, channels=[{"type": "websocket"}]))
    assert ok.is_ephemeral
    assert not Subscription.model_validate(body(ephemeral=False, channels=[hook])).is_ephemeral


def test_non_objects_are_refused() -> None:
    for value in ("hello", 5, None, [body()]):
        assert errors(value)


def test_unknown_networks_lists_origin_and_destinations_not_known() -> None:
    subscription = Subscription.model_validate(
        body(origin="urn:ocn:kusama:0", destinations=[p.INTERLAY, "urn:ocn:kusama:1000"])
    )
    known = {p.INTERLAY, p.ASSET_HUB}
    assert unknown_networks(subscription, known) == ["urn:ocn:kusama:0", "urn:ocn:kusama:1000"]
    assert unknown_networks(Subscription.model_validate(body()), known) == []


# --- filters --------------------------------------------------------------------------------------


def sub(**changes: Any) -> Subscription:
    return Subscription.model_validate(body(**changes))


@pytest.mark.parametrize("build", [p.sent, p.received, p.timeout, p.relayed])
def test_origin_and_final_destination_select_every_type(build: Any) -> None:
    notification = build()
    assert sub().matches(notification)
    assert not sub(origin=p.INTERLAY).matches(notification)
    assert not sub(destinations=[p.HYDRATION]).matches(notification)
    assert not sub(destinations=[]).matches(notification)


def test_the_final_destination_counts_not_the_hops() -> None:
    # Asset Hub → relay (a hop) → Hydration: listing the relay is not needed, nor enough.
    for notification in (
        p.sent(stops=(p.RELAY, p.HYDRATION)),
        p.hop(stops=(p.RELAY, p.HYDRATION)),
        p.received(stops=(p.RELAY, p.HYDRATION)),
    ):
        assert notification["legs"][-1]["to"] == p.HYDRATION
        assert sub(destinations=[p.HYDRATION]).matches(notification)
        assert not sub(destinations=[p.RELAY]).matches(notification)


def test_destination_falls_back_to_destination_chain_id_without_legs() -> None:
    notification = p.sent()
    del notification["legs"]
    assert sub().matches(notification)
    assert not sub(destinations=[p.HYDRATION]).matches(notification)


@pytest.mark.parametrize(
    "senders", [[p.SIGNER_GENERIC], [p.SIGNER_KUSAMA], [p.SIGNER_POLKADOT], [p.SIGNER_KEY]]
)
def test_senders_match_by_public_key_whatever_the_ss58_prefix(senders: list[str]) -> None:
    notification = p.received()
    # The notification renders the signer with Polkadot's prefix 0.
    assert notification["sender"]["signer"]["id"] == p.SIGNER_POLKADOT
    assert sub(senders=senders).matches(notification)
    assert sub(senders=senders).matches(p.timeout())


def test_senders_match_extra_signers_and_refuse_others() -> None:
    proxied = p.sent(sender_value=p.sender(p.OTHER_KEY, proxied=p.PROXIED_KEY))
    assert sub(senders=["0x" + "11" * 32]).matches(proxied)
    assert sub(senders=["0x" + "22" * 32]).matches(proxied)
    assert not sub(senders=[p.SIGNER_GENERIC]).matches(proxied)
    assert not sub(senders=[p.SIGNER_GENERIC]).matches(p.sent(sender_value=p.sender(p.OTHER_KEY)))


def test_a_journey_without_sender_matches_only_any_sender() -> None:
    anonymous = p.sent(no_sender=True)
    assert anonymous["sender"] is None
    assert sub().matches(anonymous)
    assert sub(senders="*").matches(anonymous)
    assert not sub(senders=[p.SIGNER_GENERIC]).matches(anonymous)
    assert sub(senders="*").sender_keys() is None


def test_broken_notifications_match_nothing() -> None:
    assert not sub().matches({})
    assert not sub().matches({"origin": "x", "legs": "y"})


def test_wants_applies_subscription_events_then_webhook_overrides() -> None:
    hook_all = {"type": "webhook", "url": "https://a.b/1"}
    hook_received = {"type": "webhook", "url": "https://a.b/2", "events": ["xcm.received"]}
    hook_star = {"type": "webhook", "url": "https://a.b/3", "events": "*"}
    subscription = sub(
        events=["xcm.sent", "xcm.timeout"],
        channels=[hook_all, hook_received, hook_star, {"type": "log"}, {"type": "websocket"}],
    )
    assert [subscription.wants("xcm.sent", i) for i in range(5)] == [
        True,
        False,
        True,
        True,
        True,
    ]
    assert subscription.channel_indexes("xcm.received") == [1, 2]
    assert subscription.channel_indexes("xcm.hop") == [2]
    everything = sub(channels=[hook_all, {"type": "log"}])
    for kind in EVENT_TYPES:
        assert everything.channel_indexes(kind) == [0, 1]
    assert sub(events="*").wants("xcm.relayed", 0)


def test_the_model_is_immutable() -> None:
    subscription = sub()
    with pytest.raises(ValidationError):
        subscription.id = "other"
    assert isinstance(subscription.channels[0], LogChannel)


# --- JSON Patch -----------------------------------------------------------------------------------


def patch(document: Any, operations: list[dict[str, Any]]) -> Any:
    return apply_patch(document, parse_operations(operations))


def test_json_patch_operations() -> None:
    doc = {"a": [1, 2], "b": {"c": "d"}, "e/f": 1, "g~h": 2}
    before = copy.deepcopy(doc)
    assert patch(doc, [{"op": "add", "path": "/a/-", "value": 3}])["a"] == [1, 2, 3]
    assert patch(doc, [{"op": "add", "path": "/a/0", "value": 0}])["a"] == [0, 1, 2]
    assert patch(doc, [{"op": "add", "path": "/a/2", "value": 9}])["a"] == [1, 2, 9]
    assert patch(doc, [{"op": "remove", "path": "/a/0"}])["a"] == [2]
    assert "b" not in patch(doc, [{"op": "remove", "path": "/b"}])
    assert patch(doc, [{"op": "replace", "path": "/b/c", "value": 5}])["b"] == {"c": 5}
    moved = patch(doc, [{"op": "move", "from": "/b/c", "path": "/x"}])
    assert moved["x"] == "d" and moved["b"] == {}
    copied = patch(doc, [{"op": "copy", "from": "/b", "path": "/y"}])
    assert copied["y"] == {"c": "d"} and copied["y"] is not copied["b"]
    assert patch(doc, [{"op": "remove", "path": "/e~1f"}, {"op": "remove", "path": "/g~0h"}]) == {
        "a": [1, 2],
        "b": {"c": "d"},
    }
    assert patch(doc, [{"op": "test", "path": "/a", "value": [1, 2.0]}]) == doc
    assert doc == before  # never modified in place


@pytest.mark.parametrize(
    ("operations", "error"),
    [
        ([{"op": "test", "path": "/a/0", "value": True}], PatchTestFailed),
        ([{"op": "test", "path": "/b", "value": {"c": "e"}}], PatchTestFailed),
        ([{"op": "remove", "path": "/nope"}], PatchError),
        ([{"op": "replace", "path": "/a/5", "value": 1}], PatchError),
        ([{"op": "add", "path": "/a/3", "value": 1}], PatchError),
        ([{"op": "add", "path": "/a/01", "value": 1}], PatchError),
        ([{"op": "add", "path": "/x/y", "value": 1}], PatchError),
        ([{"op": "move", "from": "/b", "path": "/b/c"}], PatchError),
    ],
)
def test_json_patch_failures(operations: list[dict[str, Any]], error: type[Exception]) -> None:
    doc = {"a": [1, 2], "b": {"c": "d"}}
    with pytest.raises(error):
        patch(doc, operations)
    assert doc == {"a": [1, 2], "b": {"c": "d"}}


@pytest.mark.parametrize(
    "document",
    [
        {"op": "add", "path": "/a", "value": 1},
        [{"op": "frobnicate", "path": "/a"}],
        [{"op": "add", "path": "/a"}],
        [{"op": "move", "path": "/a"}],
        [{"op": "add", "path": "a", "value": 1}],
        [{"op": "add", "path": "/a~2", "value": 1}],
        ["add"],
    ],
)
def test_malformed_patches(document: Any) -> None:
    with pytest.raises(PatchError):
        parse_operations(document)


def test_allowed_roots_match_whole_segments() -> None:
    roots = ("/senders", "/channels")
    for path in ("/senders", "/senders/-", "/channels/0/url"):
        parse_operations([{"op": "remove", "path": path}], allowed_roots=roots)
    for operation in (
        {"op": "remove", "path": "/sendersX"},
        {"op": "replace", "path": "/id", "value": "x"},
        {"op": "remove", "path": ""},
        {"op": "copy", "from": "/id", "path": "/senders/0"},
    ):
        with pytest.raises(PatchError, match="^nope$"):
            parse_operations([operation], allowed_roots=roots, roots_error="nope")


def test_json_equality_keeps_booleans_apart_from_numbers() -> None:
    assert json_equal(1, 1.0)
    assert not json_equal(True, 1)
    assert not json_equal([0], [False])
    assert json_equal({"a": [None, "x"]}, {"a": [None, "x"]})
    assert not json_equal({"a": 1}, {"a": 1, "b": 2})
