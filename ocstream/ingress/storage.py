"""Which storage items a block needs attached for the XCM agent, and their keys.

The XCM agent needs the bytes of every message a block sends, and those live only in storage
(`shared/design/XCM.md` §4, §5.1):

* a **parachain** block that sends over HRMP (``XcmpQueue.XcmpMessageSent``) needs
  ``ParachainSystem.HrmpOutboundMessages``; one that sends upward
  (``ParachainSystem.UpwardMessageSent``) needs ``ParachainSystem.UpwardMessages``. Old
  parachains emit neither event, so a ``PolkadotXcm.Sent`` event or a successful
  ``PolkadotXcm``/``XTokens`` extrinsic reads both;
* a **relay** block that sends downward (``XcmPallet.Sent``, or on old relays a successful
  ``XcmPallet`` transfer/``send``/``execute`` extrinsic with no event) needs
  ``Dmp.DownwardMessageQueues(para)`` for each destination para.

All are read at the hash of the block itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import xxhash

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


def storage_needed(block: ExtendedBlock, *, is_relay: bool) -> list[StorageRequest]:
    """The storage items to read at ``block``'s hash, without duplicates, in a stable order."""
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
    hrmp = ("XcmpQueue", "XcmpMessageSent") in names
    ump = ("ParachainSystem", "UpwardMessageSent") in names
    if not (hrmp or ump) and (
        ("PolkadotXcm", "Sent") in names
        or any(x.success and x.module in PARA_TRANSFER_PALLETS for x in block.extrinsics)
    ):
        # A send without its transport event (old parachains): the bytes are in one of the two.
        hrmp = ump = True
    return ([HRMP_OUTBOUND] if hrmp else []) + ([UPWARD] if ump else [])
