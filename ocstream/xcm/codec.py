"""XCM bytes: decoding ``VersionedXcm``, splitting pages and upward lists, hashes and topic ids.

An :class:`XcmCodec` decodes the XCM programs of one runtime with that runtime's own metadata
(the chain that holds the bytes, at that block), through the compiled cyscale decoder of the
registry type ``xcm::VersionedXcm``. Decoding also reports how many bytes a program used, which
is what splits a format-0x00 XCMP page, where programs follow each other with no length prefix.

Usage::

    codec = XcmCodec(runtime_decoder)
    for message in codec.split_page(page_bytes):   # an HrmpOutboundMessages / horizontal page
        print(message.hash, message.topic, message.version)
    message = codec.message(upward_entry)          # one UMP entry or DMP message

Rules (``docs/xcm.md`` has the reasons):

* ``hash`` is ``blake2_256`` of the VersionedXcm bytes, version byte included, without any
  format byte or length prefix;
* ``topic`` is the operand of a final ``SetTopic``, else of the first one, else None; an all-zero
  topic counts as none (it is not unique on real chains);
* ``ids`` are the hash, the topic and ``forward_id_for(topic)``: every id a receiving chain may
  report for the message.

Errors: bytes that do not decode raise :class:`XcmDecodeError`; an unknown page format raises
:class:`UnknownPageFormat`. Both carry the bytes' network and runtime in their message.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from pydantic import JsonValue

from ..errors import OcstreamError
from ..ingress.decode import DecodeError, RuntimeDecoder, blake2_256, read_compact
from ..ingress.model import to_json_value

__all__ = [
    "PAGE_CONCATENATED",
    "PAGE_OPAQUE",
    "UnknownPageFormat",
    "VersionRoutedCodec",
    "XcmCodec",
    "XcmDecodeError",
    "XcmMessage",
    "cut_upward_messages",
    "forward_id_for",
    "message_hash",
    "partial_messages",
    "topic_of",
]

#: XCMP page formats (the first byte of a page).
PAGE_CONCATENATED: Final = 0x00  # VersionedXcm values back to back, no length prefix
PAGE_BLOB: Final = 0x01  # ConcatenatedEncodedBlob: not XCM
PAGE_SIGNALS: Final = 0x02  # channel Suspend/Resume signals: not XCM
PAGE_OPAQUE: Final = 0x03  # compact(len) ‖ VersionedXcm, repeated

# Where runtimes keep the type: the `xcm` crate, or `staging_xcm` for the releases of late 2023.
_VERSIONED_XCM_PATHS: Final = (("xcm", "VersionedXcm"), ("staging_xcm", "VersionedXcm"))
_ZERO_TOPIC: Final = "0x" + "00" * 32
_FORWARD_ID_DOMAIN: Final = b"forward_id_for"


class XcmDecodeError(OcstreamError):
    """XCM bytes that do not decode as a ``VersionedXcm`` of the runtime."""


class UnknownPageFormat(XcmDecodeError):
    """An XCMP page whose format byte is none of 0x00..0x03."""


def message_hash(data: bytes) -> str:
    """``0x`` hex of blake2-256 over the VersionedXcm bytes: the message hash."""
    return "0x" + blake2_256(data).hex()


def forward_id_for(topic: str) -> str:
    """The id older runtimes report downstream for a forwarded topic (XCM.md §3.4)."""
    return "0x" + blake2_256(_FORWARD_ID_DOMAIN + bytes.fromhex(topic[2:])).hex()


def topic_of(instructions: JsonValue) -> str | None:
    """The topic id of a decoded program ``{"V3": [...]}``: a final ``SetTopic``, else the first."""
    if not isinstance(instructions, dict) or len(instructions) != 1:
        return None
    (program,) = instructions.values()
    if not isinstance(program, list):
        return None
    topics = [item["SetTopic"] for item in program if isinstance(item, dict) and "SetTopic" in item]
    if not topics:
        return None
    last = program[-1]
    chosen = last["SetTopic"] if isinstance(last, dict) and "SetTopic" in last else topics[0]
    if not isinstance(chosen, str) or chosen == _ZERO_TOPIC:
        return None
    return chosen


def cut_upward_messages(entries: Sequence[bytes]) -> list[bytes]:
    """The XCM entries of ``ParachainSystem.UpwardMessages``: everything before the first empty
    entry (newer runtimes append UMP signals after one, and those are not XCM)."""
    kept: list[bytes] = []
    for entry in entries:
        if not entry:
            break
        kept.append(entry)
    return kept


@dataclass(frozen=True, slots=True)
class XcmMessage:
    """One XCM program as bytes, with what identifies it and, when it decoded, its instructions."""

    data: bytes
    hash: str
    version: int | None
    topic: str | None
    instructions: JsonValue = None
    error: str | None = None  # why the bytes did not decode, when they did not
    ids: tuple[str, ...] = field(default=())

    @classmethod
    def of(
        cls, data: bytes, instructions: JsonValue = None, *, error: str | None = None
    ) -> XcmMessage:
        topic = topic_of(instructions) if error is None else None
        digest = message_hash(data)
        ids = (digest,) if topic is None else (digest, topic, forward_id_for(topic))
        version = _version_of(instructions) if error is None else (data[0] if data else None)
        return cls(data, digest, version, topic, instructions, error, ids)

    @property
    def data_hex(self) -> str:
        return "0x" + self.data.hex()

    @property
    def message_id(self) -> str:
        """The id payloads call ``messageId``: the topic, else the hash."""
        return self.topic or self.hash


def _version_of(instructions: JsonValue) -> int | None:
    if isinstance(instructions, dict) and len(instructions) == 1:
        (name,) = instructions.keys()
        if name.startswith("V") and name[1:].isdigit():
            return int(name[1:])
    return None


class XcmCodec:
    """Decodes the XCM of one runtime; build it once per (network, spec version) and keep it."""

    def __init__(self, decoder: RuntimeDecoder) -> None:
        self.network = decoder.network
        self.spec_version = decoder.spec_version
        self.label = decoder.label
        errors = []
        for path in _VERSIONED_XCM_PATHS:
            try:
                self._versioned_xcm = decoder.compile_type(*path)
                break
            except DecodeError as exc:
                errors.append(str(exc))
        else:
            raise XcmDecodeError("; ".join(errors))

    def decode_at(self, data: bytes, offset: int = 0) -> tuple[JsonValue, int]:
        """Decode the program starting at ``offset``; returns it and the offset after it."""
        try:
            value, end = self._versioned_xcm.decode_at(data, offset)
        except Exception as exc:  # cyscale raises anything from ValueError to IndexError
            raise XcmDecodeError(
                f"{self.label}: not a VersionedXcm at byte {offset} of 0x{data[:64].hex()}…: {exc}"
            ) from exc
        if end <= offset or end > len(data):
            raise XcmDecodeError(f"{self.label}: a VersionedXcm decoder overran its input")
        return to_json_value(value), end

    def message(self, data: bytes) -> XcmMessage:
        """One whole VersionedXcm (a UMP entry, a DMP message, a 0x03 fragment).

        Bytes that do not decode, or decode to less than the whole input, still give a message
        (its hash is all a matcher needs) whose ``error`` says why there are no instructions.
        """
        try:
            instructions, end = self.decode_at(data)
        except XcmDecodeError as exc:
            return XcmMessage.of(data, error=str(exc))
        if end != len(data):
            return XcmMessage.of(
                data, error=f"{self.label}: {len(data) - end} bytes left after the VersionedXcm"
            )
        return XcmMessage.of(data, instructions)

    def split_page(self, page: bytes) -> list[XcmMessage]:
        """The programs of one XCMP page (``HrmpOutboundMessages[i].data`` or a backed
        candidate's ``horizontal_messages[i].data``).

        Format 0x00 is split by decoding: a program that does not decode ends the split and raises
        :class:`XcmDecodeError` carrying the programs found before it (``.found``). Formats 0x01 and
        0x02 hold no XCM and give an empty list; any other format raises :class:`UnknownPageFormat`.
        """
        if not page:
            return []
        kind, body = page[0], page[1:]
        if kind == PAGE_CONCATENATED:
            found: list[XcmMessage] = []
            offset = 0
            while offset < len(body):
                try:
                    instructions, end = self.decode_at(body, offset)
                except XcmDecodeError as exc:
                    raise _PartialPage(str(exc), found) from exc
                found.append(XcmMessage.of(body[offset:end], instructions))
                offset = end
            return found
        if kind == PAGE_OPAQUE:
            messages: list[XcmMessage] = []
            offset = 0
            while offset < len(body):
                try:
                    length, start = read_compact(body, offset)
                except Exception as exc:
                    raise _PartialPage(
                        f"{self.label}: bad fragment length: {exc}", messages
                    ) from exc
                if start + length > len(body):
                    raise _PartialPage(f"{self.label}: a fragment overruns its page", messages)
                messages.append(self.message(body[start : start + length]))
                offset = start + length
            return messages
        if kind in (PAGE_BLOB, PAGE_SIGNALS):
            return []
        raise UnknownPageFormat(f"{self.label}: unknown XCMP page format 0x{kind:02x}")

    def split_pages(self, pages: Iterable[bytes]) -> list[XcmMessage]:
        return [message for page in pages for message in self.split_page(page)]


class _PartialPage(XcmDecodeError):
    """A page that could only be split up to a point; ``found`` holds what came before it."""

    def __init__(self, reason: str, found: list[XcmMessage]) -> None:
        super().__init__(reason)
        self.found = found


def partial_messages(error: XcmDecodeError) -> list[XcmMessage]:
    """The programs split off a page before ``error`` stopped the split (empty if none)."""
    return list(error.found) if isinstance(error, _PartialPage) else []


class VersionRoutedCodec(XcmCodec):
    """Decodes each program with the codec registered for its version byte: for XCM whose
    chain's metadata is not at hand (recorded decoded blocks), with a relay runtime per version
    range, e.g. ``{2: v2_to_v4, 3: v3_to_v5, 4: v3_to_v5, 5: v3_to_v5}``."""

    def __init__(self, by_version: dict[int, XcmCodec]) -> None:  # noqa: D107
        first = next(iter(by_version.values()))
        self.network = first.network
        self.spec_version = first.spec_version
        self.label = " / ".join(sorted({codec.label for codec in by_version.values()}))
        self._by_version = dict(by_version)

    def decode_at(self, data: bytes, offset: int = 0) -> tuple[JsonValue, int]:
        if offset >= len(data):
            raise XcmDecodeError(f"{self.label}: no bytes at offset {offset}")
        codec = self._by_version.get(data[offset])
        if codec is None:
            raise XcmDecodeError(f"{self.label}: no codec for XCM version byte {data[offset]}")
        return codec.decode_at(data, offset)
