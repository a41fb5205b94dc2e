"""The record format inside a partition stream, and key -> partition hashing.

Each stream entry is one record with these fields (all optional but ``t``):

* ``t``: timestamp in milliseconds since the epoch;
* ``k``: the key bytes;
* ``v``: the value bytes, or ``z``: the value compressed with zlib (values of at least
  :data:`COMPRESS_MIN_BYTES`; neither field: a tombstone, a deletion in a compacted changelog);
* ``h``: headers, a JSON list of ``[name, value]`` pairs, values latin-1 decoded so any bytes
  survive the round trip.

Every writer goes through :meth:`Record.fields` and every reader through :func:`entry_value`,
so whether a value was compressed is the wire's business alone. The records ocstream writes are
JSON full of hex strings (blocks, legs, notifications, journeys): zlib at level 1 makes them
3-4 times smaller for about 10 µs per kB, which cuts what Redis receives, copies to replicas
and keeps in memory by as much (``docs/capacity.md``).

Keys are hashed with Kafka's murmur2 so that faust's table routing (``/router/``,
``key_store``) and copartitioning behave exactly as they do on Kafka.
"""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka.partitioner import murmur2

Headers = Sequence[tuple[str, bytes]]

#: Values this long or longer are written compressed (field ``z``); 0 writes every value as is.
#: ``OCSTREAM_TRANSPORT_COMPRESS_MIN_BYTES`` sets it per process; readers take either field.
COMPRESS_MIN_BYTES = int(os.environ.get("OCSTREAM_TRANSPORT_COMPRESS_MIN_BYTES", "512"))

#: zlib's fastest level: most of the gain, a third of level 6's time on these records.
COMPRESS_LEVEL = 1


@dataclass(slots=True)
class Record:
    """One record to append to a partition (the producer side)."""

    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: Headers = field(default_factory=tuple)

    def fields(self) -> list[bytes | str | int]:
        """Flatten to the ``name, value, name, value`` list that XADD takes."""
        out: list[bytes | str | int] = ["t", self.timestamp_ms]
        if self.key is not None:
            out += ["k", self.key]
        if self.value is not None:
            if COMPRESS_MIN_BYTES and len(self.value) >= COMPRESS_MIN_BYTES:
                out += ["z", zlib.compress(self.value, COMPRESS_LEVEL)]
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
                return zlib.decompress(packed)
            except zlib.error:
                return packed
    return value


def encode_headers(headers: Headers | Mapping[str, bytes]) -> bytes:
    items: Iterable[tuple[str, bytes]] = (
        headers.items() if isinstance(headers, Mapping) else headers
    )
    return orjson.dumps([[name, bytes(value).decode("latin-1")] for name, value in items])


def decode_headers(raw: bytes | None) -> list[tuple[str, bytes]]:
    if not raw:
        return []
    return [(name, value.encode("latin-1")) for name, value in orjson.loads(raw)]


def id_to_offset(entry_id: bytes | str) -> int:
    """``0-<seq>`` -> ``seq - 1``."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[2]) - 1


def read_after_id(offset: int) -> str:
    """The XREAD id that makes the next entry returned the one at ``offset``.

    XREAD returns entries strictly after the id given; offset N is ``0-(N+1)``, so we pass ``0-N``.
    """
    return f"0-{max(offset, 0)}"


def partition_for_key(key: bytes | None, partitions: int) -> int:
    if partitions <= 0:
        raise ValueError(f"a topic has at least one partition, not {partitions}")
    if key is None:
        # Kafka spreads keyless records; so do we.
        return random.randrange(partitions)
    return int((murmur2(key) & 0x7FFFFFFF) % partitions)


def to_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"record keys and values are bytes or str, not {type(value).__name__}")
