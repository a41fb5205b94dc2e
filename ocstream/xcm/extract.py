"""Extraction: the XCM legs of one :class:`ExtendedBlock`, as pure functions (XCM.md §5–§8).

:func:`extract` returns every sent, received and relayed leg of a block, in the order the matcher
should see them (received before sent, so a hop-out follows its hop-in), plus the problems it met
(:class:`Problem`: undecodable bytes, unknown page formats, missing bytes) for the dead-letter
topic and the metrics. It needs the XCM codec of the block's runtime and, for rendering signers,
the network's SS58 prefix; it reads nothing else.

Usage::

    found = extract(block, codec, ss58_prefix=0)
    for leg in found.legs: ...
    for problem in found.problems: ...
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import JsonValue

from ..ingress.decode import read_compact
from ..ingress.model import Event, ExtendedBlock, Extrinsic
from ..ingress.storage import PARA_TRANSFER_PALLETS, RELAY_SEND_CALLS, child_para
from .bridge import BridgeLeg, bridge_legs, is_bridge_queue
from .codec import UnknownPageFormat, XcmCodec, XcmDecodeError, XcmMessage, partial_messages
from .legs import (
    NO_HASH,
    ReceivedLeg,
    RelayedLeg,
    SentLeg,
    consensus,
    downward_slot,
    is_relay,
    legs_of,
    relay_of,
    stops_of,
    urn,
)
from .sender import is_version_control, sent_by_call

__all__ = [
    "Extracted",
    "Problem",
    "decode_downward_queue",
    "decode_hrmp_outbound",
    "decode_upward_messages",
    "extract",
    "outcome_of",
]

_HASH = re.compile(r"^0x[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Problem:
    """Something in a block that could not become a (complete) leg, with the reason."""

    kind: str  # undecodable | unknown-page-format | missing-bytes
    network: str
    block_number: int
    block_hash: str
    reason: str
    data: str | None = None

    def payload(self) -> dict[str, JsonValue]:
        return {
            "kind": self.kind,
            "network": self.network,
            "blockNumber": self.block_number,
            "blockHash": self.block_hash,
            "reason": self.reason,
            "data": self.data,
        }


@dataclass(slots=True)
class Extracted:
    legs: list[SentLeg | ReceivedLeg | RelayedLeg | BridgeLeg] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def sent(self) -> list[SentLeg]:
        return [leg for leg in self.legs if isinstance(leg, SentLeg)]

    @property
    def received(self) -> list[ReceivedLeg]:
        return [leg for leg in self.legs if isinstance(leg, ReceivedLeg)]

    @property
    def relayed(self) -> list[RelayedLeg]:
        return [leg for leg in self.legs if isinstance(leg, RelayedLeg)]

    @property
    def bridged(self) -> list[BridgeLeg]:
        return [leg for leg in self.legs if isinstance(leg, BridgeLeg)]


SenderOf = Any  # Callable[[ExtendedBlock, int | None], JsonValue]


def extract(
    block: ExtendedBlock,
    codec: XcmCodec | None,
    *,
    ss58_prefix: int | None = None,
    sender_of: SenderOf | None = None,
) -> Extracted:
    """Every XCM leg of ``block``. ``codec`` decodes the block's XCM (None: bytes are hashed and
    split where no decoding is needed, and each message is reported as a problem)."""
    out = Extracted()
    context = _Block(block, codec, out, ss58_prefix, sender_of)
    received = _received_legs(context)
    out.legs.extend(received)
    sent = _sent_legs(context, received)
    # Bridge hook (xcm/bridge.py): bridge events, after the receipts they follow and before the
    # sends they dispatched (which continue them).
    bridged, sent = bridge_legs(block, received, sent, context.bridge_context)
    out.legs.extend(bridged)
    if is_relay(block.network):
        out.legs.extend(_relayed_legs(context))
    out.legs.extend(sent)
    return out


# --- helpers over a block ------------------------------------------------------------------------


class _Block:
    def __init__(
        self,
        block: ExtendedBlock,
        codec: XcmCodec | None,
        out: Extracted,
        ss58_prefix: int | None,
        sender_of: SenderOf | None,
    ) -> None:
        self.block = block
        self.codec = codec
        self.out = out
        self.ss58_prefix = ss58_prefix
        self._sender_of = sender_of
        self.storage = {(item.pallet, item.item): item for item in block.storage}
        self.signed = {x.index for x in block.extrinsics if x.signer is not None}

    def problem(self, kind: str, reason: str, data: bytes | None = None) -> None:
        self.out.problems.append(
            Problem(
                kind,
                self.block.network,
                self.block.number,
                self.block.hash,
                reason,
                "0x" + data.hex() if data is not None else None,
            )
        )

    def message(self, data: bytes) -> XcmMessage:
        if self.codec is None:
            message = XcmMessage.of(data, error=f"{self.block.network}: no XCM codec")
        else:
            message = self.codec.message(data)
        if message.error is not None:
            self.problem("undecodable", message.error, data)
        return message

    def split_page(self, page: bytes) -> list[XcmMessage]:
        if self.codec is None:
            self.problem("undecodable", f"{self.block.network}: no XCM codec", page)
            return []
        try:
            return self.codec.split_page(page)
        except UnknownPageFormat as exc:
            self.problem("unknown-page-format", str(exc), page[:1])
            return []
        except XcmDecodeError as exc:
            self.problem("undecodable", str(exc), page)
            return partial_messages(exc)

    def sender(self, extrinsic_index: int | None) -> JsonValue:
        if self._sender_of is None or extrinsic_index is None:
            return None
        value: JsonValue = self._sender_of(self.block, extrinsic_index)
        return value

    def extrinsic_id(self, index: int | None) -> str | None:
        return None if index is None else f"{self.block.number}-{index}"

    def event_payload(self, event: Event) -> dict[str, JsonValue]:
        return {
            "section": event.module,
            "method": event.name,
            "data": event.fields,
            "eventId": f"{self.block.number}-{event.index}",
            "blockPosition": event.index,
            "extrinsicId": self.extrinsic_id(event.extrinsic_index),
            "blockNumber": str(self.block.number),
            "blockHash": self.block.hash,
        }

    def bridge_context(self, event: Event, outcome: str, error: JsonValue) -> dict[str, JsonValue]:
        return self.context(
            extrinsic_index=event.extrinsic_index, event=event, outcome=outcome, error=error
        )

    def context(
        self,
        *,
        extrinsic_index: int | None,
        event: Event | None,
        outcome: str = "Success",
        error: JsonValue = None,
        message: XcmMessage | None = None,
        message_hash: str | None = None,
    ) -> dict[str, JsonValue]:
        return {
            "chainId": self.block.network,
            "blockNumber": str(self.block.number),
            "blockHash": self.block.hash,
            "timestamp": self.block.timestamp,
            "extrinsicId": self.extrinsic_id(extrinsic_index),
            "event": self.event_payload(event) if event is not None else None,
            "outcome": outcome,
            "error": error,
            "messageHash": message.hash if message is not None else message_hash,
            "messageData": message.data_hex if message is not None and message.data else None,
            "instructions": message.instructions if message is not None else None,
        }


def _field(fields: JsonValue, name: str, position: int) -> Any:
    """A field by name, falling back to its position (old runtimes emit positional fields)."""
    if isinstance(fields, dict):
        return fields.get(name)
    if isinstance(fields, list) and len(fields) > position:
        return fields[position]
    if position == 0 and not isinstance(fields, (dict, list)):
        return fields
    return None


def _hash_value(value: Any) -> str | None:
    if isinstance(value, dict) and len(value) == 1:  # an Option rendered as {"Some": ...}
        value = next(iter(value.values()))
    return value if isinstance(value, str) and _HASH.match(value) else None


# --- storage values (decoded by hand: their layout does not depend on the runtime) --------------


def _bytes_vec(raw: bytes, pos: int) -> tuple[bytes, int]:
    length, pos = read_compact(raw, pos)
    return raw[pos : pos + length], pos + length


def decode_hrmp_outbound(raw: bytes) -> list[tuple[int, bytes]]:
    """``ParachainSystem.HrmpOutboundMessages``: ``Vec<{recipient: u32, data: Vec<u8>}>``."""
    count, pos = read_compact(raw, 0)
    pages = []
    for _ in range(count):
        recipient = int.from_bytes(raw[pos : pos + 4], "little")
        data, pos = _bytes_vec(raw, pos + 4)
        pages.append((recipient, data))
    return pages


def decode_upward_messages(raw: bytes) -> list[bytes]:
    """``ParachainSystem.UpwardMessages``: ``Vec<Vec<u8>>`` (signals included)."""
    count, pos = read_compact(raw, 0)
    entries = []
    for _ in range(count):
        entry, pos = _bytes_vec(raw, pos)
        entries.append(entry)
    return entries


def decode_downward_queue(raw: bytes) -> list[tuple[int, bytes]]:
    """``Dmp.DownwardMessageQueues(para)``: ``Vec<{sent_at: u32, msg: Vec<u8>}>``, the same
    layout as an outbound HRMP list (a u32, then bytes)."""
    return decode_hrmp_outbound(raw)


def _storage_bytes(context: _Block, pallet: str, item: str) -> bytes | None:
    found = context.storage.get((pallet, item))
    if found is None or found.value is None:
        return None
    return bytes.fromhex(found.value[2:])


# --- received legs (XCM.md §6) -------------------------------------------------------------------

_TRAPS = {("PolkadotXcm", "AssetsTrapped"), ("XcmPallet", "AssetsTrapped")}


def outcome_of(outcome: Any) -> tuple[str, JsonValue]:
    """``(Success|Fail, error)`` of an executor ``Outcome`` in any era's shape."""
    if isinstance(outcome, str):
        return ("Success", None) if outcome == "Complete" else ("Fail", outcome)
    if isinstance(outcome, dict) and len(outcome) == 1:
        ((tag, inner),) = outcome.items()
        if tag == "Complete":
            return "Success", None
        if tag == "Incomplete":
            error = inner.get("error") if isinstance(inner, dict) else inner
            if isinstance(inner, list) and len(inner) == 2:
                error = inner[1]
            return "Fail", _error_name(error)
        if tag == "Error":
            error = inner.get("error") if isinstance(inner, dict) and "error" in inner else inner
            return "Fail", _error_name(error)
    return "Fail", _error_name(outcome)


