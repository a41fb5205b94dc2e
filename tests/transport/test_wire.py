from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Callable
from typing import Any, cast

import orjson
import pytest
import redis.asyncio as aioredis
import zstandard
from aiokafka.partitioner import murmur2
from hypothesis import given, settings
from hypothesis import strategies as st

from ocstream.transport import wire
from ocstream.transport.keys import Keyspace, offset_field, parse_offset_field
from ocstream.transport.metrics import METRICS
from ocstream.transport.wire import (
    Record,
    decode_headers,
    encode_headers,
    entry_value,
    fetched_streams,
    id_to_offset,
    partition_for_key,
    read_after_id,
)


def test_offsets_are_sequence_minus_one() -> None:
    assert id_to_offset(b"0-1") == 0
    assert id_to_offset("0-1000") == 999
    # Reading after "0-N" returns seq N+1, i.e. offset N.
    assert read_after_id(0) == "0-0"
    assert read_after_id(41) == "0-41"
    assert id_to_offset("0-42") == 41


@pytest.mark.parametrize("protocol", [2, 3])
async def test_a_fetch_reply_reads_as_redis_py_reads_it(
    redis_url: str, prefix: str, protocol: int
) -> None:
    """The consumer's XREAD callback gives what redis-py's own parse and ``id_to_offset`` gave,
    for a reply of several streams, in either protocol, from a real server (Redis 7 and the
    embedded 6.2); an empty reply is an empty list."""
    raw = aioredis.Redis.from_url(redis_url, protocol=protocol)
    # redis-py's default: RESP3 on the wire, replies in RESP2's shape (what the consumer read).
    parsed = aioredis.Redis.from_url(redis_url)
    raw.set_response_callback("XREAD", lambda response, **kwargs: response)
    streams = {f"{prefix}s{n}": "0-0" for n in range(3)}
    try:
        for n, key in enumerate(streams):
            for seq in range(1, 4 + n):
                fields = {"k": f"key{seq}", "v": os.urandom(seq), "h": b""}
                await raw.xadd(key, fields, id=f"0-{seq}")  # type: ignore[arg-type]
        await raw.xadd(f"{prefix}s2", {"z": b"x"}, id="0-100")
        reply = await raw.xread(streams, count=10)  # type: ignore[arg-type]
        ours = fetched_streams(reply)
        theirs = cast(
            list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]],
            await parsed.xread(streams, count=10),  # type: ignore[arg-type]
        )
        expected = [
            (key, [(id_to_offset(entry_id), fields) for entry_id, fields in entries])
            for key, entries in theirs
        ]
        assert ours == expected
        assert [len(batch) for _, batch in ours] == [3, 4, 6]
        assert ours[2][1][-1] == (99, {b"z": b"x"})
        assert fetched_streams(await raw.xread({f"{prefix}none": "0-0"}, count=10)) == []
    finally:
        await raw.aclose()
        await parsed.aclose()


def test_a_fetch_reply_entry_without_fields_has_an_empty_dict() -> None:
    assert fetched_streams({b"s": [[b"0-5", None]]}) == [(b"s", [(4, {})])]
    assert fetched_streams([[b"s", [[b"0-1", [b"k", b"a"]]]]]) == [(b"s", [(0, {b"k": b"a"})])]


def test_partitioning_matches_kafka_murmur2() -> None:
    for key in (b"", b"a", b"urn:ocn:polkadot:0", bytes(range(256))):
        expected = (murmur2(key) & 0x7FFFFFFF) % 16
        assert partition_for_key(key, 16) == expected
    spread = {partition_for_key(f"user{i}".encode(), 8) for i in range(200)}
    assert spread == set(range(8))


@given(st.binary(max_size=600))
def test_our_murmur2_is_kafkas(data: bytes) -> None:
    """``wire.murmur2`` reads the words with struct; it must give aiokafka's (Kafka's) hash for
    any bytes: every key's partition depends on it, across releases and with faust's routing."""
    assert wire.murmur2(data) == murmur2(data)


def test_keyless_records_spread_and_bad_counts_are_refused() -> None:
    assert {partition_for_key(None, 4) for _ in range(200)} == {0, 1, 2, 3}
    with pytest.raises(ValueError):
        partition_for_key(b"k", 0)


def test_headers_survive_any_bytes() -> None:
    headers = [("trace", bytes(range(256))), ("empty", b"")]
    assert decode_headers(encode_headers(headers)) == headers
    assert decode_headers(None) == []


