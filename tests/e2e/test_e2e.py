"""End to end on the local network: real signed DMP, UMP and XCMP transfers, through one
``ocstream ingress`` and two ``ocstream worker`` processes, to a signed webhook; each fault
test ends with every transfer's journey delivered exactly once (``docs/e2e.md``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import SYSTEM_REDIS_URL
from tests.localnet.check import RELAY, notifications
from tests.localnet.network import LocalNet, rpc_call
from tests.workers import wait_for

from .harness import PrivateRedis, Stack, running_stack, version_negotiation

pytestmark = pytest.mark.timeout(300)


def test_transfers_reach_the_webhook(net: LocalNet, root: Path) -> None:
    with running_stack(net, SYSTEM_REDIS_URL, root, "plain") as stack:
        stack.transfer("dmp", "ump", "xcmp")
        stack.wait_delivered()
        stack.wait_settled()  # a duplicate would have come by now: nothing is left to process
        stack.assert_exactly_once()


def test_a_worker_killed_mid_flow(net: LocalNet, root: Path) -> None:
    """kill -9 of the worker the subscriptions were created on, right after the first transfer:
    the other worker takes over its partitions and its deliveries."""
    with running_stack(net, SYSTEM_REDIS_URL, root, "killworker") as stack:
        stack.transfer("dmp")
        stack.workers[0].kill9()
        stack.transfer("ump", "xcmp")
        stack.wait_delivered()
        assert stack.workers[1].alive(), stack.workers[1].log_tail()
        stack.wait_settled()
        # A POST the killed worker made but had not marked done is posted again by the other
        # worker once its lease expires, with the same webhook-id.
        stack.assert_exactly_once(redelivered=stack.expired_leases())


def test_the_ingress_killed_and_restarted_fills_the_gap(net: LocalNet, root: Path) -> None:
    """kill -9 of the ingress; all three transfers while it is down; started again, it resumes
    from its stored tips and publishes the blocks it missed. The relay block of the DMP is read
    late, after chopsticks emptied its ``Dmp.DownwardMessageQueues`` (XCM.md §16): that send
    has no bytes and is matched by its downward slot (docs/matching.md)."""
    with running_stack(net, SYSTEM_REDIS_URL, root, "killingress") as stack:
        stack.ingress.kill9()
        stack.transfer("dmp", "ump", "xcmp")
        assert not stack.receiver.snapshot()  # nothing can have been seen yet
        stack.ingress.start()
        # The restarted ingress catches up when the chains announce a new head; an idle
        # chopsticks chain announces none (a live chain would within a block time).
        stack.new_blocks()
        stack.wait_delivered()
        stack.wait_settled()
        stack.assert_exactly_once()


def delivered_once_by_all(stack: Stack) -> None:
    """Every transfer's journey delivered (within 180 s: Redis faults delay them), the ingress
    and both workers still running, and each journey delivered exactly once."""
    stack.wait_delivered(timeout=180)
    for child in (stack.ingress, *stack.workers):
        assert child.alive(), child.log_tail()
    stack.wait_settled()
    stack.assert_exactly_once()


def test_a_redis_restart(net: LocalNet, root: Path) -> None:
    """A private redis-server (AOF, fsync always) is killed (SIGKILL) right after the first
    transfer and started again on the same port and directory; everyone reconnects."""
    server = PrivateRedis(root / "redis").start()
    try:
        with running_stack(net, server.url, root, "redis") as stack:
            stack.transfer("dmp")
            server.kill9()
            server.start()
            stack.transfer("ump")
            server.kill9()
            server.start()
            stack.transfer("xcmp")
            delivered_once_by_all(stack)
    finally:
        server.stop()


#: How long the private Redis refuses writes in the next test: the UMP transfer's blocks come
#: meanwhile, and the ingress and the workers retry several times (their backoffs start at
#: 0.1 s). It outlasts the test workers' 3 s session (heartbeats are refused too), so once
#: Redis takes writes the leader removes a member whose beats were refused and the group
#: rebalances: that must lose nothing either.
REFUSED_FOR = 5.0


def test_redis_refusing_writes_for_a_while(net: LocalNet, root: Path) -> None:
    """A private redis-server is brought to its ``maxmemory`` (policy ``noeviction``) right after
    the first transfer, while its journey is under way, and answers every write ``OOM`` for
    :data:`REFUSED_FOR` seconds, during which the second transfer is made; then writes are
    allowed again. Nobody drops what Redis refused (before, the workers' producer failed those
    writes: notifications were lost and a refused commit stopped the worker)."""
    server = PrivateRedis(root / "redis").start()
    client = redis.Redis.from_url(server.url)
    try:
        with running_stack(net, server.url, root, "refused") as stack:
            stack.transfer("dmp")
            used = int(client.info("memory")["used_memory"])
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", used // 2)
            try:
                with pytest.raises(redis.exceptions.ResponseError, match="OOM|maxmemory"):
                    client.set("probe", "x")  # the premise: Redis refuses writes now
                stack.transfer("ump")
                time.sleep(REFUSED_FOR)
            finally:
                client.config_set("maxmemory", 0)
            stack.transfer("xcmp")
            delivered_once_by_all(stack)
            # The refusal reached the ingress (the UMP transfer's blocks came during it).
            assert "maxmemory" in stack.ingress.log_text(), stack.ingress.log_tail()
    finally:
        client.close()
        server.stop()


def failed_attempts(stack: Stack) -> int:
    """Failed webhook attempts, summed over the two workers' /metrics."""
    total = 0
    for port, worker in zip(stack.worker_ports, stack.workers, strict=True):
        if not worker.alive():
            continue
        for line in stack.http("GET", port, "/metrics")[1].splitlines():
            if line.startswith("oc_webhook_failed_attempts_total"):
                total += int(float(line.split()[-1]))
    return total


