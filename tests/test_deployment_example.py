"""The deployment guide's example, as written (``docs/deploy.md``), end to end.

A worker started with the guide's command on real Redis, the guide's ``curl`` creating the
subscription (answered 201), and real recorded Polkadot blocks fed in as the ingress would
publish them: the relay's DMP to Hydration, forwarded on to Asset Hub, must reach the
subscription's webhook (a real aiohttp receiver) as notifications of the journey.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import web

from ocstream.testing import blocks_from_case, publish_blocks_sync, register_network_sync

from .conftest import SYSTEM_REDIS_URL
from .test_dashboard import chromium_or_fail, png_size, run_chromium
from .workers import free_port, ocstream_env, wait_for

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "deploy.md"
WORKER_COMMAND = "ocstream worker --config config/minimal.toml --redis redis://127.0.0.1:6379"
CURL_PREFIX = 'curl -i -H "Content-Type: application/json" -d \''
NETWORKS = {
    "urn:ocn:polkadot:0": "polkadot-1000001.scale",
    "urn:ocn:polkadot:2034": "hydra-207.scale",
    "urn:ocn:polkadot:1000": "assethub-9430.scale",
}


class Receiver:
    """A webhook receiver on 127.0.0.1 that records every request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            {"path": request.path, "headers": dict(request.headers), "body": json.loads(body)}
        )
        return web.Response(status=204)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def start(self) -> Receiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver().start()
    yield found
    found.stop()


