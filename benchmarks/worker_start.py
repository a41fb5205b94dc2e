"""How long a worker takes from launch to Ready, and to stop, in one run.

    python benchmarks/worker_start.py [--rounds N] [--redis URL] [--mode embedded|shared|both]

Each round starts ``python -m ocstream worker -l info`` in a fresh data dir, waits for faust's
``Ready`` line, sends SIGTERM and waits for the process to exit:

* ``embedded``: no ``--redis``, the first-run case of the README (the worker starts its own
  Redis and stops it on exit);
* ``shared``: ``--redis URL`` with a fresh key prefix and app id (an empty group, as in a first
  deployment);
* ``shared, with data`` (``--with-data N``, default 2000): the same, but before the stop the
  worker handles N demo events over its 16 partitions, so that its table holds 16 RocksDB
  databases; then ``restart with data`` starts it again on that data dir (the databases exist
  and are opened at assignment) and stops it.

The baseline, measured in the same run and in the same way, is a bare faust app on the same
transport and the same Redis (``shared``; one agent on one topic, 16 partitions, an in-memory
store, no web server): what faust itself needs to join a group and stop. The ratio column is the
worker's time over the baseline's. The interpreter's own start (``python -c pass``) is printed
too.

The start is also split into phases read from the worker's log timestamps (median over the
rounds), to show where the time goes: imports, the embedded Redis and the app build until
faust's first line; the services and tables until the group's first heartbeat; the wait of an
empty group for more members (``initial_rebalance_delay``); the assignment; opening the tables'
stores and recovery. The number of log lines before ``Ready`` is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import topology  # the dataflow's parts (installed with ocstream)

REPO = Path(__file__).resolve().parent.parent

#: faust's log line timestamp: [2026-12-03 06:37:36,179]
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")
#: (phase name, regular expression of the line that ends it); in log order.
MARKS = [
    ("imports, Redis, app build", r"\[\^Worker\]: Starting"),
    ("services, tables", r"\[group\] .*: leader of group"),
    ("wait for more members", r"\[group\] generation \d+: "),
    ("assignment", r"\[group\] .*-> \d+ partitions"),
    ("stores, recovery", r"Recovery\]: Worker ready"),
    ("until Ready", r"\[\^Worker\]: Ready"),
]

BARE_APP = textwrap.dedent(
    """
    import os, faust
    from ocstream.transport import TransportSettings
    app = faust.App(
        os.environ["BARE_ID"], broker=os.environ["BARE_REDIS"], store="memory://",
        topic_partitions=16, datadir=os.environ["BARE_DATADIR"], web_enabled=False,
        autodiscover=False,
    )
    app.transport_settings = TransportSettings(prefix=os.environ["BARE_PREFIX"])
    topic = app.topic("bare-events", value_type=bytes, value_serializer="raw")

    @app.agent(topic)
    async def consume(stream):
        async for _ in stream:
            pass

    app.main()
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_stamp(line: str) -> float | None:
    found = STAMP.match(line)
    if found is None:
        return None
    return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def run_once(
    command: list[str], env: dict[str, str], cwd: Path, between: Callable[[], None] | None = None
) -> tuple[float, float, list[str]]:
    """(seconds from launch to the Ready line, seconds from SIGTERM to exit, log lines).

    ``between`` runs after Ready and before SIGTERM (untimed)."""
    launched = time.time()
    proc = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    lines: list[str] = []
    ready = None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        lines.append(f"{time.time() - launched:.3f} {line}")
        if "[^Worker]: Ready" in line:
            ready = time.time() - launched
            break
        if time.monotonic() > deadline:
            break
    if ready is None:
        proc.kill()
        sys.exit("no Ready line:\n" + "".join(lines[-30:]))
    if between is not None:
        # Keep reading the log so that the worker never blocks on a full pipe.
        stdout = proc.stdout

        def keep_reading() -> None:
            for x in stdout:
                lines.append(f"{time.time() - launched:.3f} {x}")

        reader = threading.Thread(target=keep_reading, daemon=True)
        reader.start()
        between()
        stopping = time.time()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait()
        reader.join(10)
        stopped = time.time() - stopping
        if code != 0:
            sys.exit(f"exit code {code} after SIGTERM:\n" + "".join(lines[-30:]))
        return ready, stopped, [line.split(" ", 1)[1] for line in lines] + [f"@launch {launched}"]
    stopping = time.time()
    proc.send_signal(signal.SIGTERM)
    for line in proc.stdout:
        lines.append(f"{time.time() - launched:.3f} {line}")
    code = proc.wait()
    stopped = time.time() - stopping
    if code != 0:
        sys.exit(f"exit code {code} after SIGTERM:\n" + "".join(lines[-30:]))
    return ready, stopped, [line.split(" ", 1)[1] for line in lines] + [f"@launch {launched}"]


