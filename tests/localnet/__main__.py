"""The offline local network from the command line (README: "Try it offline").

    python -m tests.localnet up [--workdir .localnet] [--relay-port 8100]
    python -m tests.localnet transfer dmp|ump|xcmp [--amount PLANCK]
    python -m tests.localnet receive [--port 8088] [--secret whsec_…]
    python -m tests.localnet down

``up`` installs chopsticks and builds the chain specs on first use (npm registry only, cached in
the workdir), starts the relay chain (``urn:ocn:local:0``) and paras 1000 and 1001, writes an
ocstream config for them to ``<workdir>/ocstream.toml`` and stays in the foreground until
Ctrl-C or ``down``. ``transfer`` submits one real signed XCM transfer from Alice (DMP relay →
1000, UMP 1000 → relay, XCMP 1000 → 1001) and prints the block that included it. ``receive``
is a small webhook receiver that prints every notification POSTed to it, checking the
Standard Webhooks signature when given the channel's secret.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .network import LocalNet, dmp_transfer, prepare, ump_transfer, xcmp_transfer

REPO = Path(__file__).resolve().parents[2]
DEFAULT_WORKDIR = Path(os.environ.get("OCSTREAM_LOCALNET_DIR", REPO / ".localnet"))
AMOUNTS = {"dmp": 5 * 10**12, "ump": 2 * 10**12, "xcmp": 3 * 10**12}


def _state(workdir: Path) -> Path:
    return workdir / "localnet.json"


def write_ocstream_config(net: LocalNet, path: Path) -> None:
    """An ocstream config for the three chains, with webhooks to loopback allowed (the
    receiver of the walkthrough runs on 127.0.0.1)."""
    path.write_text(
        "# Written by `python -m tests.localnet up`: the offline local network.\n"
        "[worker]\nwebhook_allow_private = true\n\n"
        f'[[networks]]\nid = "urn:ocn:local:0"\n'
        f'provider = {{ type = "rpc", url = "{net.relay_url}" }}\n\n'
        f'[[networks]]\nid = "urn:ocn:local:1000"\nrelay = "urn:ocn:local:0"\n'
        f'provider = {{ type = "rpc", url = "{net.para1000_url}" }}\n\n'
        f'[[networks]]\nid = "urn:ocn:local:1001"\nrelay = "urn:ocn:local:0"\n'
        f'provider = {{ type = "rpc", url = "{net.para1001_url}" }}\n'
    )


def up(workdir: Path, relay_port: int) -> int:
    def say(line: str) -> None:
        print(line, flush=True)

    say(f"preparing {workdir} (the first time: npm install, 5 to 12 minutes) …")
    prepare(workdir, progress=say)
    net = LocalNet(
        workdir, relay_port=relay_port, para1000_port=relay_port + 1, para1001_port=relay_port + 2
    )
    stop = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    say(
        f"starting the relay chain (port {relay_port}) and paras 1000, 1001 "
        f"(ports {relay_port + 1}, {relay_port + 2}) with chopsticks …"
    )
    with net:
        config = workdir / "ocstream.toml"
        write_ocstream_config(net, config)
        _state(workdir).write_text(json.dumps({"pid": os.getpid(), "urls": net.urls}) + "\n")
        print(f"local network up in {net.startup_seconds:.1f} s:", flush=True)
        for name, url in net.urls.items():
            print(f"  {name:9} {url}")
        print(f"ocstream config: {config}")
        print("stop with Ctrl-C or `python -m tests.localnet down`", flush=True)
        try:
            while not stop:
                if net.process is None or net.process.poll() is not None:
                    print("chopsticks exited; see " + str(net.log_path), file=sys.stderr)
                    return 1
                time.sleep(0.5)
        finally:
            _state(workdir).unlink(missing_ok=True)
    print("local network stopped")
    return 0


def _urls(workdir: Path) -> dict[str, str]:
    try:
        return dict(json.loads(_state(workdir).read_text())["urls"])
    except FileNotFoundError:
        raise SystemExit("the local network is not up: run `python -m tests.localnet up`") from None


def transfer(workdir: Path, kind: str, amount: int | None) -> int:
    urls = _urls(workdir)
    value = amount if amount is not None else AMOUNTS[kind]
    if kind == "dmp":
        sent = dmp_transfer(urls["relay"], 1000, value, workdir=workdir)
    elif kind == "ump":
        sent = ump_transfer(urls["para1000"], value, workdir=workdir)
    else:
        sent = xcmp_transfer(urls["para1000"], 1001, value, workdir=workdir)
    route = {"dmp": "relay -> 1000", "ump": "1000 -> relay", "xcmp": "1000 -> 1001"}[kind]
    print(f"{kind.upper()} {route}: block #{sent.block_number} {sent.block_hash}")
    print("  events: " + ", ".join(sent.events))
    return 0


def down(workdir: Path) -> int:
    try:
        pid = int(json.loads(_state(workdir).read_text())["pid"])
    except FileNotFoundError:
        print("the local network is not up")
        return 0
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not _state(workdir).exists():
            print("local network stopped")
            return 0
        time.sleep(0.1)
    print(f"sent SIGTERM to {pid}; it has not stopped yet", file=sys.stderr)
    return 1


def receive(port: int, secret: str | None) -> int:
    from aiohttp import web
    from standardwebhooks import Webhook

    verifier = Webhook(secret) if secret else None

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        signed = ""
        if verifier is not None:
            try:
                verifier.verify(body, dict(request.headers))
                signed = " (signature ok)"
            except Exception as exc:  # a bad signature is shown, not fatal
                signed = f" (BAD SIGNATURE: {exc})"
        try:
            note = json.loads(body)
            line = (
                f"{note.get('type')} {note.get('origin', {}).get('chainId')} -> "
                f"{note.get('destination', {}).get('chainId')} "
                f"outcome={note.get('waypoint', {}).get('outcome')} "
                f"journey={note.get('journeyId')}"
            )
        except ValueError:
            line = body[:200].decode(errors="replace")
        print(f"POST {request.path}: {line}{signed}", flush=True)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    print(f"receiving webhooks on http://127.0.0.1:{port}/hook", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, print=None)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.localnet", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", help="start the local network (foreground)")
    up_parser.add_argument("--relay-port", type=int, default=8100, help="paras use the next two")
    transfer_parser = commands.add_parser("transfer", help="one signed XCM transfer from Alice")
    transfer_parser.add_argument("kind", choices=sorted(AMOUNTS))
    transfer_parser.add_argument("--amount", type=int, help="planck of the relay token")
    receive_parser = commands.add_parser("receive", help="print the webhooks POSTed to it")
    receive_parser.add_argument("--port", type=int, default=8088)
    receive_parser.add_argument("--secret", help="the channel's whsec_ secret, to verify")
    commands.add_parser("down", help="stop a network started with `up`")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    if args.command == "up":
        raise SystemExit(up(workdir, args.relay_port))
    if args.command == "transfer":
        raise SystemExit(transfer(workdir, args.kind, args.amount))
    if args.command == "receive":
        raise SystemExit(receive(args.port, args.secret))
    raise SystemExit(down(workdir))


if __name__ == "__main__":
    main()