def test_the_receiver_down_then_back(net: LocalNet, root: Path) -> None:
    """The receiver answers 503 to the DMP journey's first attempts, then refuses connections
    for the UMP journey's; each outage ends as soon as both first attempts failed, before the
    second attempt (5 s later), which delivers. XCMP goes through normally."""
    with running_stack(net, SYSTEM_REDIS_URL, root, "receiver") as stack:
        receiver = stack.receiver
        receiver.status = 503
        stack.transfer("dmp")
        wait_for(
            lambda: len([r for r in receiver.snapshot() if r.status == 503]) >= 2,
            60,
            "the DMP journey's two first attempts to be refused",
        )
        receiver.status = 204
        # Every delivery answered 503 (the DMP journey's, and any other notification's then)
        # is delivered by its second attempt, 5 s later. Wait for those before the next
        # outage: on a slow machine one could meet it, and its third attempt is 5 min away.
        refused_ids = {r.headers["webhook-id"] for r in receiver.snapshot() if r.status == 503}
        wait_for(
            lambda: refused_ids <= {r.headers["webhook-id"] for r in receiver.delivered()},
            60,
            "the deliveries answered 503 to be delivered",
        )
        before = failed_attempts(stack)
        receiver.stop()
        stack.transfer("ump")
        wait_for(lambda: failed_attempts(stack) >= before + 2, 60, "two refused connections")
        receiver.start()
        stack.transfer("xcmp")
        stack.wait_delivered()
        stack.wait_settled()
        stack.assert_exactly_once()
        refused = [r for r in receiver.snapshot() if r.status == 503]
        delivered_ids = {r.headers["webhook-id"] for r in receiver.delivered()}
        # The refused deliveries were delivered later, under the same delivery id.
        assert {r.headers["webhook-id"] for r in refused} <= delivered_ids


