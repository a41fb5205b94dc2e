"""Notification payloads (XCM.md §10): built from a stored journey and the leg that triggered them.

A notification is subscription-independent when the matcher emits it; the delivery layer adds
``subscriptionId`` per subscription. Every notification carries a stable ``id`` — the journey id,
the type, the leg and the direction — so a sink can deliver it at most once per channel however
often the dataflow re-emits it (``docs/notifications.md``).
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import JsonValue

from .legs import NO_HASH

__all__ = [
    "NOTIFICATION_TYPES",
    "bridge",
    "hop",
    "notification_id",
    "received",
    "relayed",
    "sent",
    "timeout",
]

NOTIFICATION_TYPES: Final = (
    "xcm.sent",
    "xcm.relayed",
    "xcm.hop",
    "xcm.received",
    "xcm.timeout",
    "xcm.bridge",
)

# The context fields of a journey's message that received/relayed waypoints repeat.
_MESSAGE_FIELDS: Final = ("messageHash", "messageData", "instructions")


def origin_message(context: dict[str, Any]) -> dict[str, Any]:
    """The message fields of a sent leg's context (a DMP whose bytes were not read has no hash,
    never the all-zero placeholder)."""
    message_hash = context.get("messageHash")
    return {
        "messageHash": None if message_hash == NO_HASH else message_hash,
        "messageData": context.get("messageData"),
        "instructions": context.get("instructions"),
    }


def journey_message(journey: dict[str, Any]) -> dict[str, Any]:
    """The message the journey's current stop runs. A journey stores it only once it differs
    from the first leg's, which ``origin_context`` holds already (the program is the largest
    part of a journey, and a journey entry is written several times)."""
    message = journey.get("message")
    if message is not None:
        return dict(message)
    return origin_message(journey.get("origin_context") or {})


def notification_id(journey_id: str, kind: str, leg_index: int, direction: str = "") -> str:
    suffix = f"-{direction}" if direction else ""
    return f"{journey_id}:{kind}:{leg_index}{suffix}"


def _base(journey: dict[str, Any], kind: str) -> dict[str, JsonValue]:
    payload: dict[str, JsonValue] = {
        "type": kind,
        "journeyId": journey["id"],
        "legs": journey["legs"],
        "origin": journey["origin_context"],
        "destination": {"chainId": journey["destination"]},
        "sender": journey.get("sender"),
    }
    if journey.get("topic"):
        payload["messageId"] = journey["topic"]
    return payload


def sent(journey: dict[str, Any]) -> dict[str, JsonValue]:
    payload = _base(journey, "xcm.sent")
    payload["id"] = notification_id(journey["id"], "sent", 0)
    payload["waypoint"] = {**journey["origin_context"], "legIndex": 0}
    return payload


def timeout(journey: dict[str, Any]) -> dict[str, JsonValue]:
    payload = _base(journey, "xcm.timeout")
    payload["id"] = notification_id(journey["id"], "timeout", len(journey["legs"]) - 1)
    payload["waypoint"] = {**journey["origin_context"], "legIndex": 0}
    return payload


def received(
    journey: dict[str, Any], context: dict[str, Any], assets_trapped: JsonValue
) -> dict[str, JsonValue]:
    payload = _base(journey, "xcm.received")
    last = len(journey["legs"]) - 1
    message = journey_message(journey)
    destination = dict(context)
    for field in _MESSAGE_FIELDS:
        if message.get(field) is not None:
            destination[field] = message[field]
    destination.pop("messageId", None)
    payload["id"] = notification_id(journey["id"], "received", last)
    payload["destination"] = destination
    waypoint: dict[str, JsonValue] = {**destination, "legIndex": last}
    if assets_trapped is not None:
        waypoint["assetsTrapped"] = assets_trapped
    payload["waypoint"] = waypoint
    return payload


def relayed(
    journey: dict[str, Any], context: dict[str, Any], leg_index: int
) -> dict[str, JsonValue]:
    payload = _base(journey, "xcm.relayed")
    waypoint = dict(context)
    waypoint.pop("messageId", None)
    waypoint["legIndex"] = leg_index
    payload["id"] = notification_id(journey["id"], "relayed", leg_index)
    payload["waypoint"] = waypoint
    return payload


def hop(
    journey: dict[str, Any],
    context: dict[str, Any],
    leg_index: int,
    direction: str,
    assets_trapped: JsonValue = None,
) -> dict[str, JsonValue]:
    payload = _base(journey, "xcm.hop")
    waypoint = dict(context)
    waypoint.pop("messageId", None)
    if direction == "in":
        # The event names only an id (maybe the topic): the message that arrived is the
        # journey's message at this stop.
        message = journey_message(journey)
        for field in _MESSAGE_FIELDS:
            if message.get(field) is not None:
                waypoint[field] = message[field]
    waypoint["legIndex"] = leg_index
    if assets_trapped is not None:
        waypoint["assetsTrapped"] = assets_trapped
    payload["id"] = notification_id(journey["id"], "hop", leg_index, direction)
    payload["direction"] = direction
    payload["waypoint"] = waypoint
    return payload


def bridge(
    journey: dict[str, Any],
    context: dict[str, Any],
    leg_index: int,
    *,
    status: str,
    name: str,
    channel: str | None,
    nonce: str | None,
    version: int,
) -> dict[str, JsonValue]:
    """``xcm.bridge``: a bridge accepted, delivered or received the journey's message (XCM.md
    §10.1). The waypoint is the bridge hub's event; ``legIndex`` is the bridge leg."""
    payload = _base(journey, "xcm.bridge")
    waypoint = dict(context)
    waypoint.pop("messageId", None)
    waypoint["legIndex"] = leg_index
    payload["id"] = notification_id(journey["id"], "bridge", leg_index, status)
    payload["bridgeStatus"] = status
    payload["bridgeName"] = name
    if channel is not None:
        payload["channelId"] = channel
    payload["nonce"] = nonce
    payload["version"] = version
    payload["waypoint"] = waypoint
    return payload