def test_record_fields_omit_absent_parts() -> None:
    assert Record(None, None, 5).fields() == ["t", 5]
    fields = Record(b"k", b"v", 7, [("h", b"1")]).fields()
    assert fields[:6] == ["t", 7, "k", b"k", "v", b"v"]
    assert fields[6] == "h"
    # In a compacted topic a value goes without its time, a tombstone with it.
    assert Record(b"k", b"v", 7).fields(compacted=True) == ["k", b"k", "v", b"v"]
    assert Record(b"k", None, 7).fields(compacted=True) == ["t", 7, "k", b"k"]


def test_long_values_are_compressed_and_read_back() -> None:
    value = orjson.dumps({"hash": "0x" + "ab" * 32, "events": [{"data": "0x" + "00" * 64}] * 20})
    assert len(value) >= wire.COMPRESS_MIN_BYTES
    fields = Record(b"k", value, 7).fields()
    packed = cast(bytes, fields[5])  # the compressed value
    assert fields[4] == "z" and len(packed) < len(value) / 3
    assert entry_value({b"t": b"7", b"z": packed}) == value
    short = Record(b"k", b"{}", 7).fields()
    assert short[4:] == ["v", b"{}"]
    assert entry_value({b"v": b"{}"}) == b"{}"
    assert entry_value({b"t": b"7", b"k": b"k"}) is None  # a tombstone
    # A damaged compressed value comes back as it is, for the reader's own decoding to refuse.
    assert entry_value({b"t": b"7", b"z": b"not zlib"}) == b"not zlib"
    damaged = wire.ZSTD_MAGIC + b"not zstd"
    assert entry_value({b"t": b"7", b"z": damaged}) == damaged
    assert entry_value({b"t": b"7", b"z": packed[:-4]}) == packed[:-4]  # cut short


@pytest.mark.parametrize("codec", ["zstd-dict", "zstd", "zlib"])
def test_values_of_every_codec_are_read(monkeypatch: pytest.MonkeyPatch, codec: str) -> None:
    """Writers on ``OCSTREAM_TRANSPORT_COMPRESSION=zstd`` or ``zlib`` (rolling upgrades) and on
    the default share topics: the reader tells them apart by the first bytes and the frame's
    dictionary id."""
    monkeypatch.setattr(wire, "COMPRESSION", codec)
    value = orjson.dumps({"instructions": [{"WithdrawAsset": [{"amount": "10" * 40}]}] * 30})
    packed = Record(b"k", value, 7).fields()[5]
    assert isinstance(packed, bytes) and len(packed) < len(value) / 3
    assert packed.startswith(wire.ZSTD_MAGIC) == (codec != "zlib")
    if codec == "zlib":  # what a reader of the older versions takes
        assert zlib.decompress(packed) == value
    if codec == "zstd":  # what a reader of a version without the dictionary takes
        assert zstandard.ZstdDecompressor().decompress(packed) == value
    if codec == "zstd-dict":
        assert zstandard.get_frame_parameters(packed).dict_id == wire.DICT_ID
        with pytest.raises(zstandard.ZstdError, match="Dictionary mismatch"):
            zstandard.ZstdDecompressor().decompress(packed)
    assert entry_value({b"t": b"7", b"z": packed}) == value


def test_the_dictionary_is_shipped_and_makes_records_smaller(
    decoder_for: Callable[[str, str], Any],
) -> None:
    """``records.zdict`` is part of the package (a missing file fails here, not in a worker),
    has the id frames name, and makes a real record smaller than zstd alone does. The record
    is a leg as extraction writes it for a recorded Asset Hub -> Hydration transfer: not the
    route the dictionary was trained on (the e2e benchmark's Asset Hub -> relay journeys)."""
    assert wire.dictionary().dict_id() == wire.DICT_ID
    leg = _recorded_leg(decoder_for)
    assert len(leg) >= wire.COMPRESS_MIN_BYTES
    plain = zstandard.ZstdCompressor(level=wire.COMPRESS_LEVEL).compress(leg)
    with_dictionary = wire.compress(leg)
    assert len(with_dictionary) < 0.8 * len(plain), (len(with_dictionary), len(plain))
    assert wire.decompress(with_dictionary) == leg


def _recorded_leg(decoder_for: Callable[[str, str], Any]) -> bytes:
    from ocstream.testing import blocks_from_case, fixtures_path  # noqa: PLC0415
    from ocstream.xcm.codec import XcmCodec  # noqa: PLC0415
    from ocstream.xcm.extract import extract  # noqa: PLC0415
    from ocstream.xcm.legs import leg_record  # noqa: PLC0415

    # The case's blocks name no metadata: their XCM is decoded with the relay's types.
    codec = XcmCodec(decoder_for("urn:ocn:polkadot:0", "polkadot-1005001.scale"))
    case = fixtures_path() / "cases" / "head-hrmp-assethub-hydra.json"
    for block in blocks_from_case(case):
        for leg in extract(block, codec).legs:
            if leg.kind == "sent":
                return leg_record(leg)
    raise AssertionError(f"no sent leg in {case}")