def _error_name(error: Any) -> JsonValue:
    if isinstance(error, str):
        return error
    if isinstance(error, dict) and len(error) == 1:
        ((tag, _),) = error.items()
        return str(tag)
    return error  # type: ignore[no-any-return]


def _origin_chain(origin: Any, chain: str) -> str | None:
    """The URN of a MessageQueue ``origin``: ``{"Ump": {"Para": n}}``, ``"Parent"``,
    ``{"Sibling": n}``; None for any other (bridge origins, ``Here``)."""
    tag, inner = (origin, None) if isinstance(origin, str) else (None, None)
    if isinstance(origin, dict) and len(origin) == 1:
        ((tag, inner),) = origin.items()
    if tag == "Parent":
        return relay_of(chain)
    if tag == "Sibling" and inner is not None:
        return urn(consensus(chain), int(inner))
    if tag == "Ump":
        para = inner.get("Para") if isinstance(inner, dict) else inner
        return urn(consensus(chain), int(para)) if para is not None else None
    return None


def _is_local_origin(origin: Any) -> bool:
    # A bridge's own queue (Snowbridge's outbound messages) carries no XCM receipt.
    return bool(origin == "Here") or is_bridge_queue(origin)


def _downward_slots(block: ExtendedBlock) -> dict[str, str]:
    """Message hash -> :func:`downward_slot` for the downward messages a para block's
    ``ParachainSystem.set_validation_data`` brings in (older ``data.downward_messages`` or newer
    ``inbound_messages_data.downward_messages.full_messages``, each ``{sent_at, msg}``)."""
    slots: dict[str, str] = {}
    for extrinsic in block.extrinsics:
        if (extrinsic.module, extrinsic.call) != ("ParachainSystem", "set_validation_data"):
            continue
        args = extrinsic.args if isinstance(extrinsic.args, dict) else {}
        data = args.get("data")
        messages = data.get("downward_messages") if isinstance(data, dict) else None
        if messages is None:
            inbound = args.get("inbound_messages_data")
            downward = inbound.get("downward_messages") if isinstance(inbound, dict) else None
            messages = downward.get("full_messages") if isinstance(downward, dict) else None
        seen: dict[int, int] = defaultdict(int)
        for message in messages if isinstance(messages, list) else []:
            if not isinstance(message, dict):
                continue
            data_hex, sent_at = message.get("msg"), message.get("sent_at")
            if not isinstance(data_hex, str) or not data_hex.startswith("0x") or sent_at is None:
                continue
            at = int(str(sent_at))
            digest = hashlib.blake2b(bytes.fromhex(data_hex[2:]), digest_size=32).hexdigest()
            slots.setdefault("0x" + digest, downward_slot(at, seen[at]))
            seen[at] += 1
    return slots