def http_get(
    path: str, token: str | None = None, base: str = "http://127.0.0.1:3000"
) -> tuple[int, str]:
    request = urllib.request.Request(f"{base}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_the_guides_example_delivers_recorded_xcm_to_the_webhook(
    receiver: Receiver, tmp_path: Path, fixtures_dir: Path
) -> None:
    guide = GUIDE.read_text()
    assert f"\n{WORKER_COMMAND}\n" in guide
    # The guide binds a public address only together with tokens and allowed hosts.
    for line in guide.splitlines():
        if "--address 0.0.0.0" in line:
            block = guide[: guide.index(line)].rsplit("```sh", 1)[1]
            for setting in ("API_TOKENS", "READ_TOKENS", "ALLOWED_HOSTS"):
                assert f"OCSTREAM_{setting}=" in block, (setting, line)
    curl_line = next(line for line in guide.splitlines() if line.startswith(CURL_PREFIX))
    # The guide's curl, pointed at our receiver instead of example.org.
    hook = f"http://127.0.0.1:{receiver.port}/hook"
    curl = shlex.split(curl_line.replace("https://example.org/hook", hook))
    assert port_free(3000), "the guide's worker listens on port 3000, which is taken"

    prefix = f"guide-{time.monotonic_ns()}:"
    env = ocstream_env(
        OCSTREAM_TRANSPORT_PREFIX=prefix,
        OCSTREAM_PARTITIONS="4",
        OCSTREAM_DATA_DIR=str(tmp_path / "data"),
        # The receiver is on loopback, which the SSRF guard refuses by default.
        OCSTREAM_WEBHOOK_ALLOW_PRIVATE="1",
        OCSTREAM_ADMIN_TOKENS="admin-secret",
    )
    args = shlex.split(WORKER_COMMAND)
    # The guide's Redis is the machine's default one; the tests' Redis may be elsewhere
    # (OCSTREAM_TEST_REDIS_URL), so the URL after --redis is swapped for it.
    args[args.index("--redis") + 1] = SYSTEM_REDIS_URL
    command = [sys.executable, "-m", "ocstream", *args[1:]]
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    client = redis.Redis.from_url(SYSTEM_REDIS_URL)
    try:

        def answered() -> bool:
            if worker.poll() is not None:
                raise AssertionError(log_path.read_text())
            # Ready when it serves the networks its config declares.
            probe = ["curl", "-s", "http://127.0.0.1:3000/networks"]
            answer = subprocess.run(probe, capture_output=True, text=True, check=False).stdout
            return "urn:ocn:polkadot:1000" in answer

        wait_for(answered, 60, "the worker to declare the config's networks")
        created = subprocess.run(
            [*curl, "-s", "-o", "/dev/null", "-w", "%{http_code}"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert created.stdout == "201", (created.stdout, created.stderr)

        # What an ingress following these chains would have written: the registry with each
        # runtime's metadata, then the blocks.
        for network, metadata in NETWORKS.items():
            register_network_sync(
                SYSTEM_REDIS_URL,
                network,
                spec_version=int(metadata.removesuffix(".scale").rsplit("-", 1)[1]),
                metadata=(fixtures_dir / "metadata" / metadata).read_bytes(),
                relay=None if network.endswith(":0") else "urn:ocn:polkadot:0",
                prefix=prefix,
            )
        case = fixtures_dir / "cases" / "v1-dmp-hop-polkadot-hydra.json"
        publish_blocks_sync(
            SYSTEM_REDIS_URL, blocks_from_case(case, fixtures_dir), prefix=prefix, partitions=4
        )

        def journey() -> list[dict[str, Any]] | None:
            bodies = [r["body"] for r in receiver.requests]
            types = sorted(b["type"] for b in bodies)
            return bodies if types == ["xcm.hop", "xcm.hop", "xcm.relayed", "xcm.sent"] else None

        bodies = wait_for(journey, 90, "the journey's notifications at the webhook")

        # Operations: health, metrics and the admin routes of the same worker.
        health = json.loads(http_get("/health")[1])
        assert health["status"] in ("ok", "degraded") and health["redis"] == "ok"
        assert set(NETWORKS) <= set(health["networks"])
        metrics = http_get("/metrics")[1]
        assert 'oc_active_subscriptions_count{type="persistent"} 1.0' in metrics
        assert "oc_webhook_delivered_total 4.0" in metrics
        assert 'oc_notifier_notification_total{type="xcm.sent"} 1.0' in metrics
        assert "oc_engine_out_total 2.0" in metrics  # the journey and the unrelated transfer
        assert "oc_engine_hop_total 2.0" in metrics
        assert http_get("/admin/webhooks/dead-letters")[0] == 401
        status, body = http_get("/admin/webhooks/dead-letters", token="admin-secret")
        assert status == 200 and json.loads(body) == []
        assert http_get("/openapi.json")[0] == 200

        # The worker's own dashboard, in headless Chromium: the networks and the subscription.
        binary = chromium_or_fail()
        dashboard = "http://127.0.0.1:3000/dashboard/"
        dom = asyncio.run(run_chromium(binary, tmp_path / "profile", "--dump-dom", dashboard))
        for expected in ("unique-sub-name-1", "urn:ocn:polkadot:0", "urn:ocn:polkadot:2034"):
            assert expected in dom, f"{expected} not on the dashboard"
        shot = tmp_path / "dashboard.png"
        asyncio.run(
            run_chromium(
                binary,
                tmp_path / "profile2",
                f"--screenshot={shot}",
                "--window-size=1280,900",
                dashboard,
            )
        )
        assert png_size(shot) == (1280, 900)
        print(f"dashboard screenshot: {shot}")

        # A second worker, started afterwards on the same Redis, serves the stored subscription,
        # and sees a change made through the first one (the subscriptions live in Redis).
        second_port = free_port()
        second_cmd = [*command, "--port", str(second_port), "--data-dir", str(tmp_path / "w2")]
        with (tmp_path / "worker2.log").open("wb") as log2:
            second = subprocess.Popen(
                second_cmd, cwd=REPO, env=env, stdout=log2, stderr=subprocess.STDOUT
            )
        try:
            base2 = f"http://127.0.0.1:{second_port}"

            def stored() -> dict[str, Any] | None:
                status, body = http_get("/subs/unique-sub-name-1", base=base2)
                return json.loads(body) if status == 200 else None

            assert wait_for(stored, 60, "the second worker")["origin"] == "urn:ocn:polkadot:0"
            patch = [{"op": "replace", "path": "/senders", "value": ["0x" + "11" * 32]}]
            request = urllib.request.Request(
                "http://127.0.0.1:3000/subs/unique-sub-name-1",
                data=json.dumps(patch).encode(),
                method="PATCH",
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status == 200
            wait_for(
                lambda: (found := stored()) is not None and found["senders"] != "*",
                10,
                "the patch to show on the second worker",
            )
        finally:
            second.terminate()
            second.wait(30)
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    sent = next(b for b in bodies if b["type"] == "xcm.sent")
    assert sent["subscriptionId"] == "unique-sub-name-1"
    assert sent["origin"]["chainId"] == "urn:ocn:polkadot:0"
    assert sent["destination"]["chainId"] == "urn:ocn:polkadot:1000"
    assert sent["origin"]["messageHash"] == (
        "0xba3e17a74b5454c96b426c1379e5d9f7acebc3f239bd84b066bad9e5dec26b2f"
    )
    assert sent["messageId"] == (
        "0x2d61ceafa0f62007fe36e1029ed347f974db05be5e5baaff31736202aeaffbdf"
    )
    # One POST per notification, each to <url>/<deliveryId>, each id once.
    paths = [r["path"] for r in receiver.requests]
    assert all(p.startswith("/hook/") for p in paths) and len(set(paths)) == len(paths)
    assert len({b["id"] for b in bodies}) == len(bodies) == 4
    assert all(r["headers"]["Content-Type"] == "application/json" for r in receiver.requests)
