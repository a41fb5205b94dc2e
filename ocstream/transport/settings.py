"""Tunables of the Redis transport, parsed once into a typed object.

An app carries them as ``app.transport_settings`` (``ocstream.app.build_app`` sets it); an app
without one (a plain faust app using ``broker="redis://…"``) gets the defaults, each of which
can be overridden by an ``OCSTREAM_TRANSPORT_<NAME>`` environment variable, e.g.
``OCSTREAM_TRANSPORT_SESSION_TIMEOUT=4``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .assignor import MIN_RECORDS
from .keys import DEFAULT_PREFIX
from .traffic import FIRST_LOOK, SETTLE_RECORDS, UNEVEN_CHECKS

ENV_PREFIX = "OCSTREAM_TRANSPORT_"

#: The default of ``produce_batch_records``.
PRODUCE_BATCH_RECORDS = 3_000


class TransportSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Prefix of every key (several deployments may share one Redis with different prefixes).
    prefix: str = DEFAULT_PREFIX
    #: How long the producer waits to batch more records into one round trip (like linger.ms).
    linger_ms: float = Field(default=1.0, ge=0, le=1000)
    #: Most records the producer writes in one round trip. A round trip is one
    #: ``MULTI``/``EXEC``, and Redis serves no other client while it runs it (about 6 µs a
    #: record on the development machine); packing it takes several times its records' size
    #: in heap, which the process keeps. A backlog goes in round trips of this many, one after
    #: the other (``docs/transport.md``, "How large a round trip is").
    produce_batch_records: int = Field(default=PRODUCE_BATCH_RECORDS, ge=1, le=100_000)
    #: Most records returned by one XREAD per partition.
    fetch_count: int = Field(default=1000, ge=1, le=100_000)
    #: A member whose heartbeat is older than this (Redis server time) is dropped from the group.
    session_timeout: float = Field(default=10.0, gt=0)
    heartbeat_interval: float = Field(default=0.5, gt=0)
    #: Members that do not release their partitions within this time are evicted.
    rebalance_timeout: float = Field(default=60.0, gt=0)
    #: Wait this long for more members before the first assignment of an empty group.
    initial_rebalance_delay: float = Field(default=1.0, ge=0)
    #: Create a subscribed topic that does not exist yet (like auto.create.topics.enable).
    auto_create_topics: bool = True
    #: Retention of a non-compacted topic, per partition: entries older than ``retention_hours``
    #: (by their ``t`` field) go, and so do the oldest entries while the partition's stream
    #: uses more than ``retention_mb`` (``MEMORY USAGE``). 0 turns a limit off.
    retention_hours: float = Field(default=24.0, ge=0)
    retention_mb: float = Field(default=64.0, ge=0)
    #: Optional third limit: entries kept per partition (0 = no entry cap, the default).
    max_len: int = Field(default=0, ge=0)
    #: A changelog tombstone is removed once every member holding its partition has applied it,
    #: and at least this many seconds after it was written (0: as soon as all have applied it).
    tombstone_retention: float = Field(default=0.0, ge=0)
    #: How often the group leader applies retention and removes tombstones, and how often each
    #: member reports how far its table stores have applied their changelogs.
    retention_interval: float = Field(default=30.0, gt=0)
    #: ``load``: faust's assignment, then partitions swapped between members so that each
    #: carries a fair share of the records written so far (``assignor.py``); ``sticky``:
    #: faust's assignment alone (partition counts only).
    assignment: Literal["load", "sticky"] = "load"
    #: With ``load``: every this many seconds, and no sooner after an assignment, the leader
    #: checks whether weighing the traffic would make the assignment clearly fairer
    #: (``assignor.REBALANCE_GAIN``) and rebalances if ``load_uneven_checks`` checks in a
    #: row say so. Every ``load_first_look`` seconds, if shorter, while the assignment has
    #: not been weighed against ``load_settle_records`` records per partition (and then
    #: one uneven look is enough). 0: only membership and topic changes rebalance.
    load_check_interval: float = Field(default=300.0, ge=0)
    #: With ``load``: seconds between the leader's looks at an assignment it does not trust
    #: yet (blind or settling: ``traffic.py``); ``load_check_interval`` if that is shorter.
    load_first_look: float = Field(default=FIRST_LOOK, gt=0)
    #: With ``load``: records per partition an assignment must have been weighed against before
    #: the leader trusts it and checks it only every ``load_check_interval``. At least
    #: ``assignor.MIN_RECORDS`` (100), the least it weighs at all.
    load_settle_records: int = Field(default=SETTLE_RECORDS, ge=MIN_RECORDS)
    #: With ``load``: uneven checks in a row that rebalance a trusted assignment (1: every
    #: uneven check does, bursts included).
    load_uneven_checks: int = Field(default=UNEVEN_CHECKS, ge=1, le=100)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> TransportSettings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = raw
        values.update(overrides)
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ValueError(f"invalid transport settings: {exc}") from exc

    @classmethod
    def for_app(cls, app: Any) -> TransportSettings:
        settings = getattr(app, "transport_settings", None)
        if isinstance(settings, TransportSettings):
            return settings
        return cls.from_env()