def _received_legs(context: _Block) -> list[ReceivedLeg]:
    block = context.block
    legs: list[ReceivedLeg] = []
    slots = _downward_slots(block) if not is_relay(block.network) else {}
    last_trap: dict[tuple[str, int | None], Event] = {}
    for event in block.events:
        scope = (event.phase, event.extrinsic_index)
        key = (event.module, event.name)
        if key in _TRAPS:
            last_trap[scope] = event
            continue
        found = _receipt(context, event)
        if found is None:
            continue
        message_hash, message_id, outcome, error, from_chain = found
        trap = last_trap.pop(scope, None)
        assets_trapped = _trap_payload(context, trap) if trap is not None else None
        ctx = context.context(
            extrinsic_index=event.extrinsic_index,
            event=event,
            outcome=outcome,
            error=error,
            message_hash=message_hash,
        )
        ctx["messageId"] = message_id
        legs.append(
            ReceivedLeg(
                identity=f"{block.network}|{block.hash}|{event.index}",
                chain=block.network,
                from_chain=from_chain,
                block_number=block.number,
                block_hash=block.hash,
                message_hash=message_hash,
                message_id=message_id,
                outcome=outcome,  # type: ignore[arg-type]
                error=error,
                assets_trapped=assets_trapped,
                context=ctx,
                slot=(
                    slots.get(message_hash) or slots.get(message_id)
                    if from_chain is not None and is_relay(from_chain)
                    else None
                ),
            )
        )
    return legs


