from __future__ import annotations

import os
import zlib

import orjson
import pytest
from aiokafka.partitioner import murmur2
from hypothesis import given
from hypothesis import strategies as st

from ocstream.transport import wire
from ocstream.transport.keys import Keyspace, offset_field
from ocstream.transport.wire import (
    Record,
    decode_headers,
    encode_headers,
    entry_value,
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


def test_long_values_are_compressed_and_read_back() -> None:
    value = orjson.dumps({"hash": "0x" + "ab" * 32, "events": [{"data": "0x" + "00" * 64}] * 20})
    assert len(value) >= wire.COMPRESS_MIN_BYTES
    fields = Record(b"k", value, 7).fields()
    assert fields[4] == "z" and len(fields[5]) < len(value) / 3
    assert entry_value({b"t": b"7", b"z": fields[5]}) == value
    short = Record(b"k", b"{}", 7).fields()
    assert short[4:] == ["v", b"{}"]
    assert entry_value({b"v": b"{}"}) == b"{}"
    assert entry_value({b"t": b"7", b"k": b"k"}) is None  # a tombstone
    # A damaged compressed value comes back as it is, for the reader's own decoding to refuse.
    assert entry_value({b"t": b"7", b"z": b"not zlib"}) == b"not zlib"
    damaged = wire.ZSTD_MAGIC + b"not zstd"
    assert entry_value({b"t": b"7", b"z": damaged}) == damaged
    assert entry_value({b"t": b"7", b"z": fields[5][:-4]}) == fields[5][:-4]  # cut short


@pytest.mark.parametrize("codec", ["zstd", "zlib"])
def test_values_of_either_codec_are_read(monkeypatch: pytest.MonkeyPatch, codec: str) -> None:
    """Writers on ``OCSTREAM_TRANSPORT_COMPRESSION=zlib`` (a rolling upgrade) and on the default
    share topics: the reader tells the two by the first bytes."""
    monkeypatch.setattr(wire, "COMPRESSION", codec)
    value = orjson.dumps({"instructions": [{"WithdrawAsset": [{"amount": "10" * 40}]}] * 30})
    packed = Record(b"k", value, 7).fields()[5]
    assert isinstance(packed, bytes) and len(packed) < len(value) / 3
    assert packed.startswith(wire.ZSTD_MAGIC) == (codec == "zstd")
    if codec == "zlib":  # what a reader of the older versions takes
        assert zlib.decompress(packed) == value
    assert entry_value({b"t": b"7", b"z": packed}) == value


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
    assert "OCSTREAM_TRANSPORT_COMPRESSION: zlib or zstd, not 'lz4'" in run.stderr


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
