"""Following one chain: every finalized block, in order, decoded and published once.

A :class:`ChainFollower` is one asyncio task per network. It subscribes to finalized heads and,
for each new head, publishes every block after its stored tip up to that head. It fetches in
batches of ``batchSize`` and publishes in order, storing the tip after each block, so a
restart or a dropped connection resumes right after the last published block, however far
behind that is. A connection error, a node that answers garbage, a silent subscription
(watchdog) or a block that fails to decode ends the session; the follower then reconnects with
backoff, to the next url of the provider if it has several, and resumes from the tip. Blocks
are never skipped: a block that cannot be decoded is retried, and a clear log line says why.

A Redis error (Redis down, restarting, loading its AOF, frozen) ends the session the same way:
logged, counted under ``step="redis"``, retried with backoff (capped at 5 s, so the follower is
back soon after Redis is), then resumed from the tip stored in Redis. Each block and the tip
that follows it are written by one atomic, idempotent script (:mod:`.publish`), so the stored
tip always names the last block in the topic: none is lost or published twice. When Redis comes
back without the network's record (its data was lost), the follower resumes after the last
block it published itself rather than jumping to the current head.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from redis.exceptions import RedisError

from ..errors import OcstreamError
from ..transport.client import Backoff
from ..transport.writer import TopicWriter
from .config import NetworkConfig, ReplayProvider
from .decode import DecodeError, DecoderCache, RuntimeDecoder, blake2_256, build_extended_block
from .metrics import IngressMetrics
from .model import ExtendedBlock, StorageItem
from .publish import publish_block
from .raw import hex_bytes
from .registry import NetworkRecord, NetworkRegistry
from .replay import RecordingError, ReplayNode
from .rpc import RpcClient, RpcConnectionError, RpcError
from .storage import DOWNWARD_QUEUES_PREFIX, executes_upward, queued_at, storage_needed

logger = logging.getLogger(__name__)

#: twox128("System") ‖ twox128("Events")
SYSTEM_EVENTS_KEY = "0x26aa394eea5630e07c48ae0c9558cef780d41e5e16056765bc8461851072c9d7"
#: SCALE u32 15, the argument of Metadata_metadata_at_version
METADATA_V15_ARG = "0x0f000000"
#: Keys asked per state_getKeysPaged page (a relay has a downward queue per para: tens).
KEYS_PAGE = 1000


class Node(Protocol):
    """What the follower needs of a node: a live RpcClient, or a recording's ReplayNode."""

    url: str

    async def request(self, method: str, params: Sequence[Any] = ()) -> Any: ...

    async def subscribe(self, method: str, params: Sequence[Any], unsubscribe: str) -> Any: ...


class WrongChainError(OcstreamError):
    """The node serves another chain than the one the registry knows for this network."""


#: The ``step`` label of ``oc_catcher_errors_total`` for each kind of error that ends a session.
ERROR_STEPS: dict[type[BaseException], str] = {
    RpcConnectionError: "rpc",
    RpcError: "rpc",
    DecodeError: "decode",
    WrongChainError: "chain",
    RecordingError: "replay",
}


