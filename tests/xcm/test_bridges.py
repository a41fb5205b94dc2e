"""Bridges: routes through the bridge hubs, bridge hub events, and ``xcm.bridge``.

Real behaviour reproduced (no Polkadot <> Kusama bridge block is recorded in the fixtures, so
those are recorded BridgeHub blocks with edited events, each test says which):

* a transfer from Polkadot Asset Hub to Kusama goes Asset Hub → Polkadot BridgeHub (1002, which
  runs the ``ExportMessage`` Asset Hub's bridge router wraps it in) → Kusama BridgeHub (1002,
  which dispatches it) → Kusama Asset Hub, whose receipt names ``Sibling(1002)``;
* the source hub emits ``Bridge<Other>Messages.MessageAccepted{lane_id, nonce}`` while it
  executes the message, just before that message's ``MessageQueue.Processed``; the remote hub's
  relayer extrinsic dispatches the message (an XCMP send) and then emits ``MessagesReceived``;
* Snowbridge: ``EthereumOutboundQueue.MessageAccepted{id, nonce}`` with the topic as ``id``;
  ``EthereumInboundQueue.MessageReceived`` after the send it dispatched (recorded, #5290865).
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocstream.delivery import is_terminal
from ocstream.ingress.model import ExtendedBlock
from ocstream.subscriptions.models import Subscription, unknown_networks
from ocstream.testing import block_from_decoded, blocks_from_case
from ocstream.xcm.bridge import BridgeLeg, bridge_key
from ocstream.xcm.codec import XcmCodec
from ocstream.xcm.extract import Extracted, extract
from ocstream.xcm.legs import ReceivedLeg, RelayedLeg, SentLeg, legs_of, stops_of

from .sim import Cluster, bridge_leg, finish, received_leg, run, run_in_any_order, sent_leg
from .test_cases import load_case

P_AH, P_BH = "urn:ocn:polkadot:1000", "urn:ocn:polkadot:1002"
K_AH, K_BH = "urn:ocn:kusama:1000", "urn:ocn:kusama:1002"
HYDRATION = "urn:ocn:polkadot:2034"
ETHEREUM = "urn:ocn:ethereum:1"
LANE = "0x00000001"
TERMINAL = {"xcm.received", "xcm.timeout"}

Block = list[SentLeg | ReceivedLeg | RelayedLeg | BridgeLeg]


def h(n: int) -> str:
    return "0x" + f"{n:064x}"


def followed(network: str) -> bool:
    return not network.startswith("urn:ocn:ethereum:")


# --- routes (XCM.md §8, the HEAD example with BridgeHub 1002 stops) ------------------------------

TO_KUSAMA_AH = {
    "parents": 2,
    "interior": {"X2": [{"GlobalConsensus": "Kusama"}, {"Parachain": 1000}]},
}
TO_POLKADOT_AH = {
    "parents": 2,
    "interior": {"X2": [{"GlobalConsensus": "Polkadot"}, {"Parachain": 1000}]},
}
TO_ETHEREUM = {
    "parents": 2,
    "interior": {"X1": [{"GlobalConsensus": {"Ethereum": {"chain_id": 1}}}]},
}
DEPOSIT = {"DepositAsset": {"assets": {"Wild": {"AllCounted": 1}}, "beneficiary": "Here"}}


def export(network: Any, destination: Any) -> dict[str, Any]:
    """What Asset Hub's bridge router sends to its BridgeHub (shape of Asset Hub #10260145)."""
    return {
        "V5": [
            {"UnpaidExecution": {"weight_limit": "Unlimited", "check_origin": None}},
            {"ExportMessage": {"network": network, "destination": destination, "xcm": [DEPOSIT]}},
            {"SetTopic": h(0xAA)},
        ]
    }


