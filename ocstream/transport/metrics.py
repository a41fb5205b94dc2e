"""Counters of the transport, read by the worker's ``/metrics`` endpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class TransportMetrics:
    records_produced: int = 0
    #: Round trips in which the producer appended records (records_produced / this: per write).
    produce_writes: int = 0
    produce_retries: int = 0
    #: Records Redis refused for good (their futures failed; the rest had nobody to tell).
    produce_failed: int = 0
    #: Times an agent waited for the producer to write what it had queued (``wait_room``).
    produce_waits: int = 0
    #: Seconds agents spent in those waits, summed.
    produce_wait_seconds: float = 0.0
    records_fetched: int = 0
    fetch_errors: int = 0
    commits: int = 0
    commits_fenced: int = 0
    rebalances: int = 0
    #: Times this process, as the group's leader, weighed the traffic against its assignment,
    #: rebalances it started because the traffic was uneven (assignor.py), and active
    #: partitions it swapped between members to even it out.
    traffic_checks: int = 0
    traffic_rebalances: int = 0
    partition_swaps: int = 0
    retention_trimmed: int = 0
    #: Entries trimmed by retention before some group committed them (they were lost to it).
    retention_trimmed_uncommitted: int = 0
    tombstones_removed: int = 0
    #: Changelog records a standby wrote to its stores straight from the fetch (drain.py).
    standby_records_applied: int = 0
    #: Compressed values that could not be decompressed, handed on as they are (wire.py).
    values_undecompressed: int = 0
    #: Records agents took from their topics' direct feeds (direct.py), and records the feeds
    #: dropped as stale (cleared at a rebalance, or of an earlier generation: read again by
    #: the partition's next owner).
    direct_records_taken: int = 0
    direct_records_dropped: int = 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


#: One set of counters per process (a worker runs one transport).
METRICS = TransportMetrics()
