"""The XCM codec against real messages: the golden set, the case manifests, pages and UMP lists."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ocstream.ingress.decode import RuntimeDecoder
from ocstream.ingress.follower import encode_compact
from ocstream.xcm.codec import (
    UnknownPageFormat,
    XcmCodec,
    XcmDecodeError,
    cut_upward_messages,
    forward_id_for,
    message_hash,
    partial_messages,
    topic_of,
)

# The golden messages were decoded by polkadot-api; a runtime that knows V3..V5 decodes them all.
GOLDEN_METADATA = "polkadot-1005001.scale"


@pytest.fixture(scope="module")
def relay_codec(decoder_for: Callable[[str, str], RuntimeDecoder]) -> XcmCodec:
    return XcmCodec(decoder_for("urn:ocn:polkadot:0", GOLDEN_METADATA))


def papi_form(value: Any, *, in_enum: bool = False) -> Any:
    """Our decoded value in polkadot-api's shape, to compare with the golden instructions.

    Enums ``{"Name": inner}`` / ``"Name"`` become ``{"type", "value"}``; numbers become decimal
    strings (papi writes u64/u128 as strings, u8/u32 as numbers, so both sides are turned into
    strings); absent options (``None`` fields) are dropped, as papi omits them; a one-element
    junction array (``X1([j])`` in V4/V5) becomes its element, as papi shows it.
    """
    if isinstance(value, dict):
        if len(value) == 1:
            ((name, inner),) = value.items()
            if name[:1].isupper():
                if name == "X1" and isinstance(inner, list) and len(inner) == 1:
                    inner = inner[0]
                return {"type": name, "value": papi_form(inner)}
        if value.keys() == {"encoded"}:  # DoubleEncoded<Call>: papi shows the bytes alone
            return value["encoded"]
        return {k: papi_form(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [papi_form(item) for item in value]
    if isinstance(value, str) and value[:1].isupper() and value.isidentifier():
        return {"type": value}
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    return value


def golden_form(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: golden_form(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [golden_form(item) for item in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.isdigit():
        return value
    return value


def golden_lines(fixtures_dir: Path) -> list[dict[str, Any]]:
    path = fixtures_dir / "xcm-golden" / "messages.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_every_golden_message_decodes_to_its_record(
    fixtures_dir: Path, relay_codec: XcmCodec
) -> None:
    lines = golden_lines(fixtures_dir)
    assert len(lines) == 19
    checked = 0
    for line in lines:
        data = bytes.fromhex(line["messageData"][2:])
        message = relay_codec.message(data)
        assert message.hash == line["messageHash"] == message_hash(data)
        if line["version"] is None:  # the Snowbridge payload: not a VersionedXcm
            assert message.error is not None
            continue
        assert message.error is None, message.error
        assert message.version == line["version"]
        assert message.topic == line["messageId"]
        assert message.data == data
        (program,) = message.instructions.values()  # type: ignore[union-attr]
        assert papi_form(program) == golden_form(line["instructions"]), line["messageHash"]
        checked += 1
    assert checked == 18


def test_the_example_message_of_the_domain_reference(
    decoder_for: Callable[[str, str], RuntimeDecoder],
) -> None:
    codec = XcmCodec(decoder_for("urn:ocn:polkadot:1000", "assethub-9430.scale"))
    data = bytes.fromhex(
        "0310010400010300a10f043205011f00034cb0a37d0a1300010300a10f043205011f00034cb0a37d000d"
        "010204000101008e7f870a8cac3fa165c8531a304fcc59c7e29aec176fb03f630ceeea397b1368"
    )
    message = codec.message(data)
    assert message.hash == "0x19f82753eb9718974dd2d6dfc5e3b238625d012c1a8de5e3347f56079f143867"
    assert message.version == 3 and message.topic is None
    assert message.ids == (message.hash,)
    instructions: Any = message.instructions  # JSON: indexed by the shape of this message
    program = instructions["V3"]
    assert [next(iter(i)) if isinstance(i, dict) else i for i in program] == [
        "ReserveAssetDeposited",
        "ClearOrigin",
        "BuyExecution",
        "DepositAsset",
    ]
    assert program[0]["ReserveAssetDeposited"][0]["fun"] == {"Fungible": 2107879500}


def case_messages(fixtures_dir: Path) -> list[tuple[str, dict[str, Any], str]]:
    found = []
    for path in sorted((fixtures_dir / "cases").glob("*.json")):
        case = json.loads(path.read_text())
        metadata = case.get("xcm_metadata")
        for message in case.get("messages", []):
            if message.get("data") and message.get("version"):
                found.append((path.stem, message, metadata))
    return found


def metadata_for(case: str, metadata: Any, chain: str) -> str:
    if isinstance(metadata, str):
        return metadata.rsplit("/", 1)[-1]
    if isinstance(metadata, dict):
        for key in (chain, "default", "*"):
            if key in metadata:
                return str(metadata[key]).rsplit("/", 1)[-1]
    return GOLDEN_METADATA


def test_every_case_message_decodes_to_its_hash_version_topic_and_instructions(
    fixtures_dir: Path, decoder_for: Callable[[str, str], RuntimeDecoder]
) -> None:
    messages = case_messages(fixtures_dir)
    assert len(messages) >= 20
    for case, message, _metadata in messages:
        codec = XcmCodec(decoder_for("urn:ocn:polkadot:0", GOLDEN_METADATA))
        if message["version"] < 3:
            codec = XcmCodec(decoder_for("urn:ocn:polkadot:0", "polkadot-1003003.scale"))
        decoded = codec.message(bytes.fromhex(message["data"][2:]))
        label = f"{case}/{message['label']}"
        assert decoded.error is None, (label, decoded.error)
        assert decoded.hash == message["hash"], label
        assert decoded.version == message["version"], label
        assert decoded.topic == message["topic"], label
        instructions: Any = decoded.instructions  # JSON: one version, its program
        (program,) = instructions.values()
        names = [next(iter(i)) if isinstance(i, dict) else i for i in program]
        assert names == message["instructions"], label


def test_a_concatenated_page_splits_by_decoding(relay_codec: XcmCodec) -> None:
    # Hydration #4624161's page to Asset Hub: two V3 programs of 75 and 73 bytes, back to back.
    page = bytes.fromhex(
        "0003100004000002043205011f0007f1d9052a010a13000002043205011f0002093d00000d0102040001"
        "010081bd2c1d40052682633fb3e67eff151b535284d1d1a9633613af14006656f42b03100004000002"
        "043205011f00022d31010a13000002043205011f00022d3101000d01020400010100080748a58000f274"
        "f8847e151f3c47f83aaaf2cb12835f42317de6548dcdfc34"
    )
    messages = relay_codec.split_page(page)
    assert [m.hash[:10] for m in messages] == ["0x03f0f87c", "0x6e390d86"]
    assert [len(m.data) for m in messages] == [75, 73]
    assert b"".join(message.data for message in messages) == page[1:]
    # The same programs as an opaque (0x03) page: each fragment carries its length.
    opaque = b"\x03" + b"".join(encode_compact(len(m.data)) + m.data for m in messages)
    assert [m.hash for m in relay_codec.split_page(opaque)] == [m.hash for m in messages]
    # A single-fragment page hashes as page[1:].
    single = b"\x00" + messages[0].data
    assert relay_codec.split_page(single)[0].hash == message_hash(single[1:])


def test_pages_that_hold_no_xcm_or_cannot_be_read(relay_codec: XcmCodec) -> None:
    assert relay_codec.split_page(b"\x01\x02\x03") == []
    assert relay_codec.split_page(b"\x02\x00") == []
    assert relay_codec.split_page(b"") == []
    with pytest.raises(UnknownPageFormat, match="0x07"):
        relay_codec.split_page(b"\x07abc")
    good = relay_codec.message(
        bytes.fromhex(
            "03100004000002043205011f0007f1d9052a010a13000002043205011f0002093d00000d010204000101"
            "0081bd2c1d40052682633fb3e67eff151b535284d1d1a9633613af14006656f42b"
        )
    )
    assert good.error is None
    # A decodable program followed by garbage: the first is kept, the error says where it broke.
    with pytest.raises(XcmDecodeError) as caught:
        relay_codec.split_page(b"\x00" + good.data + b"\xff\xff\xff")
    found = partial_messages(caught.value)
    assert [m.hash for m in found] == [good.hash]
    assert "byte" in str(caught.value)
    broken = relay_codec.message(b"\x03\xff\xff")
    assert broken.error is not None and broken.instructions is None
    assert broken.hash == message_hash(b"\x03\xff\xff")


def test_upward_messages_are_cut_at_the_first_empty_entry() -> None:
    assert cut_upward_messages([b"\x05a", b"", b"\x01signal"]) == [b"\x05a"]
    assert cut_upward_messages([b"\x03a", b"\x03b"]) == [b"\x03a", b"\x03b"]
    assert cut_upward_messages([b""]) == []


def test_topic_rules() -> None:
    t1, t2 = "0x" + "11" * 32, "0x" + "22" * 32
    assert topic_of({"V4": [{"SetTopic": t1}, "ClearOrigin", {"SetTopic": t2}]}) == t2
    assert topic_of({"V4": [{"SetTopic": t1}, "ClearOrigin"]}) == t1
    assert topic_of({"V4": ["ClearOrigin"]}) is None
    assert topic_of({"V4": [{"SetTopic": "0x" + "00" * 32}]}) is None
    assert topic_of({"V2": ["ClearOrigin"]}) is None
    assert topic_of(None) is None


def test_forward_id_vector() -> None:
    topic = "0x5c082b4750ee8c34986eb22ce6e345bad2360f3682cda3e99de94b0d9970cb3e"
    expected = "0xb3ae32fd2e2f798e8215865a8950d19df8330843608d4ee44e9f86849029724a"
    assert forward_id_for(topic) == expected