def _receipt(context: _Block, event: Event) -> tuple[str, str, str, JsonValue, str | None] | None:
    chain = context.block.network
    fields = event.fields
    module, name = event.module, event.name
    if module == "MessageQueue" and name in ("Processed", "ProcessingFailed"):
        origin = _field(fields, "origin", 1)
        if _is_local_origin(origin):
            return None
        message_id = _hash_value(_field(fields, "id", 0))
        if message_id is None:
            return None
        if name == "Processed":
            success = _field(fields, "success", 3)
            outcome, error = ("Success", None) if success else ("Fail", None)
        else:
            outcome, error = "Fail", _error_name(_field(fields, "error", 2))
        return message_id, message_id, outcome, error, _origin_chain(origin, chain)
    if module == "XcmpQueue" and name in ("Success", "Fail", "BadVersion", "BadFormat"):
        message_hash = _hash_value(_field(fields, "message_hash", 0))
        if message_hash is None:
            return None
        message_id = _hash_value(_field(fields, "message_id", -1)) or message_hash
        if name == "Success":
            return message_hash, message_id, "Success", None, None
        if name == "Fail":
            return message_hash, message_id, "Fail", _error_name(_field(fields, "error", 1)), None
        return message_hash, message_id, "Fail", name, None
    if module == "DmpQueue" and name in ("ExecutedDownward", "InvalidFormat", "UnsupportedVersion"):
        message_id = _hash_value(_field(fields, "message_id", 0))
        if message_id is None:
            return None
        message_hash = _hash_value(_field(fields, "message_hash", -1)) or message_id
        if name == "ExecutedDownward":
            outcome, error = outcome_of(_field(fields, "outcome", 1))
        else:
            outcome, error = "Fail", name
        return message_hash, message_id, outcome, error, relay_of(chain)
    if module == "Ump" and name in ("ExecutedUpward", "InvalidFormat", "UnsupportedVersion"):
        message_id = _hash_value(_field(fields, "id", 0))
        if message_id is None:
            return None
        if name == "ExecutedUpward":
            outcome, error = outcome_of(_field(fields, "outcome", 1))
        else:
            outcome, error = "Fail", name
        return message_id, message_id, outcome, error, None
    return None


def _trap_payload(context: _Block, trap: Event) -> JsonValue:
    return {
        "event": {
            "eventId": f"{context.block.number}-{trap.index}",
            "blockNumber": str(context.block.number),
            "blockHash": context.block.hash,
            "section": trap.module,
            "method": trap.name,
        },
        "hash": _field(trap.fields, "hash", 0),
        "assets": _field(trap.fields, "assets", 2),
    }


