"""End to end on the local network: real signed DMP, UMP and XCMP transfers, through one
``ocstream ingress`` and two ``ocstream worker`` processes, to a signed webhook; each fault
test ends with every transfer's journey delivered exactly once (``docs/e2e.md``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import SYSTEM_REDIS_URL
from tests.localnet.network import LocalNet
from tests.workers import wait_for

from .harness import PrivateRedis, Stack, running_stack

pytestmark = pytest.mark.timeout(300)


def test_transfers_reach_the_webhook(net: LocalNet, root: Path) -> None:
    with running_stack(net, SYSTEM_REDIS_URL, root, "plain") as stack:
        stack.transfer("dmp", "ump", "xcmp")
        stack.wait_delivered()
        time.sleep(2)  # a duplicate would come now, not later: nothing is left pending
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
        time.sleep(2)
        stack.assert_exactly_once()


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
        time.sleep(2)
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
            stack.wait_delivered(timeout=180)
            for child in (stack.ingress, *stack.workers):
                assert child.alive(), child.log_tail()
            time.sleep(2)
            stack.assert_exactly_once()
    finally:
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
        before = failed_attempts(stack)
        receiver.stop()
        stack.transfer("ump")
        wait_for(lambda: failed_attempts(stack) >= before + 2, 60, "two refused connections")
        receiver.start()
        stack.transfer("xcmp")
        stack.wait_delivered()
        time.sleep(2)
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
        time.sleep(2)
        stack.assert_exactly_once()
        assert set(stack.sent) == {"dmp", "ump", "xcmp", "dmp#2"}