def test_a_transfer_to_kusama_goes_through_both_bridge_hubs() -> None:
    # Hydration asks Polkadot Asset Hub to reserve-transfer on to Kusama Asset Hub.
    program = {"V4": [{"DepositReserveAsset": {"dest": TO_KUSAMA_AH, "xcm": [DEPOSIT]}}]}
    stops = stops_of(P_AH, program)
    assert stops == [P_AH, P_BH, K_BH, K_AH]
    assert [leg.payload() for leg in legs_of(HYDRATION, stops)][1:] == [
        {"from": P_AH, "to": P_BH, "type": "hop", "relay": "urn:ocn:polkadot:0"},
        {"from": P_BH, "to": K_BH, "type": "bridge"},
        {"from": K_BH, "to": K_AH, "type": "hrmp", "relay": "urn:ocn:kusama:0"},
    ]
    # The mirror, with V5 InitiateTransfer and InitiateReserveWithdraw.
    for name, field in (
        ("InitiateTransfer", "destination"),
        ("InitiateReserveWithdraw", "reserve"),
    ):
        nested = "remote_xcm" if name == "InitiateTransfer" else "xcm"
        program = {"V5": [{name: {field: TO_POLKADOT_AH, nested: [DEPOSIT]}}]}
        assert stops_of(K_AH, program) == [K_AH, K_BH, P_BH, P_AH], name


def test_the_export_asset_hub_sends_stops_at_the_remote_bridge_hub() -> None:
    # The bridge router's message to the local BridgeHub: ExportMessage runs there.
    stops = stops_of(P_BH, export("Kusama", {"X1": [{"Parachain": 1000}]}))
    assert stops == [P_BH, K_BH, K_AH]
    legs = legs_of(P_AH, stops)
    assert [leg.type for leg in legs] == ["hop", "bridge", "hrmp"]
    assert legs[2].from_ == K_BH  # so Kusama Asset Hub's receipt from Sibling(1002) agrees


def test_ethereum_is_reached_through_the_bridge_hub() -> None:
    program = {"V4": [{"InitiateReserveWithdraw": {"reserve": TO_ETHEREUM, "xcm": [DEPOSIT]}}]}
    assert stops_of(P_AH, program) == [P_AH, P_BH, ETHEREUM]
    assert stops_of(P_BH, export({"Ethereum": {"chain_id": 1}}, "Here")) == [P_BH, ETHEREUM]


# --- simulated journeys, every arrival order -----------------------------------------------------


def pk_journey(topic: bool, delivered: bool) -> tuple[list[Block], list[str]]:
    """Polkadot AH → Polkadot BH → (bridge) → Kusama BH → Kusama AH, lane 1, nonce 7."""
    t = h(0xAB) if topic else None
    stops = stops_of(P_BH, export("Kusama", {"X1": [{"Parachain": 1000}]}))
    sent = sent_leg(P_AH, stops, message_hash=h(1), topic=t, number=10)
    hop_in = received_leg(
        P_BH, message_hash=h(1), message_id=t or h(1), number=20, event=4, from_chain=P_AH
    )
    key = bridge_key(LANE, 7)
    accepted = bridge_leg(
        P_BH, "accepted", ids=hop_in.ids, nonce="7", channel=LANE, keys=[key], number=20, event=3
    )
    received = bridge_leg(
        K_BH,
        "received",
        ids=[key, *([t] if t else [])],
        nonce="7",
        channel=LANE,
        from_chain=P_BH,
        number=30,
        event=9,
    )
    hop_out = sent_leg(
        K_BH,
        [K_AH],
        message_hash=h(2),
        topic=t,
        number=30,
        continues=received.identity,
        bridge_in=received,
    )
    arrived = received_leg(
        K_AH, message_hash=h(2), message_id=t or h(2), number=40, from_chain=K_BH
    )
    blocks: list[Block] = [[sent], [hop_in, accepted], [received, hop_out], [arrived]]
    types = ["xcm.sent", "xcm.hop", "xcm.bridge", "xcm.bridge", "xcm.hop", "xcm.received"]
    if delivered:
        confirmed = bridge_leg(P_BH, "delivered", ids=[key], nonce="7", channel=LANE, number=50)
        blocks.append([confirmed])
        types.append("xcm.bridge")
    return blocks, types


