"""Bridges: the bridge hub events of a journey, and the ``xcm.bridge`` notifications.

A message that leaves its consensus system goes through bridge hubs (routes: :func:`~.legs.
through_bridge_hubs`). What happens at the bridge itself is not an XCM send or receipt but an
event of the bridge pallets, read here into a :class:`BridgeLeg`:

* **Polkadot <> Kusama** (``pkbridge``, pallet-bridge-messages, named ``Bridge<Other>Messages``
  on each side): the source hub's ``MessageAccepted{lane_id, nonce}`` (emitted while it
  executes the ``ExportMessage`` it received, just before that message's ``MessageQueue``
  outcome), the remote hub's ``MessagesReceived{lane, receive_results: [(nonce, result)]}``
  (emitted by the relayer's ``receive_messages_proof`` extrinsic, after dispatching each message,
  which sends it on over XCMP in the same extrinsic) and later the source hub's
  ``MessagesDelivered{lane_id, messages: {begin, end}}`` (the delivery was confirmed back).
  Both hubs name a message by ``(lane, nonce)``.
* **Snowbridge** (Polkadot <> Ethereum): the hub's ``EthereumOutboundQueue.MessageAccepted{id,
  nonce}`` where ``id`` is the exported message's topic, and
  ``EthereumInboundQueue.MessageReceived{channel_id, nonce, message_id, fee_burned}``, emitted by
  the extrinsic that dispatches a message from Ethereum, whose XCM send (with topic
  ``message_id``) precedes it. ocstream does not follow Ethereum: an export to Ethereum ends at
  the hub's ``MessageAccepted``, and a message from Ethereum starts its journey at the hub.

Matching (the engine's ``bridge`` records, :func:`on_bridge`): an accepted or delivered leg finds
its journey at the source hub (accepted: by the ids of the receipt it belongs to, or the
Snowbridge topic; delivered: by ``(lane, nonce)``, which accepting added to the journey's keys),
and accepting also hands ``(lane, nonce)`` to the remote hub (an ``extend`` record). There the
received leg finds the journey by ``(lane, nonce)`` or by the topic of the message it
dispatched, and acts as the journey's hop-in: the XCMP send that follows continues it as the
hop-out. A leg whose journey is not there yet waits in ``inbound`` under ``bw:<id>`` keys (apart
from the receipts' own keys) until :func:`pick_up` finds it when the journey's keys arrive.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from ..ingress.model import Event, ExtendedBlock
from . import notifications as notify
from .legs import BRIDGE_HUBS, Json, ReceivedLeg, SentLeg, bridge_hub, urn

if TYPE_CHECKING:
    from .matching import Engine, Step, Tables

__all__ = [
    "BridgeLeg",
    "MAX_DELIVERED",
    "bridge_key",
    "bridge_legs",
    "ends_at_bridge",
    "is_bridge_queue",
    "note",
    "on_bridge",
    "origin_note",
    "pick_up",
]

#: Nonces of one ``MessagesDelivered`` range that become legs (a confirmation covers the
#: messages delivered since the last one: normally a handful).
MAX_DELIVERED = 256

#: Where Snowbridge leads from Polkadot (the only Ethereum network it serves there).
ETHEREUM = "urn:ocn:ethereum:1"

_PK_PALLET = re.compile(r"^Bridge([A-Z][a-z]+)Messages$")
_OUTBOUND = ("EthereumOutboundQueue", "EthereumOutboundQueueV2")
_INBOUND = ("EthereumInboundQueue", "EthereumInboundQueueV2")
_WAIT = "bw:"
#: Every pallet read here: the messages pallet of each bridged consensus system, and Snowbridge's.
_MODULES = frozenset(
    [*(f"Bridge{name.capitalize()}Messages" for name in BRIDGE_HUBS), *_OUTBOUND, *_INBOUND]
)


def bridge_key(lane: str, nonce: str | int) -> str:
    """The id both ends of a pallet-bridge-messages lane give one message."""
    return f"bridge:{str(lane).lower()}:{nonce}"


class BridgeLeg(BaseModel):
    """A bridge event about one message at a bridge hub (a record of ``xcm-legs``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: Literal["bridge"] = "bridge"
    identity: str = Field(description="chain|block hash|event index[|nonce]")
    chain: str
    bridge: Literal["pkbridge", "snowbridge"]
    status: Literal["accepted", "received", "delivered"]
    version: int = 1
    channel: str | None = Field(default=None, description="the lane or Snowbridge channel")
    nonce: str | None = None
    from_chain: str | None = Field(
        default=None, description="received: the hub (or Ethereum) on the other side"
    )
    ids: list[str] = Field(description="what the journey is known by at this chain")
    keys: list[str] = Field(
        default_factory=list, description="accepted: the lane key the journey gains"
    )
    block_number: int
    block_hash: str
    outcome: Literal["Success", "Fail"] = "Success"
    error: Json = None
    context: dict[str, Json]


# --- extraction -----------------------------------------------------------------------------------

ContextOf = Callable[[Event, str, JsonValue], dict[str, JsonValue]]


def _fields(event: Event) -> dict[str, Any]:
    """Named fields; a single unnamed struct (``MessagesReceived(ReceivedMessages)``) is opened."""
    fields = event.fields
    if isinstance(fields, list) and len(fields) == 1 and isinstance(fields[0], dict):
        fields = fields[0]
    return fields if isinstance(fields, dict) else {}


def _hex(value: Any) -> str | None:
    return value.lower() if isinstance(value, str) and value.startswith("0x") else None


def _dispatch_outcome(result: Any) -> tuple[str, JsonValue]:
    """``(Success|Fail, error)`` of one ``ReceptionResult``: ``Dispatched`` whose
    ``dispatch_level_result`` (the XCM blob dispatch) is ``Dispatched`` or absent is a success."""
    if isinstance(result, dict) and len(result) == 1:
        ((tag, inner),) = result.items()
        if tag != "Dispatched":
            return "Fail", tag
        level = inner.get("dispatch_level_result") if isinstance(inner, dict) else None
        if level is None or level == "Dispatched":
            return "Success", None
        if isinstance(level, dict) and len(level) == 1:
            ((name, _),) = level.items()
            return ("Success", None) if name == "Dispatched" else ("Fail", str(name))
        return "Fail", str(level)
    return "Fail", result if isinstance(result, str) else "NotDispatched"


def _position(leg: SentLeg | ReceivedLeg) -> tuple[int | None, str | None]:
    event = leg.context.get("event")
    if not isinstance(event, dict):
        return None, None
    position = event.get("blockPosition")
    extrinsic = event.get("extrinsicId")
    return (
        position if isinstance(position, int) else None,
        extrinsic if isinstance(extrinsic, str) else None,
    )


def _receipt_after(event: Event, received: Sequence[ReceivedLeg]) -> ReceivedLeg | None:
    """The outcome of the message whose execution emitted ``event``: the first receipt after it
    in the same extrinsic, or outside extrinsics when the event is (an executor emits what it
    does before the outcome, and a queue runs its messages one after the other)."""
    for leg in received:
        position, extrinsic_id = _position(leg)
        if position is None or position <= event.index:
            continue
        if event.extrinsic_index is None:
            if extrinsic_id is None:
                return leg
        elif extrinsic_id == f"{leg.block_number}-{event.extrinsic_index}":
            return leg
    return None


def _sends_before(event: Event, sent: Sequence[SentLeg], taken: set[str]) -> list[SentLeg]:
    """The XCM sends of the extrinsic that emitted ``event``, before it, not linked yet."""
    if event.extrinsic_index is None:
        return []
    found = []
    for leg in sent:
        position, extrinsic_id = _position(leg)
        if (
            position is not None
            and position < event.index
            and extrinsic_id == f"{leg.block_number}-{event.extrinsic_index}"
            and leg.continues is None
            and leg.identity not in taken
        ):
            found.append(leg)
    return found


def bridge_legs(
    block: ExtendedBlock,
    received: Sequence[ReceivedLeg],
    sent: Sequence[SentLeg],
    context_of: ContextOf,
) -> tuple[list[BridgeLeg], list[SentLeg]]:
    """The bridge legs of a block, and its sent legs with those a bridge dispatched linked to
    their bridge receipt (``continues`` and ``bridge_in``)."""
    legs: list[BridgeLeg] = []
    links: dict[str, BridgeLeg] = {}

    def leg(event: Event, suffix: str = "", **values: Any) -> BridgeLeg:
        outcome = values.pop("outcome", "Success")
        error = values.pop("error", None)
        return BridgeLeg(
            identity=f"{block.network}|{block.hash}|{event.index}{suffix}",
            chain=block.network,
            block_number=block.number,
            block_hash=block.hash,
            outcome=outcome,
            error=error,
            context=context_of(event, outcome, error),
            **values,
        )

    for event in block.events:
        if event.module not in _MODULES:
            continue  # the common case: one set lookup per event
        fields = _fields(event)
        pk = _PK_PALLET.match(event.module)
        if pk is not None:
            other = bridge_hub(urn(pk.group(1).lower(), 0))
            if event.name == "MessageAccepted":
                lane, nonce = _hex(fields.get("lane_id")), fields.get("nonce")
                if lane is None or nonce is None:
                    continue
                receipt = _receipt_after(event, received)
                legs.append(
                    leg(
                        event,
                        bridge="pkbridge",
                        status="accepted",
                        channel=lane,
                        nonce=str(nonce),
                        ids=receipt.ids if receipt is not None else [],
                        keys=[bridge_key(lane, nonce)],
                    )
                )
            elif event.name == "MessagesDelivered":
                lane, messages = _hex(fields.get("lane_id")), fields.get("messages")
                if lane is None or not isinstance(messages, dict):
                    continue
                begin, end = int(str(messages.get("begin"))), int(str(messages.get("end")))
                for nonce in range(begin, min(end, begin + MAX_DELIVERED - 1) + 1):
                    key = bridge_key(lane, nonce)
                    legs.append(
                        leg(
                            event,
                            f"|{nonce}",
                            bridge="pkbridge",
                            status="delivered",
                            channel=lane,
                            nonce=str(nonce),
                            ids=[key],
                        )
                    )
            elif event.name == "MessagesReceived":
                lane, results = _hex(fields.get("lane")), fields.get("receive_results")
                if lane is None or not isinstance(results, list):
                    continue
                entries = [r for r in results if isinstance(r, list) and len(r) == 2]
                dispatched = [r for r in entries if _dispatch_outcome(r[1])[0] == "Success"]
                sends = _sends_before(event, sent, set(links))
                # One send per dispatched message, in nonce order; anything else is not paired.
                paired = dict(zip((str(r[0]) for r in dispatched), sends, strict=False))
                if len(sends) != len(dispatched):
                    paired = {}
                for nonce, result in entries:
                    outcome, error = _dispatch_outcome(result)
                    send = paired.get(str(nonce))
                    found = leg(
                        event,
                        f"|{nonce}",
                        bridge="pkbridge",
                        status="received",
                        channel=lane,
                        nonce=str(nonce),
                        from_chain=other,
                        ids=[bridge_key(lane, nonce), *_topic(send)],
                        outcome=outcome,
                        error=error,
                    )
                    legs.append(found)
                    if send is not None:
                        links[send.identity] = found
        elif event.module in _OUTBOUND and event.name == "MessageAccepted":
            message_id, nonce = _hex(fields.get("id")), fields.get("nonce")
            if message_id is None or nonce is None:
                continue
            legs.append(
                leg(
                    event,
                    bridge="snowbridge",
                    status="accepted",
                    version=2 if event.module.endswith("V2") else 1,
                    nonce=str(nonce),
                    ids=[message_id],
                )
            )
        elif event.module in _INBOUND and event.name == "MessageReceived":
            message_id, nonce = _hex(fields.get("message_id")), fields.get("nonce")
            if message_id is None or nonce is None:
                continue
            sends = _sends_before(event, sent, set(links))
            chosen = [s for s in sends if s.topic == message_id] or (
                sends if len(sends) == 1 else []
            )
            found = leg(
                event,
                bridge="snowbridge",
                status="received",
                version=2 if event.module.endswith("V2") else 1,
                channel=_hex(fields.get("channel_id")),
                nonce=str(nonce),
                from_chain=ETHEREUM,
                ids=[message_id],
            )
            # ocstream does not follow Ethereum: the journey starts with this send, and the
            # bridge receipt travels with it instead of waiting for a journey that never comes.
            if chosen:
                links[chosen[0].identity] = found
    if not links:
        return legs, list(sent)
    linked = [
        s.model_copy(
            update={
                "continues": links[s.identity].identity
                if links[s.identity].bridge == "pkbridge"
                else None,
                "bridge_in": links[s.identity].model_dump(),
            }
        )
        if s.identity in links
        else s
        for s in sent
    ]
    return legs, linked


def _topic(send: SentLeg | None) -> list[str]:
    return [send.topic] if send is not None and send.topic else []


def is_bridge_queue(origin: Any) -> bool:
    """Whether a ``MessageQueue`` origin is a bridge's own queue (Snowbridge's outbound queue
    runs through the hub's message queue): not an XCM receipt."""
    return isinstance(origin, dict) and any(str(tag).startswith("Snowbridge") for tag in origin)


# --- matching -----------------------------------------------------------------------------------


def ends_at_bridge(journey: dict[str, Any], monitored: Callable[[str], bool]) -> bool:
    """Whether a journey to a network ocstream does not follow is still tracked up to the
    bridge it leaves by: its last leg is a bridge from a followed hub (e.g. to Ethereum)."""
    legs = journey.get("legs") or []
    return bool(legs) and legs[-1]["type"] == "bridge" and monitored(legs[-1]["from"])


def note(journey: dict[str, Any], leg: dict[str, Any], leg_index: int) -> dict[str, JsonValue]:
    """The ``xcm.bridge`` notification of a bridge leg of a journey."""
    return notify.bridge(
        journey,
        leg["context"],
        leg_index,
        status=leg["status"],
        name=leg["bridge"],
        channel=leg.get("channel"),
        nonce=leg.get("nonce"),
        version=leg.get("version", 1),
    )


def origin_note(journey: dict[str, Any], bridge_in: dict[str, Any]) -> dict[str, JsonValue]:
    """``xcm.bridge`` (received) for a journey that starts at a bridge hub, right after the
    bridge it came over (the first leg leaves the hub)."""
    return note(journey, bridge_in, 0)


def _jkey(chain: str, jid: str) -> str:
    return f"{chain}|{jid}"


def _fits(engine: Engine, journey: Any, leg: dict[str, Any]) -> bool:
    if not isinstance(journey, dict) or not journey.get("role"):
        return False
    if leg["status"] == "received":
        return engine._from_agrees(journey, leg) and not journey.get("hopped_in")
    # Accepted and delivered happen at the hub the bridge leg leaves from.
    legs = journey["legs"]
    k = journey["stop"] + 1
    return k < len(legs) and bool(legs[k]["type"] == "bridge")


def _apply(
    engine: Engine,
    tables: Tables,
    chain: str,
    journey: dict[str, Any],
    leg: dict[str, Any],
    step: Step,
) -> None:
    if leg["status"] == "received":
        # The bridge delivered the message here: the journey's hop-in at this hub (see
        # Engine._hop_in, which also takes the hop-outs parked on the leg).
        engine._hop_in(tables, chain, journey, leg, step)
        return
    leg_index = journey["stop"] + 1
    notification = note(journey, leg, leg_index)
    step.count(f"bridge_{leg['status']}")
    if (
        leg["status"] == "accepted"
        and leg_index == len(journey["legs"]) - 1
        and not journey.get("done")
    ):
        # Nothing past this bridge is followed: accepting the message is the journey's end,
        # told to its owner like a failed hop is.
        step.records.append(
            (
                journey["owner"],
                {
                    "kind": "terminate",
                    "journey": journey["id"],
                    "notification": notification,
                    "counter": "terminal_bridge_accepted",
                },
            )
        )
    else:
        step.notifications.append(notification)
    keys = leg.get("keys") or []
    if keys:
        engine._add_keys(tables, chain, journey, keys, step)
        stops = journey["stops"]
        k = journey["stop"]
        if k + 1 < len(stops):
            step.records.append(
                (stops[k + 1], {"kind": "extend", "journey": journey["id"], "ids": keys})
            )


def on_bridge(
    engine: Engine, tables: Tables, chain: str, record: dict[str, Any], step: Step
) -> None:
    """A bridge leg at ``chain``: notify it on its journey, or wait for the journey."""
    leg = BridgeLeg.model_validate(record["leg"])
    if engine._seen(tables, chain, leg.identity):
        step.count("duplicate_legs")
        return
    data = leg.model_dump()
    for table in ("hop", "outbound"):
        for message_id in leg.ids:
            for jid in tables.get(table, f"{chain}:{message_id}") or []:
                journey = tables.get("journeys", _jkey(chain, jid))
                if _fits(engine, journey, data):
                    _apply(engine, tables, chain, journey, data, step)
                    return
    if leg.ids:
        engine._keep_pending(tables, "inbound", chain, data, [_WAIT + i for i in leg.ids], step)
    else:
        step.count("bridge_unlinked")  # an accept with no receipt after it: nothing names it


def pick_up(
    engine: Engine, tables: Tables, chain: str, jid: str, ids: Sequence[str], step: Step
) -> None:
    """Bridge legs that waited for journey ``jid``, which has just gained ``ids`` at ``chain``."""
    for message_id in ids:
        for identity in list(tables.get("inbound", f"{chain}:{_WAIT}{message_id}") or []):
            entry = tables.get("inbound", _jkey(chain, "leg:" + identity))
            journey = tables.get("journeys", _jkey(chain, jid))
            if entry is None or not _fits(engine, journey, entry["leg"]):
                continue
            engine._drop_pending(tables, "inbound", chain, entry)
            _apply(
                engine,
                tables,
                chain,
                journey,
                {**entry["leg"], "parked": entry.get("parked", [])},
                step,
            )
