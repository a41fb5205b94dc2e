"""The group protocol's Lua transitions on real Redis 7 and 6.2: leases, generations, fencing."""

from __future__ import annotations

from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from ocstream.transport import Keyspace, scripts
from ocstream.transport.keys import GroupKeys


@pytest.fixture
def group(prefix: str) -> GroupKeys:
    return Keyspace(prefix).group("g")


async def beat(
    client: aioredis.Redis, g: GroupKeys, member: str, session_ms: int = 5000
) -> list[Any]:
    return list(
        await scripts.heartbeat(
            client, [g.members, g.leader, g.state, g.meta], [member, session_ms]
        )
    )


async def commit(client: aioredis.Redis, g: GroupKeys, member: str, gen: int, offset: int) -> int:
    return int(
        await scripts.commit(
            client, [g.state, g.offsets, g.revoked(0)[:-1]], [member, gen, "t\x1f0", offset]
        )
    )


async def test_first_heartbeat_takes_the_lease_by_server_time(
    client: aioredis.Redis, group: GroupKeys
) -> None:
    is_leader, has_meta, gen, phase, stable, now = await beat(client, group, "a")
    assert (is_leader, has_meta, int(gen)) == (1, 0, 0)
    server_seconds, micros = await client.time()
    server_ms = server_seconds * 1000 + micros // 1000
    assert abs(int(now) - server_ms) < 1000
    assert int(cast(float, await client.zscore(group.members, "a"))) == int(now) + 5000
    assert (await beat(client, group, "b"))[0] == 0  # the lease is taken
    assert (await beat(client, group, "a"))[0] == 1  # and renewed by its holder


async def test_only_the_leader_at_the_expected_generation_moves_the_group(
    client: aioredis.Redis, group: GroupKeys
) -> None:
    await beat(client, group, "a")
    keys = [group.state, group.leader]
    assert await scripts.begin_rebalance(client, keys, ["b", 0, "{}"]) == 0  # not the leader
    assert await scripts.begin_rebalance(client, keys, ["a", 5, "{}"]) == 0  # stale generation
    assert await scripts.begin_rebalance(client, keys, ["a", 0, "{}"]) == 1
    complete = [
        group.state,
        group.leader,
        group.assignment(1),
        group.members,
        group.meta,
        group.assignment(0)[:-1],
        group.assigned_groups,
    ]
    record = b'{"gen": 1}'
    args = ["b", 1, "{}", record, 0, "a", b"x"]
    assert await scripts.complete_rebalance(client, complete, args) == 0
    assert not await client.exists(group.assigned_groups)  # fenced: nothing written
    args[0] = "a"
    assert await scripts.complete_rebalance(client, complete, args) == 1
    assert await client.hget(group.state, "phase") == b"stable"
    assert await client.hget(group.assignment(1), "a") == b"x"
    # The leader's record of the assignment is written with it, in the same step.
    assert await client.get(group.assigned_groups) == record
    # A leader that keeps no record (faust's assignment alone) removes the old one.
    assert await scripts.begin_rebalance(client, keys, ["a", 1, "{}"]) == 2
    complete[2] = group.assignment(2)
    assert await scripts.complete_rebalance(client, complete, ["a", 2, "{}", "", 0, "a", b"y"])
    assert not await client.exists(group.assigned_groups)


async def test_a_zombie_cannot_move_offsets(client: aioredis.Redis, group: GroupKeys) -> None:
    await beat(client, group, "a")
    state, leader = [group.state, group.leader], group.leader
    complete = [
        group.state,
        leader,
        group.assignment(1),
        group.members,
        group.meta,
        group.assignment(0)[:-1],
        group.assigned_groups,
    ]
    # Generation 1: "old" owns the partition.
    await scripts.begin_rebalance(client, state, ["a", 0, "{}"])
    await scripts.complete_rebalance(client, complete, ["a", 1, "{}", "", 0, "old", b"x"])
    assert await commit(client, group, "old", 1, 10) == 1
    # Generation 2 starts: until it releases, "old" may still commit (commit before revoke).
    await scripts.begin_rebalance(client, state, ["a", 1, "{}"])
    assert await commit(client, group, "old", 1, 20) == 1
    assert await scripts.ack_revoke(client, [group.state, group.revoked(2)], ["old", 2]) == 1
    # Once it has released, it is fenced, and so is everyone during the rebalance.
    assert await commit(client, group, "old", 1, 30) == 0
    assert await commit(client, group, "new", 2, 30) == 0
    complete[2] = group.assignment(2)
    await scripts.complete_rebalance(client, complete, ["a", 2, "{}", "", 0, "new", b"y"])
    # Generation 2 is stable: the new owner commits, the zombie of generation 1 cannot.
    assert await commit(client, group, "new", 2, 40) == 1
    assert await commit(client, group, "old", 1, 15) == 0
    assert await client.hget(group.offsets, "t\x1f0") == b"40"
    # The previous generation's assignment was cleaned up.
    assert not await client.exists(group.assignment(1))


async def test_ack_for_an_old_generation_is_ignored(
    client: aioredis.Redis, group: GroupKeys
) -> None:
    await beat(client, group, "a")
    await scripts.begin_rebalance(client, [group.state, group.leader], ["a", 0, "{}"])
    await scripts.begin_rebalance(client, [group.state, group.leader], ["a", 1, "{}"])
    assert await scripts.ack_revoke(client, [group.state, group.revoked(1)], ["m", 1]) == 0
    assert await scripts.ack_revoke(client, [group.state, group.revoked(2)], ["m", 2]) == 1


async def test_expired_members_are_removed_by_the_leader_only(
    client: aioredis.Redis, group: GroupKeys
) -> None:
    await beat(client, group, "a", session_ms=60_000)
    await beat(client, group, "gone", session_ms=1)
    await client.hset(group.meta, mapping={"a": b"1", "gone": b"2"})
    keys = [group.members, group.meta, group.leader]
    assert await scripts.expire_members(client, keys, ["gone"]) == []  # not the leader
    # Deadlines are judged by Redis time: wait until the server clock passes it.
    deadline = cast(float, await client.zscore(group.members, "gone"))  # a member: a score
    while True:
        seconds, micros = await client.time()
        if seconds * 1000 + micros // 1000 > deadline:
            break
    assert await scripts.expire_members(client, keys, ["a"]) == [b"gone"]
    assert await client.hkeys(group.meta) == [b"a"]
