"""The record format inside a partition stream, and key -> partition hashing.

Each stream entry is one record with these fields (all optional but ``t``):

* ``t``: timestamp in milliseconds since the epoch;
* ``k``: the key bytes;
* ``v``: the value bytes, or ``z``: the value compressed, as a zstd frame or a zlib stream
  (values of at least :data:`COMPRESS_MIN_BYTES`; neither field: a tombstone, a deletion in a
  compacted changelog);
* ``h``: headers, a JSON list of ``[name, value]`` pairs, values latin-1 decoded so any bytes
  survive the round trip.

Every writer goes through :meth:`Record.fields` and every reader through :func:`entry_value`,
so whether a value was compressed is the wire's business alone. The records ocstream writes are
JSON full of hex strings and of the same field names (blocks, legs, notifications, journeys).
zstd at level 1 makes them about 3 times smaller, which cuts what Redis receives, copies to
replicas and keeps in memory by as much (``docs/capacity.md``). Records of a few kilobytes share
most of their text with each other (field names, network URNs, XCM instruction names), which
a frame of its own cannot use, so by default values are compressed with a zstd dictionary
trained on such records (``records.zdict``, id :data:`DICT_ID`; ``scripts/zstd_dictionary.py``
made it): legs, journeys and notifications come out 1.7 times smaller again than without it,
in less time (``docs/transport.md``, "Compressed values").

A reader tells the codecs apart from the first bytes: a zstd frame starts with its magic number,
``28 b5 2f fd``, which is never a zlib header, and its header names the dictionary it needs (0:
none). Every reader takes all three; ``OCSTREAM_TRANSPORT_COMPRESSION`` says what a process
writes: ``zstd-dict`` (the default), ``zstd`` (no dictionary: for a rolling upgrade from a
version without the dictionary) or ``zlib`` (from a version that reads only zlib). zlib at level
1 compresses as well as zstd without a dictionary but takes three times as long.

Keys are hashed with Kafka's murmur2 so that faust's table routing (``/router/``,
``key_store``) and copartitioning behave exactly as they do on Kafka.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import struct
import threading
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import zstandard

from ..envvars import env_choice, env_count
from .metrics import METRICS

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]

#: One stream entry as a fetch returns it: ``(offset, {field: value})``.
FetchedRecord = tuple[int, dict[bytes, bytes]]

#: Values this long or longer are written compressed (field ``z``); 0 writes every value as is.
#: ``OCSTREAM_TRANSPORT_COMPRESS_MIN_BYTES`` sets it per process; readers take either field.
COMPRESS_MIN_BYTES = env_count(os.environ, "OCSTREAM_TRANSPORT_COMPRESS_MIN_BYTES", 512)

#: ``zstd-dict`` (the default), ``zstd`` or ``zlib``: how values are compressed
#: (``OCSTREAM_TRANSPORT_COMPRESSION``). Readers take all three, whatever this says.
COMPRESSION = env_choice(
    os.environ, "OCSTREAM_TRANSPORT_COMPRESSION", ("zstd-dict", "zstd", "zlib"), "zstd-dict"
)

#: The fastest levels of both: most of the gain, a fraction of the higher levels' time.
COMPRESS_LEVEL = 1

#: The id of the dictionary in ``records.zdict`` (zstd keeps ids below 32768 for a registry).
DICT_ID = 0x6F630001

#: Values longer than this are compressed without the dictionary, whatever
#: :data:`COMPRESSION` says. The dictionary holds what records of a few kilobytes share; a
#: block (25-500 kB of its own extrinsics and events) came out 8 % larger with it, and slower
#: (0.320 of its size against 0.297, 222 against 171 µs for 100 kB: ``docs/transport.md``).
DICT_MAX_BYTES = 16_384

#: How a zstd frame begins (RFC 8878); a zlib stream begins with 0x?8 (deflate, CMF byte).
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@functools.cache
def dictionary() -> zstandard.ZstdCompressionDict:
    """The shipped dictionary (``records.zdict``; ``scripts/zstd_dictionary.py`` made it),
    read and prepared on first use."""
    data = (Path(__file__).parent / "records.zdict").read_bytes()
    loaded = zstandard.ZstdCompressionDict(data, dict_type=zstandard.DICT_TYPE_FULLDICT)
    if loaded.dict_id() != DICT_ID:
        raise RuntimeError(f"records.zdict has id {loaded.dict_id()}, not {DICT_ID}")
    loaded.precompute_compress(level=COMPRESS_LEVEL)
    return loaded


# zstd contexts are reused (creating one per value costs a third more) and are not safe to
# share between threads: one set per thread.
_contexts = threading.local()
_Context = TypeVar("_Context", zstandard.ZstdCompressor, zstandard.ZstdDecompressor)


def _compressor(codec: str) -> zstandard.ZstdCompressor:
    """The thread's compressor for ``codec``: ``zstd-dict`` or ``zstd``."""
    try:
        return _contexts.compressors[codec]  # type: ignore[no-any-return]
    except (AttributeError, KeyError):
        pass
    if codec == "zstd-dict":
        made = zstandard.ZstdCompressor(level=COMPRESS_LEVEL, dict_data=dictionary())
    else:
        made = zstandard.ZstdCompressor(level=COMPRESS_LEVEL)
    return _kept("compressors", codec, made)


