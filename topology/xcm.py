"""The XCM dataflow: ingress → ``blocks`` → extract → ``xcm-legs`` → match (tables) →
``xcm-notifications``.

* agent ``xcm_extract`` reads ExtendedBlocks, decodes their XCM with the runtime's metadata from
  the registry and writes each leg to ``xcm-legs`` keyed by the chain it concerns (a sent leg
  that can only start a journey by a spread key, ``leg_key``); what it cannot read goes to
  ``xcm-dead-letters`` with the reason.
* agent ``xcm_match`` runs :class:`ocstream.xcm.matching.Engine` on each ``xcm-legs`` record
  against six changelogged tables and writes notifications to ``xcm-notifications`` (keyed by
  journey) and the records meant for other chains back to ``xcm-legs``.
* timers turn persisted journey deadlines into ``tick`` records and expired entries into
  ``sweep`` records, so timeouts fire on wall-clock time and tables stay bounded.

``docs/matching.md`` explains the model; ``ocstream topology`` draws it.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from faust.web import Request, Response, View

from ocstream.dataflow import declare_producer
from ocstream.delivery import notification_headers
from ocstream.envvars import env_number, env_seconds
from ocstream.errors import SettingError
from ocstream.ingress.decode import DecoderCache
from ocstream.ingress.model import NORMALISED_HEADER, ExtendedBlock
from ocstream.ingress.registry import NetworkRegistry
from ocstream.runtime import RocksDBStore
from ocstream.tablebatch import TableBatch
from ocstream.transport.assignor import without_standbys
from ocstream.transport.client import connect
from ocstream.transport.direct import direct_feed
from ocstream.transport.wire import header_items, json_value
from ocstream.xcm.codec import XcmCodec, XcmDecodeError
from ocstream.xcm.coverage import Coverage, coverage_of_record
from ocstream.xcm.expiry import ExpiryIndex
from ocstream.xcm.extract import extract
from ocstream.xcm.keys import leg_key
from ocstream.xcm.legs import is_relay, leg_record
from ocstream.xcm.matching import (
    TABLES,
    Engine,
    MatchSettings,
    Tables,
    expired_keys,
    key_chain,
)
from ocstream.xcm.sender import BlockSenders

log = logging.getLogger("ocstream.xcm")

BLOCKS_TOPIC = "blocks"
LEGS_TOPIC = "xcm-legs"
NOTIFICATIONS_TOPIC = "xcm-notifications"
DEAD_LETTERS_TOPIC = "xcm-dead-letters"
TABLE_NAMES = {name: f"xcm-{name}" for name in TABLES}

#: RocksDB settings of each XCM table partition. faust's defaults (3 x 64 MiB write buffers and
#: a 2 GiB block cache per database) are sized for a few large tables; here six tables times
#: the partition count each open a database, and their entries are small. The block cache size
#: is faust's own setting, which ocstream's options replace with one cache for the process
#: (``ocstream.rocks.BLOCK_CACHE_BYTES``); the memtables are bounded together as well
#: (``MEMTABLE_BYTES``).
ROCKSDB_OPTIONS = {
    "write_buffer_size": 4 * 2**20,
    "max_write_buffer_number": 2,
    "block_cache_size": 8 * 2**20,
}

#: Scans of a table (sweeps, deadline rebuilds, the pending view) yield to the event loop after
#: this many entries, so that the worker keeps processing records while it scans.
SCAN_CHUNK = 500

#: A batch ends when no more records are buffered (under light load it is one record), or at
#: this many records (``OCSTREAM_XCM_BATCH_RECORDS``), or this long after its first record
#: (``OCSTREAM_XCM_BATCH_SECONDS``):
#: its notifications wait for the flush, so the time bound is what a backlog adds to their
#: latency. Smaller batches hand a block's first notifications to delivery sooner, for more
#: CPU per journey (``docs/benchmarks.md``, "Issue 14, continued").
BATCH_RECORDS = 500
BATCH_SECONDS = 0.05

#: The tables that get no standby replica by default (``OCSTREAM_XCM_NO_STANDBY_TABLES``):
#: the legs waiting for their journey. An entry lives until its journey is indexed, seconds
#: where chains are followed in step and longer only where a leg has no journey to find, so a
#: takeover recovers such a table from a changelog of few live entries. A standby, though,
#: applies every entry written and every deletion: in a backlog worked off out of order
#: (``benchmarks/xcm.py``), 8 of a journey's 12 changelog records (``docs/benchmarks.md``,
#: "Issue 14, thirty-seventh round").
NO_STANDBY_TABLES = ("inbound", "relay")

#: Counters of this process (``/metrics`` renders them as ``oc_xcm_*_total``).
COUNTERS: Counter[str] = Counter()


class Networks:
    """The registry's view this worker needs: runtime codecs, SS58 prefixes, followed networks.
    Codecs are built off the event loop, once per (network, spec version)."""

    def __init__(self, app: Any, refresh_seconds: float = 10.0) -> None:
        self.app = app
        self.refresh_seconds = refresh_seconds
        self._registry: NetworkRegistry | None = None
        self._codecs: dict[tuple[str, int], XcmCodec] = {}
        self._decoders = DecoderCache()
        self._records: dict[str, Any] = {}
        self._loaded_at = 0.0

    @property
    def registry(self) -> NetworkRegistry:
        if self._registry is None:
            client = connect(str(self.app.conf.broker[0]), name="ocstream-xcm")
            self._registry = NetworkRegistry(client, self.app.transport_settings.prefix)
        return self._registry

    async def refresh(self) -> None:
        if time.monotonic() - self._loaded_at >= self.refresh_seconds:
            self._records = await self.registry.all()
            self._loaded_at = time.monotonic()

    def monitored(self, network: str) -> bool:
        # With an empty registry (records published by hand, tests) every network counts.
        return not self._records or network in self._records

    def coverage(self, network: str) -> Coverage | None:
        """Where the ingress of ``network`` began its current unbroken stretch."""
        record = self._records.get(network)
        return coverage_of_record(record) if record is not None else None

    def ss58_prefix(self, network: str) -> int | None:
        record = self._records.get(network)
        return getattr(record, "ss58_prefix", None) if record is not None else None

    async def codec(self, block: ExtendedBlock) -> XcmCodec:
        """The codec of the block's runtime (call :meth:`refresh` first)."""
        spec = block.spec_version
        if spec is None:
            record = self._records.get(block.network)
            spec = record.spec_version if record is not None else None
        if spec is None:
            raise XcmDecodeError(f"{block.network} #{block.number}: no spec version known")
        key = (block.network, spec)
        if key not in self._codecs:
            metadata = await self.registry.metadata(block.network, spec)
            if metadata is None:
                raise XcmDecodeError(f"{block.network}: no metadata for spec {spec}")
            decoder = await asyncio.to_thread(
                self._decoders.get_or_build, block.network, spec, lambda: metadata
            )
            self._codecs[key] = XcmCodec(decoder)
        return self._codecs[key]


