"""What extraction finds in a block: sent, received and relayed legs (the ``xcm-legs`` contract).

Each leg is a frozen pydantic model with a stable ``identity`` (the same block processed twice
gives the same identities), so every step downstream can be idempotent. ``context`` is the
block-side half of a notification's *Terminus context* (XCM.md §10.2), built once here:
``{chainId, blockNumber, blockHash, extrinsicId, event, outcome, error, messageHash, messageData,
instructions}``.

Also here: resolving XCM locations to network URNs and walking a program's forwarding
instructions into stops and legs (XCM.md §8).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BRIDGE_HUBS",
    "NO_HASH",
    "Leg",
    "ReceivedLeg",
    "RelayedLeg",
    "SentLeg",
    "chain_id",
    "consensus",
    "is_relay",
    "bridge_hub",
    "continues_program",
    "downward_slot",
    "is_slot",
    "leg_record",
    "legs_of",
    "programs_of",
    "relay_of",
    "resolve_location",
    "stops_of",
    "urn",
]

Outcome = Literal["Success", "Fail"]


def consensus(network: str) -> str:
    return network.split(":")[2]


def chain_id(network: str) -> str:
    return network.split(":")[3]


def urn(consensus_name: str, chain: int | str) -> str:
    return f"urn:ocn:{consensus_name}:{chain}"


def relay_of(network: str) -> str:
    return urn(consensus(network), 0)


def is_relay(network: str) -> bool:
    return chain_id(network) == "0"


#: The ``message_hash`` of a sent leg whose bytes were not read (a downward message the queue no
#: longer held): its only id is its slot. Never shown in a payload (``messageHash: null``).
NO_HASH = "0x" + "00" * 32


def downward_slot(sent_at: int, position: int) -> str:
    """The id of a downward message by its place: the ``position``-th message the relay queued
    for a para at relay block ``sent_at``. Both ends can tell it without the message bytes (the
    relay by the order of its sends, the para from the messages its ``set_validation_data``
    carries), so a DMP whose bytes the ingress could not read can still be matched."""
    return f"dmp:{sent_at}:{position}"


def is_slot(message_id: str) -> bool:
    return message_id.startswith("dmp:")


#: A field that holds any JSON value: a program's instructions, a sender, a block-side context.
#: Typed ``Any`` and not pydantic's ``JsonValue``, which walks the whole value on every
#: validation and every dump: that walk was most of what a sent leg cost to build, to dump and
#: to read back (120 of 135 µs to validate one, 85 of 113 µs to dump one), about a tenth of a
#: worker's CPU. These values are JSON by construction: extraction builds them with
#: ``ocstream.ingress.model.to_json_value`` (which refuses anything else) or from the block's
#: JSON, and the matcher reads them back from a parsed record.
Json = Any


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class Leg(_Frozen):
    """One hop between consecutive stops (XCM.md §8.3); serialised with ``from``/``to``."""

    from_: str = Field(alias="from")
    to: str
    type: Literal["hrmp", "vmp", "hop", "bridge"]
    relay: str | None = None

    def payload(self) -> dict[str, str]:
        out = {"from": self.from_, "to": self.to, "type": self.type}
        if self.relay is not None:
            out["relay"] = self.relay
        return out


class SentLeg(_Frozen):
    """An outbound message found at its origin: the bytes, ids, route and sender."""

    kind: Literal["sent"] = "sent"
    identity: str = Field(description="origin|block hash|transport|entry|fragment")
    origin: str
    recipient: str
    transport: Literal["hrmp", "ump", "dmp"]
    block_number: int
    block_hash: str
    message_hash: str
    message_data: str | None = Field(description="bare VersionedXcm hex; null when not found")
    topic: str | None = None
    ids: list[str] = Field(description="hash, topic, forward_id_for(topic)")
    version: int | None = None
    instructions: Json = None
    stops: list[str]
    legs: list[Leg]
    sender: Json = None
    context: dict[str, Json]
    continues: str | None = Field(
        default=None,
        description="identity of the received leg of the same block this message forwards "
        "(a hop-out), when extraction can tell",
    )
    hop_candidates: list[str] = Field(
        default_factory=list,
        description="identities of this block's received legs this message may forward, "
        "when nothing links it for sure (no topic, no event to place it)",
    )
    timestamp: int | None = None
    bridge_in: dict[str, Json] | None = Field(
        default=None,
        description="the bridge receipt (a BridgeLeg dump) whose dispatch sent this message, "
        "when it left a bridge hub right after crossing a bridge (ocstream/xcm/bridge.py)",
    )

    @property
    def destination(self) -> str:
        return self.legs[-1].to if self.legs else self.recipient

    @property
    def has_bridge(self) -> bool:
        return any(leg.type == "bridge" for leg in self.legs)


class ReceivedLeg(_Frozen):
    """A message executed at a chain: the outcome event, its ids and any assets trapped."""

    kind: Literal["received"] = "received"
    identity: str = Field(description="chain|block hash|event index")
    chain: str
    from_chain: str | None = Field(default=None, description="the immediate sender, if reported")
    block_number: int
    block_hash: str
    message_hash: str
    message_id: str
    outcome: Outcome
    error: Json = None
    assets_trapped: Json = None
    context: dict[str, Json]
    slot: str | None = Field(
        default=None, description="downward_slot() of a DMP, when the para block carries it"
    )

    @property
    def ids(self) -> list[str]:
        ids = [self.message_id, self.message_hash]
        if self.slot is not None:
            ids.append(self.slot)
        return list(dict.fromkeys(ids))


class RelayedLeg(_Frozen):
    """An HRMP message seen in a candidate the relay backed (not a receipt)."""

    kind: Literal["relayed"] = "relayed"
    identity: str = Field(description="relay|block hash|candidate|message|fragment")
    relay: str
    origin: str
    recipient: str
    block_number: int
    block_hash: str
    message_hash: str
    message_id: str
    ids: list[str]
    outcome: Outcome
    error: Json = None
    context: dict[str, Json]


def leg_record(leg: SentLeg | ReceivedLeg | RelayedLeg | BaseModel) -> bytes:
    """The ``xcm-legs`` record of a leg, as JSON: ``{"kind": …, "leg": …}`` with the leg dumped
    by its aliases. pydantic writes the JSON itself (in Rust), a quarter of the time of a Python
    dump handed to orjson, for the same bytes."""
    kind: str = getattr(leg, "kind")  # noqa: B009 (every leg model has one; BaseModel does not say so)
    body: bytes = leg.__pydantic_serializer__.to_json(leg, by_alias=True)
    return b'{"kind":"' + kind.encode() + b'","leg":' + body + b"}"


# --- locations → URNs (XCM.md §8.2) ------------------------------------------------------------


def _junctions(interior: Any) -> list[Any]:
    """The junctions of an interior in any version's shape: ``"Here"``, ``{"X2": [a, b]}``,
    ``{"X1": a}`` (V2/V3) or ``{"X1": [a]}`` (V4/V5)."""
    if not isinstance(interior, dict) or len(interior) != 1:
        return []
    ((tag, inner),) = interior.items()
    if not (tag.startswith("X") and tag[1:].isdigit()):
        return []
    if isinstance(inner, list):
        return inner
    return [inner]


def _junction(junction: Any) -> tuple[str, Any]:
    if isinstance(junction, dict) and len(junction) == 1:
        ((tag, inner),) = junction.items()
        return tag, inner
    if isinstance(junction, str):
        return junction, None
    return "", None


def _network_urn(network: Any, para: int | None) -> str | None:
    tag, inner = _junction(network)
    if tag == "Ethereum":
        chain = inner.get("chain_id") if isinstance(inner, dict) else inner
        return urn("ethereum", chain) if chain is not None else None
    if tag in ("", "ByGenesis", "ByFork"):
        return None
    return urn(tag.lower(), para if para is not None else 0)


def _unversioned(location: Any) -> Any:
    if isinstance(location, dict) and len(location) == 1:
        ((tag, inner),) = location.items()
        if tag.startswith("V") and tag[1:].isdigit():
            return inner
    return location


def resolve_location(location: Any, context: str) -> str | None:
    """The network a location points to, seen from the chain ``context`` (None: no stop)."""
    location = _unversioned(location)
    if not isinstance(location, dict) or "parents" not in location:
        return None
    try:
        parents = int(location["parents"])
    except (TypeError, ValueError):
        return None
    junctions = [_junction(j) for j in _junctions(location.get("interior"))]
    paras = [int(inner) for tag, inner in junctions if tag == "Parachain" and inner is not None]
    here = consensus(context)
    relay = is_relay(context)
    global_at = next((i for i, (tag, _) in enumerate(junctions) if tag == "GlobalConsensus"), None)
    if global_at is not None and (parents >= 2 or (parents == 1 and relay)):
        after = [
            int(inner)
            for tag, inner in junctions[global_at + 1 :]
            if tag == "Parachain" and inner is not None
        ]
        return _network_urn(junctions[global_at][1], after[0] if after else None)
    if parents == 0:
        if relay and junctions and junctions[0][0] == "Parachain":
            return urn(here, int(junctions[0][1]))
        return None
    if parents == 1:
        if relay:
            return None
        if paras:
            return urn(here, paras[0])
        return urn(here, 0)
    return None


# Forwarding instructions: (name, location field, nested program field).
_FORWARDS = {
    "DepositReserveAsset": ("dest", "xcm"),
    "InitiateReserveWithdraw": ("reserve", "xcm"),
    "InitiateTeleport": ("dest", "xcm"),
    "TransferReserveAsset": ("dest", "xcm"),
    "InitiateTransfer": ("destination", "remote_xcm"),
}


def _program(instructions: Any) -> list[Any]:
    value = _unversioned(instructions)
    return value if isinstance(value, list) else []


def _walk(program: list[Any], context: str) -> Iterator[tuple[str, list[Any]]]:
    for instruction in program:
        name, operands = _junction(instruction)
        if not isinstance(operands, dict):
            continue
        if name in _FORWARDS:
            location_field, nested_field = _FORWARDS[name]
            stop = resolve_location(operands.get(location_field), context)
        elif name == "ExportMessage":
            nested_field = "xcm"
            destination = operands.get("destination")
            paras = [
                int(inner)
                for tag, inner in (_junction(j) for j in _junctions(destination))
                if tag == "Parachain" and inner is not None
            ]
            stop = _network_urn(operands.get("network"), paras[0] if paras else None)
        else:
            continue
        if stop is None:
            continue
        nested = operands.get(nested_field)
        nested = nested if isinstance(nested, list) else []
        yield stop, nested
        yield from _walk(nested, stop)


def _route(recipient: str, instructions: Any) -> list[tuple[str, list[Any]]]:
    """``(stop, program it runs)`` for the recipient and every forwarded stop, with the bridge
    hubs a bridged step passes through (:func:`through_bridge_hubs`)."""
    program = _program(instructions)
    route = [(recipient, program)]
    for stop, nested in _walk(program, recipient):
        # A bridge hub on the way re-sends what the forwarding instruction asked for.
        route.extend((hub, nested) for hub in through_bridge_hubs(route[-1][0], stop))
        route.append((stop, nested))
    return route


def stops_of(recipient: str, instructions: Any) -> list[str]:
    """``[recipient, ...]`` plus every chain the program forwards to, in program order (§8.1),
    with the bridge hubs of each step that crosses a bridge."""
    return [stop for stop, _ in _route(recipient, instructions)]


def programs_of(recipient: str, instructions: Any) -> list[list[Any]]:
    """The program each stop of :func:`stops_of` is expected to execute: the whole program at
    the recipient, then each forwarding instruction's nested program (what hop matching
    without a topic compares a re-sent message with)."""
    return [program for _, program in _route(recipient, instructions)]


# --- bridges: the bridge hubs a step between two consensus systems goes through ----------------

#: The parachain that hosts the bridges of each consensus system: the Polkadot <> Kusama bridge
#: (pallet-bridge-messages) and Snowbridge to Ethereum. Rococo's was para 1013.
BRIDGE_HUBS: dict[str, int] = {
    "polkadot": 1002,
    "kusama": 1002,
    "westend": 1002,
    "paseo": 1002,
    "rococo": 1013,
}


def bridge_hub(network: str) -> str | None:
    """The bridge hub of ``network``'s consensus system, if it has a known one."""
    para = BRIDGE_HUBS.get(consensus(network))
    return urn(consensus(network), para) if para is not None else None