def _decompressor(dict_id: int) -> zstandard.ZstdDecompressor:
    """The thread's decompressor for frames made with dictionary ``dict_id`` (0: none)."""
    try:
        return _contexts.decompressors[dict_id]  # type: ignore[no-any-return]
    except (AttributeError, KeyError):
        pass
    if dict_id == 0:
        made = zstandard.ZstdDecompressor()
    elif dict_id == DICT_ID:
        made = zstandard.ZstdDecompressor(dict_data=dictionary())
    else:
        raise ValueError(
            f"a zstd value made with dictionary {dict_id}, which this version does not have "
            f"(it has {DICT_ID})"
        )
    return _kept("decompressors", dict_id, made)


def _kept(kind: str, key: Any, context: _Context) -> _Context:
    """``context`` kept as this thread's ``kind`` for ``key`` (zstd contexts are not shared
    between threads), for the lookups above to find next time."""
    cache: dict[Any, Any] = _contexts.__dict__.setdefault(kind, {})
    cache[key] = context
    return context


def compress(value: bytes, codec: str | None = None) -> bytes:
    """``value`` as the ``z`` field holds it, in ``codec`` (default: this process's
    :data:`COMPRESSION`; values longer than :data:`DICT_MAX_BYTES` without the dictionary)."""
    if codec is None:
        codec = COMPRESSION
    if codec == "zlib":
        return zlib.compress(value, COMPRESS_LEVEL)
    if codec == "zstd-dict" and len(value) > DICT_MAX_BYTES:
        return _compressor("zstd").compress(value)
    return _compressor(codec).compress(value)


def decompress(packed: bytes) -> bytes:
    """A ``z`` field's value, zstd (with or without the dictionary) or zlib; ``ValueError``
    when it is none of them."""
    try:
        if packed[:4] == ZSTD_MAGIC:
            dict_id = zstandard.get_frame_parameters(packed).dict_id
            return _decompressor(dict_id).decompress(packed)
        return zlib.decompress(packed)
    except (zstandard.ZstdError, zlib.error) as exc:
        raise ValueError(f"not a zstd or zlib value: {exc}") from exc


@dataclass(slots=True)
class Record:
    """One record to append to a partition (the producer side)."""

    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: Headers = field(default_factory=tuple)

    def fields(self, *, compacted: bool = False) -> list[bytes | str | int]:
        """Flatten to the ``name, value, name, value`` list that XADD takes.

        ``compacted``: the record goes to a compacted topic (a table's changelog). There a
        record with a value leaves its time (``t``) out: nothing reads it. Compacted topics
        are not trimmed by age, standbys and recovery take keys and values only, and the
        newest value of every key stays in Redis for as long as the key lives, so the field
        was about 27 bytes sent and 15 kept per table write. A tombstone keeps it:
        ``tombstone_retention`` is a least age counted from it."""
        out: list[bytes | str | int] = (
            [] if compacted and self.value is not None else ["t", self.timestamp_ms]
        )
        if self.key is not None:
            out += ["k", self.key]
        if self.value is not None:
            if COMPRESS_MIN_BYTES and len(self.value) >= COMPRESS_MIN_BYTES:
                out += ["z", compress(self.value)]
            else:
                out += ["v", self.value]
        if self.headers:
            out += ["h", encode_headers(self.headers)]
        return out


def entry_value(fields: Mapping[bytes, bytes]) -> bytes | None:
    """The value of a stream entry's fields (``v``, or ``z`` decompressed); None: a tombstone.

    A ``z`` that does not decompress (a foreign writer, a damaged entry) is returned as it is,
    so the reader meets it the way it meets any other value it cannot decode (the XCM
    dataflow dead-letters it) instead of failing in the consumer, which would stop the
    partition."""
    value = fields.get(b"v")
    if value is None:
        packed = fields.get(b"z")
        if packed is not None:
            try:
                return decompress(packed)
            except ValueError as exc:
                _undecompressed(exc)
                return packed
    return value