# --- relayed legs (XCM.md §7) --------------------------------------------------------------------


def _relayed_legs(context: _Block) -> list[RelayedLeg]:
    block = context.block
    legs: list[RelayedLeg] = []
    for extrinsic in block.extrinsics:
        if extrinsic.module != "ParaInherent" or extrinsic.call != "enter":
            continue
        args = extrinsic.args if isinstance(extrinsic.args, dict) else {}
        data = args.get("data")
        candidates = data.get("backed_candidates") if isinstance(data, dict) else None
        for k, backed in enumerate(candidates if isinstance(candidates, list) else []):
            candidate = backed.get("candidate") if isinstance(backed, dict) else None
            if not isinstance(candidate, dict):
                continue
            descriptor = candidate.get("descriptor") or {}
            commitments = candidate.get("commitments") or {}
            para = descriptor.get("para_id") if isinstance(descriptor, dict) else None
            messages = (
                commitments.get("horizontal_messages") if isinstance(commitments, dict) else None
            )
            if para is None or not isinstance(messages, list):
                continue
            origin = urn(consensus(block.network), int(str(para)))
            for j, horizontal in enumerate(messages):
                if not isinstance(horizontal, dict):
                    continue
                recipient = urn(consensus(block.network), int(str(horizontal["recipient"])))
                page = bytes.fromhex(str(horizontal["data"])[2:])
                for f, message in enumerate(context.split_page(page)):
                    outcome = "Success" if extrinsic.success else "Fail"
                    error = extrinsic.error if not extrinsic.success else None
                    ctx = context.context(
                        extrinsic_index=extrinsic.index,
                        event=None,
                        outcome=outcome,
                        error=error,
                        message=message,
                    )
                    ctx["messageId"] = message.message_id
                    legs.append(
                        RelayedLeg(
                            identity=f"{block.network}|{block.hash}|{k}|{j}|{f}",
                            relay=block.network,
                            origin=origin,
                            recipient=recipient,
                            block_number=block.number,
                            block_hash=block.hash,
                            message_hash=message.hash,
                            message_id=message.message_id,
                            ids=list(message.ids),
                            outcome=outcome,  # type: ignore[arg-type]
                            error=error,
                            context=ctx,
                        )
                    )
    return legs


# --- sent legs (XCM.md §5) -----------------------------------------------------------------------


@dataclass(slots=True)
class _Fragment:
    transport: str
    entry: int
    fragment: int
    recipient: str
    message: XcmMessage
    claimed: bool = False


def _sent_legs(context: _Block, received: Sequence[ReceivedLeg]) -> list[SentLeg]:
    block = context.block
    network = block.network
    fragments: list[_Fragment] = []
    raw = _storage_bytes(context, "ParachainSystem", "HrmpOutboundMessages")
    if raw is not None:
        for e, (para_id, page) in enumerate(decode_hrmp_outbound(raw)):
            target = urn(consensus(network), para_id)
            for f, message in enumerate(context.split_page(page)):
                fragments.append(_Fragment("hrmp", e, f, target, message))
    raw = _storage_bytes(context, "ParachainSystem", "UpwardMessages")
    if raw is not None:
        entries = decode_upward_messages(raw)
        for e, entry in enumerate(entries):
            if not entry:
                break  # UMP signals follow the first empty entry
            fragments.append(_Fragment("ump", e, 0, relay_of(network), context.message(entry)))

    legs: list[SentLeg] = []
    by_hash: dict[str, list[_Fragment]] = defaultdict(list)
    for each in fragments:
        by_hash[each.message.hash].append(each)

    def claim(message_hash: str, transport: str) -> _Fragment | None:
        for fragment in by_hash.get(message_hash, ()):
            if not fragment.claimed and fragment.transport == transport:
                fragment.claimed = True
                return fragment
        return None

    for event in block.events:
        key = (event.module, event.name)
        if key == ("XcmpQueue", "XcmpMessageSent"):
            transport = "hrmp"
        elif key == ("ParachainSystem", "UpwardMessageSent"):
            transport = "ump"
        else:
            continue
        message_hash = _hash_value(_field(event.fields, "message_hash", 0))
        if message_hash is None:
            continue
        fragment = claim(message_hash, transport)
        if fragment is None:
            recipient = relay_of(network) if transport == "ump" else None
            if recipient is None:
                context.problem(
                    "missing-bytes",
                    f"{network} #{block.number}: no HRMP page holds message {message_hash}",
                )
                continue
            context.problem(
                "missing-bytes",
                f"{network} #{block.number}: no upward entry holds message {message_hash}",
            )
            legs.append(
                _sent_leg(
                    context,
                    identity=f"{network}|{block.hash}|ump|event-{event.index}",
                    transport="ump",
                    recipient=recipient,
                    message=None,
                    message_hash=message_hash,
                    event=event,
                    extrinsic_index=event.extrinsic_index,
                    received=received,
                )
            )
            continue
        legs.append(_fragment_leg(context, fragment, event, event.extrinsic_index, received))

    if is_relay(network):
        legs.extend(_downward_legs(context, received))
    else:
        # Old parachains (statemine 900) send without an event: whatever storage holds that no
        # event claimed was sent in this block. The block's single XCM extrinsic, if any, sent
        # one of them (unless an event already gave it its message): the one that carries its
        # beneficiary and amounts, else the first that is not version negotiation. The others
        # (replies, version discovery from a hook) have no sender.
        unclaimed = [fragment for fragment in fragments if not fragment.claimed]
        if unclaimed:
            senders = [
                x
                for x in block.extrinsics
                if x.success and x.signer is not None and x.module in PARA_TRANSFER_PALLETS
            ]
            signed = _sent_by(senders[0], unclaimed, legs) if len(senders) == 1 else None
            for fragment in unclaimed:
                extrinsic_index = senders[0].index if fragment is signed else None
                legs.append(_fragment_leg(context, fragment, None, extrinsic_index, received))
    return legs