def test_a_chain_node_stopped_and_restarted(net: LocalNet, root: Path) -> None:
    """The ingress's RPC node of every chain goes away (its port closed, its connections reset)
    after the first DMP; the UMP and XCMP transfers are made while it is down, the chains going
    on without it; it comes back on the same port, the ingress reconnects, fills the gap, and
    a second DMP follows. Every journey is delivered once."""
    with running_stack(net, SYSTEM_REDIS_URL, root, "node", endpoints=True) as stack:
        stack.transfer("dmp")
        stack.wait_delivered()
        for endpoint in stack.endpoints.values():
            endpoint.stop()
        stack.transfer("ump", "xcmp")
        # The ingress notices: each chain's connection drops and reconnecting is refused.
        wait_for(
            lambda: stack.ingress.log_text().count("↻") >= 2 * len(stack.endpoints),
            60,
            "the ingress to retry every chain at least twice",
        )
        assert not stack.complete()  # the UMP and XCMP journeys cannot have been seen
        accepted = {name: e.connections for name, e in stack.endpoints.items()}
        for endpoint in stack.endpoints.values():
            endpoint.start()
        stack.new_blocks()  # an idle chopsticks chain announces no head by itself
        stack.transfer("dmp")
        stack.wait_delivered()
        # Every chain was reached again through its restarted endpoint.
        assert all(e.connections > accepted[n] for n, e in stack.endpoints.items()), accepted
        stack.wait_settled()
        stack.assert_exactly_once()
        assert set(stack.sent) == {"dmp", "ump", "xcmp", "dmp#2"}


# -- identical messages, replayed and late receipts (issue 11, point 5) -----------------------

#: Keeps the workers from committing their offsets on a timer before the kill (the default is
#: every second): whatever they processed since they started is read again after a kill -9.
NO_TIMED_COMMIT = "[worker]\ncommit_interval = 600\n"
#: A 10 s group session (3 s in the other tests): a worker slowed down by the machine's load
#: does not miss its heartbeats and force a rebalance, which would commit before the kill.
SLOW_SESSION = {"OCSTREAM_TRANSPORT_SESSION_TIMEOUT": "10"}


def send_dmp(stack: Stack, heads: dict[str, int]) -> str:
    """A DMP transfer (relay → 1000, 5 DOT-planck·10¹² to Bob: the same bytes every time);
    notes para 1000's head before it, so that its receipt block can be told apart."""
    head = stack.head_number("para1000")
    stack.transfer("dmp")
    label = list(stack.sent)[-1]
    heads[label] = head
    return label


def receipt_blocks(stack: Stack, heads: dict[str, int], message: str) -> dict[str, str]:
    """Per DMP label: the hash of the para 1000 block that executed that transfer's message.
    Downward messages to a para run in the order they were sent (one queue, one message per
    block here), so the k-th transfer's receipt is the k-th para 1000 block after the para's
    head at the first transfer that reports the message's ``DmpQueue.ExecutedDownward``:
    what the chain did, from the published blocks, not from the matcher."""
    start = min(heads.values())

    def executed() -> list[str] | None:
        found = [h for n, h, m in stack.dmp_receipts() if m == message and n > start]
        return found if len(found) >= len(heads) else None

    blocks = wait_for(executed, 60, f"{len(heads)} executions of {message} on para 1000")
    assert blocks is not None and len(blocks) == len(heads), (blocks, heads)
    return dict(zip(heads, blocks, strict=True))


def topic_notes(stack: Stack, label: str) -> list[dict[str, Any]]:
    """The notifications (one per id) on ``xcm-notifications`` of a transfer's journey."""
    transfer = stack.sent[label]
    notes = notifications(stack.client, stack.prefix)
    ids = {
        n["journeyId"]
        for n in notes
        if n["origin"]["chainId"] == RELAY
        and n["origin"]["blockHash"] == transfer.block_hash
        and not version_negotiation(n)
    }
    return [n for n in notes if n["journeyId"] in ids]


def sent_hash(stack: Stack, label: str) -> str:
    sent = stack.journeys()[label]["xcm.sent"][0].json
    return str(sent["waypoint"]["messageHash"])


