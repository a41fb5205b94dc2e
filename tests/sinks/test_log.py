"""Log lines of each notification type, from payloads built by ocstream.xcm.notifications."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from ocstream.sinks.log import LogSink, format_line
from ocstream.xcm import notifications

RELAY = "urn:ocn:polkadot:0"
ASSET_HUB = "urn:ocn:polkadot:1000"
HYDRATION = "urn:ocn:polkadot:2034"
HASH = "0x19f82753eb9718974dd2d6dfc5e3b238625d012c1a8de5e3347f56079f143867"
HOP_HASH = "0x6a2b0c5b6b1f0c9a4f2d4e9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a"
TOPIC = "0x" + "ab" * 32


def context(
    chain: str, block: int, *, outcome: str = "Success", error: Any = None
) -> dict[str, Any]:
    return {
        "chainId": chain,
        "blockNumber": str(block),
        "blockHash": "0x" + "11" * 32,
        "timestamp": 1_700_000_000_000,
        "extrinsicId": f"{block}-2",
        "event": None,
        "outcome": outcome,
        "error": error,
        "messageHash": HASH,
        "messageData": "0x03",
        "instructions": {"V3": []},
    }


def journey(*, topic: str | None = None) -> dict[str, Any]:
    """Asset Hub → Hydration, through the relay's HRMP."""
    return {
        "id": "c93599e30bba82fb17ad4ae5b6d21290",
        "legs": [{"from": ASSET_HUB, "to": HYDRATION, "type": "hrmp", "relay": RELAY}],
        "origin_context": context(ASSET_HUB, 4833171),
        "destination": HYDRATION,
        "sender": None,
        "topic": topic,
        "message": {"messageHash": HASH, "messageData": "0x03", "instructions": {"V3": []}},
    }


def hop_journey() -> dict[str, Any]:
    """Relay → Asset Hub (hop) → Hydration."""
    return {
        **journey(topic=TOPIC),
        "legs": [
            {"from": RELAY, "to": ASSET_HUB, "type": "hop"},
            {"from": ASSET_HUB, "to": HYDRATION, "type": "hrmp", "relay": RELAY},
        ],
        "origin_context": context(RELAY, 21000000),
    }


def test_sent() -> None:
    line = format_line(notifications.sent(journey()), "ah-transfers")
    assert line == (
        f"[{ASSET_HUB} ➜ {HYDRATION}] NOTIFICATION xcm.sent subscription=ah-transfers, "
        f"messageHash={HASH}, outcome=Success (o: #4833171)"
    )


def test_received_with_topic() -> None:
    payload = notifications.received(journey(topic=TOPIC), context(HYDRATION, 3787659), None)
    assert format_line(payload, "ah-transfers") == (
        f"[{ASSET_HUB} ➜ {HYDRATION}] NOTIFICATION xcm.received subscription=ah-transfers, "
        f"messageHash={HASH}, messageId={TOPIC}, outcome=Success (o: #4833171, d: #3787659)"
    )


def test_received_failed_with_trapped_assets() -> None:
    error = {"Module": {"index": 31, "error": "0x18000000"}}
    failed = context(HYDRATION, 3787659, outcome="Fail", error=error)
    payload = notifications.received(journey(), failed, {"hash": "0xaa"})
    assert format_line(payload, "s1") == (
        f"[{ASSET_HUB} ➜ {HYDRATION}] NOTIFICATION xcm.received subscription=s1, "
        f"messageHash={HASH}, outcome=Fail, "
        'error={"Module":{"index":31,"error":"0x18000000"}}, '
        "assetsTrapped=yes (o: #4833171, d: #3787659)"
    )
    failed_text = context(HYDRATION, 3787659, outcome="Fail", error="UntrustedReserveLocation")
    line = format_line(notifications.received(journey(), failed_text, None), "s1")
    assert "outcome=Fail, error=UntrustedReserveLocation (o: #4833171, d: #3787659)" in line