def wait_processed(port: int, count: int, timeout: float = 120) -> None:
    """Until the worker's demo view says it handled ``count`` events."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            url = f"http://127.0.0.1:{port}/demo/counts/"
            with urllib.request.urlopen(url, timeout=2) as response:
                if json.load(response)["processed_here"] >= count:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"the worker did not process {count} events in {timeout:.0f} s")


def phases(lines: list[str]) -> dict[str, float]:
    launched = float(lines[-1].split()[1])
    found: dict[str, float] = {}
    previous = launched
    for name, pattern in MARKS:
        regex = re.compile(pattern)
        for line in lines:
            stamp = parse_stamp(line)
            if stamp is not None and regex.search(line):
                found[name] = stamp - previous
                previous = stamp
                break
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--redis", default=os.environ.get("OCSTREAM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--mode", choices=["embedded", "shared", "both"], default="both")
    parser.add_argument("--log", type=Path, help="write the last round's worker log here")
    parser.add_argument(
        "--with-data",
        type=int,
        default=2000,
        metavar="N",
        help="also time a worker whose table got N demo events, and its restart (0: skip)",
    )
    args = parser.parse_args()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("OCSTREAM_")}
    base_env["PYTHONPATH"] = str(REPO)
    python = sys.executable
    modes = ["embedded", "shared"] if args.mode == "both" else [args.mode]
    names = [*modes, *(["shared, with data", "restart with data"] if args.with_data else [])]
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in [*names, "bare faust app"]}
    split: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    interpreter = []
    last_log: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for round_ in range(args.rounds):
            start = time.perf_counter()
            subprocess.run([python, "-c", "pass"], check=True)
            interpreter.append(time.perf_counter() - start)
            tag = f"{uuid.uuid4().hex[:6]}"
            bare_env = {
                **base_env,
                "BARE_ID": f"bare{tag}",
                "BARE_REDIS": args.redis,
                "BARE_PREFIX": f"bench-start-{tag}:",
                "BARE_DATADIR": str(root / f"bare-{round_}"),
            }
            ready, stop, _ = run_once(
                [python, "-c", BARE_APP, "worker", "-l", "info"], bare_env, root
            )
            results["bare faust app"].append((ready, stop))
            for mode in modes:
                data = root / f"{mode}-{round_}"
                env = {
                    **base_env,
                    "OCSTREAM_DATA_DIR": str(data),
                    "OCSTREAM_APP_ID": f"start{tag}",
                    "OCSTREAM_TRANSPORT_PREFIX": f"bench-start-{tag}:",
                }
                port = str(free_port())
                command = [python, "-m", "ocstream", "worker", "-l", "info", "--port", port]
                if mode == "shared":
                    command += ["--redis", args.redis]
                ready, stop, lines = run_once(command, env, root)
                results[mode].append((ready, stop))
                split[mode].append(phases(lines))
                last_log = lines
            if args.with_data:
                # A worker whose tables hold data: it writes args.with_data demo events over
                # all 16 partitions (one RocksDB database each), then stops; then it starts
                # again on the same data dir (the databases exist and are opened) and stops.
                data = root / f"data-{round_}"
                env = {
                    **base_env,
                    "OCSTREAM_DATA_DIR": str(data),
                    "OCSTREAM_APP_ID": f"data{tag}",
                    "OCSTREAM_TRANSPORT_PREFIX": f"bench-start-d{tag}:",
                    # The production parts, and the demo whose table the events fill (a worker
                    # declares the demo only when asked, since the XCM dataflow replaced it).
                    "OCSTREAM_DATAFLOW": ",".join([*topology.PARTS, "demo"]),
                }
                port = str(free_port())
                command = [python, "-m", "ocstream", "worker", "-l", "info", "--port", port]
                command += ["--redis", args.redis]

                def write_data(tag: str = tag, port: str = port) -> None:
                    produce = [python, str(REPO / "tests" / "produce_events.py"), args.redis]
                    produce += [f"bench-start-d{tag}:", str(args.with_data)]
                    produce += ["--users", "64", "--partitions", "16"]
                    subprocess.run(produce, env=base_env, check=True, stdout=subprocess.DEVNULL)
                    wait_processed(int(port), args.with_data)

                ready, stop, _ = run_once(command, env, root, between=write_data)
                results["shared, with data"].append((ready, stop))
                ready, stop, _ = run_once(command, env, root)
                results["restart with data"].append((ready, stop))
        cleanup_prefixes(args.redis, "bench-start-")
    base_ready = statistics.median(r for r, _ in results["bare faust app"])
    base_stop = statistics.median(s for _, s in results["bare faust app"])
    print(f"median of {args.rounds} rounds, {os.cpu_count()} CPUs, Redis {args.redis}")
    print(f"python -c pass: {statistics.median(interpreter):.3f} s")
    print(f"{'':<20} {'start->Ready':>12} {'ratio':>6} {'stop':>7} {'ratio':>6}")
    for name, values in results.items():
        ready = statistics.median(r for r, _ in values)
        stop = statistics.median(s for _, s in values)
        print(
            f"{name:<20} {ready:10.2f} s {ready / base_ready:6.2f} "
            f"{stop:5.2f} s {stop / base_stop:6.2f}"
        )
    for mode in modes:
        print(f"where the start of '{mode}' goes (seconds, median):")
        for name, _ in MARKS:
            seconds = [p[name] for p in split[mode] if name in p]
            if seconds:
                print(f"  {name:<26} {statistics.median(seconds):6.2f}")
    ready_at = next(i for i, x in enumerate(last_log) if "[^Worker]: Ready" in x)
    print(f"worker log lines before Ready (last round, -l info): {ready_at}")
    if args.log:
        args.log.write_text("".join(last_log))


def cleanup_prefixes(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])


if __name__ == "__main__":
    main()