def through_bridge_hubs(source: str, target: str) -> list[str]:
    """The bridge hubs a message from ``source`` to ``target`` passes through, in order (none
    when both are in one consensus system). Another consensus system is reached through the local
    bridge hub, which exports the message, then the remote bridge hub, which dispatches it;
    Ethereum has no bridge hub, so Snowbridge has only the Polkadot-side one. A hub that is
    ``source`` or ``target`` itself, or unknown (e.g. ``local``), is left out."""
    if consensus(source) == consensus(target):
        return []
    hubs = [bridge_hub(source), bridge_hub(target)]
    return [hub for hub in dict.fromkeys(hubs) if hub is not None and hub not in (source, target)]


def _plain(value: Any) -> Any:
    """A decoded value with version-dependent shapes flattened, so programs of two XCM versions
    compare: ``X1([j])`` (V4/V5) → ``X1(j)`` (V2/V3), a V3 ``{"Concrete": location}`` asset id →
    the V4 location, V2's ``network: "Any"`` → absent, numbers as strings."""
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, inner),) = value.items()
            if tag == "X1" and isinstance(inner, list) and len(inner) == 1:
                return {"X1": _plain(inner[0])}
            if tag == "Concrete":
                return _plain(inner)
        return {
            key: _plain(item)
            for key, item in value.items()
            if item is not None and not (key == "network" and item == "Any")
        }
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return str(value)
    return value


