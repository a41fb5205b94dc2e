"""Which storage items a block needs attached for the XCM agent, and their keys.

The XCM agent needs the bytes of every message a block sends, and those live only in storage
(`shared/design/XCM.md` §4, §5.1):

* a **parachain** block that sends over HRMP (``XcmpQueue.XcmpMessageSent``) needs
  ``ParachainSystem.HrmpOutboundMessages``; one that sends upward
  (``ParachainSystem.UpwardMessageSent``) needs ``ParachainSystem.UpwardMessages``. A runtime
  whose metadata lacks one of these events (old cumulus: statemine 900 and 9290 have no
  ``UpwardMessageSent``) sends over that transport without saying so, from extrinsics, replies
  and hooks alike, so its item is read at **every** block (:func:`storage_needed`);
* a **relay** block that sends downward (``XcmPallet.Sent``, or on old relays a successful
  ``XcmPallet`` transfer/``send``/``execute`` extrinsic with no event) needs
  ``Dmp.DownwardMessageQueues(para)`` for each destination para. A relay block that executes
  an upward message may queue downward messages to any para with neither (a hop through the
  relay, a version-negotiation reply): the follower then reads every para's queue and keeps
  those holding a message queued at this block (:func:`executes_upward`, :func:`queued_at`).

All are read at the hash of the block itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import xxhash

from .decode import DecodeError, read_compact
from .model import ExtendedBlock


def twox128(data: bytes) -> bytes:
    return b"".join(
        xxhash.xxh64(data, seed=seed).intdigest().to_bytes(8, "little") for seed in (0, 1)
    )


def twox64concat(data: bytes) -> bytes:
    return xxhash.xxh64(data, seed=0).intdigest().to_bytes(8, "little") + data


def storage_key(pallet: str, item: str, suffix: bytes = b"") -> str:
    return "0x" + (twox128(pallet.encode()) + twox128(item.encode()) + suffix).hex()


@dataclass(frozen=True, slots=True)
class StorageRequest:
    pallet: str
    item: str
    key: str


HRMP_OUTBOUND = StorageRequest(
    "ParachainSystem",
    "HrmpOutboundMessages",
    storage_key("ParachainSystem", "HrmpOutboundMessages"),
)
UPWARD = StorageRequest(
    "ParachainSystem", "UpwardMessages", storage_key("ParachainSystem", "UpwardMessages")
)

PARA_TRANSFER_PALLETS = {"PolkadotXcm", "XTokens"}
RELAY_SEND_CALLS = {
    "limited_reserve_transfer_assets",
    "reserve_transfer_assets",
    "limited_teleport_assets",
    "teleport_assets",
    "transfer_assets",
    "execute",
    "send",
}


def downward_queue(para_id: int) -> StorageRequest:
    suffix = twox64concat(para_id.to_bytes(4, "little"))
    return StorageRequest(
        "Dmp", "DownwardMessageQueues", storage_key("Dmp", "DownwardMessageQueues", suffix)
    )


def child_para(location: Any) -> int | None:
    """The para id of a location one level down from a relay (``parents: 0``, ``Parachain(n)``),
    in any of the shapes versioned locations decode to; None for anything else."""
    if isinstance(location, dict):
        if len(location) == 1:
            [(tag, inner)] = location.items()
            if tag.startswith("V") and tag[1:].isdigit():
                return child_para(inner)  # VersionedLocation / VersionedMultiLocation
        if location.get("parents", 0) != 0:
            return None
        for found in _parachains(location.get("interior", location)):
            return found
    return None


def _parachains(value: Any) -> Iterator[int]:
    if isinstance(value, dict):
        for tag, inner in value.items():
            if tag == "Parachain" and isinstance(inner, int | str) and str(inner).isdigit():
                yield int(inner)
            else:
                yield from _parachains(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _parachains(inner)


class RuntimeEvents(Protocol):
    """What :func:`storage_needed` asks of a runtime (a :class:`RuntimeDecoder`)."""

    def has_event(self, pallet: str, name: str) -> bool: ...


#: The events that announce an HRMP or an upward send on a parachain, by storage item.
HRMP_SENT = ("XcmpQueue", "XcmpMessageSent")
UPWARD_SENT = ("ParachainSystem", "UpwardMessageSent")


def storage_needed(
    block: ExtendedBlock, *, is_relay: bool, runtime: RuntimeEvents | None = None
) -> list[StorageRequest]:
    """The storage items to read at ``block``'s hash, without duplicates, in a stable order.

    ``runtime`` (the block's decoder) says which send events the runtime can emit; without it
    the runtime is assumed to emit them all, as current ones do (the follower always gives
    it)."""
    needed: dict[str, StorageRequest] = {}
    if is_relay:
        paras: list[int] = []
        for event in block.events:
            if event.module == "XcmPallet" and event.name == "Sent":
                fields = event.fields
                destination = fields.get("destination") if isinstance(fields, dict) else None
                if destination is None and isinstance(fields, list) and len(fields) > 1:
                    destination = fields[1]
                if (para := child_para(destination)) is not None:
                    paras.append(para)
        for extrinsic in block.extrinsics:
            if (
                extrinsic.success
                and extrinsic.module == "XcmPallet"
                and extrinsic.call in RELAY_SEND_CALLS
                and isinstance(extrinsic.args, dict)
                and (para := child_para(extrinsic.args.get("dest"))) is not None
            ):
                paras.append(para)
        for para in paras:
            request = downward_queue(para)
            needed[request.key] = request
        return list(needed.values())
    names = {(event.module, event.name) for event in block.events}
    hrmp = HRMP_SENT in names
    ump = UPWARD_SENT in names
    if not (hrmp or ump) and (
        ("PolkadotXcm", "Sent") in names
        or any(x.success and x.module in PARA_TRANSFER_PALLETS for x in block.extrinsics)
    ):
        # A send without its transport event: the bytes are in one of the two.
        hrmp = ump = True
    # A runtime that cannot announce a transport (old cumulus, e.g. statemine 900 and 9290 have
    # no UpwardMessageSent) sends over it silently: from an extrinsic, while executing an
    # inbound message (a reply), or from a hook (version discovery's SubscribeVersion, next to
    # an HRMP one that does have its event). Nothing in the block tells these apart, so its
    # item is read at every block: one more state_getStorage per block, on such runtimes only.
    if runtime is not None:
        hrmp = hrmp or not runtime.has_event(*HRMP_SENT)
        ump = ump or not runtime.has_event(*UPWARD_SENT)
    return ([HRMP_OUTBOUND] if hrmp else []) + ([UPWARD] if ump else [])


#: Receipt events of a relay that executes an upward message (old ``Ump`` and ``MessageQueue``,
#: which on a relay only carries upward messages).
UPWARD_EXECUTED = {
    ("Ump", "ExecutedUpward"),
    ("MessageQueue", "Processed"),
}
DOWNWARD_QUEUES_PREFIX = storage_key("Dmp", "DownwardMessageQueues")


def executes_upward(block: ExtendedBlock) -> bool:
    """Whether a relay block executed an upward message. Executing one can queue downward
    messages to any para (a hop: Bifrost -> Polkadot -> Hydration; a reply: version
    negotiation) with no send event and no call, so the ingress then reads every para's
    downward queue (:func:`queued_at`)."""
    return any((event.module, event.name) in UPWARD_EXECUTED for event in block.events)


def queued_at(value: str | None, number: int) -> bool:
    """Whether a ``Dmp.DownwardMessageQueues`` value (hex) holds a message queued at relay
    block ``number`` (``Vec<{sent_at: u32, msg: Vec<u8>}>``)."""
    if not value or len(value) < 4:
        return False
    raw = bytes.fromhex(value[2:])
    try:
        count, pos = read_compact(raw, 0)
        for _ in range(count):
            sent_at = int.from_bytes(raw[pos : pos + 4], "little")
            if sent_at == number:
                return True
            length, pos = read_compact(raw, pos + 4)
            pos += length
    except (DecodeError, IndexError, ValueError):
        return False
    return False