async def _scan(items: Any) -> Any:
    """Iterate over a table's ``items()`` or ``keys()``, letting the event loop run between
    chunks."""
    for count, item in enumerate(items, 1):
        yield item
        if count % SCAN_CHUNK == 0:
            await asyncio.sleep(0)


_EXPIRES = b'"expires":'


def _expires_of(raw: bytes) -> float | None:
    """The top-level ``expires`` of a stored JSON value, read from the bytes when it is the
    value's last key (how the matcher writes it: most values), else from the decoded value.
    The last ``"expires":`` of the bytes is the top-level one when the number after it ends
    the value (a nested object would close first); inside a JSON string the quotes would be
    escaped. A journey is 1-4 kB of JSON; its expiry is 25 bytes at the end."""
    if not raw.startswith(b"{"):
        return None
    at = raw.rfind(_EXPIRES)
    if at < 0:
        return None
    start = at + len(_EXPIRES)
    if raw.find(b",", start) < 0 and raw.find(b"}", start) == len(raw) - 1:
        try:
            return float(raw[start:-1])
        except ValueError:
            return None  # null
    value = orjson.loads(raw)
    expires = value.get("expires") if isinstance(value, dict) else None
    return float(expires) if isinstance(expires, int | float) else None


async def _expired(name: str, table: Any, now: float) -> Any:
    """``(chain, (table, key))`` for each expired entry of this worker's partitions of
    ``table``, by decoding every entry: for stores the expiry index does not cover
    (``memory://``, in tests); RocksDB tables are swept through the index."""
    items = [item async for item in _scan(table.items())]
    COUNTERS["sweep_checked"] += len(items)
    for found in expired_keys(name, items, now):
        yield found


