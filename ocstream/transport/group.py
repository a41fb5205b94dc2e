"""Consumer-group coordination on Redis: who owns which partition, generation by generation.

An eager protocol in the spirit of Kafka's JoinGroup/SyncGroup, with all decisions about
assignment left to faust's own ``PartitionAssignor`` (copartitioning, standby replicas and the
``/router/`` table map keep working).

Every ``heartbeat_interval`` each member runs one :meth:`GroupCoordinator.tick`:

1. **Heartbeat** (Lua, Redis server time): refresh its deadline in ``members`` and take or
   renew the leader lease.
2. **Lead** (the lease holder only): drop members whose deadline passed; if the members, their
   subscriptions or the partition counts changed, start generation ``gen+1`` in phase
   ``revoking``. Once every member of that generation has released its partitions (or the
   rebalance timeout evicts the ones that did not), run the assignor and publish the
   assignment, phase ``stable``. Each transition is a Lua script that checks the lease and the
   expected generation, so a deposed leader cannot overwrite a newer decision. With the
   load-aware assignor, it also weighs a stable assignment against the traffic now and then
   (``_check_traffic``; docs/transport.md, "Assignment weighed by traffic").
3. **Follow**: on a new ``revoking`` generation, stop fetching, wait until everything taken is
   acked, **commit** and only then hand the partitions back to faust (the order that avoids
   faust-streaming#502 duplicates), and acknowledge. On a new ``stable`` generation, take the
   partitions assigned to it.

Commits are fenced by the COMMIT script: they are accepted from the owners of the current
stable generation, and during a rebalance from members that have not released yet.

Member ids are random per process unless ``consumer_group_instance_id`` is set (static
membership): a static member that restarts within the session timeout finds its assignment
waiting and no rebalance happens.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import os
import socket
import uuid
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from faust.types import TP
from mode import get_logger

from . import local_state, retention, scripts
from .assignor import LoadAwareAssignor
from .client import TRANSIENT_ERRORS, Backoff, retryable
from .keys import is_changelog
from .metrics import METRICS
from .traffic import TrafficWatch, Verdict

if TYPE_CHECKING:
    from .consumer import Consumer

logger = get_logger(__name__)


class MemberState(enum.Enum):
    JOINING = "joining"  # no assignment yet
    REVOKED = "revoked"  # released everything for a rebalance; waiting for the assignment
    STABLE = "stable"  # owns the assignment of `generation`
    STOPPED = "stopped"


class _Cluster:
    """The one method of aiokafka's ClusterMetadata that faust's assignor calls."""

    def __init__(self, partitions: dict[str, int]) -> None:
        self._partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        count = self._partitions.get(topic)
        return set(range(count)) if count else None


def _member_identity(raw: bytes) -> str:
    """What about a member makes a new assignment necessary: its subscription and its URL.

    The rest of the metadata (the member's current assignment, kept for stickiness) changes after
    every assignment and must not trigger another one.
    """
    meta = ConsumerProtocolMemberMetadata.decode(raw)
    url = orjson.loads(meta.user_data).get("url", "") if meta.user_data else ""
    text = "\n".join([*sorted(meta.subscription), url])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


class GroupCoordinator:
    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.app = consumer.app
        self.settings = consumer.settings
        self.keys = consumer.group_keys
        instance_id = self.app.conf.consumer_group_instance_id
        self.static = bool(instance_id)
        self.member_id: str = instance_id or (
            f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self.state = MemberState.JOINING
        #: Generation whose assignment this member holds; its commits are fenced with it.
        self.generation = 0
        self._acked_generation = 0
        self._checked_generation = 0
        self._send_metadata = True
        self._change_seen_at: int | None = None
        self._last_retention = 0.0
        # When to weigh the traffic against the assignment this member made as the leader (or
        # took over), and what a weighing decides (traffic.py).
        self._watch = TrafficWatch.of(self.settings)
        self._last_report = 0.0
        # Heartbeats after a Redis error come at most a quarter of the session apart: once
        # Redis is back, every member beats again well before its session runs out (with the
        # default 5 s cap, a 5 s outage cost a member its place, and the group a rebalance).
        cap = min(Backoff.cap, self.settings.session_timeout / 4)
        self._backoff = Backoff(cap=max(cap, self.settings.heartbeat_interval))
        self.is_leader = False
        #: Set by a tick that moved the group on (a generation begun or assigned, a release
        #: acknowledged, an assignment taken): the next tick runs at once instead of after
        #: ``heartbeat_interval``, so a rebalance takes a few round trips, not several ticks.
        self._progressed = False

    @property
    def _assignor(self) -> Any:
        # faust's PartitionAssignor; its type stub lacks the aiokafka assignor methods.
        return self.app.assignor

    @property
    def client(self) -> Any:
        return self.consumer.client

    def request_rejoin(self) -> None:
        self._send_metadata = True

    # -- loop --------------------------------------------------------------------------------
    async def run(self) -> None:
        while not self.consumer.should_stop and self.state is not MemberState.STOPPED:
            try:
                await self.tick()
                self._backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.consumer.should_stop:
                    return
                if retryable(exc):
                    # Redis away, or refusing writes for now (out of memory, a replica): one
                    # line and a backoff, not a traceback every heartbeat.
                    await self._backoff.wait(logger, "group heartbeat", exc)
                    continue
                logger.exception("[group] %s: tick failed", self.member_id)
            if self._progressed:
                self._progressed = False
                await asyncio.sleep(0)
                continue
            await asyncio.sleep(self.settings.heartbeat_interval)

    async def tick(self) -> None:
        if self._send_metadata:
            await self._publish_metadata()
        is_leader, has_meta, gen, phase, stable_gen, now = await scripts.heartbeat(
            self.client,
            [self.keys.members, self.keys.leader, self.keys.state, self.keys.meta],
            [self.member_id, int(self.settings.session_timeout * 1000)],
        )
        if not int(has_meta):
            # Evicted (expired or timed out in a rebalance) while alive: join again.
            await self._publish_metadata()
        if bool(int(is_leader)) != self.is_leader:
            self.is_leader = bool(int(is_leader))
            if self.is_leader:
                logger.info("[group] %s: leader of group %s", self.member_id, self.app.conf.id)
        if self.is_leader:
            await self._lead(int(now))
        await self._follow(int(gen), phase.decode() if phase else "", int(stable_gen))
        if (
            self.state is MemberState.STABLE
            and int(now) / 1000 - self._last_report >= self.settings.retention_interval
        ):
            self._last_report = int(now) / 1000
            await self._report_applied()

    async def _publish_metadata(self) -> None:
        subscription = self.consumer.subscription()
        raw = self._assignor.metadata(subscription).encode()
        await self.client.hset(self.keys.meta, self.member_id, raw)
        self._send_metadata = False

    # -- leader ------------------------------------------------------------------------------
    async def _lead(self, now: int) -> None:
        expired = await scripts.expire_members(
            self.client, [self.keys.members, self.keys.meta, self.keys.leader], [self.member_id]
        )
        for member in expired:
            logger.warning("[group] member %s missed its heartbeats: removed", member.decode())
        if expired:
            await self.client.hdel(self.keys.applied, *expired)
        members = {m.decode() for m in await self.client.zrange(self.keys.members, 0, -1)}
        metas = {
            m.decode(): raw
            for m, raw in (await self.client.hgetall(self.keys.meta)).items()
            if m.decode() in members
        }
        partitions = await self.consumer.topics.refresh()
        subscribed: set[str] = set()
        for raw in metas.values():
            subscribed.update(ConsumerProtocolMemberMetadata.decode(raw).subscription)
        snapshot: dict[str, Any] = {
            "members": {m: _member_identity(raw) for m, raw in sorted(metas.items())},
            "topics": {t: partitions.get(t, 0) for t in sorted(subscribed)},
        }
        state = await self.client.hgetall(self.keys.state)
        gen = int(state.get(b"gen", 0))
        phase = state.get(b"phase", b"").decode()
        recorded = orjson.loads(state.get(b"members", b"{}"))
        if snapshot != recorded:
            if not snapshot["members"]:
                return
            if not recorded.get("members") and self.settings.initial_rebalance_delay:
                # An empty group is forming: give the other members a moment to show up so
                # they do not each cause a rebalance.
                if self._change_seen_at is None:
                    self._change_seen_at = now
                if now - self._change_seen_at < self.settings.initial_rebalance_delay * 1000:
                    return
            self._change_seen_at = None
            why = f"{_describe_change(recorded, snapshot)} ({len(snapshot['members'])} members)"
            await self._begin_rebalance(gen, snapshot, why)
            return
        if phase == "revoking":
            await self._complete_rebalance(now, gen, state, snapshot, metas, partitions)
            return
        assignor = self._weighing()
        if phase == "stable" and assignor is not None:
            if self._watch.should_adopt(gen):
                await self._adopt_assignment(assignor, gen, now)
            if self._watch.due(now, gen, assignor.weighed_records):
                self._watch.last_look = now
                await self._check_traffic(assignor, gen, snapshot)
        if now / 1000 - self._last_retention >= self.settings.retention_interval:
            self._last_retention = now / 1000
            # Every member's topics, not only the leader's: members of different roles
            # (``--role match|deliver``) subscribe to different topics. A changelog of a table
            # this member does not have is known by faust's name for it, so that it is never
            # cut by length (only its old tombstones go).
            subscribed |= set(self.consumer.subscription())
            changelogs = set(self.app.tables.changelog_topics)
            changelogs |= {t for t in subscribed if is_changelog(t)}
            await retention.apply(
                self.client,
                self.consumer.keys,
                self.settings,
                {t: n for t, n in partitions.items() if t in subscribed},
                changelogs,
                group=self.app.conf.id,
            )

    @property
    def assignment_weighed_records(self) -> float:
        """Records per partition the assignment this member holds has been weighed against,
        if it leads the group and made or took over that assignment; else 0 (the gauge
        ``ocstream_group_assignment_weighed_records``; traffic.py's stages)."""
        assignor = self._weighing()
        assigned = self._watch.assigned
        if not self.is_leader or assignor is None or assigned is None:
            return 0.0
        if self.state is not MemberState.STABLE or assigned[0] != self.generation:
            return 0.0
        return assignor.weighed_records

    def _weighing(self) -> LoadAwareAssignor | None:
        """The app's assignor when it weighs traffic (``assignment = "load"`` and a
        :class:`LoadAwareAssignor`), else None."""
        assignor = self._assignor
        if self.settings.assignment == "load" and isinstance(assignor, LoadAwareAssignor):
            return assignor
        return None

    async def _adopt_assignment(self, assignor: LoadAwareAssignor, gen: int, now: int) -> None:
        """A leader that took over without a rebalance (the lease moved: the old leader was
        paused, or lost Redis for a while) did not make the current assignment, so it has
        nothing to weigh against the traffic. It takes the record the maker left (asked once
        per generation); from then on it checks as the maker did, counting from now."""
        raw = await self.client.get(self.keys.assigned_groups)
        record = orjson.loads(raw) if raw else None
        if not record or record.get("gen") != gen:
            return  # made by a release that keeps none, or with sticky: the next rebalance will
        assignor.adopt(record)
        self._watch.adopted(gen, now, assignor.weighed_records)
        logger.info("[group] generation %d: took over the traffic checks of its assignment", gen)

    async def _check_traffic(
        self, assignor: LoadAwareAssignor, gen: int, snapshot: dict[str, Any]
    ) -> None:
        """Weigh the records each partition carried against the current assignment, and start
        a rebalance when the watch says so (``traffic.TrafficWatch.judge``): weighing them would
        lower the busiest member's share of some group's records by ``REBALANCE_GAIN`` or more,
        at the first look that can tell for an assignment not yet settled, in
        ``load_uneven_checks`` checks in a row for a settled one."""
        before = assignor.weighed_records
        load = await self._records_written(snapshot["topics"])
        found = assignor.uneven(load, self._watch.window(load))
        verdict = self._watch.judge(load, found, before, assignor.weighed_records)
        if verdict is Verdict.WAIT:
            return  # too little traffic to tell busy partitions from quiet ones: look again
        METRICS.traffic_checks += 1
        if found is None or verdict is Verdict.EVEN:
            return
        what = (
            f"uneven traffic (the busiest member carries {found.busiest_before:.2f} of a "
            f"group's records; {found.busiest_after:.2f} once weighed; "
            f"{assignor.weighed_records:.0f} records per partition weighed, an assignment "
            f"{self._watch.stage(before)} before this look)"
        )
        if verdict is Verdict.UNEVEN_SMALL:
            logger.info(
                "[group] generation %d: %s; the assignment was weighed against %.0f: looking "
                "again until the sample is twice that",
                gen,
                what,
                self._watch.made_on,
            )
            return
        if verdict is Verdict.UNEVEN_ONCE:
            logger.info(
                "[group] generation %d: %s in %d check(s) in a row; a rebalance takes %d",
                gen,
                what,
                self._watch.uneven_in_row,
                self._watch.uneven_checks,
            )
            return
        if await self._begin_rebalance(gen, snapshot, what):
            METRICS.traffic_rebalances += 1

    async def _begin_rebalance(self, gen: int, snapshot: dict[str, Any], why: str) -> bool:
        """Start generation ``gen + 1`` (phase ``revoking``) with ``snapshot`` recorded, if
        this member still leads at ``gen``; logs ``why``."""
        new_gen = await scripts.begin_rebalance(
            self.client,
            [self.keys.state, self.keys.leader],
            [self.member_id, gen, orjson.dumps(snapshot)],
        )
        if new_gen:
            self._progressed = True
            self._watch.rebalancing()
            logger.info("[group] generation %d: %s", new_gen, why)
        return bool(new_gen)

    async def _records_written(self, partitions: dict[str, int]) -> dict[str, list[int]]:
        """Records written so far to each partition of each of ``partitions``' topics (the
        group's subscriptions), from the transport's sequence counters: one ``MGET``."""
        topics = sorted(t for t, count in partitions.items() if count > 0)
        if not topics:
            return {}
        keys = [self.consumer.keys.sequence(t, n) for t in topics for n in range(partitions[t])]
        counts = iter(await self.client.mget(keys))
        return {t: [int(next(counts) or 0) for _ in range(partitions[t])] for t in topics}

    async def _complete_rebalance(
        self,
        now: int,
        gen: int,
        state: dict[bytes, bytes],
        snapshot: dict[str, Any],
        metas: dict[str, bytes],
        partitions: dict[str, int],
    ) -> None:
        expected = set(snapshot["members"])
        acked = {m.decode() for m in await self.client.smembers(self.keys.revoked(gen))}
        waiting = expected - acked
        if waiting:
            started = int(state.get(b"started", now))
            if now - started < self.settings.rebalance_timeout * 1000:
                return
            logger.warning(
                "[group] generation %d: %s did not release within %.0fs: evicted",
                gen,
                ", ".join(sorted(waiting)),
                self.settings.rebalance_timeout,
            )
        participants = sorted(expected - waiting)
        member_metadata = {m: ConsumerProtocolMemberMetadata.decode(metas[m]) for m in participants}
        weighing = self._weighing()
        if weighing is not None:
            load = await self._records_written(snapshot["topics"])
            assignment = weighing.assign_weighed(
                _Cluster(partitions), member_metadata, load, self._watch.window(load)
            )
        else:
            assignment = self._assignor.assign(_Cluster(partitions), member_metadata)
        final = {
            "members": {m: snapshot["members"][m] for m in participants},
            "topics": snapshot["topics"],
        }
        # The record a leader taking over without a rebalance weighs (_adopt_assignment),
        # written by the script that publishes the assignment.
        record = orjson.dumps({"gen": gen, **weighing.record()}) if weighing is not None else b""
        args: list[Any] = [
            self.member_id,
            gen,
            orjson.dumps(final),
            record,
            len(waiting),
            *sorted(waiting),
        ]
        for member, member_assignment in assignment.items():
            args += [member, member_assignment.encode()]
        done = await scripts.complete_rebalance(
            self.client,
            [
                self.keys.state,
                self.keys.leader,
                self.keys.assignment(gen),
                self.keys.members,
                self.keys.meta,
                self.keys.assignment(0)[:-1],
                self.keys.assigned_groups,
            ],
            args,
        )
        if done:
            self._progressed = True
            self._watch.made(gen, now, weighing.weighed_records if weighing is not None else 0.0)
            logger.info("[group] generation %d assigned to %d members", gen, len(participants))

    # -- every member ------------------------------------------------------------------------
    async def _follow(self, gen: int, phase: str, stable_gen: int) -> None:
        if phase == "revoking" and gen > self._acked_generation:
            await self._release(commit=True)
            await scripts.ack_revoke(
                self.client, [self.keys.state, self.keys.revoked(gen)], [self.member_id, gen]
            )
            self._acked_generation = gen
            self.state = MemberState.REVOKED
            self._progressed = True
            return
        if phase != "stable" or stable_gen in (self.generation, self._checked_generation):
            return
        raw = await self.client.hget(self.keys.assignment(stable_gen), self.member_id)
        if raw is None:
            self._checked_generation = stable_gen
            # Not part of this generation (joined late, or evicted): give back anything held,
            # whose offsets it can no longer commit anyway, and make sure the leader sees us.
            if self.consumer.assignment():
                await self._release(commit=False)
            self.state = MemberState.JOINING
            self._send_metadata = True
            return
        await self._take(stable_gen, raw)
        self._progressed = True

    async def _release(self, *, commit: bool) -> None:
        consumer = self.consumer
        revoked = consumer.assignment()
        self.app.on_rebalance_start()
        if revoked and commit:
            # faust's own revoke drops the acks of these partitions before its commit (the
            # cause of faust-streaming#502), so drain and commit first.
            consumer.stop_flow()
            self.app.flow_control.suspend()
            consumer.pause_partitions(revoked)
            self.app.flow_control.clear()
            await consumer.wait_empty()
            # wait_empty's own commit is skipped when a periodic commit is already running
            # (that one took its offsets before waiting for the producer flush, so it can be
            # far behind what was acked since): let it finish, then commit what is acked now.
            while await consumer.maybe_wait_for_commit_to_finish():
                pass
            await consumer.commit()
        await consumer.on_partitions_revoked(revoked)
        consumer.set_assignment(set())
        if revoked:
            logger.info("[group] %s: released %d partitions", self.member_id, len(revoked))

    async def _take(self, gen: int, raw: bytes) -> None:
        if self.consumer.assignment():
            await self._release(commit=True)
        assignment = ConsumerProtocolMemberAssignment.decode(raw)
        tps = {TP(topic, p) for topic, parts in assignment.assignment for p in parts}
        # Before faust reads the stores' persisted offsets: a store that may have missed
        # removed tombstones is discarded, and faust recovers it from the changelog's start.
        await local_state.discard_stale(self.app, self.client, self.consumer.keys, tps)
        # Only now: a failed read above is retried by the next tick.
        self._checked_generation = gen
        self._assignor.on_assignment(assignment)
        if not self.app.rebalancing:
            self.app.on_rebalance_start()
        self.generation = gen
        self.state = MemberState.STABLE
        METRICS.rebalances += 1
        self.consumer.set_assignment(tps)
        self.app.consumer_generation_id = gen
        logger.info("[group] %s: generation %d -> %d partitions", self.member_id, gen, len(tps))
        await self.consumer.on_partitions_assigned(tps, gen)
        # Our metadata now carries this assignment, which keeps the next one sticky.
        self._send_metadata = True

    async def _report_applied(self) -> None:
        """Tell the leader how far this member's stores applied the changelog partitions it
        holds, for this generation (``local_state``); tombstones below go once all holders
        have applied them."""
        local_state.flush_changelog_buffers(self.app)
        positions = local_state.applied_positions(self.app, self.consumer.assignment())
        report = {"gen": self.generation, "applied": positions}
        await self.client.hset(self.keys.applied, self.member_id, orjson.dumps(report))

    async def commit(self, offsets: dict[str, int]) -> bool:
        args: list[Any] = [self.member_id, self.generation]
        for field, offset in offsets.items():
            args += [field, offset]
        accepted = await scripts.commit(
            self.client,
            [self.keys.state, self.keys.offsets, self.keys.revoked(0)[:-1]],
            args,
        )
        return bool(accepted)

    async def leave(self) -> None:
        """Graceful stop: a dynamic member leaves now, so the others rebalance at once.

        A static member stays registered until its session times out, so that a restart (a
        rolling upgrade) gets the same partitions back without a rebalance.
        """
        self.state = MemberState.STOPPED
        if self.static:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.zrem(self.keys.members, self.member_id)
            pipe.hdel(self.keys.meta, self.member_id)
            pipe.hdel(self.keys.applied, self.member_id)
            await pipe.execute()
            if await self.client.get(self.keys.leader) == self.member_id.encode():
                await self.client.delete(self.keys.leader)
            logger.info("[group] %s: left group %s", self.member_id, self.app.conf.id)
        except TRANSIENT_ERRORS as exc:
            logger.warning("[group] %s: could not leave cleanly: %s", self.member_id, exc)


def _describe_change(before: dict[str, Any], after: dict[str, Any]) -> str:
    old = before.get("members", {})
    new = after.get("members", {})
    parts = []
    if joined := sorted(set(new) - set(old)):
        parts.append("joined " + ", ".join(joined))
    if left := sorted(set(old) - set(new)):
        parts.append("left " + ", ".join(left))
    if changed := sorted(m for m in set(new) & set(old) if new[m] != old[m]):
        parts.append("changed " + ", ".join(changed))
    if before.get("topics") != after.get("topics"):
        parts.append("topics changed")
    return "; ".join(parts) or "first assignment"