def _undecompressed(error: ValueError) -> None:
    """Count a value that did not decompress (``ocstream_transport_values_undecompressed_total``)
    and say why in the log: the first time, then every 1,000th. The reader's own error (a dead
    letter: "not JSON") cannot tell a damaged value from one made with a dictionary this version
    does not have, as after a downgrade; this line can."""
    METRICS.values_undecompressed += 1
    count = METRICS.values_undecompressed
    if count == 1 or count % 1000 == 0:
        log.warning("a compressed value did not decompress (%d so far), handed on as it is: %s",
                    count, error)  # fmt: skip


def json_value(value: Any) -> bytes:
    """``value`` as faust's ``json`` serializer writes it (orjson, keys that are not strings
    allowed), at plain orjson's speed when every key is a string: allowing other keys makes
    orjson check each one, which doubled the time of a 4 kB XCM notification."""
    try:
        return orjson.dumps(value)
    except TypeError:  # a key that is not a string (or what orjson cannot write at all)
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def header_items(headers: Headers | Mapping[str, bytes] | None) -> Iterable[tuple[str, bytes]]:
    """``(name, value)`` of a record's headers, given as pairs or as a mapping (faust hands
    either over), or none."""
    if not headers:
        return ()
    return headers.items() if isinstance(headers, Mapping) else headers


def encode_headers(headers: Headers | Mapping[str, bytes]) -> bytes:
    items = header_items(headers)
    return orjson.dumps([[name, bytes(value).decode("latin-1")] for name, value in items])


def decode_headers(raw: bytes | None) -> list[tuple[str, bytes]]:
    if not raw:
        return []
    return [(name, value.encode("latin-1")) for name, value in orjson.loads(raw)]


def id_to_offset(entry_id: bytes | str) -> int:
    """``0-<seq>`` -> ``seq - 1``."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[2]) - 1


def fetched_streams(response: Any, **kwargs: Any) -> list[tuple[bytes, list[FetchedRecord]]]:
    """An XREAD reply as ``[(stream key, [(offset, {field: value}), ...]), ...]``: the fetch
    client's response callback, in place of redis-py's.

    redis-py turns a RESP3 reply (a map of streams) into RESP2's shape through
    ``parse_stream_list`` and ``pairs_to_dict``, and the consumer then parsed each entry id
    again (:func:`id_to_offset`). One pass here does both: a fetch of 300 records costs 1.3
    against 1.6 µs of client CPU a record (``python benchmarks/redis_client.py``), for every
    record a worker fetches, its standby records included. A RESP2 reply (a list of
    ``[key, entries]``) is read the same way; an entry without fields (which only
    XREADGROUP's pending list gives) has an empty dict, as with redis-py. The offset is
    :func:`id_to_offset`'s, written out for bytes: calling it (it also takes text) costs 0.08
    µs a record more, a third or so of what the callback saves."""
    if not response:
        return []
    streams = response.items() if isinstance(response, dict) else response
    return [
        (
            key,
            [
                (int(entry_id.partition(b"-")[2]) - 1, dict(zip(it := iter(fields or ()), it)))  # noqa: B905
                for entry_id, fields in entries
            ],
        )
        for key, entries in streams
    ]


def read_after_id(offset: int) -> str:
    """The XREAD id that makes the next entry returned the one at ``offset``.

    XREAD returns entries strictly after the id given; offset N is ``0-(N+1)``, so we pass ``0-N``.
    """
    return f"0-{max(offset, 0)}"


_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_WORDS = [struct.Struct(f"<{n}I") for n in range(64)]


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), as aiokafka's
    ``murmur2`` computes it, with the 4-byte words read by ``struct`` in one call instead of
    byte by byte: 6.5 against 2.3 µs for a 32-byte key such as a journey id, which every
    notification is sent by (``tests/transport/test_wire.py`` compares the two on any bytes)."""
    length = len(data)
    h = 0x9747B28C ^ length
    count = length >> 2
    if count:
        words = _WORDS[count] if count < 64 else struct.Struct(f"<{count}I")
        for k in words.unpack_from(data):
            k = (k * _M) & _MASK
            k ^= k >> 24
            h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    tail = length & 3
    if tail:
        end = length & ~3
        if tail == 3:
            h ^= data[end + 2] << 16
        if tail >= 2:
            h ^= data[end + 1] << 8
        h = ((h ^ data[end]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def partition_for_key(key: bytes | None, partitions: int) -> int:
    if partitions <= 0:
        raise ValueError(f"a topic has at least one partition, not {partitions}")
    if key is None:
        # Kafka spreads keyless records; so do we.
        return random.randrange(partitions)
    return _keyed_partition(key, partitions)


@functools.lru_cache(maxsize=65_536)
def _keyed_partition(key: bytes, partitions: int) -> int:
    """Remembered for the keys sent again and again: the chains that the matcher's records
    for other partitions are keyed by, a journey's three notifications (about 2 µs each in
    pure Python otherwise)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def to_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"record keys and values are bytes or str, not {type(value).__name__}")