def test_relayed() -> None:
    payload = notifications.relayed(journey(), context(RELAY, 21000042), 0)
    assert format_line(payload, "s1") == (
        f"[{ASSET_HUB} ↠ {HYDRATION}] NOTIFICATION xcm.relayed subscription=s1, relay={RELAY}, "
        f"messageHash={HASH}, outcome=Success (o: #4833171, r: #21000042)"
    )


@pytest.mark.parametrize("direction", ["in", "out"])
def test_hop_in_and_out(direction: str) -> None:
    at_hop = {**context(ASSET_HUB, 6000001), "messageHash": HOP_HASH}
    leg_index = 0 if direction == "in" else 1
    payload = notifications.hop(hop_journey(), at_hop, leg_index, direction)
    # "in" carries the message that arrived (the journey's), "out" the re-sent one.
    expected_hash = HASH if direction == "in" else HOP_HASH
    assert format_line(payload, "s1") == (
        f"[{RELAY} ↷ {HYDRATION}] NOTIFICATION xcm.hop subscription=s1, direction={direction}, "
        f"stop={ASSET_HUB}, messageHash={expected_hash}, messageId={TOPIC}, outcome=Success "
        "(o: #21000000, h: #6000001)"
    )


def test_bridge() -> None:
    hub = "urn:ocn:polkadot:1002"
    at_hub = {**context(hub, 5290866), "messageHash": None}
    payload = notifications.bridge(
        journey(topic=TOPIC),
        at_hub,
        1,
        status="accepted",
        name="pkbridge",
        channel="0x00000001",
        nonce="7",
        version=1,
    )
    assert format_line(payload, "s1") == (
        f"[{ASSET_HUB} ⇢ {HYDRATION}] NOTIFICATION xcm.bridge subscription=s1, bridge=pkbridge, "
        f"status=accepted, hub={hub}, nonce=7, messageHash={HASH}, messageId={TOPIC}, "
        "outcome=Success (o: #4833171, b: #5290866)"
    )


def test_timeout() -> None:
    assert format_line(notifications.timeout(journey()), "s1") == (
        f"[{ASSET_HUB} ➜ {HYDRATION}] NOTIFICATION xcm.timeout subscription=s1, "
        f"messageHash={HASH} (o: #4833171)"
    )


def test_malformed_notifications_still_make_a_line() -> None:
    assert format_line({}, "s1") == "[? ➜ ?] NOTIFICATION unknown subscription=s1"
    bridge = {"type": "xcm.bridge", "legs": [{"from": ASSET_HUB, "to": "urn:ocn:kusama:1000"}]}
    assert format_line(bridge, "s1") == (
        f"[{ASSET_HUB} ⇢ urn:ocn:kusama:1000] NOTIFICATION xcm.bridge subscription=s1"
    )
    assert format_line({"type": "xcm.sent", "origin": "nope", "waypoint": 3}, "s") == (
        "[? ➜ ?] NOTIFICATION xcm.sent subscription=s"
    )


async def test_log_sink_levels(caplog: pytest.LogCaptureFixture) -> None:
    sink = LogSink(logging.getLogger("test.notifications"))
    failed = context(HYDRATION, 3787659, outcome="Fail", error="Barrier")
    with caplog.at_level(logging.INFO, logger="test.notifications"):
        await sink.deliver("s1", notifications.sent(journey()))
        await sink.deliver("s1", notifications.received(journey(), failed, None))
        await sink.deliver("s1", notifications.timeout(journey()))
    assert [
        (r.levelno, r.getMessage().split(" NOTIFICATION ")[1][:12]) for r in caplog.records
    ] == [
        (logging.INFO, "xcm.sent sub"),
        (logging.WARNING, "xcm.received"),
        (logging.WARNING, "xcm.timeout "),
    ]
    assert all(r.name == "test.notifications" for r in caplog.records)
