"""The consumer lag of /health and /metrics counts records not yet processed.

The consumer reads ahead into faust's buffers, so the offset it has read can be thousands of
records past the one it is processing. The lag is the partition's end minus the committed
offset; only before the first commit of an assignment does it fall back to what was read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from faust.types import TP

from ocstream.ops import consumer_lag

BLOCKS, LEGS, NEW = TP("blocks", 0), TP("xcm-legs", 1), TP("xcm-notifications", 2)


@dataclass
class Consumer:
    """The consumer attributes the function reads (faust's names)."""

    ends: dict[TP, int]
    _committed_offset: dict[TP, int | None] = field(default_factory=dict)
    _read_offset: dict[TP, int | None] = field(default_factory=dict)

    def assignment(self) -> set[TP]:
        return set(self.ends)

    def highwater(self, tp: TP) -> int:
        return self.ends[tp]


@dataclass
class App:
    consumer: Any


def test_a_read_ahead_backlog_is_lag_until_it_is_processed_and_committed() -> None:
    consumer = Consumer({BLOCKS: 5000, LEGS: 300, NEW: 40})
    # Everything fetched into the buffers (read offset = last record), little processed.
    consumer._read_offset = {BLOCKS: 4999, LEGS: 299, NEW: 39}
    consumer._committed_offset = {BLOCKS: 1200, LEGS: 300}
    lag = consumer_lag(App(consumer))
    assert lag == {
        "blocks:0": 3800,  # read to the end, but 3,800 records still to process
        "xcm-legs:1": 0,  # processed and committed to the end
        "xcm-notifications:2": 0,  # nothing committed yet: what was read
    }
    consumer._read_offset[NEW] = 9  # read only the first ten so far
    assert consumer_lag(App(consumer))["xcm-notifications:2"] == 30


def test_a_partition_never_read_counts_from_its_start() -> None:
    assert consumer_lag(App(Consumer({BLOCKS: 70}))) == {"blocks:0": 70}
