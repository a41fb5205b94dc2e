"""faust's consumer on Redis: partition streams read with XREAD from client-side positions.

Kafka's model is kept: the group coordinator (``group.py``) decides which partitions this worker
owns; the consumer reads them from its own positions ("assign + seek"), faust acks and commits
offsets, and commits are fenced by generation so that a worker that lost its partitions cannot
move their offsets.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, cast

from faust.transport import base
from faust.types import TP, ConsumerMessage
from mode import Service, get_logger
from redis.asyncio import Redis

from .client import TRANSIENT_ERRORS, Backoff, connect, retryable
from .drain import StandbyApplier, drain_messages, wait_next_records
from .group import GroupCoordinator
from .keys import Keyspace, offset_field
from .metrics import METRICS
from .settings import TransportSettings
from .wire import (
    FetchedRecord,
    decode_headers,
    entry_value,
    fetched_streams,
    id_to_offset,
    partition_for_key,
    read_after_id,
)
from .writer import TopicMetadata

if TYPE_CHECKING:
    from .driver import Transport

logger = get_logger(__name__)

#: XREAD blocks at most this long, so pauses, seeks and stops are noticed quickly.
MAX_BLOCK_SECONDS = 1.0


class Consumer(base.Consumer):
    """faust ``Consumer`` for ``redis://`` brokers."""

    consumer_stopped_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def __post_init__(self) -> None:
        transport = cast("Transport", self.transport)
        self.settings: TransportSettings = transport.settings
        self.keys = Keyspace(self.settings.prefix)
        app_id = self.app.conf.id
        self.client: Redis = connect(transport.redis_url, name=f"{app_id}-consumer")
        # XREAD BLOCK holds its connection; it gets one of its own, with a socket timeout
        # longer than the block so a silent network failure still surfaces.
        self.fetch_client: Redis = connect(
            transport.redis_url, socket_timeout=MAX_BLOCK_SECONDS + 10, name=f"{app_id}-fetch"
        )
        self.fetch_client.set_response_callback("XREAD", fetched_streams)
        self.topics = TopicMetadata(self.client, self.keys)
        self.group_keys = self.keys.group(app_id)
        self._subscription: set[str] = set()
        self._subscribed = asyncio.Event()
        self._assignment: set[TP] = set()
        # The next offset to read; None: the reset policy (auto_offset_reset).
        self._positions: dict[TP, int | None] = {}
        # Assigned partitions no seek has placed yet: the fetch reads them from the group's
        # committed offset (``_place``), as a Kafka consumer does.
        self._unplaced: set[TP] = set()
        # Bumped on every seek, pause or revoke: records fetched before it are dropped.
        self._seek_epoch: dict[TP, int] = defaultdict(int)
        self._highwaters: dict[TP, int] = {}
        self._fetch_backoff = Backoff()
        self._fetchable = asyncio.Event()
        self.group = GroupCoordinator(self)
        self.standby_applier = StandbyApplier(self.app)

    async def on_stop(self) -> None:
        await super().on_stop()
        await self.group.leave()
        await self.client.aclose()
        await self.fetch_client.aclose()

    # -- topics ------------------------------------------------------------------------------
    async def create_topic(
        self, topic: str, partitions: int, replication: int, **kwargs: Any
    ) -> None:
        await self.topics.create(topic, partitions or self.app.conf.topic_partitions)

    def topic_partitions(self, topic: str) -> int | None:
        return self.topics.partitions.get(topic)

    def key_partition(
        self, topic: str, key: bytes | None, partition: int | None = None
    ) -> int | None:
        if partition is not None:
            return partition
        count = self.topics.partitions.get(topic)
        return None if count is None else partition_for_key(key, count)

    def _new_topicpartition(self, topic: str, partition: int) -> TP:
        return TP(topic, partition)

    # -- subscription and assignment ---------------------------------------------------------
    async def subscribe(self, topics: Iterable[str]) -> None:
        self._subscription = set(topics)
        await self.topics.refresh()
        if self.settings.auto_create_topics:
            for topic in sorted(self._subscription - set(self.topics.partitions)):
                count = await self.topics.create(topic, self.app.conf.topic_partitions)
                self.log.info("Created topic %r with %d partitions", topic, count)
        pipe = self.client.pipeline(transaction=False)
        pipe.sadd(self.keys.groups, self.app.conf.id)
        pipe.delete(self.group_keys.topics)
        if self._subscription:
            pipe.sadd(self.group_keys.topics, *sorted(self._subscription))
        await pipe.execute()
        self.group.request_rejoin()
        self._subscribed.set()

    def subscription(self) -> set[str]:
        return set(self._subscription)

    def assignment(self) -> set[TP]:
        return set(self._assignment)

    def set_assignment(self, tps: set[TP]) -> None:
        """Called by the group coordinator only."""
        for tp in self._assignment - tps:
            self._positions.pop(tp, None)
            self._unplaced.discard(tp)
            self._seek_epoch[tp] += 1
        for tp in tps - self._assignment:
            self._positions[tp] = None
            self._unplaced.add(tp)
            self._seek_epoch[tp] += 1
        self._assignment = set(tps)
        self._fetchable.set()

    async def wait_fetchable(self, timeout: float) -> None:
        """Wait until a partition may be fetched again (resumed, buffer drained, assigned)."""
        self._fetchable.clear()
        try:
            await asyncio.wait_for(self._fetchable.wait(), timeout=timeout)
        except TimeoutError:
            pass

    def pause_partitions(self, tps: Iterable[TP]) -> None:
        super().pause_partitions(tps)
        # Records fetched for a paused partition but not yet delivered are dropped by faust's
        # getmany; read again from the one after the last delivered so none is skipped.
        for tp in tps:
            delivered = self._read_offset.get(tp)
            if tp in self._assignment and delivered is not None:
                self._set_position(tp, delivered + 1)

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        super().resume_partitions(tps)
        self._fetchable.set()

    def on_buffer_drop(self, tp: TP) -> None:
        super().on_buffer_drop(tp)
        self._fetchable.set()

    @Service.task
    async def _group_loop(self) -> None:
        await self._subscribed.wait()
        await self.group.run()

    # -- positions ---------------------------------------------------------------------------
    async def _committed(self, tps: list[TP]) -> list[int | None]:
        """The group's committed offset of each of ``tps`` (None: nothing committed)."""
        raw = await self.client.hmget(
            self.group_keys.offsets, [offset_field(tp.topic, tp.partition) for tp in tps]
        )
        return [None if value is None else int(value) for value in raw]

    async def seek_to_committed(self) -> Mapping[TP, int]:
        tps = sorted(self._assignment)
        if not tps:
            return {}
        committed: dict[TP, int] = {}
        for tp, offset in zip(tps, await self._committed(tps), strict=True):
            self._set_position(tp, offset)
            if offset is not None:
                committed[tp] = offset
        return committed

    def _set_position(self, tp: TP, offset: int | None) -> None:
        self._positions[tp] = offset
        self._unplaced.discard(tp)
        self._seek_epoch[tp] += 1

    async def _place(self, tps: list[TP]) -> None:
        """Set the position of partitions no seek has placed yet to the group's committed
        offset (None where there is none: the reset policy).

        faust resumes the flow after an assignment and only then seeks the source partitions
        to their committed offsets. A fetch in between used to read a partition from its start,
        and faust handed that first record to the agent again when a worker kept the partition
        through a rebalance. A seek made while this looks the offsets up wins (faust's recovery
        places changelog partitions where their stores are)."""
        epochs = {tp: self._seek_epoch[tp] for tp in tps}
        for tp, offset in zip(tps, await self._committed(tps), strict=True):
            if tp in self._unplaced and self._seek_epoch[tp] == epochs[tp]:
                self._positions[tp] = offset
                self._unplaced.discard(tp)

    async def _seek(self, partition: TP, offset: int) -> None:
        self._set_position(partition, offset)

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        for tp, offset in partitions.items():
            self._set_position(tp, offset)

    async def seek_to_beginning(self, *partitions: TP) -> None:
        for tp, offset in (await self.earliest_offsets(*partitions)).items():
            self._set_position(tp, offset)

    async def position(self, tp: TP) -> int | None:
        return self._positions.get(tp)

    def highwater(self, tp: TP) -> int:
        # Called for every message by faust's monitor: a cached value, refreshed by fetches.
        return self._highwaters.get(tp, 0)

    async def highwaters(self, *partitions: TP) -> Mapping[TP, int]:
        if not partitions:
            return {}
        raw = await self.client.mget(
            [self.keys.sequence(tp.topic, tp.partition) for tp in partitions]
        )
        out: dict[TP, int] = {}
        for tp, value in zip(partitions, raw, strict=True):
            # The sequence counter is the last seq written, i.e. the next offset.
            out[tp] = self._highwaters[tp] = int(value or 0)
        return out

    async def earliest_offsets(self, *partitions: TP) -> Mapping[TP, int]:
        if not partitions:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for tp in partitions:
            pipe.xrange(self.keys.stream(tp.topic, tp.partition), count=1)
        firsts = await pipe.execute()
        highwaters = await self.highwaters(*partitions)
        return {
            tp: id_to_offset(entries[0][0]) if entries else highwaters[tp]
            for tp, entries in zip(partitions, firsts, strict=True)
        }

    # -- fetching ----------------------------------------------------------------------------
    async def _getmany(
        self, active_partitions: set[TP] | None, timeout: float
    ) -> Mapping[TP, list[FetchedRecord]]:
        tps = [tp for tp in (active_partitions or ()) if tp in self._assignment]
        if not tps:
            await self.wait_fetchable(min(timeout, MAX_BLOCK_SECONDS))
            return {}
        # Empty but for the first fetches after an assignment: the hot path pays one test.
        unplaced = [tp for tp in tps if tp in self._unplaced] if self._unplaced else None
        if unplaced:
            try:
                await self._place(unplaced)
            except TRANSIENT_ERRORS as exc:
                METRICS.fetch_errors += 1
                if not self.should_stop:
                    await self._fetch_backoff.wait(logger, "fetch", exc)
                return {}
        latest = self.app.conf.consumer_auto_offset_reset == "latest"
        streams: dict[Any, Any] = {}
        by_key: dict[bytes, TP] = {}
        epochs: dict[TP, int] = {}
        for tp in tps:
            key = self.keys.stream(tp.topic, tp.partition)
            position = self._positions.get(tp)
            if position is None:
                streams[key] = "$" if latest else "0-0"
            else:
                streams[key] = read_after_id(position)
            by_key[key.encode()] = tp
            epochs[tp] = self._seek_epoch[tp]
        # A partition whose stream buffer is full is left out of the active set until the
        # agent catches up; blocking on the others would keep it waiting for up to a second,
        # so then only poll, and wait for the buffer to drain instead.
        buffered = bool(self._buffered_partitions & self._assignment)
        block = None if buffered else max(1, int(min(timeout, MAX_BLOCK_SECONDS) * 1000))
        try:
            reply = await self.fetch_client.xread(
                streams, count=self.settings.fetch_count, block=block
            )
        except TRANSIENT_ERRORS as exc:
            METRICS.fetch_errors += 1
            if not self.should_stop:
                await self._fetch_backoff.wait(logger, "fetch", exc)
            return {}
        self._fetch_backoff.reset()
        if not reply and buffered:
            await self.wait_fetchable(min(timeout, MAX_BLOCK_SECONDS))
            return {}
        records: dict[TP, list[FetchedRecord]] = {}
        for stream_name, batch in cast(list[tuple[bytes, list[FetchedRecord]]], reply):
            tp = by_key[stream_name]
            if self._seek_epoch[tp] != epochs[tp] or tp not in self._assignment:
                continue  # seeked, paused or revoked while XREAD was blocked
            if batch:
                records[tp] = batch
                METRICS.records_fetched += len(batch)
                next_offset = batch[-1][0] + 1
                self._positions[tp] = next_offset
                if next_offset > self._highwaters.get(tp, 0):
                    self._highwaters[tp] = next_offset
        return records

    def _to_message(self, tp: TP, record: FetchedRecord) -> ConsumerMessage:
        offset, fields = record
        key = fields.get(b"k")
        value = entry_value(fields)
        return ConsumerMessage(
            tp.topic,
            tp.partition,
            offset,
            int(fields.get(b"t", 0)) / 1000.0,
            0,
            decode_headers(fields.get(b"h")),
            key,
            value,
            None,
            len(key) if key else 0,
            len(value) if value else 0,
            tp,
            generation_id=self.app.consumer_generation_id,
        )

    # -- committing --------------------------------------------------------------------------
    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        if not offsets:
            return True
        try:
            accepted = await self.group.commit(
                {offset_field(tp.topic, tp.partition): off for tp, off in offsets.items()}
            )
        except Exception as exc:
            # Redis gone, or refusing writes for now (out of memory, a replica): the offsets
            # stay where they were and the records are read again if this member stops.
            if not retryable(exc):
                raise
            self.log.warning("Commit failed (%s: %s); faust retries it", type(exc).__name__, exc)
            return False
        METRICS.commits += 1
        if not accepted:
            METRICS.commits_fenced += 1
            self.log.warning(
                "Commit fenced: generation %d no longer owns %s",
                self.group.generation,
                sorted(offsets),
            )
        return accepted

    async def _drain_messages(self, fetcher: Any) -> None:
        await drain_messages(self, fetcher)

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        return await wait_next_records(self, timeout)

    def close(self) -> None:
        pass

    async def verify_all_partitions_active(self) -> None:
        """faust's livelock check, which does nothing here.

        faust runs it every 2.5 commit intervals: for each assigned partition it awaits
        ``self.sleep(0)`` (mode's: a task, a timer and its cancellation, several turns of
        the event loop) and then calls :meth:`verify_event_path`, which only faust's Kafka
        consumer implements (it logs a partition whose agent made no progress). Ours is a
        no-op, so the loop was pure cost: a worker holds 100 and more partitions with the
        changelogs, and that was 50 tasks a second, idle or busy, the largest share of an
        idle worker's wake-ups (``docs/benchmarks.md``, "Issue 14, twenty-ninth round"). A
        partition that does not move shows in ``ocstream_consumer_lag_records`` instead."""

    def verify_event_path(self, now: float, tp: TP) -> None:
        pass

    def verify_recovery_event_path(self, now: float, tp: TP) -> None:
        pass
