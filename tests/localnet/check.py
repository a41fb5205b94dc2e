"""End-to-end check of the ingress against the offline local network.

    python -m tests.localnet.check [--workdir .localnet] [--redis redis://127.0.0.1:6379/0]

Starts chopsticks (relay + paras 1000 and 1001), runs ``ocstream ingress`` on them with a
private transport prefix, sends one DMP, one UMP and one XCMP transfer, then reads Redis:

* the registry lists the three networks, and each one's runtime metadata is stored;
* the ``blocks`` topic carries the block that included each transfer, and the destination's
  processing of it (correlated by message hash, XCM.md §16);
* the "sent" blocks carry the storage items the XCM agent needs (docs/extended-block.md).

Prints one PASS/FAIL line per check (INFO lines are observations), removes every Redis key of
its prefix, stops everything, and exits 1 if any check failed. Logs stay in
``<workdir>/logs``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis

from ocstream.ingress.decode import blake2_256 as ocstream_blake2_256
from ocstream.ingress.model import Event, ExtendedBlock, StorageItem
from ocstream.transport.wire import entry_value
from ocstream.xcm.extract import (
    decode_downward_queue,
    decode_hrmp_outbound,
    decode_upward_messages,
)
from tests.streams import xrange
from tests.workers import free_port

from .network import (
    LocalNet,
    Transfer,
    dmp_transfer,
    prepare,
    rpc_call,
    ump_transfer,
    xcmp_transfer,
)

REPO = Path(__file__).resolve().parents[2]
RELAY, PARA1000, PARA1001 = "urn:ocn:local:0", "urn:ocn:local:1000", "urn:ocn:local:1001"
#: twox128("Dmp") ++ twox128("DownwardMessageQueues"): the prefix of every para's queue key.
DMP_QUEUES_PREFIX = "0x63f78c98723ddc9073523ef3beefda0ca95dac46c07a40d91506e7637ec4ba57"


# -- reporting --------------------------------------------------------------------------------


@dataclass
class Report:
    """PASS/FAIL lines as they happen, and whether any failed."""

    failures: int = 0
    lines: list[str] = field(default_factory=list)

    def check(self, ok: bool, name: str, detail: str = "") -> bool:
        self._emit("PASS" if ok else "FAIL", name, detail)
        self.failures += not ok
        return ok

    def info(self, name: str, detail: str) -> None:
        self._emit("INFO", name, detail)

    def _emit(self, status: str, name: str, detail: str) -> None:
        line = f"{status} {name}" + (f": {detail}" if detail else "")
        self.lines.append(line)
        print(line, flush=True)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)


# -- the three storage values are read with the XCM extractor's own decoders ------------------


def blake2_256(data: bytes) -> str:
    return "0x" + ocstream_blake2_256(data).hex()


def map_key_suffix(para_id: int) -> str:
    """The end of a ``Twox64Concat`` map key for a u32: the key itself, in the clear."""
    return para_id.to_bytes(4, "little").hex()


# -- helpers over published blocks ------------------------------------------------------------


def storage_item(block: ExtendedBlock, pallet: str, item: str) -> list[StorageItem]:
    return [s for s in block.storage if s.pallet == pallet and s.item == item]


def first_field(event: Event) -> Any:
    """The first field of an event, whether the runtime named its fields or not."""
    fields = event.fields
    if isinstance(fields, dict):
        return next(iter(fields.values()), None)
    if isinstance(fields, list):
        return fields[0] if fields else None
    return None


def events_named(blocks: list[ExtendedBlock], module: str, name: str) -> Iterator[Event]:
    for block in blocks:
        for event in block.events:
            if event.module == module and event.name == name:
                yield event


# -- processes --------------------------------------------------------------------------------


@contextmanager
def running_child(
    command: list[str], env: dict[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A child in its own process group with its output in ``log_path``, stopped on exit
    (SIGTERM, which ocstream's commands handle cleanly; SIGKILL after 30 s)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def running_ingress(
    config: Path, redis_url: str, prefix: str, log_path: Path
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """``ocstream ingress`` on the local network's config."""
    env = dict(os.environ, OCSTREAM_TRANSPORT_PREFIX=prefix)
    command = [sys.executable, "-m", "ocstream", "ingress", "--config", str(config)]
    command += ["--redis", redis_url, "--port", str(free_port())]
    return running_child(command, env, log_path)