def _sent_by(
    extrinsic: Extrinsic, unclaimed: Sequence[_Fragment], legs: Sequence[SentLeg]
) -> _Fragment | None:
    """Which unclaimed fragment an old parachain's transfer extrinsic sent (see above)."""
    if any(
        leg.context.get("extrinsicId") == f"{leg.block_number}-{extrinsic.index}" for leg in legs
    ):
        return None  # its send event claimed its message already
    args = next((a for m, _, a in _calls(extrinsic) if m in PARA_TRANSFER_PALLETS), {})
    for fragment in unclaimed:
        if sent_by_call(args, fragment.message.instructions):
            return fragment
    for fragment in unclaimed:
        if not is_version_control(fragment.message.instructions):
            return fragment
    return None


def _fragment_leg(
    context: _Block,
    fragment: _Fragment,
    event: Event | None,
    extrinsic_index: int | None,
    received: Sequence[ReceivedLeg],
) -> SentLeg:
    block = context.block
    return _sent_leg(
        context,
        identity=(
            f"{block.network}|{block.hash}|{fragment.transport}|{fragment.entry}|{fragment.fragment}"
        ),
        transport=fragment.transport,
        recipient=fragment.recipient,
        message=fragment.message,
        message_hash=fragment.message.hash,
        event=event,
        extrinsic_index=extrinsic_index,
        received=received,
    )