def encode_compact(value: int) -> bytes:
    """SCALE compact encoding of a non-negative integer."""
    if value < 1 << 6:
        return bytes([value << 2])
    if value < 1 << 14:
        return ((value << 2) | 1).to_bytes(2, "little")
    if value < 1 << 30:
        return ((value << 2) | 2).to_bytes(4, "little")
    raw = value.to_bytes((value.bit_length() + 7) // 8, "little")
    return bytes([((len(raw) - 4) << 2) | 3]) + raw


def header_to_scale(header: dict[str, Any]) -> bytes:
    """The SCALE header (whose blake2-256 is the block hash) from ``chain_getBlock``'s JSON."""
    try:
        logs = header["digest"]["logs"]
        return b"".join(
            [
                hex_bytes(header["parentHash"], "parentHash"),
                encode_compact(int(header["number"], 16)),
                hex_bytes(header["stateRoot"], "stateRoot"),
                hex_bytes(header["extrinsicsRoot"], "extrinsicsRoot"),
                encode_compact(len(logs)),
                *(hex_bytes(log, "digest log") for log in logs),
            ]
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError(f"malformed header: {exc!r}") from exc


class ChainFollower:
    def __init__(
        self,
        network: NetworkConfig,
        *,
        writer: TopicWriter | None,
        registry: NetworkRegistry | None,
        decoders: DecoderCache,
        metrics: IngressMetrics | None = None,
        topic: str = "blocks",
        watchdog: float = 60.0,
        max_backoff: float = 30.0,
    ) -> None:
        self.network = network
        self.urn = network.id
        self.writer = writer
        self.registry = registry
        self.decoders = decoders
        self.metrics = (metrics or IngressMetrics()).networks[self.urn]
        self.topic = topic
        self.watchdog = watchdog
        self.backoff = Backoff(base=0.5, cap=max_backoff)
        #: Redis outages are retried sooner than a bad node: Redis is usually back in seconds.
        self.redis_backoff = Backoff(base=0.2, cap=min(max_backoff, 5.0))
        self.record: NetworkRecord | None = None
        #: What the follower is doing, for /health: starting, following, retrying, crashed.
        self.state = "starting"
        #: The last error that ended a session (or crashed the task), with its wall time.
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        #: Wall time of the last block published, or of the start when none was yet.
        self.last_progress = time.time()
        #: Raw metadata of the runtimes this follower loaded, to restore them to a Redis that
        #: lost its data (the workers decode blocks with the metadata in Redis).
        self.metadata: dict[int, bytes] = {}
        # When each finalized head was announced, to measure head-to-publish latency.
        self._announced: dict[int, float] = {}
        self._loading = asyncio.Lock()
        self._warned_keys = False
        #: The next block published starts an unbroken stretch (recorded as covered_from).
        self._stretch_starts = False

    # -- the loop ------------------------------------------------------------------------------
    def _connect(self, url: str) -> Any:
        provider = self.network.provider
        if isinstance(provider, ReplayProvider):
            return ReplayNode(provider.file, provider.rate)
        return RpcClient(url)

    async def run(self) -> None:
        provider = self.network.provider
        urls = [str(provider.file)] if isinstance(provider, ReplayProvider) else provider.urls
        attempt = 0
        while True:
            url = urls[attempt % len(urls)]
            published_before = self.metrics.blocks_published
            try:
                async with self._connect(url) as node:
                    logger.info("%s: following %s", self.urn, url)
                    await self._follow(node)
            except asyncio.CancelledError:
                raise
            except RedisError as exc:
                # Redis, not the node, failed: same url again once Redis answers.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc  # stopping: do not retry
                self._failed("redis", exc)
                if self.metrics.blocks_published > published_before:
                    self.redis_backoff.reset()
                delay = self.redis_backoff.next_delay()
                logger.warning(
                    "↻ %s: Redis failed (%s: %s); resuming from the stored tip in %.2fs",
                    self.urn,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
            except (
                RpcConnectionError,
                RpcError,
                DecodeError,
                WrongChainError,
                RecordingError,
            ) as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc  # stopping: do not retry
                step = next((s for kind, s in ERROR_STEPS.items() if isinstance(exc, kind)), "rpc")
                self._failed(step, exc)
                self.metrics.reconnects += 1
                if self.metrics.blocks_published > published_before:
                    self.backoff.reset()  # it worked for a while: come back quickly
                attempt += 1
                delay = self.backoff.next_delay()
                logger.warning(
                    "↻ %s via %s: %s; trying %s in %.2fs",
                    self.urn,
                    url,
                    exc,
                    urls[attempt % len(urls)],
                    delay,
                )
                await asyncio.sleep(delay)

    def _failed(self, step: str, exc: BaseException) -> None:
        self.state = "retrying"
        self.last_error = f"{step}: {type(exc).__name__}: {exc}"
        self.last_error_at = time.time()
        self.metrics.errors += 1
        self.metrics.errors_by_step[step] += 1

    async def _follow(self, node: Node) -> None:
        assert self.registry is not None, "following needs a registry"
        genesis = await node.request("chain_getBlockHash", [0])
        record = await self.registry.get(self.urn)
        if record is not None and record.genesis_hash not in (None, genesis):
            raise WrongChainError(
                f"{node.url} serves genesis {genesis}, but {self.urn} is {record.genesis_hash}"
            )
        mine = self.record
        if (
            mine is not None
            and mine.tip_number is not None
            and mine.genesis_hash == genesis
            and (record is None or record.tip_number is None)
        ):
            # Redis lost this network's record (restarted empty, flushed): resume after the last
            # block this process published, not at the current head, and put back what the
            # workers need (the record and the metadata of the runtimes seen).
            logger.warning(
                "%s: the registry lost this network's record; restoring it (tip #%d)",
                self.urn,
                mine.tip_number,
            )
            await self.restore()
            record = mine
        elif record is None or record.genesis_hash is None:
            record = NetworkRecord(id=self.urn, relay=self.network.relay, genesis_hash=genesis)
            await self.registry.put(record)
        self.record = record
        self.state = "following"
        heads = await node.subscribe(
            "chain_subscribeFinalizedHeads", [], "chain_unsubscribeFinalizedHeads"
        )
        while True:
            head = await heads.next(self.watchdog)
            try:
                finalized = int(head["number"], 16)
            except (TypeError, KeyError, ValueError) as exc:
                raise RpcConnectionError(f"malformed head notification: {head!r}") from exc
            self.metrics.finalized_height = max(self.metrics.finalized_height, finalized)
            if len(self._announced) < 10_000:
                self._announced.setdefault(finalized, time.perf_counter())
            tip = self.record.tip_number
            if tip is None or not self.network.recovery and finalized - tip > 1:
                if tip is not None:
                    logger.warning(
                        "%s: recovery is off; skipping %d blocks (#%d..#%d)",
                        self.urn,
                        finalized - tip - 1,
                        tip + 1,
                        finalized - 1,
                    )
                tip = finalized - 1  # a new network starts at the current finalized block
                self._stretch_starts = True  # what came before it was never seen
            if finalized > tip:
                await self._catch_up(node, tip + 1, finalized)

    async def _catch_up(self, node: Node, first: int, last: int) -> None:
        if last - first >= self.network.max_block_dist:
            logger.info(
                "%s: catching up %d blocks (#%d..#%d)", self.urn, last - first + 1, first, last
            )
        for start in range(first, last + 1, self.network.batch_size):
            numbers = range(start, min(last, start + self.network.batch_size - 1) + 1)
            # Fetch a batch concurrently, publish it in order.
            blocks = await asyncio.gather(*(self._fetch(node, n) for n in numbers))
            for block in blocks:
                await self._publish(block)

    async def restore(self) -> None:
        """Put this follower's record and runtime metadata back into Redis where they are
        missing (Redis lost its data); nothing is overwritten."""
        assert self.registry is not None
        if self.record is not None:
            if await self.registry.declare(self.record):
                logger.warning("%s: re-declared in the registry", self.urn)
        for spec_version, metadata in self.metadata.items():
            if not await self.registry.has_metadata(self.urn, spec_version):
                await self.registry.put_metadata(self.urn, spec_version, metadata)
                logger.warning("%s: restored the metadata of spec %d", self.urn, spec_version)

    async def _publish(self, block: ExtendedBlock) -> None:
        assert self.writer is not None and self.registry is not None
        assert self.record is not None
        decoder = (
            self.decoders.get(self.urn, block.spec_version)
            if block.spec_version is not None
            else None
        )
        update: dict[str, Any] = {
            "tip_number": block.number,
            "tip_hash": block.hash,
            "spec_version": block.spec_version,
            "ss58_prefix": decoder.ss58_prefix if decoder is not None else None,
            "updated_at": time.time(),
        }
        if self._stretch_starts:
            update["covered_from"] = block.number
            update["covered_from_timestamp"] = block.timestamp
        record = self.record.model_copy(update=update)
        appended = await publish_block(
            self.writer, self.registry, self.topic, record, block.to_json_bytes()
        )
        self.record = record
        self.last_progress = time.time()
        self.state = "following"
        if self._stretch_starts:
            self._stretch_starts = False
            logger.info("%s: coverage starts at #%d", self.urn, block.number)
        if not appended:
            # A retry of a call Redis had applied (its answer was lost): already in the topic.
            logger.info("%s: #%d was already published", self.urn, block.number)
            return
        self.metrics.blocks_published += 1
        self.metrics.tip_height = block.number
        announced = self._announced.pop(block.number, None)
        if announced is not None:
            self.metrics.publish_latencies.append(time.perf_counter() - announced)

    # -- one block -----------------------------------------------------------------------------
    async def fetch(self, node: Node, number: int) -> ExtendedBlock:
        """Block ``number``, decoded, with its storage items (public for ``ocstream record``)."""
        return await self._fetch(node, number)

    async def _fetch(self, node: Node, number: int) -> ExtendedBlock:
        block_hash = await node.request("chain_getBlockHash", [number])
        if block_hash is None:
            raise RpcConnectionError(f"{self.urn}: the node has no block #{number}")
        signed = await node.request("chain_getBlock", [block_hash])
        try:
            block = signed["block"]
            header = header_to_scale(block["header"])
            extrinsics = [hex_bytes(x, "extrinsic") for x in block["extrinsics"]]
        except (KeyError, TypeError) as exc:
            raise DecodeError(f"{self.urn} #{number}: malformed chain_getBlock answer") from exc
        if "0x" + blake2_256(header).hex() != block_hash:
            raise DecodeError(f"{self.urn} #{number}: the header does not hash to {block_hash}")
        events = await node.request("state_getStorage", [SYSTEM_EVENTS_KEY, block_hash])
        version = await node.request("state_getRuntimeVersion", [block_hash])
        spec_version = int(version["specVersion"])
        decoder = await self._decoder(node, spec_version, block_hash)
        started = time.perf_counter()
        extended = build_extended_block(
            self.urn,
            decoder,
            header,
            extrinsics,
            hex_bytes(events, "System.Events") if events else b"\x00",
            spec_version=spec_version,
        )
        self.metrics.decode_seconds += time.perf_counter() - started
        if extended.number != number:
            raise DecodeError(f"{self.urn}: asked for #{number}, got #{extended.number}")
        requests = storage_needed(extended, is_relay=self.network.is_relay, runtime=decoder)
        scan = self.network.is_relay and executes_upward(extended)
        if not requests and not scan:
            return extended
        values = await asyncio.gather(
            *(node.request("state_getStorage", [r.key, block_hash]) for r in requests)
        )
        storage = [
            StorageItem(pallet=r.pallet, item=r.item, key=r.key, value=value)
            for r, value in zip(requests, values, strict=True)
        ]
        if scan:
            known = {r.key for r in requests}
            storage += await self._downward_queues(node, block_hash, number, known)
        return extended.model_copy(update={"storage": storage})

    async def _downward_queues(
        self, node: Node, block_hash: str, number: int, known: set[str]
    ) -> list[StorageItem]:
        """The downward queues of every para that hold a message queued at this relay block,
        besides those in ``known`` (read already). Two requests: the keys of every para's
        queue (``state_getKeysPaged``), then their values (``state_queryStorageAt``, or one
        ``state_getStorage`` each from a node that lacks it)."""
        keys: list[str] = []
        start: str | None = None
        while True:
            try:
                page = await node.request(
                    "state_getKeysPaged", [DOWNWARD_QUEUES_PREFIX, KEYS_PAGE, start, block_hash]
                )
            except RpcError as exc:
                # A node that cannot list keys: the gap stays open (docs/ingress.md), the
                # chain keeps flowing.
                if not self._warned_keys:
                    self._warned_keys = True
                    logger.warning(
                        "%s: no state_getKeysPaged (%s): downward messages queued while the "
                        "relay executes upward ones are not read",
                        self.urn,
                        exc,
                    )
                return []
            if not isinstance(page, list):
                raise RpcConnectionError(f"{self.urn}: state_getKeysPaged answered {page!r}")
            keys += [k for k in page if isinstance(k, str) and k not in known]
            if len(page) < KEYS_PAGE:
                break
            start = page[-1]
        if not keys:
            return []
        values: dict[str, str | None] = {}
        try:
            answer = await node.request("state_queryStorageAt", [keys, block_hash])
            for change_set in answer or []:
                for key, value in change_set.get("changes", []):
                    values[key] = value
        except RpcError:
            found = await asyncio.gather(
                *(node.request("state_getStorage", [k, block_hash]) for k in keys)
            )
            values = dict(zip(keys, found, strict=True))
        except (AttributeError, TypeError, ValueError) as exc:
            raise RpcConnectionError(f"{self.urn}: bad state_queryStorageAt answer") from exc
        return [
            StorageItem(pallet="Dmp", item="DownwardMessageQueues", key=key, value=values[key])
            for key in keys
            if queued_at(values.get(key), number)
        ]

    async def _decoder(self, node: Node, spec_version: int, at: str) -> RuntimeDecoder:
        decoder = self.decoders.get(self.urn, spec_version)
        if decoder is not None:
            return decoder
        # The blocks of a batch are fetched concurrently: the first to need a new runtime loads
        # it, the others wait for it rather than each building the same decoders.
        async with self._loading:
            decoder = self.decoders.get(self.urn, spec_version)
            if decoder is not None:
                return decoder
            return await self._load_decoder(node, spec_version, at)

    async def _load_decoder(self, node: Node, spec_version: int, at: str) -> RuntimeDecoder:
        metadata = None
        if self.registry is not None:
            metadata = await self.registry.metadata(self.urn, spec_version)
        if metadata is None:
            # A runtime upgrade (or a first start): the metadata of this block's runtime is
            # loaded before any of its blocks is decoded.
            metadata = await self._fetch_metadata(node, at)
            logger.info(
                "%s: loaded metadata of spec %d (%d bytes)", self.urn, spec_version, len(metadata)
            )
        # Building compiles every type of the runtime (a fraction of a second of CPU): done in a
        # thread so that the other networks' blocks keep flowing meanwhile.
        decoder = await asyncio.to_thread(
            self.decoders.get_or_build, self.urn, spec_version, metadata
        )
        self.metadata[spec_version] = metadata
        while len(self.metadata) > 4:  # the newest runtimes are the ones still being published
            del self.metadata[min(self.metadata)]
        if self.registry is not None:
            await self.registry.put_metadata(self.urn, spec_version, metadata)
        return decoder

    async def _fetch_metadata(self, node: Node, at: str) -> bytes:
        try:
            answer = await node.request(
                "state_call", ["Metadata_metadata_at_version", METADATA_V15_ARG, at]
            )
            raw = hex_bytes(answer, "Metadata_metadata_at_version")
            if raw[:1] == b"\x01":  # Some(OpaqueMetadata): a compact length, then the bytes
                mode = raw[1] & 3
                skip = {0: 1, 1: 2, 2: 4}.get(mode, 1 + (raw[1] >> 2) + 4)
                return raw[1 + skip :]
        except (RpcError, DecodeError):
            pass  # the runtime has no metadata_at_version: V14 only
        return hex_bytes(await node.request("state_getMetadata", [at]), "state_getMetadata")


async def record(network: NetworkConfig, first: int, last: int, out: Path) -> int:
    """Fetch blocks ``first``..``last`` of ``network`` from its first url and save every answer
    the ingress needed to ``out`` (see :mod:`ocstream.ingress.replay`). Returns the block count."""
    from .replay import RecordingClient, _open

    urls = network.provider.urls if not isinstance(network.provider, ReplayProvider) else []
    if not urls:
        raise WrongChainError(f"{network.id}: record needs an rpc provider")
    follower = ChainFollower(network, writer=None, registry=None, decoders=DecoderCache())
    async with RpcClient(urls[0]) as live:
        node = RecordingClient(live)
        await node.request("chain_getBlockHash", [0])
        for number in range(first, last + 1):
            block = await follower.fetch(node, number)
            logger.info("%s: recorded #%d (%s)", network.id, number, block.hash)
    with _open(out, "w") as fh:
        node.write(fh, {"network": network.id, "from": first, "to": last, "url": urls[0]})
    return last - first + 1