def running_worker(
    redis_url: str, prefix: str, log_path: Path, data_dir: Path
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """``ocstream worker`` on the same Redis and prefix: the XCM dataflow over what the
    ingress publishes."""
    app_id = prefix.rstrip(":") + "-xcm"
    env = dict(os.environ, OCSTREAM_TRANSPORT_PREFIX=prefix, OCSTREAM_APP_ID=app_id)
    command = [sys.executable, "-m", "ocstream", "worker", "-l", "info", "--redis", redis_url]
    command += ["--port", str(free_port()), "--data-dir", str(data_dir)]
    return running_child(command, env, log_path)


def write_config(directory: Path, net: LocalNet, urls: dict[str, str] | None = None) -> Path:
    """The ingress config for the three chains (``urls``: chain name -> URL, to reach them
    some other way than ``net.urls``)."""
    urls = urls or net.urls
    path = directory / "ingress.toml"
    path.write_text(
        f'[[networks]]\nid = "{RELAY}"\n'
        f'provider = {{ type = "rpc", url = "{urls["relay"]}" }}\n\n'
        f'[[networks]]\nid = "{PARA1000}"\nrelay = "{RELAY}"\n'
        f'provider = {{ type = "rpc", url = "{urls["para1000"]}" }}\n\n'
        f'[[networks]]\nid = "{PARA1001}"\nrelay = "{RELAY}"\n'
        f'provider = {{ type = "rpc", url = "{urls["para1001"]}" }}\n'
    )
    return path


# -- Redis reads ------------------------------------------------------------------------------


# The sync client's return types are unions with its async twin; cast to what it returns here.


def registry(client: redis.Redis, prefix: str) -> dict[str, dict[str, Any]]:
    raw = cast(dict[bytes, bytes], client.hgetall(f"{prefix}networks"))
    return {k.decode(): json.loads(v) for k, v in raw.items()}


def published_blocks(client: redis.Redis, prefix: str) -> dict[str, list[ExtendedBlock]]:
    """Every block on the ``blocks`` topic, by network, in publishing order."""
    partitions = int(cast(bytes | None, client.hget(f"{prefix}topics", "blocks")) or 0)
    out: dict[str, list[ExtendedBlock]] = {}
    for partition in range(partitions):
        for _, fields in xrange(client, f"{prefix}t:blocks:{partition}"):
            block = ExtendedBlock.from_json_bytes(cast(bytes, entry_value(fields)))
            out.setdefault(block.network, []).append(block)
    return out


def notifications(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    """Every notification on ``xcm-notifications``, one per notification id."""
    partitions = int(cast(bytes | None, client.hget(f"{prefix}topics", "xcm-notifications")) or 0)
    found: dict[str, dict[str, Any]] = {}
    for partition in range(partitions):
        stream = f"{prefix}t:xcm-notifications:{partition}"
        for _, fields in xrange(client, stream):
            note = json.loads(cast(bytes, entry_value(fields)))
            found[note["id"]] = note
    return list(found.values())


def journey_of(
    notes: list[dict[str, Any]], origin: str, block_hash: str
) -> dict[str, dict[str, Any]]:
    """The notifications, by type, of the journey sent from ``origin`` in that block."""
    journeys = {
        n["journeyId"]
        for n in notes
        if n["origin"]["chainId"] == origin and n["origin"]["blockHash"] == block_hash
    }
    return {n["type"]: n for n in notes if n["journeyId"] in journeys}


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    keys = list(client.scan_iter(match=f"{prefix}*", count=500))
    if keys:
        client.delete(*keys)
    return len(keys)


def destinations_reached(client: redis.Redis, prefix: str) -> bool:
    """Whether each transfer's destination has published its processing of a message.

    Chopsticks builds the receiving block after the sending one, asynchronously (HRMP a few
    hundred ms later), so stable heads alone do not mean the message has arrived.
    """
    blocks = published_blocks(client, prefix)
    return (
        any(events_named(blocks.get(PARA1000, []), "DmpQueue", "ExecutedDownward"))
        and any(events_named(blocks.get(RELAY, []), "Ump", "ExecutedUpward"))
        and any(
            e.module == "XcmpQueue" and e.name in ("Success", "Fail")
            for b in blocks.get(PARA1001, [])
            for e in b.events
        )
    )


def wait_caught_up(client: redis.Redis, prefix: str, net: LocalNet, timeout: float) -> None:
    """Until every network's ingress tip equals its chain's head, twice in a row.

    XCM delivery makes blocks on the destination after the sending block, asynchronously,
    so one equal reading could come just before the next block; two a poll apart are stable.
    """
    urns = {RELAY: net.relay_url, PARA1000: net.para1000_url, PARA1001: net.para1001_url}
    stable = 0

    def caught_up() -> bool:
        nonlocal stable
        records = registry(client, prefix)
        for urn, url in urns.items():
            head = int(rpc_call(url, "chain_getHeader")["number"], 16)
            if records.get(urn, {}).get("tip_number") != head:
                stable = 0
                return False
        stable += 1
        return stable >= 2

    wait_for(caught_up, timeout, "the ingress to reach every chain's head")


# -- the checks -------------------------------------------------------------------------------


def verify(
    report: Report,
    client: redis.Redis,
    prefix: str,
    sent: dict[str, Transfer],
) -> None:
    records = registry(client, prefix)
    for urn in (RELAY, PARA1000, PARA1001):
        record = records.get(urn)
        if not report.check(record is not None, f"registry {urn}", f"in {prefix}networks"):
            continue
        assert record is not None
        spec = record.get("spec_version")
        key = f"{prefix}metadata:{urn}:{spec}"
        report.check(bool(client.exists(key)), f"metadata {urn}", key)

    blocks = published_blocks(client, prefix)
    report.info("published", ", ".join(f"{k}: {len(v)} blocks" for k, v in sorted(blocks.items())))

    def find(urn: str, transfer: Transfer, label: str) -> ExtendedBlock | None:
        block = next((b for b in blocks.get(urn, []) if b.hash == transfer.block_hash), None)
        ok = block is not None and any(x.hash == transfer.extrinsic_hash for x in block.extrinsics)
        report.check(
            ok,
            f"{label} sent block published",
            f"{urn} #{transfer.block_number} {transfer.block_hash[:18]}…"
            + ("" if ok else " (block or its extrinsic missing from the blocks topic)"),
        )
        return block

    # DMP: relay -> 1000
    queue: list[bytes] = []
    block = find(RELAY, sent["dmp"], "DMP")
    if block is not None:
        items = storage_item(block, "Dmp", "DownwardMessageQueues")
        para_key = [s for s in items if s.key.endswith(map_key_suffix(1000))]
        report.check(
            bool(para_key) and para_key[0].key.startswith(DMP_QUEUES_PREFIX),
            "DMP storage Dmp.DownwardMessageQueues(1000) attached",
            f"{len(items)} item(s)",
        )
        queue = [
            message
            for item in para_key
            if item.value
            for _, message in decode_downward_queue(bytes.fromhex(item.value[2:]))
        ]
        # XCM.md §16 says chopsticks empties the queue as it forwards the message. It does so
        # in the head's state after the block, so a read at the sent block's own hash (what
        # the ingress does) may still see the message: reported, not required.
        report.info(
            "DMP queue at the sent block",
            f"{len(queue)} message(s): {[blake2_256(m)[:18] + '…' for m in queue]}",
        )
    executed = {
        str(first_field(e))
        for e in events_named(blocks.get(PARA1000, []), "DmpQueue", "ExecutedDownward")
    }
    report.check(bool(executed), "DMP received on 1000", f"{len(executed)} ExecutedDownward")
    if block is not None and queue:
        report.check(
            any(blake2_256(m) in executed for m in queue),
            "DMP correlated: blake2_256(queued msg) = 1000 DmpQueue.ExecutedDownward id",
        )

    # UMP: 1000 -> relay
    block = find(PARA1000, sent["ump"], "UMP")
    if block is not None:
        items = storage_item(block, "ParachainSystem", "UpwardMessages")
        value = items[0].value if items else None
        messages = decode_upward_messages(bytes.fromhex(value[2:])) if value else []
        report.check(
            bool(messages),
            "UMP storage ParachainSystem.UpwardMessages attached, non-empty",
            f"{len(messages)} message(s)",
        )
        upward_ids = {
            str(first_field(e)) for e in events_named(blocks[RELAY], "Ump", "ExecutedUpward")
        }
        hashes = [blake2_256(m) for m in messages if m]
        report.check(
            any(h in upward_ids for h in hashes),
            "UMP correlated: blake2_256(message) = relay Ump.ExecutedUpward id",
            ", ".join(h[:18] + "…" for h in hashes),
        )

    # XCMP: 1000 -> 1001
    block = find(PARA1000, sent["xcmp"], "XCMP")
    if block is not None:
        items = storage_item(block, "ParachainSystem", "HrmpOutboundMessages")
        value = items[0].value if items else None
        pages = decode_hrmp_outbound(bytes.fromhex(value[2:])) if value else []
        report.check(
            any(recipient == 1001 for recipient, _ in pages),
            "XCMP storage ParachainSystem.HrmpOutboundMessages attached, page to 1001",
            f"{[(r, len(d)) for r, d in pages]}",
        )
        sent_ids = {
            str(first_field(e))
            for e in block.events
            if (e.module, e.name) == ("XcmpQueue", "XcmpMessageSent")
        }
        # The page is a format byte (0x00 = concatenated versioned XCMs) then one message.
        page_hashes = {blake2_256(data[1:]) for recipient, data in pages if recipient == 1001}
        report.check(
            bool(sent_ids & page_hashes),
            "XCMP correlated: blake2_256(page[1:]) = XcmpMessageSent hash",
            f"sent {sorted(sent_ids)}",
        )
        outcomes = [
            f"{e.name}"
            for b in blocks.get(PARA1001, [])
            for e in b.events
            if e.module == "XcmpQueue"
            and e.name in ("Success", "Fail")
            and str(first_field(e)) in sent_ids
        ]
        report.check(bool(outcomes), "XCMP received on 1001", ", ".join(outcomes))


#: (transfer, origin, destination, outcome, error) the worker must report for each transfer.
EXPECTED_JOURNEYS = (
    ("dmp", RELAY, PARA1000, "Success", None),
    ("ump", PARA1000, RELAY, "Success", None),
    # statemine 900 on 1001 does not trust 1000 as a reserve: the correct outcome is a failure.
    ("xcmp", PARA1000, PARA1001, "Fail", "UntrustedReserveLocation"),
)


def journeys_complete(client: redis.Redis, prefix: str, sent: dict[str, Transfer]) -> bool:
    notes = notifications(client, prefix)
    return all(
        "xcm.received" in journey_of(notes, origin, sent[kind].block_hash)
        for kind, origin, *_ in EXPECTED_JOURNEYS
    )


def verify_notifications(
    report: Report, client: redis.Redis, prefix: str, sent: dict[str, Transfer]
) -> None:
    notes = notifications(client, prefix)
    report.info("notifications", f"{len(notes)}: {sorted(n['type'] for n in notes)}")
    for kind, origin, destination, outcome, error in EXPECTED_JOURNEYS:
        journey = journey_of(notes, origin, sent[kind].block_hash)
        label = f"{kind.upper()} journey {origin} -> {destination}"
        report.check("xcm.sent" in journey, f"{label}: xcm.sent", str(sorted(journey)))
        received = journey.get("xcm.received")
        if not report.check(received is not None, f"{label}: xcm.received"):
            continue
        assert received is not None
        waypoint = received["waypoint"]
        report.check(
            received["destination"]["chainId"] == destination
            and waypoint["outcome"] == outcome
            and waypoint["error"] == error,
            f"{label}: outcome {outcome}" + (f" ({error})" if error else ""),
            f"{waypoint['chainId']} #{waypoint['blockNumber']} {waypoint['outcome']} "
            f"{waypoint['error']}",
        )
        report.check(
            "xcm.timeout" not in journey,
            f"{label}: one terminal",
            str(sorted(journey)),
        )


def run(workdir: Path, redis_url: str) -> int:
    report = Report()
    began = time.monotonic()
    prepare(workdir)
    report.info("prepare", f"{time.monotonic() - began:.1f} s (npm install + specs, cached)")

    client = redis.Redis.from_url(redis_url)
    client.ping()
    prefix = f"localnet-{secrets.token_hex(4)}:"
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="check-", dir=workdir / "tmp"))
    try:
        with LocalNet(workdir) as net:
            report.info("network", f"up in {net.startup_seconds:.1f} s: {net.urls}")
            config = write_config(scratch, net)
            log = workdir / "logs" / f"ingress-{prefix.rstrip(':')}.log"
            worker_log = workdir / "logs" / f"worker-{prefix.rstrip(':')}.log"
            with (
                running_ingress(config, redis_url, prefix, log) as ingress,
                running_worker(redis_url, prefix, worker_log, scratch / "worker") as worker,
            ):
                # A new network starts at the finalized head: wait until all three have a tip
                # so that no transfer lands before the ingress follows its chain.
                wait_for(
                    lambda: (
                        ingress.poll() is None
                        and all(
                            registry(client, prefix).get(u, {}).get("tip_number") is not None
                            for u in (RELAY, PARA1000, PARA1001)
                        )
                    ),
                    60,
                    f"the ingress to follow all networks (log: {log})",
                )
                report.info("ingress", f"following all networks, log {log}")
                sent = {
                    "dmp": dmp_transfer(net.relay_url, 1000, 5 * 10**12, workdir=workdir),
                    "ump": ump_transfer(net.para1000_url, 2 * 10**12, workdir=workdir),
                    "xcmp": xcmp_transfer(net.para1000_url, 1001, 3 * 10**12, workdir=workdir),
                }
                for kind, transfer in sent.items():
                    report.info(
                        f"{kind} transfer",
                        f"#{transfer.block_number} {transfer.block_hash} {list(transfer.events)}",
                    )
                try:
                    wait_for(lambda: destinations_reached(client, prefix), 60, "XCM delivery")
                except TimeoutError as exc:
                    report.info("delivery", f"{exc}; the checks below say what is missing")
                wait_caught_up(client, prefix, net, 60)
                report.check(ingress.poll() is None, "ingress still running")
                verify(report, client, prefix, sent)
                try:
                    wait_for(
                        lambda: journeys_complete(client, prefix, sent),
                        90,
                        f"the worker's notifications (log: {worker_log})",
                    )
                except TimeoutError as exc:
                    report.info("notifications", str(exc))
                report.check(worker.poll() is None, "worker still running")
                verify_notifications(report, client, prefix, sent)
    except Exception as exc:  # reported as a failed check so the summary is always printed
        report.check(False, "run", f"{type(exc).__name__}: {exc}")
    finally:
        removed = delete_prefix(client, prefix)
        report.info("cleanup", f"removed {removed} Redis keys of {prefix}")
        shutil.rmtree(scratch, ignore_errors=True)
    verdict = "FAILED" if report.failures else "PASSED"
    print(f"{verdict}: {report.failures} failure(s) in {time.monotonic() - began:.1f} s")
    return 1 if report.failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.localnet.check", description=__doc__)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(os.environ.get("OCSTREAM_LOCALNET_DIR", REPO / ".localnet")),
        help="cache and logs (default: .localnet in the repository)",
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    raise SystemExit(run(args.workdir.resolve(), args.redis))


if __name__ == "__main__":
    main()
