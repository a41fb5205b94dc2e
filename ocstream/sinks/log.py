"""The log sink: one readable line per notification (the ``log`` channel, XCM.md §13).

::

    [urn:ocn:polkadot:1000 ➜ urn:ocn:polkadot:2032] NOTIFICATION xcm.received subscription=ah,
      messageHash=0x19f8…, outcome=Success (o: #4833171, d: #3787659)

The arrow tells the kind of step: ``➜`` sent, received and timed out, ``↠`` relayed (the relay
chain carried the HRMP message), ``↷`` a hop at an intermediate stop, with ``in`` (executed there)
or ``out`` (sent on from there), ``⇢`` a bridge hub's event (``xcm.bridge``, with the bridge, status
and nonce). The block numbers are ``o`` (origin), ``d`` (destination), ``r`` (relay), ``h`` (hop)
and ``b`` (bridge hub). A line is built from whatever the notification holds: a field that is
missing is left out, so a malformed notification is logged, never raised on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson

ARROWS = {"xcm.relayed": "↠", "xcm.hop": "↷", "xcm.bridge": "⇢"}
#: Logged at WARNING: the subscriber's transfer did not (yet) arrive as hoped.
_WARN_TYPES = {"xcm.timeout"}


def format_line(notification: Mapping[str, Any], subscription_id: str) -> str:
    """The log line of one notification delivered to ``subscription_id``."""
    kind = str(notification.get("type") or "unknown")
    origin = _mapping(notification.get("origin"))
    destination = _mapping(notification.get("destination"))
    waypoint = _mapping(notification.get("waypoint"))
    legs = [leg for leg in notification.get("legs") or [] if isinstance(leg, Mapping)]

    source = origin.get("chainId") or (legs[0].get("from") if legs else None) or "?"
    target = destination.get("chainId") or (legs[-1].get("to") if legs else None) or "?"
    head = f"[{source} {ARROWS.get(kind, '➜')} {target}] NOTIFICATION {kind}"

    fields: list[tuple[str, Any]] = [("subscription", subscription_id)]
    blocks: list[tuple[str, Any]] = [("o", origin.get("blockNumber"))]
    if kind == "xcm.hop":
        fields += [("direction", notification.get("direction")), ("stop", waypoint.get("chainId"))]
        blocks.append(("h", waypoint.get("blockNumber")))
    elif kind == "xcm.relayed":
        fields.append(("relay", waypoint.get("chainId")))
        blocks.append(("r", waypoint.get("blockNumber")))
    elif kind == "xcm.bridge":
        fields += [
            ("bridge", notification.get("bridgeName")),
            ("status", notification.get("bridgeStatus")),
            ("hub", waypoint.get("chainId")),
            ("nonce", notification.get("nonce")),
        ]
        blocks.append(("b", waypoint.get("blockNumber")))
    elif kind == "xcm.received":
        blocks.append(("d", destination.get("blockNumber") or waypoint.get("blockNumber")))
    fields += [
        ("messageHash", waypoint.get("messageHash") or origin.get("messageHash")),
        ("messageId", notification.get("messageId")),
    ]
    if kind != "xcm.timeout":
        fields.append(("outcome", waypoint.get("outcome")))
        error = waypoint.get("error")
        if error is not None:
            fields.append(("error", error if isinstance(error, str) else _compact(error)))
    if waypoint.get("assetsTrapped"):
        fields.append(("assetsTrapped", "yes"))

    text = ", ".join(f"{name}={value}" for name, value in fields if value is not None)
    numbers = ", ".join(f"{name}: #{value}" for name, value in blocks if value is not None)
    return f"{head} {text}" + (f" ({numbers})" if numbers else "")


class LogSink:
    """Delivers notifications as log lines: ``await LogSink(logger).deliver(sub_id, payload)``.

    Failed outcomes and timeouts are logged at WARNING, everything else at INFO.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("ocstream.notifications")

    def level(self, notification: Mapping[str, Any]) -> int:
        waypoint = _mapping(notification.get("waypoint"))
        if notification.get("type") in _WARN_TYPES or waypoint.get("outcome") == "Fail":
            return logging.WARNING
        return logging.INFO

    async def deliver(self, subscription_id: str, notification: Mapping[str, Any]) -> None:
        self.logger.log(self.level(notification), "%s", format_line(notification, subscription_id))


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _compact(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)


__all__ = ["LogSink", "format_line"]