def _downward_legs(context: _Block, received: Sequence[ReceivedLeg]) -> list[SentLeg]:
    block = context.block
    queues: dict[int, list[XcmMessage]] = {}
    for item in block.storage:
        if (item.pallet, item.item) != ("Dmp", "DownwardMessageQueues"):
            continue
        queue_para = int.from_bytes(bytes.fromhex(item.key[-8:]), "little")
        raw = bytes.fromhex(item.value[2:]) if item.value else b""
        entries = decode_downward_queue(raw) if raw else []
        queues[queue_para] = [
            context.message(msg) for sent_at, msg in entries if sent_at == block.number
        ]
    used: dict[int, set[int]] = defaultdict(set)
    unread: dict[int, int] = defaultdict(int)

    def slot(para: int, picked: tuple[int, XcmMessage] | None) -> str | None:
        """A send whose bytes are not in the queue (read too late, or not at all) is matched
        by its place instead: the messages queued before it, then the byteless sends of this
        block before it, in event and call order."""
        if picked is not None:
            return None
        position = len(queues.get(para, [])) + unread[para]
        unread[para] += 1
        return downward_slot(block.number, position)

    def pick(
        para: int, message_id: str | None, call: Mapping[str, Any] | None = None
    ) -> tuple[int, XcmMessage] | None:
        """The queued message a send accounts for: by the event's id (topic, then hash); for
        a call, the one carrying the call's beneficiary and amounts; else the first in order
        that is not version negotiation (queued by the runtime, before the transfer, when the
        destination's version is unknown)."""
        queue = queues.get(para, [])
        free = [(i, m) for i, m in enumerate(queue) if i not in used[para]]
        for check in ("topic", "hash"):
            for i, message in free:
                if message_id is not None and getattr(message, check) == message_id:
                    used[para].add(i)
                    return i, message
        if call is not None:
            for i, message in free:
                if sent_by_call(call, message.instructions):
                    used[para].add(i)
                    return i, message
        free = [(i, m) for i, m in free if not is_version_control(m.instructions)]
        if free:
            used[para].add(free[0][0])
            return free[0]
        return None

    legs: list[SentLeg] = []
    para: int | None
    sent_extrinsics: set[int | None] = set()
    for event in block.events:
        if (event.module, event.name) != ("XcmPallet", "Sent"):
            continue
        sent_extrinsics.add(event.extrinsic_index)
        destination = _field(event.fields, "destination", 1)
        para = child_para(destination)
        if para is None:
            continue
        message_id = _hash_value(_field(event.fields, "message_id", 3))
        picked = pick(para, message_id)
        legs.append(
            _downward_leg(
                context,
                para,
                picked,
                event,
                event.extrinsic_index,
                message_id,
                received,
                slot(para, picked),
            )
        )
    for extrinsic in block.extrinsics:
        for call in _calls(extrinsic):
            module, name, args = call
            if module != "XcmPallet" or name not in RELAY_SEND_CALLS:
                continue
            if not extrinsic.success or extrinsic.index in sent_extrinsics:
                continue
            if name == "execute":
                para = _execute_dest(args, block.network)
            else:
                para = child_para(args.get("dest"))
            if para is None:
                continue
            picked = pick(para, None, args)
            legs.append(
                _downward_leg(
                    context, para, picked, None, extrinsic.index, None, received, slot(para, picked)
                )
            )
    # Messages queued in this block that no event or call accounts for: sent while executing
    # something else (a hop re-sent by the relay, a hook). They have no sender.
    for queue_para, queue in queues.items():
        for index, message in enumerate(queue):
            if index not in used[queue_para]:
                used[queue_para].add(index)
                legs.append(
                    _downward_leg(context, queue_para, (index, message), None, None, None, received)
                )
    return legs


def _execute_dest(args: Mapping[str, Any], relay: str) -> int | None:
    """The para an ``XcmPallet.execute`` program forwards to first (its first stop)."""
    for stop in stops_of(relay, args.get("message"))[1:]:
        return None if is_relay(stop) else int(stop.rsplit(":", 1)[1])
    return None


def _calls(extrinsic: Extrinsic) -> Iterable[tuple[str, str, dict[str, Any]]]:
    """The extrinsic's call and the calls nested in batches, proxies and multisigs."""
    stack: list[tuple[str, str, Any]] = [(extrinsic.module, extrinsic.call, extrinsic.args)]
    while stack:
        module, name, args = stack.pop(0)
        args = args if isinstance(args, dict) else {}
        yield module, name, args
        nested: list[Any] = []
        if module == "Utility" and name in ("batch", "batch_all", "force_batch"):
            nested = args.get("calls") or []
        elif module in ("Proxy", "Multisig", "Sudo", "Utility"):
            nested = [args["call"]] if isinstance(args.get("call"), dict) else []
        for call in nested:
            if isinstance(call, dict) and "module" in call and "call" in call:
                stack.append((call["module"], call["call"], call.get("args")))


def _downward_leg(
    context: _Block,
    para: int,
    picked: tuple[int, XcmMessage] | None,
    event: Event | None,
    extrinsic_index: int | None,
    message_id: str | None,
    received: Sequence[ReceivedLeg],
    slot: str | None = None,
) -> SentLeg:
    block = context.block
    recipient = urn(consensus(block.network), para)
    if picked is None:
        anchor = f"event-{event.index}" if event is not None else f"extrinsic-{extrinsic_index}"
        context.problem(
            "missing-bytes",
            f"{block.network} #{block.number}: no downward message to para {para} queued at "
            f"this block ({anchor})",
        )
        return _sent_leg(
            context,
            identity=f"{block.network}|{block.hash}|dmp|{para}|{anchor}",
            transport="dmp",
            recipient=recipient,
            message=None,
            message_hash=message_id or NO_HASH,
            event=event,
            extrinsic_index=extrinsic_index,
            received=received,
            slot=slot,
        )
    index, message = picked
    return _sent_leg(
        context,
        identity=f"{block.network}|{block.hash}|dmp|{para}|{index}",
        transport="dmp",
        recipient=recipient,
        message=message,
        message_hash=message.hash,
        event=event,
        extrinsic_index=extrinsic_index,
        received=received,
    )


