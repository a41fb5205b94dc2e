"""A model of the partitioned matching dataflow, in memory, for order and partitioning tests.

It does what ``topology/xcm.py`` does with faust, without the broker: records are routed by their
key (``leg_key``: the chain, or a spread key for sent legs that only start journeys) to
partitions, partitions are owned by two workers, each partition keeps its own tables and its own
FIFO queue, and the test (hypothesis) decides which partition runs next. Nothing here matches
legs: that is the real :class:`ocstream.xcm.matching.Engine`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from hypothesis import strategies as st

from ocstream.transport.wire import partition_for_key
from ocstream.xcm.bridge import BridgeLeg
from ocstream.xcm.keys import leg_key
from ocstream.xcm.legs import (
    ReceivedLeg,
    RelayedLeg,
    SentLeg,
    leg_record,
    legs_of,
    relay_of,
)
from ocstream.xcm.matching import TABLES, Engine, MatchSettings, Tables, expired_keys

PARTITIONS = 4
WORKERS = ({0, 1}, {2, 3})


def partition_of(key: str) -> int:
    return partition_for_key(key.encode(), PARTITIONS)  # the transport's partitioner


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Cluster:
    def __init__(
        self, settings: MatchSettings | None = None, monitored: Callable[[str], bool] | None = None
    ) -> None:
        self.clock = Clock()
        self.engine = Engine(
            settings or MatchSettings(), now=self.clock, monitored=monitored or (lambda urn: True)
        )
        self.stores: list[dict[str, dict[str, Any]]] = [
            {name: {} for name in TABLES} for _ in range(PARTITIONS)
        ]
        self.queues: list[deque[tuple[str, dict[str, Any]]]] = [deque() for _ in range(PARTITIONS)]
        self.notifications: list[dict[str, Any]] = []
        self.deadlines: list[tuple[float, str, str]] = []
        self.counters: dict[str, int] = {}

    def send(self, chain: str, record: dict[str, Any]) -> None:
        self.queues[partition_of(chain)].append((chain, record))

    def publish_legs(self, legs: Sequence[SentLeg | ReceivedLeg | RelayedLeg | BridgeLeg]) -> None:
        """The legs of one block, in extraction order, as the extract agent routes them."""
        for leg in legs:
            self.send(leg_key(leg, PARTITIONS), orjson.loads(leg_record(leg)))

    def busy(self) -> list[int]:
        return [p for p, queue in enumerate(self.queues) if queue]

    def tables(self, partition: int) -> Tables:
        """The engine's view of one partition's tables, for one step."""
        return Tables(self.stores[partition])  # type: ignore[arg-type]

    def step(self, partition: int) -> None:
        chain, record = self.queues[partition].popleft()
        tables = self.tables(partition)
        step = self.engine.handle(tables, chain, record)
        self.notifications.extend(step.notifications)
        for name, n in step.counters.items():
            self.counters[name] = self.counters.get(name, 0) + n
        for target, out in step.records:
            self.send(target, out)
        self.deadlines.extend(step.deadlines)
        tables.commit()

    def drain(self, choose: Any = None) -> None:
        while busy := self.busy():
            self.step(choose(busy) if choose else busy[0])

    def fire_deadlines(self) -> None:
        due = [d for d in self.deadlines if d[0] <= self.clock.now]
        self.deadlines = [d for d in self.deadlines if d[0] > self.clock.now]
        for _, chain, jid in due:
            self.send(chain, {"kind": "tick", "journey": jid})

    def sweep(self) -> None:
        for partition in range(PARTITIONS):
            found: dict[str, list[tuple[str, str]]] = {}
            for table in TABLES:
                items = list(self.stores[partition][table].items())
                for chain, entry in expired_keys(table, items, self.clock.now):
                    found.setdefault(chain, []).append(entry)
            for chain, keys in found.items():
                self.send(chain, {"kind": "sweep", "keys": keys})

    def keys_left(self) -> dict[str, list[str]]:
        left: dict[str, list[str]] = {}
        for stores in self.stores:
            for table, store in stores.items():
                left.setdefault(table, []).extend(store)
        return {table: keys for table, keys in left.items() if keys}


def run(
    blocks: list[list[Any]],
    order: list[int],
    choices: list[int],
    cluster: Cluster | None = None,
) -> Cluster:
    """Publish ``blocks`` (each a list of legs) in ``order``, letting the partitions run a little
    between arrivals in an order ``choices`` picks (hypothesis draws them), then drain."""
    cluster = cluster if cluster is not None else Cluster()
    picks = iter(choices)

    def choose(busy: list[int]) -> int:
        return busy[next(picks, 0) % len(busy)]

    for index in order:
        cluster.publish_legs(blocks[index])
        for _ in range(next(picks, 0) % 4):
            if busy := cluster.busy():
                cluster.step(choose(busy))
    cluster.drain(choose)
    return cluster


def run_in_any_order(
    data: st.DataObject,
    blocks: list[list[Any]],
    *,
    again: int = 2,
    choices: int = 40,
    make: Callable[[], Cluster] = Cluster,
) -> tuple[Cluster, Cluster]:
    """The blocks in journey order (the reference) and in an order hypothesis draws, with up
    to ``again`` blocks delivered a second time anywhere (at-least-once) and the partitions
    interleaved as it picks: ``(reference, cluster)``."""
    order = data.draw(st.permutations(range(len(blocks))), label="arrival order")
    repeated = data.draw(
        st.lists(st.sampled_from(range(len(blocks))), max_size=again), label="again"
    )
    for index in repeated:
        order.insert(data.draw(st.integers(0, len(order)), label="where"), index)
    picks = data.draw(st.lists(st.integers(0, 7), max_size=choices), label="scheduling")
    return run(blocks, list(range(len(blocks))), [], make()), run(blocks, order, picks, make())


def finish(cluster: Cluster) -> None:
    """Let time pass beyond every deadline and retention, and run the timers and sweeps."""
    for _ in range(3):
        cluster.clock.now += 2 * 86400
        cluster.fire_deadlines()
        cluster.drain()
        cluster.sweep()
        cluster.drain()


# --- synthetic legs ------------------------------------------------------------------------------


def _context(chain: str, number: int, message_hash: str, **extra: Any) -> dict[str, Any]:
    return {
        "chainId": chain,
        "blockNumber": str(number),
        "blockHash": "0x" + f"{number:064x}",
        "timestamp": extra.pop("timestamp", None),
        "extrinsicId": None,
        "event": None,
        "outcome": extra.pop("outcome", "Success"),
        "error": extra.pop("error", None),
        "messageHash": message_hash,
        "messageData": None,
        "instructions": None,
        **extra,
    }


def sent_leg(
    origin: str,
    stops: list[str],
    *,
    message_hash: str,
    topic: str | None = None,
    number: int = 1,
    entry: int = 0,
    continues: str | None = None,
    hop_candidates: list[str] | None = None,
    instructions: Any = None,
    timestamp: int | None = None,
    bridge_in: BridgeLeg | None = None,
) -> SentLeg:
    ids = [message_hash] + ([topic] if topic else [])
    legs = legs_of(origin, stops)
    return SentLeg(
        identity=f"{origin}|0x{number:064x}|hrmp|{entry}|0",
        origin=origin,
        recipient=stops[0],
        transport="ump" if stops[0] == relay_of(origin) and origin != stops[0] else "hrmp",
        block_number=number,
        block_hash="0x" + f"{number:064x}",
        message_hash=message_hash,
        message_data=None,
        topic=topic,
        ids=ids,
        stops=stops,
        legs=legs,
        instructions=instructions,
        context=_context(origin, number, message_hash, timestamp=timestamp),
        continues=continues,
        hop_candidates=hop_candidates or [],
        timestamp=timestamp,
        bridge_in=bridge_in.model_dump() if bridge_in is not None else None,
    )


def received_leg(
    chain: str,
    *,
    message_hash: str,
    message_id: str | None = None,
    number: int = 1,
    event: int = 0,
    from_chain: str | None = None,
    outcome: str = "Success",
    timestamp: int | None = None,
) -> ReceivedLeg:
    return ReceivedLeg(
        identity=f"{chain}|0x{number:064x}|{event}",
        chain=chain,
        from_chain=from_chain,
        block_number=number,
        block_hash="0x" + f"{number:064x}",
        message_hash=message_hash,
        message_id=message_id or message_hash,
        outcome=outcome,  # type: ignore[arg-type]
        context=_context(chain, number, message_hash, outcome=outcome, timestamp=timestamp),
    )


def relayed_leg(
    relay: str,
    origin: str,
    recipient: str,
    *,
    message_hash: str,
    topic: str | None = None,
    number: int = 1,
    index: int = 0,
) -> RelayedLeg:
    ids = [message_hash] + ([topic] if topic else [])
    return RelayedLeg(
        identity=f"{relay}|0x{number:064x}|0|{index}|0",
        relay=relay,
        origin=origin,
        recipient=recipient,
        block_number=number,
        block_hash="0x" + f"{number:064x}",
        message_hash=message_hash,
        message_id=topic or message_hash,
        ids=ids,
        outcome="Success",
        context=_context(relay, number, message_hash),
    )


def bridge_leg(
    chain: str,
    status: str,
    *,
    bridge: str = "pkbridge",
    ids: list[str],
    nonce: str,
    channel: str | None = None,
    keys: list[str] | None = None,
    from_chain: str | None = None,
    number: int = 1,
    event: int = 0,
    outcome: str = "Success",
) -> BridgeLeg:
    return BridgeLeg(
        identity=f"{chain}|0x{number:064x}|{event}|{nonce}",
        chain=chain,
        bridge=bridge,  # type: ignore[arg-type]
        status=status,  # type: ignore[arg-type]
        channel=channel,
        nonce=nonce,
        from_chain=from_chain,
        ids=ids,
        keys=keys or [],
        block_number=number,
        block_hash="0x" + f"{number:064x}",
        outcome=outcome,  # type: ignore[arg-type]
        context=_context(chain, number, "", outcome=outcome) | {"messageHash": None},
    )