def _vouched(stream: Any) -> bool:
    """Whether the producer of the stream's current record vouched for its values
    (:data:`~ocstream.ingress.model.NORMALISED_HEADER`, which ``ocstream ingress`` writes)."""
    headers = header_items(getattr(stream.current_event, "headers", None))
    return any(name == NORMALISED_HEADER and value == b"1" for name, value in headers)


async def _send_raw(app: Any, topic: Any, key: str, value: bytes, headers: Any = None) -> None:
    """Queue a record already encoded as JSON (as faust's ``json`` serializer encodes it,
    ``json_value``) straight in the producer: through ocstream's producer's ``queue`` (no
    coroutine and no future per record) once it knows the topic's partitions, else through
    ``send``. faust's ``Topic.send`` would build a message object, a future and sensor calls
    for each record."""
    producer = app.producer
    name = topic.get_topic_name()
    encoded_key = key.encode()
    if not producer.queue(name, encoded_key, value, headers):
        await producer.send(name, encoded_key, value, None, None, headers)


def _setting(
    environ: Mapping[str, str],
    name: str,
    default: float,
    read: Callable[[Mapping[str, str], str], float | None] = env_number,
) -> float:
    """A number of the match agent's from ``environ``, read by ``read`` (``env_seconds`` for a
    duration); a clear error when it is not one."""
    value = read(environ, name)
    return default if value is None else value


@dataclass(frozen=True, slots=True)
class XcmSettings:
    """What the XCM dataflow takes from the environment, read once: the matcher's time limits
    (``OCSTREAM_XCM_JOURNEY_TTL``, ...) and the match agent's own tuning."""

    match: MatchSettings = field(default_factory=MatchSettings)
    #: ``OCSTREAM_XCM_SWEEP_INTERVAL``: seconds between two sweeps of expired entries.
    sweep_every: float = 60.0
    #: ``OCSTREAM_XCM_BATCH_RECORDS`` and ``_SECONDS``: the bounds of a matching batch.
    batch_records: float = BATCH_RECORDS
    batch_seconds: float = BATCH_SECONDS
    #: ``OCSTREAM_XCM_NO_STANDBY_TABLES``: the tables without standby replicas.
    no_standby_tables: tuple[str, ...] = NO_STANDBY_TABLES

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> XcmSettings:
        """Every value, or a ``SettingError`` naming the first variable that is wrong."""
        return cls(
            match=MatchSettings.from_env(environ),
            sweep_every=_setting(environ, "OCSTREAM_XCM_SWEEP_INTERVAL", 60.0, env_seconds),
            batch_records=record_bound(
                _setting(environ, "OCSTREAM_XCM_BATCH_RECORDS", BATCH_RECORDS)
            ),
            batch_seconds=_setting(
                environ, "OCSTREAM_XCM_BATCH_SECONDS", BATCH_SECONDS, env_seconds
            ),
            no_standby_tables=table_names(
                environ, "OCSTREAM_XCM_NO_STANDBY_TABLES", NO_STANDBY_TABLES
            ),
        )


