"""When the group leader weighs the traffic against its assignment, and what a weighing decides.

:class:`TrafficWatch` is the policy alone: no Redis, no clock (times are passed in, in
milliseconds). ``group.py`` reads the counters and starts rebalances; :class:`LoadAwareAssignor`
(``assignor.py``) weighs an assignment against counts. This module decides in between, so that
its rules are tested on their own (tests/transport/test_traffic.py) as well as with real
workers (tests/test_workers.py).

An assignment goes through three stages, by how many records per partition it has been weighed
against (:attr:`LoadAwareAssignor.weighed_records`, the most over its groups):

- **blind**, fewer than :data:`~ocstream.transport.assignor.MIN_RECORDS` (100): made before
  the group had traffic to weigh. Looked at every ``load_first_look`` seconds (10 by default);
  a look that still finds too little is not a check.
- **settling**, fewer than ``load_settle_records`` (1,000 by default): weighed, but against a
  sample small enough to mislead (chains send in clumps; a hundred records per partition can
  make an even split look uneven, or the reverse). Still looked at every ``load_first_look``
  seconds, each look weighing a larger sample (everything since the same starting point); one
  uneven look rebalances, as the look only finishes the weighing the assignment began. Once the
  assignment was itself weighed (not blind), only a look at twice the sample it was weighed
  against: a sample that grew by a few records cannot overturn it, and an assignment settles
  after four rebalances at most, however the traffic moves (at about 100, 200, 400 and 800
  records per partition; tests/transport/test_traffic.py has the worst case).
- **settled**: checked every ``load_check_interval``, each check weighing the traffic since
  the last one that left the assignment as it was (a window, so that a lasting change shows
  against a long history); ``load_uneven_checks`` (2 by default) uneven checks in a row
  rebalance, so a burst does not.

The three ``load_*`` values are transport settings (``settings.py``); the constants below are
their defaults.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .assignor import MIN_RECORDS, REBALANCE_GAIN, Balance, records_since

if TYPE_CHECKING:
    from .settings import TransportSettings

__all__ = ["FIRST_LOOK", "SETTLE_RECORDS", "UNEVEN_CHECKS", "TrafficWatch", "Verdict"]

#: Seconds between the leader's looks at an assignment that is blind or settling;
#: ``load_check_interval`` if shorter. A look costs one ``MGET`` of the group's sequence
#: counters.
FIRST_LOOK = 10.0

#: Records per partition an assignment must have been weighed against before the leader trusts
#: it and checks only every ``load_check_interval``. At 100 records per partition, chains that
#: send in clumps of a few records move a partition's share by 15-20 %; at 1,000, by 5 %.
SETTLE_RECORDS = 1000

#: A settled assignment is rebalanced on traffic only when this many checks in a row, each
#: weighing its own window, find it uneven: a burst of a few minutes on one chain does not move
#: partitions, a lasting shift does within two intervals.
UNEVEN_CHECKS = 2

Counts = Mapping[str, Sequence[int]]


class Verdict(enum.Enum):
    #: Too little traffic to weigh: not a check (the metric does not count it).
    WAIT = "wait"
    EVEN = "even"
    #: Uneven, but not yet ``uneven_checks`` times in a row: perhaps a burst. Logged.
    UNEVEN_ONCE = "uneven once"
    #: Uneven while settling, on a sample under twice the one the assignment was weighed
    #: against: looked at again. Logged.
    UNEVEN_SMALL = "uneven on a small sample"
    REBALANCE = "rebalance"


@dataclass
class TrafficWatch:
    """The leader's watch over one assignment: whether a look is due, which traffic to weigh,
    and what the result decides. One per group member; only a leader uses it."""

    #: ``load_check_interval`` in milliseconds; 0 or less: never check.
    interval: int
    #: ``load_first_look`` in milliseconds: between looks while blind or settling.
    first_look: int = int(FIRST_LOOK * 1000)
    #: ``load_settle_records``: records per partition that make an assignment settled.
    settle_records: float = SETTLE_RECORDS
    #: ``load_uneven_checks``: uneven checks in a row that rebalance a settled assignment.
    uneven_checks: int = UNEVEN_CHECKS
    #: (generation, ms) of the assignment watched: made by this member as leader, or taken over
    #: from the maker's record. None: this member knows no assignment to weigh.
    assigned: tuple[int, int] | None = None
    #: When the last look began (ms).
    last_look: int = 0
    #: The counters read at the last check that left the assignment as it was: what is weighed
    #: next is the traffic since (:meth:`window`). Kept through a rebalance the watch started,
    #: so that the assignment that follows weighs the same traffic.
    baseline: dict[str, list[int]] | None = None
    #: Checks in a row that found a settled assignment uneven (looks while it settles do not
    #: count).
    uneven_in_row: int = 0
    #: The last generation whose maker's record this member asked for (:meth:`should_adopt`).
    adopt_tried: int = 0
    #: Records per partition the watched assignment was weighed against when it was made (or
    #: in the record taken over).
    made_on: float = 0.0

    @classmethod
    def of(cls, settings: TransportSettings) -> TrafficWatch:
        """The watch a member keeps with ``settings`` (its ``load_*`` values)."""
        return cls(
            interval=int(settings.load_check_interval * 1000),
            first_look=int(settings.load_first_look * 1000),
            settle_records=settings.load_settle_records,
            uneven_checks=settings.load_uneven_checks,
        )

    def settled(self, weighed_records: float) -> bool:
        """Whether an assignment weighed against ``weighed_records`` records per partition has
        seen enough traffic to be trusted (``settle_records``)."""
        return weighed_records >= self.settle_records

    def stage(self, weighed_records: float) -> str:
        """``blind``, ``settling`` or ``settled``, for an assignment weighed against
        ``weighed_records`` records per partition (the leader's logs name it)."""
        if weighed_records < MIN_RECORDS:
            return "blind"
        return "settled" if self.settled(weighed_records) else "settling"

    def made(self, gen: int, now: int, weighed_records: float = 0.0) -> None:
        """This member, as leader, made the assignment of ``gen`` at ``now``, weighing
        ``weighed_records`` records per partition."""
        self.assigned = (gen, now)
        self.made_on = weighed_records
        self.uneven_in_row = 0

    def rebalancing(self) -> None:
        """This member, as leader, started a rebalance: the assignment watched is on its way
        out. Nothing is looked at, and the gauge shows nothing, until the next one is made
        (:meth:`made`) or taken over (:meth:`adopted`); the baseline stays for the next one."""
        self.assigned = None
        self.uneven_in_row = 0

    def should_adopt(self, gen: int) -> bool:
        """Whether to look for the maker's record of ``gen`` (once per generation, and only
        when this member does not know the assignment already)."""
        if (self.assigned is not None and self.assigned[0] == gen) or self.adopt_tried == gen:
            return False
        self.adopt_tried = gen
        return True

    def adopted(self, gen: int, now: int, weighed_records: float = 0.0) -> None:
        """This member took over the record of ``gen``'s assignment at ``now`` (weighed
        against ``weighed_records``): it checks from now on, weighing everything written (it
        has no reading of its own to start from)."""
        self.assigned = (gen, now)
        self.made_on = weighed_records
        self.baseline = None
        self.uneven_in_row = 0

    def due(self, now: int, gen: int, weighed_records: float) -> bool:
        """Whether to weigh the traffic against the assignment of ``gen`` now."""
        if self.interval <= 0 or self.assigned is None or self.assigned[0] != gen:
            return False
        every = self.interval
        if not self.settled(weighed_records):
            every = min(every, self.first_look)
        return now - max(self.assigned[1], self.last_look) >= every

    def window(self, load: Counts) -> dict[str, list[int]] | None:
        """The records written since :attr:`baseline` (None when there is none)."""
        return None if self.baseline is None else records_since(load, self.baseline)

    def judge(
        self, load: Counts, found: Balance | None, weighed_before: float, weighed_after: float
    ) -> Verdict:
        """What a look decides. ``load``: the counters it read; ``found``: what weighing them
        would change (:meth:`LoadAwareAssignor.uneven`), which raised the assignment's weighed
        records from ``weighed_before`` to ``weighed_after``."""
        if weighed_after < MIN_RECORDS:
            return Verdict.WAIT
        settled = self.settled(weighed_before)
        if found is None or found.busiest_before - found.busiest_after < REBALANCE_GAIN:
            self.uneven_in_row = 0
            if self.settled(weighed_after):
                # The window starts here. While settling it does not: each look weighs a
                # larger sample from the same start.
                self.baseline = {topic: list(counts) for topic, counts in load.items()}
            return Verdict.EVEN
        if not settled:
            if self.made_on >= MIN_RECORDS and weighed_after < 2 * self.made_on:
                return Verdict.UNEVEN_SMALL
            return Verdict.REBALANCE
        self.uneven_in_row += 1
        if self.uneven_in_row >= self.uneven_checks:
            return Verdict.REBALANCE
        # Perhaps a burst: the next check weighs the traffic after this one on its own.
        self.baseline = {topic: list(counts) for topic, counts in load.items()}
        return Verdict.UNEVEN_ONCE
