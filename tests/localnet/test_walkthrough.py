"""The README's "Try it offline" lines, run as written, with the ports moved.

The shell block of that section is read from README.md, so the test breaks when the README and
the tools disagree. Each line runs as a real process (``&`` lines in the background); the only
changes are ports and the data dir, so that the run cannot collide with the other local-network
tests (8100-8102) or a developer's own worker (3000, ./data): ``up`` gets ``--relay-port
8120``, the worker ``--port`` and ``--data-dir``, the receiver another ``--port``, and the
``curl`` line the same two ports. Between lines it waits for what a reader would wait for.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.workers import free_port, ocstream_env, wait_for

REPO = Path(__file__).resolve().parents[2]
WORKDIR = Path(os.environ.get("OCSTREAM_LOCALNET_DIR", REPO / ".localnet")).resolve()
RELAY_PORT = 8120


def readme_lines() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Try it offline", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "no sh block in README's Try it offline section"
    return [line for line in block.group(1).splitlines() if line.strip()]


class Run:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.children: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, argv: list[str], name: str) -> Path:
        log = self.root / f"{name}.log"
        with log.open("wb") as out:
            child = subprocess.Popen(
                argv,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=ocstream_env(PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO)),
                start_new_session=True,
            )
        self.children.append((child, log))
        return log

    def stop(self) -> None:
        for child, _ in reversed(self.children):
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
        for child, _ in self.children:
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait(5)

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:])
            for _, log in self.children
        )


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    r = Run(tmp_path)
    try:
        yield r
    finally:
        r.stop()


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.mark.timeout(600)
def test_the_readme_walkthrough_shows_notifications_in_the_log_and_at_the_webhook(
    run: Run, tmp_path: Path
) -> None:
    lines = readme_lines()
    assert [line.split()[:4] for line in lines] == [
        ["python", "-m", "tests.localnet", "up"],
        ["ocstream", "worker", "-l", "info"],
        ["python", "-m", "tests.localnet", "receive"],
        ["curl", "-i", "-H", '"Content-Type:'],
        ["python", "-m", "tests.localnet", "transfer"],
        ["python", "-m", "tests.localnet", "down"],
    ], lines
    api_port, hook_port = free_port(), free_port()
    python = [sys.executable]
    ocstream = [str(Path(sys.executable).parent / "ocstream")]

    def argv(line: str) -> list[str]:
        words = shlex.split(line.rstrip("& ").strip())
        if words[0] == "python":
            return python + words[1:]
        if words[0] == "ocstream":
            return ocstream + words[1:]
        return words

    up, worker, receive, curl, transfer, down = lines
    try:
        # 1. the chains
        up_log = run.start(argv(up) + ["--relay-port", str(RELAY_PORT)], "up")
        wait_for(lambda: "local network up" in _text(up_log), 300, "`up` to print that it is up")
        config = WORKDIR / "ocstream.toml"
        assert f"ws://127.0.0.1:{RELAY_PORT}" in config.read_text()
        # 2. the worker, on the config `up` wrote
        worker_argv = argv(worker) + ["--port", str(api_port), "--data-dir", str(tmp_path / "d")]
        worker_log = run.start(worker_argv, "worker")
        wait_for(
            lambda: _text(worker_log).count("loaded metadata of spec") >= 3,
            120,
            "the worker to follow the three chains",
        )
        # 3. the receiver
        receive_argv = [w if w != "8088" else str(hook_port) for w in argv(receive)]
        receive_log = run.start(receive_argv, "receive")
        wait_for(lambda: "receiving webhooks" in _text(receive_log), 60, "the receiver")
        # 4. the subscription
        curl_line = curl.replace("127.0.0.1:3000", f"127.0.0.1:{api_port}").replace(
            "127.0.0.1:8088", f"127.0.0.1:{hook_port}"
        )
        answer = subprocess.run(
            [*argv(curl_line), "-s", "-o", "/dev/null", "-w", "%{http_code}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert answer.stdout == "201", (answer.stdout, answer.stderr)
        # 5. a DMP transfer
        sent = subprocess.run(
            argv(transfer), cwd=REPO, capture_output=True, text=True, timeout=180, check=False
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert sent.stdout.startswith("DMP relay -> 1000: block #"), sent.stdout
        route = "urn:ocn:local:0 -> urn:ocn:local:1000 outcome=Success"
        wait_for(
            lambda: f"xcm.received {route}" in _text(receive_log),
            120,
            "the journey's xcm.received at the receiver",
        )
        received = _text(receive_log)
        assert f"xcm.sent {route}" in received
        posts = [line for line in received.splitlines() if line.startswith("POST /hook/")]
        assert len(posts) == 2 and all(line.endswith("(signature ok)") for line in posts), posts
        log = _text(worker_log)
        for kind in ("xcm.sent", "xcm.received"):
            assert re.search(
                rf"\[urn:ocn:local:0 ➜ urn:ocn:local:1000\] NOTIFICATION {kind} "
                r"subscription=offline, messageHash=0x[0-9a-f]{64}, outcome=Success",
                log,
            ), kind
        # 6. down
        stopped = subprocess.run(
            argv(down), cwd=REPO, capture_output=True, text=True, timeout=60, check=False
        )
        assert stopped.returncode == 0 and "local network stopped" in stopped.stdout
        up_process = run.children[0][0]
        up_process.wait(30)
        assert up_process.returncode == 0, _text(up_log)
    except BaseException:
        print(run.logs())
        raise
