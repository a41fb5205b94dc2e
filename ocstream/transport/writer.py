"""Appending records to topics: the one write path every writer uses, faust or not.

``TopicWriter`` is the producer helper for code outside faust (the ingress, tools, tests). It
writes the same wire format as the faust producer and allocates offsets with the same Lua
script, so offsets stay dense whoever writes::

    async with TopicWriter.from_url("redis://127.0.0.1:6379/0") as writer:
        offset = await writer.send("blocks", key=b"urn:ocn:polkadot:0", value=payload)
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from types import TracebackType

from redis.asyncio import Redis

from . import scripts
from .client import connect
from .keys import DEFAULT_PREFIX, Keyspace
from .wire import Headers, Record, partition_for_key, to_bytes


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class TopicError(Exception):
    """A topic cannot be written as asked (for example a partition it does not have)."""


class TopicMetadata:
    """Partition counts of topics, cached from the ``topics`` hash."""

    def __init__(self, client: Redis, keys: Keyspace) -> None:
        self.client = client
        self.keys = keys
        self.partitions: dict[str, int] = {}

    async def refresh(self) -> dict[str, int]:
        raw = await self.client.hgetall(self.keys.topics)
        self.partitions = {_text(name): int(count) for name, count in raw.items()}
        return self.partitions

    async def create(self, topic: str, partitions: int) -> int:
        """Declare ``topic``; an existing topic keeps its partition count, which is returned."""
        if partitions < 1:
            raise TopicError(f"topic {topic!r}: a topic has at least one partition")
        await self.client.hsetnx(self.keys.topics, topic, partitions)
        count = int(await self.client.hget(self.keys.topics, topic) or partitions)
        self.partitions[topic] = count
        return count

    async def get(self, topic: str, *, create_with: int | None = None) -> int | None:
        count = self.partitions.get(topic)
        if count is None:
            raw = await self.client.hget(self.keys.topics, topic)
            if raw is not None:
                count = self.partitions[topic] = int(raw)
            elif create_with is not None:
                # Like Kafka's auto.create.topics.enable: the first write creates the topic.
                count = await self.create(topic, create_with)
        return count


def _append_call(
    keys: Keyspace, topic: str, partition: int, records: Sequence[Record], compact: bool
) -> scripts.ScriptCall:
    args: list[bytes | str | int] = ["1" if compact else "0"]
    for record in records:
        fields = record.fields(compacted=compact)
        args.append(len(fields))
        args.extend(fields)
    return (
        scripts.append,
        keys.append_keys(topic, partition),
        args,
    )


async def append_records(
    client: Redis,
    keys: Keyspace,
    batch: Sequence[tuple[str, int, Record]],
    compacted: Collection[str] = (),
) -> list[int | BaseException]:
    """Append ``(topic, partition, record)`` items in one round trip.

    Records of the same partition keep their order and go in one script call. The calls go in
    one transaction: Redis writes all of them or none (``scripts.run_pipelined``), so a round
    trip cut short or refused half way never leaves some partitions written. Returns, for each
    item, its offset or the exception that the write of its partition raised.
    """
    groups: dict[tuple[str, int], list[int]] = defaultdict(list)
    for index, (topic, partition, _) in enumerate(batch):
        groups[(topic, partition)].append(index)
    order = list(groups.items())
    calls = [
        _append_call(keys, topic, partition, [batch[i][2] for i in indexes], topic in compacted)
        for (topic, partition), indexes in order
    ]
    replies = await scripts.run_pipelined(client, calls, atomic=True)
    out: list[int | BaseException] = [0] * len(batch)
    for ((_, _), indexes), reply in zip(order, replies, strict=True):
        if isinstance(reply, BaseException):
            for i in indexes:
                out[i] = reply
            continue
        first_seq = int(reply[0])
        for n, i in enumerate(indexes):
            out[i] = first_seq - 1 + n  # offset = seq - 1
    return out


class TopicWriter:
    """Producer helper for writers outside faust (see the module docstring)."""

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        default_partitions: int = 8,
        owns_client: bool = False,
    ) -> None:
        self.client = client
        self.keys = Keyspace(prefix)
        self.topics = TopicMetadata(client, self.keys)
        self.default_partitions = default_partitions
        self._owns_client = owns_client

    @classmethod
    def from_url(cls, url: str, **kwargs: int | str) -> TopicWriter:
        return cls(connect(url, name="ocstream-writer"), owns_client=True, **kwargs)  # type: ignore[arg-type]

    async def __aenter__(self) -> TopicWriter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    async def create_topic(self, topic: str, partitions: int) -> int:
        return await self.topics.create(topic, partitions)

    async def partition_for(self, topic: str, key: bytes | None, partition: int | None) -> int:
        count = await self.topics.get(topic, create_with=self.default_partitions)
        assert count is not None  # create_with guarantees a count
        if partition is None:
            return partition_for_key(key, count)
        if not 0 <= partition < count:
            raise TopicError(f"topic {topic!r} has {count} partitions; there is no {partition}")
        return partition

    async def send(
        self,
        topic: str,
        *,
        key: bytes | str | None = None,
        value: bytes | str | None = None,
        partition: int | None = None,
        headers: Headers = (),
        timestamp: float | None = None,
    ) -> int:
        """Append one record; returns its offset."""
        [offset] = await self.send_many(
            topic, [(key, value)], partition=partition, headers=headers, timestamp=timestamp
        )
        return offset

    async def send_many(
        self,
        topic: str,
        items: Iterable[tuple[bytes | str | None, bytes | str | None]],
        *,
        partition: int | None = None,
        headers: Headers = (),
        timestamp: float | None = None,
    ) -> list[int]:
        """Append ``(key, value)`` pairs in one round trip; returns their offsets in order.

        The round trip is one transaction: Redis writes all of the pairs or none, and serves no
        other client while it writes them (about 6 µs a record). Send a large backlog in
        pieces: a worker's producer writes at most ``produce_batch_records`` (3,000) at a
        time (``docs/transport.md``, "How large a round trip is")."""
        ts = int((timestamp if timestamp is not None else time.time()) * 1000)
        batch: list[tuple[str, int, Record]] = []
        for key, value in items:
            kb = to_bytes(key)
            p = await self.partition_for(topic, kb, partition)
            batch.append((topic, p, Record(kb, to_bytes(value), ts, headers)))
        results = await append_records(self.client, self.keys, batch)
        offsets: list[int] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            offsets.append(result)
        return offsets