def test_identical_transfers_before_and_after_a_kill_of_both_workers(
    net: LocalNet, root: Path
) -> None:
    """Three byte-identical DMP transfers (same amount, same beneficiary: one message hash);
    after the first one's receipt reached the webhook, both workers are killed (-9) at once,
    started again, and the two others follow.

    The replay of the first receipt is made certain, not left to timing: the workers start
    with ``commit_interval = 600`` (``NO_TIMED_COMMIT``), so they commit no offset on their own
    between their start and the kill, and with a 10 s group session (``SLOW_SESSION``); the
    first transfer waits for the group to settle, so that no rebalance (which commits) comes
    in between. The test reads, right after the kill, the group's
    committed offset of the receipt record's ``xcm-legs`` partition and asserts it is not past
    that record; the workers restart with the default one-second commit, and the test waits
    until the committed offset has moved past the record (it was read and processed again)
    and sees the engine count duplicate legs. Everything else they had processed (the blocks,
    the notifications) is read again too.

    Reproduces the live failure of issue 11: the replayed receipt was kept waiting and became
    the receipt of the next identical transfer, each later journey reported one receipt
    behind. Now every journey has exactly one xcm.received, at its own receipt block, each
    delivered once, and no journey has a receipt at another transfer's block.
    """
    with running_stack(
        net,
        SYSTEM_REDIS_URL,
        root,
        "identical",
        worker_config=NO_TIMED_COMMIT,
        worker_env=SLOW_SESSION,
    ) as stack:
        heads: dict[str, int] = {}
        generation = stack.wait_group_settled()
        first = send_dmp(stack, heads)
        stack.wait_delivered()
        for worker in stack.workers:
            worker.kill9()
        # A rebalance commits what was processed: the group's lines explain a failure below.
        group = [line for w in stack.workers for line in w.log_text().splitlines()]
        group = [line for line in group if "[group]" in line][-12:]
        state = stack.client.hget(f"{stack.prefix}g:{stack.app_id}:state", "gen")
        group.append(f"generation {generation} before the transfer, {state!r} at the kill")
        message = sent_hash(stack, first)
        receipt = receipt_blocks(stack, heads, message)[first]
        records = [
            (partition, offset)
            for partition, offset, value in stack.topic_records("xcm-legs")
            if value.get("kind") == "received" and value["leg"]["block_hash"] == receipt
        ]
        assert len(records) == 1, records  # the receipt's record, read once before the kill
        partition, offset = records[0]
        committed = stack.committed("xcm-legs").get(partition, 0)
        # The receipt's record will be read again after the restart.
        assert committed <= offset, (partition, offset, committed, "\n".join(group))

        stack.drop_worker_config()
        stack.start_workers()
        wait_for(
            lambda: stack.committed("xcm-legs").get(partition, 0) > offset,
            90,
            "the restarted workers to process the receipt's record again",
        )
        duplicates = stack.metric("oc_xcm_duplicate_legs_total")
        assert duplicates >= 1, stack.logs()
        send_dmp(stack, heads)
        stack.wait_delivered()
        send_dmp(stack, heads)
        stack.wait_delivered()
        stack.wait_settled()
        stack.assert_exactly_once()

        labels = ["dmp", "dmp#2", "dmp#3"]
        assert list(stack.sent) == labels
        assert {sent_hash(stack, label) for label in labels} == {message}  # identical bytes
        receipts = receipt_blocks(stack, heads, message)
        assert len(set(receipts.values())) == 3, receipts
        journeys = stack.journeys()
        for label in labels:
            received = journeys[label]["xcm.received"][0].json
            assert received["waypoint"]["blockHash"] == receipts[label], (label, receipts)
            assert "late" not in received
            # On the topic too: one xcm.received per journey (a replay re-emits the same id).
            on_topic = [n for n in topic_notes(stack, label) if n["type"] == "xcm.received"]
            assert [n["waypoint"]["blockHash"] for n in on_topic] == [receipts[label]], label