def snow_journey(same_block: bool) -> tuple[list[Block], list[str]]:
    """Polkadot AH → Polkadot BH → Ethereum; the accept in the hop-in's block or a later one."""
    t = h(0xCD)
    stops = stops_of(P_BH, export({"Ethereum": {"chain_id": 1}}, "Here"))
    sent = sent_leg(P_AH, stops, message_hash=h(3), topic=t, number=10)
    hop_in = received_leg(P_BH, message_hash=h(3), message_id=t, number=20, from_chain=P_AH)
    accepted = bridge_leg(
        P_BH, "accepted", bridge="snowbridge", ids=[t], nonce="9", number=20 if same_block else 21
    )
    blocks: list[Block] = (
        [[sent], [hop_in, accepted]] if same_block else [[sent], [hop_in], [accepted]]
    )
    return blocks, ["xcm.sent", "xcm.hop", "xcm.bridge"]


def unique(cluster: Cluster) -> list[dict[str, Any]]:
    return list({n["id"]: n for n in cluster.notifications}.values())


journeys = st.one_of(
    st.builds(pk_journey, st.booleans(), st.booleans()),
    st.builds(snow_journey, st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(journeys, st.data())
def test_bridge_journeys_in_any_order(journey: Any, data: st.DataObject) -> None:
    blocks, expected = journey
    reference, cluster = run_in_any_order(data, blocks, make=lambda: Cluster(monitored=followed))

    assert {n["id"] for n in cluster.notifications} == {n["id"] for n in reference.notifications}
    notes = unique(cluster)
    assert sorted(n["type"] for n in notes) == sorted(expected)
    assert len([n for n in notes if is_terminal(n)]) == 1
    finish(cluster)
    assert cluster.keys_left() == {}
    assert sorted(n["type"] for n in unique(cluster)) == sorted(expected)  # no timeout after


def test_a_pkbridge_journey_reads_as_documented() -> None:
    blocks, _ = pk_journey(topic=True, delivered=True)
    cluster = Cluster(monitored=followed)
    for block in blocks:  # in journey order, each block handled before the next arrives
        cluster.publish_legs(block)
        cluster.drain()
    notes = [
        (n["type"], n.get("direction") or n.get("bridgeStatus"), n["waypoint"])
        for n in cluster.notifications
    ]
    assert [(kind, what, w["chainId"], w["legIndex"]) for kind, what, w in notes] == [
        ("xcm.sent", None, P_AH, 0),
        ("xcm.hop", "in", P_BH, 0),
        ("xcm.bridge", "accepted", P_BH, 1),
        ("xcm.bridge", "received", K_BH, 1),
        ("xcm.hop", "out", K_BH, 2),
        ("xcm.received", None, K_AH, 2),
        ("xcm.bridge", "delivered", P_BH, 1),
    ]
    bridge = [n for n in cluster.notifications if n["type"] == "xcm.bridge"]
    assert {(n["bridgeName"], n["channelId"], n["nonce"]) for n in bridge} == {
        ("pkbridge", LANE, "7")
    }
    assert not any(is_terminal(n) for n in bridge)


def test_a_journey_to_ethereum_ends_when_the_bridge_accepts_it() -> None:
    blocks, _ = snow_journey(same_block=False)
    cluster = Cluster(monitored=followed)
    for block in blocks:
        cluster.publish_legs(block)
        cluster.drain()
    last = cluster.notifications[-1]
    assert (last["type"], last["bridgeStatus"], last["bridgeName"]) == (
        "xcm.bridge",
        "accepted",
        "snowbridge",
    )
    assert last["waypoint"]["legIndex"] == 1 and is_terminal(last)
    # Without the accept it times out, after the bridge deadline (24 h), not the 1 h one.
    cluster = Cluster(monitored=followed)
    for block in blocks[:2]:
        cluster.publish_legs(block)
        cluster.drain()
    cluster.clock.now += 2 * 3600
    cluster.fire_deadlines()
    cluster.drain()
    assert [n["type"] for n in cluster.notifications] == ["xcm.sent", "xcm.hop"]
    cluster.clock.now += 86400
    cluster.fire_deadlines()
    cluster.drain()
    assert [n["type"] for n in cluster.notifications] == ["xcm.sent", "xcm.hop", "xcm.timeout"]


def test_a_failed_dispatch_over_the_bridge_ends_the_journey() -> None:
    blocks, _ = pk_journey(topic=True, delivered=False)
    received = blocks[2][0]
    assert isinstance(received, BridgeLeg)
    context = {**received.context, "outcome": "Fail", "error": "NotDispatched"}
    failed = received.model_copy(
        update={"outcome": "Fail", "error": "NotDispatched", "context": context}
    )
    blocks = [blocks[0], blocks[1], [failed]]
    cluster = run(blocks, [2, 1, 0], [], Cluster(monitored=followed))
    notes = unique(cluster)
    assert [n["type"] for n in notes if is_terminal(n)] == ["xcm.bridge"]
    finish(cluster)
    assert "xcm.timeout" not in {n["type"] for n in unique(cluster)}
    assert cluster.keys_left() == {}


# --- recorded BridgeHub blocks -------------------------------------------------------------------


@pytest.fixture(scope="module")
def codec(decoder_for: Any) -> XcmCodec:
    return XcmCodec(decoder_for("urn:ocn:polkadot:0", "polkadot-1005001.scale"))


def bridgehub_raw(fixtures_dir: Path) -> dict[str, Any]:
    raw: dict[str, Any] = cbor2.loads(
        (fixtures_dir / "decoded/bridgehub/5290865.cbor").read_bytes()
    )
    return raw


def page_storage(fixtures_dir: Path, chain: str) -> list[dict[str, Any]]:
    case = load_case(fixtures_dir, "head-xcmp-pages")
    return [s for s in case["storage"] if s["chain"] == chain]


def event(phase: Any, module: str, name: str, value: Any) -> dict[str, Any]:
    return {"phase": phase, "topics": [], "event": {"module": module, "name": name, "value": value}}


INIT = {"type": "Initialization"}
WEIGHT = {"ref_time": "1000000", "proof_size": "1000"}


def processed(message_id: str, origin: Any) -> dict[str, Any]:
    value = {"id": message_id, "origin": origin, "weight_used": WEIGHT, "success": True}
    return event(INIT, "MessageQueue", "Processed", value)


def test_recorded_snowbridge_inbound_starts_a_journey_at_the_bridge_hub(
    fixtures_dir: Path, codec: XcmCodec
) -> None:
    # Polkadot BridgeHub #5290865 as recorded: the relayer's EthereumInboundQueue.submit
    # dispatches a message from Ethereum (XcmpMessageSent to Asset Hub, topic 0xd8fa…), then
    # MessageReceived{channel_id, nonce 2371, message_id 0xd8fa…}.
    block = block_from_decoded(
        bridgehub_raw(fixtures_dir), network=P_BH, storage=page_storage(fixtures_dir, P_BH)
    )
    found = extract(block, codec)
    assert found.bridged == []  # nothing on this side waits for it: it travels with the send
    (sent,) = found.sent
    assert sent.topic == "0xd8fae184551d7ea5884f39827c59d3f844a8273037ce674e9cac926e4dc48129"
    assert sent.bridge_in is not None
    assert (sent.bridge_in["bridge"], sent.bridge_in["status"], sent.bridge_in["nonce"]) == (
        "snowbridge",
        "received",
        "2371",
    )
    cluster = Cluster(monitored=followed)
    cluster.publish_legs(found.legs)
    cluster.drain()
    sent_note, bridge_note = cluster.notifications
    assert sent_note["type"] == "xcm.sent" and sent_note["destination"] == {"chainId": HYDRATION}
    assert bridge_note["type"] == "xcm.bridge"
    assert bridge_note["channelId"] == (
        "0xc173fac324158e77fb5840738a1a541f633cbec8884c6a601c567d2b376a0539"
    )
    assert (bridge_note["bridgeStatus"], bridge_note["nonce"], bridge_note["version"]) == (
        "received",
        "2371",
        1,
    )
    waypoint = bridge_note["waypoint"]
    assert (waypoint["chainId"], waypoint["legIndex"], waypoint["event"]["method"]) == (
        P_BH,
        0,
        "MessageReceived",
    )


def test_recorded_export_to_ethereum_is_accepted_by_snowbridge(
    fixtures_dir: Path, codec: XcmCodec, decoder_cache: Any
) -> None:
    # Asset Hub #10260145 (recorded) sends UnpaidExecution, ExportMessage{Ethereum}, SetTopic
    # to BridgeHub. Its execution there is not recorded: BridgeHub #5290865 gets the events it
    # gives — MessageQueued{id} while executing, the message's Processed from Sibling(1000), and
    # when Snowbridge's own queue runs, MessageAccepted{id, nonce} followed by a Processed whose
    # origin is the Snowbridge channel (not an XCM receipt).
    case = load_case(fixtures_dir, "head-xcmp-pages")
    blocks = blocks_from_case(case, fixtures_dir, decoders=decoder_cache)
    by_ref = dict(zip((b["ref"] for b in case["blocks"]), blocks, strict=True))
    topic = "0xaa8a1f74f5aead80f488f1c97f558bdddbabad12ee291b9be983ca8bac9b451e"
    channel = "0xc173fac324158e77fb5840738a1a541f633cbec8884c6a601c567d2b376a0539"
    raw = bridgehub_raw(fixtures_dir)
    raw["events"] = [
        event(INIT, "EthereumOutboundQueue", "MessageQueued", {"id": topic}),
        processed(topic, {"type": "Sibling", "value": 1000}),
        event(INIT, "EthereumOutboundQueue", "MessageAccepted", {"id": topic, "nonce": "9424"}),
        processed(h(0xEE), {"type": "Snowbridge", "value": channel}),
        *[e for e in raw["events"] if e["event"]["name"] in ("ExtrinsicSuccess",)],
    ]
    hub = block_from_decoded(raw, network=P_BH)
    origin = extract(by_ref["ah"], codec)
    at_hub = extract(hub, codec)
    assert len(at_hub.received) == 1  # the Snowbridge queue's Processed is not a receipt
    (accepted,) = at_hub.bridged
    assert (accepted.bridge, accepted.status, accepted.nonce, accepted.ids) == (
        "snowbridge",
        "accepted",
        "9424",
        [topic],
    )
    cluster = Cluster(monitored=followed)
    cluster.publish_legs([leg for leg in origin.legs if getattr(leg, "topic", None) == topic])
    cluster.drain()
    cluster.publish_legs(at_hub.legs)
    cluster.drain()
    assert [n["type"] for n in cluster.notifications] == ["xcm.sent", "xcm.hop", "xcm.bridge"]
    assert [n["legs"][-1]["to"] for n in cluster.notifications] == [ETHEREUM] * 3
    terminal = cluster.notifications[-1]
    assert terminal["waypoint"]["legIndex"] == 1 and is_terminal(terminal)
    finish(cluster)
    assert [n["type"] for n in unique(cluster)] == ["xcm.sent", "xcm.hop", "xcm.bridge"]
    assert cluster.keys_left() == {}


def kusama_hub_block(fixtures_dir: Path, nonces: list[int]) -> ExtendedBlock:
    """Kusama BridgeHub dispatching lane 1's messages: BridgeHub #5290865's relayer extrinsic
    (its XCMP send to Asset Hub, the recorded page) with the Ethereum receipt replaced by
    ``BridgePolkadotMessages.MessagesReceived`` (as ``receive_messages_proof`` emits it)."""
    raw = bridgehub_raw(fixtures_dir)
    extrinsic = raw["extrinsics"][2]
    extrinsic["module"], extrinsic["method"], extrinsic["args"] = (
        "BridgePolkadotMessages",
        "receive_messages_proof",
        {},
    )
    events = []
    for record in raw["events"]:
        if record["event"]["module"] == "EthereumInboundQueue":
            results = [
                [
                    str(n),
                    {
                        "type": "Dispatched",
                        "value": {
                            "unspent_weight": WEIGHT,
                            "dispatch_level_result": {"type": "Dispatched"},
                        },
                    },
                ]
                for n in nonces
            ]
            record = event(
                record["phase"],
                "BridgePolkadotMessages",
                "MessagesReceived",
                {"lane": LANE, "receive_results": results},
            )
        events.append(record)
    raw["events"] = events
    storage = copy.deepcopy(page_storage(fixtures_dir, P_BH))
    return block_from_decoded(raw, network=K_BH, storage=storage)


def polkadot_hub_block(fixtures_dir: Path, topic: str) -> ExtendedBlock:
    """Polkadot BridgeHub executing Asset Hub's export to Kusama: MessageAccepted{lane_id,
    nonce 7} and then that message's Processed from Sibling(1000) (edited #5290865: its own
    extrinsics' events are kept, the Ethereum receipt and its send dropped)."""
    raw = bridgehub_raw(fixtures_dir)
    raw["events"] = [
        event(INIT, "BridgeKusamaMessages", "MessageAccepted", {"lane_id": LANE, "nonce": "7"}),
        processed(topic, {"type": "Sibling", "value": 1000}),
        *[e for e in raw["events"] if e["event"]["name"] == "ExtrinsicSuccess"],
    ]
    return block_from_decoded(raw, network=P_BH)


def test_recorded_bridge_hubs_carry_a_journey_to_kusama(
    fixtures_dir: Path, codec: XcmCodec
) -> None:
    topic = "0xd8fae184551d7ea5884f39827c59d3f844a8273037ce674e9cac926e4dc48129"
    source = extract(polkadot_hub_block(fixtures_dir, topic), codec)
    (accepted,) = source.bridged
    (hop_in,) = source.received
    assert accepted.ids == hop_in.ids and accepted.keys == [bridge_key(LANE, 7)]
    remote = extract(kusama_hub_block(fixtures_dir, [7]), codec)
    (received,) = remote.bridged
    (onward,) = remote.sent
    assert (received.status, received.from_chain, received.nonce) == ("received", P_BH, "7")
    assert received.ids == [bridge_key(LANE, 7), topic]
    assert onward.continues == received.identity and onward.recipient == K_AH
    # Two messages in one proof but one send: which send is whose cannot be told, so none is
    # linked (the send is then matched by its topic, or is a journey of its own).
    two = extract(kusama_hub_block(fixtures_dir, [7, 8]), codec)
    assert len(two.bridged) == 2 and two.sent[0].continues is None

    # Asset Hub ends are not recorded for this bridge: the origin's send and the destination's
    # receipt are built from the same message (topic 0xd8fa…, receipt from Sibling(1002)).
    stops = stops_of(P_BH, export("Kusama", {"X1": [{"Parachain": 1000}]}))
    sent = sent_leg(P_AH, stops, message_hash=hop_in.message_hash, topic=topic, number=10)
    arrival = received_leg(
        K_AH, message_hash=onward.message_hash, message_id=topic, from_chain=K_BH
    )
    blocks: list[Block] = [[sent], list(source.legs), list(remote.legs), [arrival]]
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):
        cluster = run(blocks, order, [], Cluster(monitored=followed))
        notes = unique(cluster)
        assert Counter(n["type"] for n in notes) == Counter(
            {"xcm.sent": 1, "xcm.hop": 2, "xcm.bridge": 2, "xcm.received": 1}
        ), order
        received_note = next(n for n in notes if n["type"] == "xcm.received")
        assert received_note["legs"][-1] == {
            "from": K_BH,
            "to": K_AH,
            "type": "hrmp",
            "relay": "urn:ocn:kusama:0",
        }
        finish(cluster)
        assert cluster.keys_left() == {}


# --- the notification type in subscriptions and delivery ----------------------------------------


def test_subscriptions_can_ask_for_xcm_bridge() -> None:
    body = {
        "id": "bridges",
        "origin": P_AH,
        "destinations": [K_AH],
        "events": ["xcm.bridge"],
        "channels": [{"type": "log"}],
    }
    assert Subscription.model_validate(body).events == ["xcm.bridge"]
    # A journey to Ethereum can be followed although Ethereum is not a network ocstream reads.
    to_ethereum = Subscription.model_validate({**body, "destinations": [ETHEREUM, K_AH]})
    assert unknown_networks(to_ethereum, [P_AH]) == [K_AH]


def test_only_an_accept_on_the_last_leg_or_a_failure_is_terminal() -> None:
    legs = [{"type": "hop"}, {"type": "bridge"}, {"type": "hrmp"}]
    note = {"type": "xcm.bridge", "bridgeStatus": "accepted", "legs": legs}
    assert not is_terminal({**note, "waypoint": {"legIndex": 1, "outcome": "Success"}})
    assert is_terminal(
        {**note, "legs": legs[:2], "waypoint": {"legIndex": 1, "outcome": "Success"}}
    )
    received = {**note, "bridgeStatus": "received"}
    assert is_terminal({**received, "waypoint": {"legIndex": 1, "outcome": "Fail"}})
    assert not is_terminal({**received, "waypoint": {"legIndex": 1, "outcome": "Success"}})
    assert Extracted().bridged == []