# Where an instruction sends what it carries: the part of it the executor passes on unchanged.
# Asset amounts and locations are not: fees are taken and assets are reanchored at each hop, and
# the asset filter changes shape between versions (V2 ``Wild(All)`` + ``max_assets`` becomes V3
# ``Wild(AllCounted(n))``).
_TARGETS: dict[str, tuple[str, ...]] = {
    "DepositAsset": ("beneficiary",),
    "DepositReserveAsset": ("dest",),
    "InitiateReserveWithdraw": ("reserve",),
    "InitiateTeleport": ("dest",),
    "TransferAsset": ("beneficiary",),
    "TransferReserveAsset": ("dest",),
    "InitiateTransfer": ("destination",),
}


def _signature(instruction: Any) -> Any:
    name, operands = _junction(instruction)
    fields = _TARGETS.get(name)
    if fields is None or not isinstance(operands, dict):
        return _plain(instruction)
    return [name, *(_plain(operands.get(f)) for f in fields)]


def _without_topic(program: list[Any]) -> list[Any]:
    return [item for item in program if not (isinstance(item, dict) and "SetTopic" in item)]


def continues_program(expected: list[Any], instructions: Any) -> bool:
    """Whether a re-sent program ends like the nested program a forwarding instruction asked
    for. The executor prepends its own instructions (asset deposits, fees), reanchors the assets
    and may re-encode the program in another XCM version, and the router appends ``SetTopic``
    (a new one where the chain re-sends with its own topic); what is carried over is the
    requested tail: the last instruction and where it sends the assets (e.g. the final
    ``DepositAsset`` and its beneficiary)."""
    program = _without_topic(_program(instructions))
    wanted = _without_topic(expected)
    if not program or not wanted:
        return False
    return bool(_signature(program[-1]) == _signature(wanted[-1]))


def legs_of(origin: str, stops: list[str]) -> list[Leg]:
    """The legs between consecutive nodes ``[origin, *stops]``; every leg but the last (and
    bridges) is typed ``hop``, as Ocelloids HEAD does."""
    nodes = [origin, *stops]
    legs: list[Leg] = []
    for source, target in zip(nodes, nodes[1:], strict=False):
        if source == target:
            continue
        if consensus(source) != consensus(target):
            legs.append(Leg.model_validate({"from": source, "to": target, "type": "bridge"}))
        elif not is_relay(source) and not is_relay(target):
            legs.append(
                Leg.model_validate(
                    {"from": source, "to": target, "type": "hrmp", "relay": relay_of(source)}
                )
            )
        else:
            legs.append(Leg.model_validate({"from": source, "to": target, "type": "vmp"}))
    last = len(legs) - 1
    return [
        leg if i == last or leg.type == "bridge" else leg.model_copy(update={"type": "hop"})
        for i, leg in enumerate(legs)
    ]