def test_values_as_long_as_blocks_are_compressed_without_the_dictionary() -> None:
    """The dictionary helps records of a few kilobytes and hurts blocks: past
    ``DICT_MAX_BYTES`` a value's frame names no dictionary, so any zstd reader takes it."""
    long = orjson.dumps([{"extrinsic": i, "data": "0x" + f"{i:08x}" * 50} for i in range(60)])
    short = long[: wire.DICT_MAX_BYTES]
    assert len(long) > wire.DICT_MAX_BYTES
    packed_long, packed_short = (wire.compress(v, "zstd-dict") for v in (long, short))
    assert zstandard.get_frame_parameters(packed_long).dict_id == 0
    assert zstandard.ZstdDecompressor().decompress(packed_long) == long
    assert zstandard.get_frame_parameters(packed_short).dict_id == wire.DICT_ID
    assert wire.decompress(packed_short) == short


def test_a_value_made_with_another_dictionary_is_refused_by_its_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A writer of a later version with another dictionary: the reader names the id it lacks,
    and ``entry_value`` hands the bytes on as they are, for the reader to dead-letter, counts
    them and logs why (the first time, then every 1,000th)."""
    other = zstandard.train_dictionary(
        4096, [orjson.dumps({"n": i, "urn": f"urn:ocn:local:{i}"}) * 8 for i in range(400)],
        dict_id=wire.DICT_ID + 1,
    )  # fmt: skip
    packed = zstandard.ZstdCompressor(dict_data=other).compress(b'{"n": 1}' * 100)
    with pytest.raises(ValueError, match=f"dictionary {wire.DICT_ID + 1}, which this version"):
        wire.decompress(packed)
    before = METRICS.values_undecompressed
    METRICS.values_undecompressed = 0  # the first one is logged
    try:
        with caplog.at_level(logging.WARNING, logger="ocstream.transport.wire"):
            assert entry_value({b"t": b"7", b"z": packed}) == packed
            assert entry_value({b"t": b"7", b"z": packed}) == packed
        assert METRICS.values_undecompressed == 2
    finally:
        METRICS.values_undecompressed += before
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 1 and f"made with dictionary {wire.DICT_ID + 1}" in logged[0], logged


def test_an_unknown_codec_name_is_refused() -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    run = subprocess.run(
        [sys.executable, "-c", "import ocstream.transport.wire"],
        env={**os.environ, "OCSTREAM_TRANSPORT_COMPRESSION": "lz4"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode != 0
    assert "OCSTREAM_TRANSPORT_COMPRESSION: zlib or zstd or zstd-dict, not 'lz4'" in run.stderr


def test_compression_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire, "COMPRESS_MIN_BYTES", 0)
    value = b"x" * 4096
    assert Record(None, value, 1).fields() == ["t", 1, "v", value]


def test_key_layout_and_offset_fields() -> None:
    keys = Keyspace("x:")
    assert keys.stream("blocks", 3) == "x:t:blocks:3"
    assert keys.sequence("blocks", 3) == "x:o:blocks:3"
    assert keys.group("g").offsets == "x:g:g:offsets"
    assert keys.group("g").assignment(7) == "x:g:g:assign:7"
    assert offset_field("a:b", 12) == "a:b\x1f12"
    # ... and read back, from str or bytes; what is not such a field is None.
    assert parse_offset_field(offset_field("a:b", 12)) == ("a:b", 12)
    assert parse_offset_field(offset_field("x-changelog", 0).encode()) == ("x-changelog", 0)
    for other in ("a:b", "a:b\x1f", "\x1f3", "a\x1fb", "a\x1f-1"):
        assert parse_offset_field(other) is None, other


@settings(max_examples=200)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
        lambda children: (
            st.lists(children) | st.dictionaries(st.text() | st.integers(-1000, 1000), children)
        ),
        max_leaves=20,
    )
)
def test_json_values_are_what_fausts_json_serializer_writes(value: Any) -> None:
    """``json_value`` (how the matcher writes its records and table values) gives faust's
    ``json`` serializer's bytes, for string keys (plain orjson) and others (the fallback)."""
    from faust.serializers import codecs

    from ocstream.transport.wire import json_value

    assert json_value(value) == codecs.get_codec("json").dumps(value)
