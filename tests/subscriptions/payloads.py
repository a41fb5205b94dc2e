"""Notifications shaped as the dataflow writes them (docs/notifications.md), built with the real
builders of :mod:`ocstream.xcm.notifications` from journey records."""

from __future__ import annotations

from typing import Any

from ocstream.xcm import notifications
from ocstream.xcm.ss58 import render_account

ASSET_HUB = "urn:ocn:polkadot:1000"
INTERLAY = "urn:ocn:polkadot:2032"
RELAY = "urn:ocn:polkadot:0"
HYDRATION = "urn:ocn:polkadot:2034"

#: The Asset Hub → Interlay USDT transfer's signer (XCM.md §10.4).
SIGNER_KEY = "0x8e7f870a8cac3fa165c8531a304fcc59c7e29aec176fb03f630ceeea397b1368"
SIGNER_POLKADOT = "14DqgdKU6Zfh1UjdU4PYwpoHi2QTp37R6djehfbhXe9zoyQT"  # prefix 0
SIGNER_GENERIC = "5FHYYJ4QEnQDZwj7WRLYofy8rQQp7jZH291AYNcLyZ8UdQ7f"  # prefix 42
SIGNER_KUSAMA = "FoACcQGs9R9KbYZH89bhdL8zzh3vQNTUWquw2tJTMLyNgUU"  # prefix 2
PROXIED_KEY = "0x" + "11" * 32
OTHER_KEY = "0x" + "22" * 32
MESSAGE_HASH = "0x19f82753eb9718974dd2d6dfc5e3b238625d012c1a8de5e3347f56079f143867"


def sender(key: str = SIGNER_KEY, *, proxied: str | None = None) -> dict[str, Any]:
    extra = []
    if proxied is not None:
        extra = [{"type": "proxy", "id": render_account(proxied, 0), "publicKey": proxied}]
    return {"signer": {"id": render_account(key, 0), "publicKey": key}, "extraSigners": extra}


def context(chain: str, block: int, method: str) -> dict[str, Any]:
    block_hash = "0x" + f"{block:064x}"
    return {
        "chainId": chain,
        "blockNumber": str(block),
        "blockHash": block_hash,
        "timestamp": 1_700_000_000_000,
        "extrinsicId": f"{block}-2",
        "event": {
            "section": "XcmpQueue",
            "method": method,
            "data": {"message_hash": MESSAGE_HASH},
            "eventId": f"{block}-5",
            "blockPosition": 5,
            "extrinsicId": f"{block}-2",
            "blockNumber": str(block),
            "blockHash": block_hash,
        },
        "outcome": "Success",
        "error": None,
        "messageHash": MESSAGE_HASH,
        "messageData": "0x0310",
        "instructions": {"V3": ["ClearOrigin"]},
    }


def journey(
    *,
    origin: str = ASSET_HUB,
    stops: tuple[str, ...] = (INTERLAY,),
    sender_value: dict[str, Any] | None = None,
    no_sender: bool = False,
) -> dict[str, Any]:
    chain = [origin, *stops]
    legs: list[dict[str, Any]] = []
    for position, (start, end) in enumerate(zip(chain, chain[1:], strict=False)):
        last = position == len(chain) - 2
        leg: dict[str, Any] = {"from": start, "to": end, "type": "hrmp" if last else "hop"}
        if last:
            leg["relay"] = RELAY
        legs.append(leg)
    return {
        "id": "c93599e30bba82fb17ad4ae5b6d21290",
        "legs": legs,
        "origin_context": context(origin, 4833171, "XcmpMessageSent"),
        "destination": stops[-1],
        "sender": None if no_sender else (sender_value or sender()),
        "topic": None,
        "message": {"messageHash": MESSAGE_HASH, "messageData": "0x0310", "instructions": None},
    }


def sent(**kwargs: Any) -> dict[str, Any]:
    return dict(notifications.sent(journey(**kwargs)))


def received(**kwargs: Any) -> dict[str, Any]:
    record = journey(**kwargs)
    return dict(
        notifications.received(record, context(record["destination"], 3787659, "Success"), None)
    )


def hop(**kwargs: Any) -> dict[str, Any]:
    record = journey(**kwargs)
    stop = record["legs"][0]["to"]
    return dict(notifications.hop(record, context(stop, 100, "Success"), 0, "in"))


def timeout(**kwargs: Any) -> dict[str, Any]:
    return dict(notifications.timeout(journey(**kwargs)))


def relayed(**kwargs: Any) -> dict[str, Any]:
    return dict(notifications.relayed(journey(**kwargs), context(RELAY, 20000, "Backed"), 0))
