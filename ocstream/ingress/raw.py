"""Raw (undecoded) blocks as recorded: the two fixture formats, read into :class:`RawBlock`.

* ``raw/v1/*.cbor.bin`` (ocelloids v1 test data): a CBOR array of ``{block, events, author}``, each
  value a byte string wrapped in CBOR tag 64; ``block`` is a SCALE ``SignedBlock``, ``events`` a
  list of single SCALE ``EventRecord`` values. See :func:`load_v1_cbor`.
* ``raw/sidecar/*.json`` (substrate-api-sidecar test data): SCALE header, extrinsics and the raw
  ``System.Events`` value as hex. See :func:`load_sidecar_json`.

A :class:`RawBlock` is what a recorder writes and a replay reads; decoding it needs the runtime's
metadata (:mod:`ocstream.ingress.decode`). Malformed files raise
:class:`~ocstream.ingress.decode.DecodeError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import orjson

from .decode import DecodeError, Header, read_compact, read_header

__all__ = ["RawBlock", "hex_bytes", "load_sidecar_json", "load_v1_cbor", "split_signed_block"]


@dataclass(frozen=True, slots=True)
class RawBlock:
    """One block's undecoded parts.

    ``events`` is either the raw ``System.Events`` value (``Vec<EventRecord>``) or a list of single
    raw ``EventRecord`` values. The optional fields are what the recording says (a hint, not
    checked here): ``spec_version`` of the runtime, ``hash``/``number`` of the block, the
    ``network`` URN, the block ``author`` account and the ``metadata`` file to decode it with.
    """

    header: bytes
    extrinsics: list[bytes]
    events: bytes | list[bytes]
    spec_version: int | None = None
    hash: str | None = None
    number: int | None = None
    network: str | None = None
    author: bytes | None = None
    metadata: str | None = None
    decoded_header: Header | None = field(default=None, compare=False, repr=False)


def split_signed_block(block: bytes) -> tuple[bytes, list[bytes], Header]:
    """Split a SCALE ``SignedBlock`` into header bytes and extrinsics (each with its length prefix).

    SignedBlock = header ‖ Vec<extrinsic> ‖ Option<Justifications>. The header has no length prefix,
    so it is decoded to find where it ends; each extrinsic is an opaque byte string prefixed by its
    own compact length.
    """
    header, pos = read_header(block)
    header_bytes = block[:pos]
    count, pos = read_compact(block, pos)
    extrinsics: list[bytes] = []
    for index in range(count):
        start = pos
        length, pos = read_compact(block, pos)
        end = pos + length
        if end > len(block):
            raise DecodeError(f"extrinsic {index} runs past the end of the block")
        extrinsics.append(bytes(block[start:end]))
        pos = end
    # Justifications are a finality proof, of no use to decoding; only their presence is checked.
    if pos >= len(block) or block[pos] not in (0, 1):
        raise DecodeError(f"no Option<Justifications> after {count} extrinsics (offset {pos})")
    return bytes(header_bytes), extrinsics, header


def _untag(value: Any) -> bytes:
    # cbor-x writes Uint8Arrays as typed arrays (tag 64); cbor2 keeps the tag around the bytes.
    if isinstance(value, cbor2.CBORTag):
        value = value.value
    if not isinstance(value, (bytes, bytearray)):
        raise DecodeError(f"expected a byte string, found {type(value).__name__}")
    return bytes(value)


def load_v1_cbor(path: str | Path) -> list[RawBlock]:
    """Read a v1 CBOR recording: one :class:`RawBlock` per array item, in file order."""
    path = Path(path)
    try:
        items = cbor2.loads(path.read_bytes())
    except cbor2.CBORDecodeError as exc:
        raise DecodeError(f"{path}: not CBOR: {exc}") from exc
    if not isinstance(items, list):
        raise DecodeError(f"{path}: expected a CBOR array of blocks")
    blocks: list[RawBlock] = []
    for position, item in enumerate(items):
        try:
            header, extrinsics, decoded = split_signed_block(_untag(item["block"]))
            events = [_untag(record) for record in item["events"]]
            author = _untag(item["author"]) if item.get("author") is not None else None
        except (KeyError, TypeError, DecodeError) as exc:
            raise DecodeError(f"{path}: block {position}: {exc}") from exc
        blocks.append(
            RawBlock(
                header=header,
                extrinsics=extrinsics,
                events=events,
                hash=decoded.hash,
                number=decoded.number,
                author=author,
                decoded_header=decoded,
            )
        )
    return blocks


def hex_bytes(value: Any, what: str) -> bytes:
    """``0x`` hex to bytes; DecodeError naming ``what`` for anything else."""
    if not isinstance(value, str) or not value.startswith("0x"):
        raise DecodeError(f"{what}: expected 0x hex, got {str(value)[:40]!r}")
    try:
        return bytes.fromhex(value[2:])
    except ValueError as exc:
        raise DecodeError(f"{what}: not hex: {exc}") from exc


def load_sidecar_json(path: str | Path) -> RawBlock:
    """Read a sidecar JSON recording (``{chain, number, hash, specVersion, header, ...}``)."""
    path = Path(path)
    try:
        doc = orjson.loads(path.read_bytes())
        return RawBlock(
            header=hex_bytes(doc["header"], f"{path}: header"),
            extrinsics=[
                hex_bytes(ext, f"{path}: extrinsic {i}") for i, ext in enumerate(doc["extrinsics"])
            ],
            events=hex_bytes(doc["events"], f"{path}: events"),
            spec_version=int(doc["specVersion"]) if doc.get("specVersion") is not None else None,
            hash=doc.get("hash"),
            number=int(doc["number"]) if doc.get("number") is not None else None,
            network=doc.get("chain"),
            metadata=doc.get("metadata"),
        )
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"{path}: not JSON: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError(f"{path}: malformed sidecar block: {exc!r}") from exc