def table_names(environ: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """Names of XCM tables, comma-separated, from the variable ``name`` (``none``: no table);
    ``default`` when it is not set; a ``SettingError`` naming the variable for a name that is
    not one of the tables."""
    raw = environ.get(name)
    if raw is None:
        return default
    if raw.strip().lower() == "none":
        return ()
    names = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    unknown = [n for n in names if n not in TABLES]
    if unknown or not names:
        raise SettingError(
            f"{name}={raw!r}: expected 'none' or table names separated by commas, out of "
            f"{', '.join(TABLES)}"
        )
    return names


def record_bound(value: float) -> float:
    """A matching batch's bound in records: a whole number of at least 1, or ``inf`` (no bound
    by count; the time bound and an empty buffer still end a batch)."""
    if math.isinf(value):
        return math.inf if value > 0 else 1
    return max(1, int(value))


async def _delivery_first(app: Any) -> None:
    """Before a block or a matching batch, let this worker's delivery finish the notifications
    it holds (``ocstream/stages.py``); a worker that does not deliver has nothing to wait for."""
    backlog = getattr(app, "delivery_backlog", None)
    if backlog is not None:
        await backlog.drain()


def _pending_final(journey: Any) -> bool:
    return isinstance(journey, dict) and journey.get("role") == "final" and not journey.get("done")


def declare(app: Any, settings: XcmSettings | None = None) -> None:
    """Declare the XCM dataflow on ``app``, with ``settings`` (default: read from the process
    environment now; the command line reads them before it starts anything and passes them)."""
    settings = settings or XcmSettings.from_env(os.environ)
    blocks = app.topic(BLOCKS_TOPIC, key_type=str, value_serializer="raw")
    legs = app.topic(LEGS_TOPIC, key_type=str, value_serializer="json")
    notifications = app.topic(NOTIFICATIONS_TOPIC, key_type=str, value_serializer="json")
    dead_letters = app.topic(DEAD_LETTERS_TOPIC, key_type=str, value_serializer="json")
    tables = {
        name: app.Table(
            table, default=None, key_type=str, help=f"XCM {name}", options=dict(ROCKSDB_OPTIONS)
        )
        for name, table in TABLE_NAMES.items()
    }
    for name in settings.no_standby_tables:
        without_standbys(tables[name])
    # The ingress publishes blocks from its own process, or from a service in the worker
    # (embedded mode): no agent of the app writes them.
    declare_producer(
        app, "ingress", writes=[BLOCKS_TOPIC], detail="follows the chains, publishes blocks"
    )
    networks = Networks(app)
    engine = Engine(
        settings.match, now=time.time, monitored=networks.monitored, coverage=networks.coverage
    )
    sweep_every = settings.sweep_every
    batch_records = settings.batch_records
    batch_seconds = settings.batch_seconds
    deadlines: list[tuple[float, str, str]] = []
    state: dict[str, Any] = {"assignment": frozenset(), "scanned": 0.0, "swept": time.time()}
    app.xcm_networks = networks
    app.xcm_counters = COUNTERS

    async def dead_letter(kind: str, key: str, reason: str, payload: Any) -> None:
        COUNTERS[f"dead_letters_{kind}"] += 1
        log.warning("dead letter (%s) %s: %s", kind, key, reason)
        body = {"kind": kind, "reason": reason, "payload": payload, "at": time.time()}
        await dead_letters.send(key=key, value=body)

    @app.agent(blocks, name="xcm_extract")  # type: ignore[untyped-decorator]
    async def xcm_extract(stream: Any) -> None:
        async for key, raw in stream.items():
            await _delivery_first(app)
            vouched = _vouched(stream)
            try:
                block = ExtendedBlock.from_json_bytes(raw, normalised=vouched)
            except Exception as exc:
                await dead_letter("bad-block", str(key), f"not an ExtendedBlock: {exc}", None)
                continue
            COUNTERS["blocks"] += 1
            COUNTERS["blocks_vouched"] += vouched
            where = f"{block.network}:{block.number}"
            await networks.refresh()
            if not networks.monitored(block.network):
                reason = f"{block.network} is not in the network registry"
                await dead_letter("unknown-network", where, reason, {"hash": block.hash})
                continue
            try:
                codec: XcmCodec | None = await networks.codec(block)
            except Exception as exc:
                codec = None
                # Receipts need no decoding; messages are still tracked by hash, without
                # instructions. Blocks carrying XCM bytes say so in a dead letter.
                if block.storage or is_relay(block.network):
                    await dead_letter("unknown-runtime", where, str(exc), {"hash": block.hash})
            prefix = networks.ss58_prefix(block.network)

            # One BlockSenders per block: its multisig executions indexed once for all sends.
            senders = BlockSenders(block, ss58_prefix=prefix)
            found = extract(block, codec, ss58_prefix=prefix, sender_of=senders.as_json)
            # The topic's own partition count (the producer's cached metadata), which is what
            # the spread keys of new journeys are chosen for (ocstream/xcm/keys.py).
            legs_partitions = await app.producer.topics.get(
                legs.get_topic_name(), create_with=app.conf.topic_partitions
            )
            for problem in found.problems:
                await dead_letter(
                    problem.kind,
                    f"{block.network}:{block.number}",
                    problem.reason,
                    problem.payload(),
                )
            for leg in found.legs:
                COUNTERS[f"legs_{leg.kind}"] += 1
                await _send_raw(app, legs, leg_key(leg, legs_partitions), leg_record(leg))

    # The matcher takes its records from the fetch itself (ocstream/transport/direct.py):
    # registered now, before the worker fetches anything.
    feed = direct_feed(app, legs.get_topic_name())

    @app.agent(legs, name="xcm_match")  # type: ignore[untyped-decorator]
    async def xcm_match(stream: Any) -> None:
        """Records are taken from the topic's direct feed (not faust's ``stream``, which gets
        none), handled one by one and written per batch (``ocstream/tablebatch.py``; see
        :data:`BATCH_RECORDS` for where a batch ends). A batch's outputs are queued first, then
        its table writes, and only then are its records acknowledged, so a commit never covers
        a record whose outputs and table changes are not queued."""
        batch = TableBatch(app, tables, on_write=index_writes)
        taken: list[Any] = []
        outputs: list[tuple[Any, str, Any, Any]] = []  # topic, key, value, headers
        # One engine view per partition, kept across batches: its overlay is empty between
        # records (each step commits or rolls back), and the batch's views under it are
        # emptied, not replaced, by each flush.
        views: dict[int, Tables] = {}
        # Whether a persistent subscription follows an origin (the worker's live view; an app
        # built without delivery has none): the notifications it follows get a selector.
        delivery = getattr(app, "delivery", None)
        followed = delivery.subscriptions.has_persistent_origin if delivery else None

        async def flush() -> None:
            producer = app.producer
            for topic, key, value, headers in outputs:
                # Queued in place (no coroutine per record); ``_send_raw`` only for a topic
                # whose partition count this process does not know yet.
                raw = json_value(value)
                if not producer.queue(topic.get_topic_name(), key.encode(), raw, headers):
                    await _send_raw(app, topic, key, raw, headers)
            outputs.clear()
            await batch.flush()
            for message in taken:
                feed.ack(message)
            COUNTERS["batches"] += 1
            taken.clear()

        async def handle(message: Any) -> None:
            try:
                chain = message.key.decode()
                record = orjson.loads(message.value)
            except Exception as exc:
                key = message.key.decode(errors="replace") if message.key else ""
                raw = message.value.decode(errors="replace") if message.value else None
                reason = f"not a JSON record keyed by a chain: {exc}"
                await dead_letter("bad-record", key, reason, raw)
                return
            if isinstance(record, dict) and record.get("kind") == "tick":
                try:  # a timeout reads where each network's ingress began
                    await networks.refresh()
                except Exception as exc:  # the last known records will do
                    log.warning("network registry not refreshed: %s", exc)
            partition = message.partition
            view = views.get(partition)
            if view is None:
                view = views[partition] = Tables(batch.views(partition))
            try:
                step = engine.handle(view, chain, record)
            except Exception as exc:
                view.rollback()
                await dead_letter("bad-record", chain, f"{type(exc).__name__}: {exc}", record)
                return
            # Outputs are queued before the table writes, so a table's changelog never holds a
            # change whose notifications were not sent (one producer queue, written in order).
            # A notification names its origin in a header: the delivering worker decodes only
            # those that someone follows, and of those only the selector the matcher adds when
            # it knows someone does (ocstream/delivery.py, deliver_encoded).
            for note in step.notifications:
                headers = notification_headers(note, followed)
                outputs.append((notifications, str(note["journeyId"]), note, headers))
            for target, out in step.records:
                outputs.append((legs, target, out, None))
            view.commit()
            for deadline in step.deadlines:
                heapq.heappush(deadlines, deadline)
            COUNTERS.update(step.counters)

        while True:
            await feed.wait()
            await _delivery_first(app)
            started = time.monotonic()
            while (message := feed.next()) is not None:
                taken.append(message)
                await handle(message)
                if len(taken) >= batch_records or time.monotonic() - started >= batch_seconds:
                    break
            if taken:  # else every message found was stale (a rebalance came)
                await flush()
            # Nothing above waits while the feed holds records, so a backlog would keep the
            # loop to this agent: the producer would write nothing until the feed ran dry, then
            # a second's worth of records in one round trip (60,000 records; 200 MiB of heap
            # to pack them, which the process kept), and the feed would not be refilled
            # meanwhile. A turn of the loop per batch lets both run, and a wait while the
            # producer is behind keeps what it holds bounded.
            await app.producer.wait_room()

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def xcm_deadlines() -> None:
        """Send a tick for every journey whose deadline passed (rebuilt from the table when
        the assignment changes, so deadlines survive restarts and rebalances)."""
        assignment = frozenset(app.consumer.assignment())
        if assignment != state["assignment"] or time.time() - state["scanned"] > 300:
            state["assignment"] = assignment
            state["scanned"] = time.time()
            # The scan yields to the event loop, and xcm_match may push deadlines meanwhile: they
            # stay in the heap. One found twice only sends a second tick, which does nothing.
            deadlines.clear()
            async for key, value in _scan(tables["journeys"].items()):
                if _pending_final(value):
                    chain = key_chain(key)
                    # A held receipt is due at its hold time, before the journey's deadline.
                    due = value.get("hold_until") or value["deadline"]
                    heapq.heappush(deadlines, (due, chain, value["id"]))
        now = time.time()
        while deadlines and deadlines[0][0] <= now:
            _, chain, jid = heapq.heappop(deadlines)
            await legs.send(key=chain, value={"kind": "tick", "journey": jid})

    index_holder: list[ExpiryIndex] = []

    def expiry_index() -> ExpiryIndex | None:
        """The worker's expiry index (``ocstream/xcm/expiry.py``), when its tables are in
        RocksDB; opened on first use, once faust knows the data directory."""
        if not all(isinstance(table.data, RocksDBStore) for table in tables.values()):
            return None
        if not index_holder:
            index_holder.append(ExpiryIndex(Path(app.conf.tabledir) / "xcm-expiry", tables))
        return index_holder[0]

    def index_writes(name: str, partition: int, changes: list[tuple[bytes, bytes | None]]) -> None:
        index = expiry_index()
        if index is None:
            return
        entries = []
        for raw_key, raw in changes:
            expires = _expires_of(raw) if raw is not None else None
            if expires is not None:
                entries.append((name, partition, raw_key, expires))
        index.note(entries)

    async def rebuild_index(index: ExpiryIndex) -> None:
        """Have the index vouch for every active partition of this generation: a partition
        it has not rebuilt since the last rebalance is cleared and scanned once."""
        generation = app.consumer_generation_id
        if generation != index.generation:
            index.generation = generation
            index.indexed.clear()
        topic = legs.get_topic_name()
        actives = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}
        for partition in sorted(actives - index.indexed):
            index.clear(partition)
            for name, table in tables.items():
                store = table.data
                if not store.has_database(partition):
                    continue  # nothing stored: opening it would create an empty database
                entries = []
                for count, (raw_key, raw) in enumerate(
                    store._visible_items(store._db_for_partition(partition)), 1
                ):
                    expires = _expires_of(raw)
                    if expires is not None:
                        entries.append((name, partition, raw_key, expires))
                    if count % SCAN_CHUNK == 0:
                        index.note(entries)
                        entries.clear()
                        await asyncio.sleep(0)
                index.note(entries)
            if app.consumer_generation_id != generation:
                return  # a rebalance came meanwhile: the next sweep starts again
            index.indexed.add(partition)
            COUNTERS["expiry_index_rebuilds"] += 1

    async def expired_indexed(index: ExpiryIndex, name: str, table: Any, now: float) -> Any:
        """``(chain, (table, key))`` of the expired entries the index points to, on the
        partitions it vouches for; the stale index entries it meets are dropped."""
        store = table.data
        stale: list[bytes] = []
        for partition in sorted(index.indexed):
            db = store._dbs.get(partition)
            if db is None or index.generation != app.consumer_generation_id:
                continue  # revoked meanwhile (faust closed its store): the next sweep rebuilds
            for count, (index_key, raw_key) in enumerate(index.due(partition, name, now), 1):
                if count % SCAN_CHUNK == 0:
                    await asyncio.sleep(0)
                COUNTERS["sweep_checked"] += 1
                raw = db.get(raw_key)
                expires = _expires_of(raw) if raw is not None else None
                if expires is None or expires > now:
                    stale.append(index_key)  # deleted, or written again with a later expiry
                    continue
                key = orjson.loads(raw_key)
                yield key_chain(key), (name, key)
        index.drop(stale)

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def xcm_sweep() -> None:
        """Find expired entries in the tables and have their owner partitions drop them:
        through the expiry index on RocksDB, by scanning every entry on other stores."""
        now = time.time()
        if now - state["swept"] < sweep_every:
            return
        state["swept"] = now
        index = expiry_index()
        if index is not None:
            await rebuild_index(index)
        found: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for name, table in tables.items():
            entries = (
                expired_indexed(index, name, table, now)
                if index is not None
                else _expired(name, table, now)
            )
            async for chain, entry in entries:
                found[chain].append(entry)
        for chain, keys in found.items():
            await legs.send(key=chain, value={"kind": "sweep", "keys": keys})
        COUNTERS["sweeps"] += 1

    @app.page("/xcm/pending/")
    class PendingView(View):
        """Counts of what this worker's partitions hold, and the engine counters."""

        async def get(self, request: Request) -> Response:
            # Values are decoded for the journeys table only; the others are counted by key.
            pending = 0
            sizes = dict.fromkeys(tables, 0)
            async for value in _scan(tables["journeys"].values()):
                sizes["journeys"] += 1
                pending += _pending_final(value)
            for name, table in tables.items():
                if name != "journeys":
                    async for _ in _scan(table.keys()):
                        sizes[name] += 1
            return self.json(
                {"pending_journeys": pending, "tables": sizes, "counters": dict(COUNTERS)}
            )


__all__ = ["COUNTERS", "declare"]