#: The workers' journey timeout in the late-receipt test (the default is an hour).
JOURNEY_TTL = 20


def build_mode(stack: Stack, chain: str, mode: str) -> None:
    """Chopsticks' block building of one chain: ``Instant`` (a block per transaction or XCM
    message, the local network's mode) or ``Manual`` (no block until ``dev_newBlock``)."""
    rpc_call(stack.net.url(chain), "dev_setBlockBuildMode", [mode], timeout=30)


def test_a_paused_destination_past_the_timeout_then_resumed(net: LocalNet, root: Path) -> None:
    """Para 1000 stops making blocks (chopsticks' ``Manual`` build mode: the downward message
    waits in its queue, as on a stalled chain) while a DMP is sent to it; the workers' journey
    timeout is 20 s (``OCSTREAM_XCM_JOURNEY_TTL``), so the webhook gets xcm.timeout. The para
    then resumes (one block, which executes the message) and a second, byte-identical DMP
    follows.

    Reproduces the live failure of issue 11, where the late receipt reached nobody and then
    became the receipt of the next identical transfer. Now the late receipt is reported once
    on ``xcm-notifications`` as xcm.received with ``"late": true`` at its real block, the
    delivery layer counts it as late (``oc_delivery_late_total``) and does not deliver it
    after the timeout, and the second transfer gets its own receipt, delivered once.
    """
    env = {"OCSTREAM_XCM_JOURNEY_TTL": str(JOURNEY_TTL)}
    with running_stack(net, SYSTEM_REDIS_URL, root, "late", worker_env=env) as stack:
        heads: dict[str, int] = {}
        build_mode(stack, "para1000", "Manual")
        try:
            first = send_dmp(stack, heads)
            stack.timed_out.add(first)
            stack.wait_delivered(timeout=JOURNEY_TTL + 90)  # xcm.sent, then xcm.timeout
            assert stack.head_number("para1000") == heads[first]  # the para really paused
        finally:
            build_mode(stack, "para1000", "Instant")
        rpc_call(net.para1000_url, "dev_newBlock", [{"count": 1}], timeout=30)

        def late_receipt() -> list[dict[str, Any]]:
            return [n for n in topic_notes(stack, first) if n["type"] == "xcm.received"]

        wait_for(late_receipt, 90, "the late receipt on xcm-notifications")
        wait_for(
            lambda: stack.metric("oc_delivery_late_total") >= 1,
            60,
            "the delivery layer to count the late receipt",
        )
        second = send_dmp(stack, heads)
        stack.wait_delivered()
        stack.wait_settled()
        # Webhook: first has xcm.sent and xcm.timeout only, second xcm.sent and xcm.received;
        # each delivered once, signed; nothing left to deliver.
        stack.assert_exactly_once()

        message = sent_hash(stack, first)
        assert sent_hash(stack, second) == message  # identical bytes
        receipts = receipt_blocks(stack, heads, message)
        assert receipts[first] != receipts[second], receipts
        (late,) = late_receipt()
        assert late["late"] is True, late
        assert late["waypoint"]["blockHash"] == receipts[first], (late, receipts)
        on_topic = [n for n in topic_notes(stack, second) if n["type"] == "xcm.received"]
        assert [n["waypoint"]["blockHash"] for n in on_topic] == [receipts[second]], on_topic
        assert "late" not in on_topic[0]
        delivered = stack.journeys()[second]["xcm.received"][0].json
        assert delivered["waypoint"]["blockHash"] == receipts[second], delivered
        # Counted once by the engine and once by the delivery layer (one subscription, the
        # relay's, wants this journey); no other late receipt in this test.
        assert stack.metric("oc_xcm_late_received_total") == 1, stack.logs()
        assert stack.metric("oc_delivery_late_total") == 1, stack.logs()