def _sent_leg(
    context: _Block,
    *,
    identity: str,
    transport: str,
    recipient: str,
    message: XcmMessage | None,
    message_hash: str,
    event: Event | None,
    extrinsic_index: int | None,
    received: Sequence[ReceivedLeg],
    slot: str | None = None,
) -> SentLeg:
    block = context.block
    instructions = message.instructions if message is not None else None
    stops = stops_of(recipient, instructions)
    if message is not None:
        ids = list(message.ids)
    else:  # the hash the event reported, if any (never the all-zero placeholder)
        ids = [message_hash] if message_hash != NO_HASH else []
    if slot is not None:
        ids.append(slot)
    ctx = context.context(
        extrinsic_index=extrinsic_index,
        event=event,
        message=message,
        # A DMP found by its call, whose bytes could not be read, has no hash to report yet:
        # null, never the all-zero placeholder (the receipt's event tells the real one).
        message_hash=None if message_hash == NO_HASH else message_hash,
    )
    continues = _continues(message, event, extrinsic_index, received)
    candidates = (
        _hop_candidates(context, event, extrinsic_index, received)
        if continues is None and instructions is not None and not is_version_control(instructions)
        else []  # version discovery is a chain's own message, never a forwarded one
    )
    return SentLeg(
        identity=identity,
        origin=block.network,
        recipient=recipient,
        transport=transport,  # type: ignore[arg-type]
        block_number=block.number,
        block_hash=block.hash,
        message_hash=message_hash,
        message_data=message.data_hex if message is not None else None,
        topic=message.topic if message is not None else None,
        ids=ids,
        version=message.version if message is not None else None,
        instructions=instructions,
        stops=stops,
        legs=legs_of(block.network, stops),
        sender=context.sender(extrinsic_index),
        context=ctx,
        continues=continues,
        hop_candidates=candidates,
        timestamp=block.timestamp,
    )


def _continues(
    message: XcmMessage | None,
    event: Event | None,
    extrinsic_index: int | None,
    received: Sequence[ReceivedLeg],
) -> str | None:
    """The received leg of this block that this message forwards, when it can be told for sure:
    the same topic, or the first outcome event after the send in the same extrinsic (executing a
    program emits its sends before its outcome). A topic that no receipt of the block carries is
    no answer: a chain that swaps on the way re-sends with a topic of its own, and older receivers
    report only the hash; the position in the extrinsic may still tell."""
    if message is not None and message.topic is not None:
        for leg in received:
            if message.topic in leg.ids:
                return leg.identity
    if event is None or event.phase != "ApplyExtrinsic":
        return None  # many queued messages run in one phase: no safe link by position
    for leg in received:
        position = leg.context.get("event")
        if not isinstance(position, dict):
            continue
        after = position.get("blockPosition")
        same_extrinsic = position.get("extrinsicId") == f"{leg.block_number}-{extrinsic_index}"
        if isinstance(after, int) and after > event.index and same_extrinsic:
            return leg.identity
    return None


def _hop_candidates(
    context: _Block,
    event: Event | None,
    extrinsic_index: int | None,
    received: Sequence[ReceivedLeg],
) -> list[str]:
    """The received legs of this block that a message with no sure link may forward (the
    matcher decides by content). A send by a signed extrinsic is the signer's own, unless a
    receipt sits in that same extrinsic; a send from a hook, an inherent or the block's
    Initialization or Finalization phase (Astar emits ``XcmpMessageSent`` at finalization while
    its queue executes the incoming message elsewhere) may forward any message the block
    executed."""
    if event is not None and event.phase == "ApplyExtrinsic" and extrinsic_index in context.signed:
        wanted = f"{context.block.number}-{extrinsic_index}"
        return [leg.identity for leg in received if leg.context.get("extrinsicId") == wanted]
    return [leg.identity for leg in received]
