"""The ``ocstream`` command: topology, embedded mode, faust's commands, settings and refusals."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import click
import faust
import pytest
import redis

import ocstream
from ocstream.app import build_app
from ocstream.cli import FAUST_COMMANDS, _faust_parser
from ocstream.errors import ConfigError
from ocstream.settings import Settings, load_settings
from ocstream.sinks.webhook import DEFAULT_SCHEDULE, WebhookSettings
from ocstream.transport import TransportSettings
from tests.conftest import SYSTEM_REDIS_URL
from tests.workers import Worker, changelog_counts, ocstream_env, produce_all, wait_for

REPO = Path(__file__).resolve().parents[1]


def run_ocstream(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m ocstream ARGS`` from this checkout, in ``cwd`` (default: here)."""
    full_env = ocstream_env(PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "ocstream", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_topology_json_describes_the_declared_dataflow_without_a_broker() -> None:
    # An unreachable Redis: describing must not connect to anything.
    result = run_ocstream(
        "topology",
        "--format",
        "json",
        "--redis",
        "redis://127.0.0.1:1/0",
        # The demo example next to the production parts.
        env={
            "OCSTREAM_PARTITIONS": "6",
            "OCSTREAM_APP_ID": "demoapp",
            "OCSTREAM_DATAFLOW": "xcm,delivery,demo",
        },
    )
    assert result.returncode == 0, result.stderr
    flow = json.loads(result.stdout)
    topics = {t["name"]: t for t in flow["topics"]}
    assert topics["demo-events"]["partitions"] == 6
    assert topics["demo-events"]["kind"] == "source"
    assert topics["demoapp-demo-counts-changelog"]["kind"] == "changelog"
    assert topics["demoapp-demo-counts-changelog"]["partitions"] == 6
    agents = {agent["name"]: agent for agent in flow["agents"]}
    assert agents["count_events"]["source_topics"] == ["demo-events"]
    # The XCM dataflow: blocks -> extract -> xcm-legs -> match (six tables) -> notifications.
    assert agents["xcm_extract"]["source_topics"] == ["blocks"]
    assert agents["xcm_extract"]["sink_names"] == ["xcm-dead-letters", "xcm-legs"]
    assert agents["xcm_match"]["source_topics"] == ["xcm-legs"]
    # The matcher writes back into its own source: records for other chains' partitions.
    assert agents["xcm_match"]["sink_names"] == [
        "xcm-dead-letters",
        "xcm-legs",
        "xcm-notifications",
    ]
    assert topics["xcm-notifications"]["kind"] == "stream"
    assert topics["xcm-notifications"]["partitions"] == 6
    assert sorted(agents["xcm_match"]["tables"]) == [
        f"xcm-{name}" for name in ("hop", "inbound", "journeys", "outbound", "relay", "seen")
    ]
    tables = {table["name"]: table for table in flow["tables"]}
    assert tables["demo-counts"]["changelog_topic"] == "demoapp-demo-counts-changelog"
    assert tables["xcm-outbound"]["changelog_topic"] == "demoapp-xcm-outbound-changelog"
    assert topics["xcm-legs"]["partitions"] == 6


@pytest.mark.parametrize(
    ("fmt", "marker"), [("text", "xcm-legs"), ("mermaid", "flowchart"), ("dot", "digraph")]
)
def test_topology_formats(fmt: str, marker: str) -> None:
    result = run_ocstream("topology", "--format", fmt)
    assert result.returncode == 0, result.stderr
    assert marker in result.stdout and "xcm_match" in result.stdout


def test_topology_shows_what_each_role_runs() -> None:
    def described(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        result = run_ocstream("topology", "--format", "json", *args, env=env)
        assert result.returncode == 0, result.stderr
        flow: dict[str, Any] = json.loads(result.stdout)
        return flow

    deliver = described("--role", "deliver")
    assert [agent["name"] for agent in deliver["agents"]] == ["xcm_deliver"]
    assert deliver["tables"] == []
    match = described(env={"OCSTREAM_ROLE": "match"})
    assert sorted(agent["name"] for agent in match["agents"]) == ["xcm_extract", "xcm_match"]
    assert len(match["tables"]) == 6
    # The command line wins over the environment, as for every setting.
    everything = described("--role", "all", env={"OCSTREAM_ROLE": "match"})
    assert {agent["name"] for agent in everything["agents"]} >= {"xcm_deliver", "xcm_match"}
    refused = run_ocstream("topology", "--role", "relay")
    assert refused.returncode == 2 and "role" in refused.stderr


def test_a_role_needs_a_shared_redis(tmp_path: Path) -> None:
    result = run_ocstream("worker", "--role", "deliver", "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert "--role deliver needs --redis" in result.stderr
    assert redis_processes_under(tmp_path) == []


def test_topology_rejects_an_unknown_format() -> None:
    result = run_ocstream("topology", "--format", "yaml")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_faust_commands_keep_working_under_ocstream() -> None:
    agents = run_ocstream("agents")
    assert agents.returncode == 0, agents.stderr
    assert "xcm_match" in agents.stdout
    tables = run_ocstream("tables")
    assert tables.returncode == 0, tables.stderr
    assert "xcm-journeys" in tables.stdout


#: The production dataflow and the demo example, whose page and table the next test reads.
EVERYTHING = "xcm,delivery,demo"


def test_worker_without_redis_runs_on_an_embedded_redis_and_stops_it(tmp_path: Path) -> None:
    worker = Worker(
        "solo", tmp_path, redis_url=None, prefix="ocs:", app_id="solo", dataflow=EVERYTHING
    )
    worker.start()
    try:
        worker.wait_assigned()
        url = (worker.data_dir / "redis" / "url").read_text().strip()
        info = redis.Redis.from_url(url).info("server")
        assert info["redis_version"].startswith("6.2")
        assert redis.Redis.from_url(url).config_get("appendonly")["appendonly"] == "yes"
        produce_all(url, "ocs:", 200, users=4)
        wait_for(lambda: worker.view()["processed_here"] == 200, 60, "200 events")
        redis_pid = int((worker.data_dir / "redis" / "redis.pid").read_text())
    finally:
        assert worker.stop() == 0, worker.log_tail()
    assert "embedded Redis 6.2" in worker.log_text()
    wait_for(lambda: not Path(f"/proc/{redis_pid}").exists(), 10, "embedded Redis to stop")
    assert list((worker.data_dir / "redis").glob("appendonly.aof*"))
    # A restart on the same data dir finds the same data through the AOF.
    again = Worker(
        "solo", tmp_path, redis_url=None, prefix="ocs:", app_id="solo", dataflow=EVERYTHING
    )
    again.start()
    try:
        again.wait_assigned()
        url = (again.data_dir / "redis" / "url").read_text().strip()
        assert sum(changelog_counts(url, "ocs:", "solo").values()) == 200
        wait_for(lambda: sum(again.view()["counts"].values()) == 200, 30, "table restored")
    finally:
        assert again.stop() == 0, again.log_tail()


def test_exactly_once_is_refused_with_a_clear_error() -> None:
    app = faust.App("eos", broker=SYSTEM_REDIS_URL, processing_guarantee="exactly_once")
    with pytest.raises(faust.exceptions.ImproperlyConfigured, match="at-least-once"):
        _ = app.transport


def test_settings_precedence_cli_over_env_over_file(tmp_path: Path) -> None:
    config = tmp_path / "ocstream.toml"
    config.write_text(
        '[worker]\nport = 4000\naddress = "0.0.0.0"\npartitions = 8\n'
        "[transport]\nsession_timeout = 7\n"
    )
    env = {"OCSTREAM_PORT": "4100", "OCSTREAM_TRANSPORT_LINGER_MS": "3"}
    settings = load_settings({"config_file": str(config), "port": 4200}, env)
    assert settings.port == 4200
    assert settings.address == "0.0.0.0" and settings.partitions == 8
    assert settings.transport == TransportSettings(session_timeout=7, linger_ms=3)
    assert load_settings({"config_file": str(config)}, env).port == 4100
    assert load_settings({}, {}).redis_url is None  # embedded by default


async def test_webhook_delivery_settings_reach_the_dispatcher(
    tmp_path: Path, redis_url: str
) -> None:
    """Timeout, retry schedule and concurrency of webhook delivery: from the file, the
    environment over it, and a worker's dispatcher built with them (with none given, with
    its own defaults); values it could not use stop the worker at its start."""
    own = WebhookSettings()
    unset = build_app(
        Settings(redis_url=redis_url, data_dir=tmp_path / "unset"), redis_url=redis_url
    ).webhooks.settings
    assert unset.schedule == tuple(map(float, DEFAULT_SCHEDULE))  # the dispatcher's defaults
    assert (unset.timeout, unset.max_concurrency) == (own.timeout, own.max_concurrency)
    config = tmp_path / "worker.toml"
    config.write_text(
        "[worker]\nwebhook_schedule = [0, 1, 60]\nwebhook_timeout = 4\nwebhook_concurrency = 16\n"
    )
    from_file = load_settings({"config_file": str(config)}, {})
    assert from_file.webhook_schedule == (0.0, 1.0, 60.0)
    assert (from_file.webhook_timeout, from_file.webhook_concurrency) == (4.0, 16)
    env = {"OCSTREAM_WEBHOOK_SCHEDULE": "0, 2.5", "OCSTREAM_WEBHOOK_CONCURRENCY": "5"}
    settings = load_settings(
        {"config_file": str(config), "redis_url": redis_url, "data_dir": str(tmp_path / "d")}, env
    )
    assert settings.webhook_schedule == (0.0, 2.5)
    assert (settings.webhook_timeout, settings.webhook_concurrency) == (4.0, 5)
    app = build_app(settings, redis_url=redis_url)
    dispatcher = app.webhooks.settings
    assert dispatcher.schedule == (0.0, 2.5)
    assert (dispatcher.timeout, dispatcher.max_concurrency) == (4.0, 5)
    assert dispatcher.lease_seconds == 3 * 4.0 + 30  # follows the timeout
    for bad in (
        {"OCSTREAM_WEBHOOK_SCHEDULE": "0,-5"},
        {"OCSTREAM_WEBHOOK_SCHEDULE": "0,soon"},
        {"OCSTREAM_WEBHOOK_SCHEDULE": ","},
        {"OCSTREAM_WEBHOOK_SCHEDULE": "0,inf"},
        {"OCSTREAM_WEBHOOK_SCHEDULE": "5,10"},  # the first attempt is always made at once
        {"OCSTREAM_WEBHOOK_TIMEOUT": "0"},
        {"OCSTREAM_WEBHOOK_CONCURRENCY": "0"},
    ):
        with pytest.raises(ConfigError, match="webhook_"):
            load_settings({}, bad)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[worker\n", "not valid TOML"),
        ("[worker]\nport = 99999\n", "port"),
        ("[worker]\nprot = 1\n", "prot"),
        ('[worker]\nredis_url = "http://x"\n', "redis_url"),
        ("[transport]\nsession_timeout = -1\n", "session_timeout"),
        ('[transport]\nassignment = "random"\n', "assignment"),
        ("[transport]\nload_check_interval = -1\n", "load_check_interval"),
    ],
)
def test_bad_config_files_name_the_file_and_field(
    tmp_path: Path, content: str, message: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings({"config_file": str(config)}, {})
    assert str(config) in str(info.value)


def test_worker_with_a_missing_config_exits_with_a_clear_message(tmp_path: Path) -> None:
    result = run_ocstream("worker", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "nope.toml: no such config file" in result.stderr


def test_the_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parent.parent / "config" / "worker.example.toml"
    settings = load_settings({"config_file": str(example)}, {})
    assert settings.port == 3000 and settings.partitions == 16
    assert settings.transport.session_timeout == 10.0


# --- help and version ------------------------------------------------------------------------

HELP_COMMANDS = ["", "worker", "ingress", "record", "topology", *FAUST_COMMANDS]


def redis_processes_under(path: Path) -> list[str]:
    """Command lines of running redis-server processes that mention ``path`` (an embedded
    Redis keeps its files under the data dir, which is named on its command line or is its cwd)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if "redis-server" in cmdline and (str(path) in cmdline or cwd.startswith(str(path))):
            found.append(cmdline)
    return found


@pytest.mark.parametrize("command", HELP_COMMANDS)
def test_help_is_ocstreams_own_with_the_real_defaults(command: str, tmp_path: Path) -> None:
    args = [command, "--help"] if command else ["--help"]
    result = run_ocstream(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith(f"usage: ocstream {command}".rstrip()), text[:200]
    for option in ("--config F", "--redis URL", "--address A", "--port P", "--data-dir D"):
        assert option in text, (option, text)
    defaults = Settings()
    flat = " ".join(text.split())  # argparse wraps lines anywhere
    assert f"(OCSTREAM_PORT; default: {defaults.port})" in flat
    assert f"(OCSTREAM_ADDRESS; default: {defaults.address})" in flat
    assert f"(OCSTREAM_DATA_DIR; default: ./{defaults.data_dir})" in flat
    # None of faust's own text or defaults, which contradict ocstream's.
    for faust_text in ("6066", "0.0.0.0", "faust-streaming.github.io", "Welcome, see list"):
        assert faust_text not in text, faust_text
    if command == "":
        for listed in ("worker", "ingress", "record", "topology", "agents", "send"):
            assert f"\n  {listed} " in text, listed
        assert "Try it offline" in text
    if command == "ingress":
        assert f"the worker's port + 1 ({defaults.port + 1})" in flat
    if command == "topology":
        assert "{text,mermaid,dot,json,svg,png}" in text and "-o OUTPUT" in text
    # Printing help started nothing and wrote nothing.
    assert list(tmp_path.iterdir()) == []
    assert redis_processes_under(tmp_path) == []


def test_help_flags_and_no_command_print_help_and_start_nothing(tmp_path: Path) -> None:
    outputs = []
    for args in ([], ["-h"], ["worker", "-h"], ["-l", "info", "worker", "--help"]):
        result = run_ocstream(*args, cwd=tmp_path)
        assert result.returncode == 0, (args, result.stderr)
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1] and outputs[0].startswith("usage: ocstream [OPTIONS]")
    assert outputs[2] == outputs[3] and outputs[2].startswith("usage: ocstream worker")
    assert list(tmp_path.iterdir()) == []
    assert redis_processes_under(tmp_path) == []


def test_version_names_ocstream_and_faust_as_installed(tmp_path: Path) -> None:
    result = run_ocstream("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    expected = f"ocstream {ocstream.__version__} (faust {metadata.version('faust-streaming')})"
    assert result.stdout == expected + "\n"
    assert re.fullmatch(r"ocstream 0\.\d+\.\d+ \(faust \d+\.\d+\.\d+\)\n", result.stdout)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert ocstream.__version__ == project["version"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", sorted(FAUST_COMMANDS))
def test_the_help_of_fausts_commands_lists_the_options_faust_accepts(command: str) -> None:
    from faust.cli.faust import cli

    root = click.Context(cli, info_name="ocstream")
    faust_command = cli.get_command(root, command)
    assert faust_command is not None
    theirs = set()
    for param in faust_command.params:
        theirs |= {o for o in param.opts if o.startswith("-")}
        if not param.opts[0].startswith("-"):
            theirs.add(param.name or "")
    ours = set()
    own = {"-h", "--help", "--config", "--redis", "--address", "--port", "--data-dir"}
    for action in _faust_parser(command)._actions:
        ours |= set(action.option_strings) - own
        if not action.option_strings:
            ours.add(action.dest)
    assert ours == theirs


@pytest.mark.parametrize(("faust_option", "ours"), [("--web-port", "--port"), ("-D", "--data-dir")])
def test_fausts_options_that_contradict_ocstreams_are_refused(
    faust_option: str, ours: str, tmp_path: Path
) -> None:
    result = run_ocstream("worker", faust_option, "6066", cwd=tmp_path)
    assert result.returncode == 2
    assert f"{faust_option} is faust's; ocstream's is {ours}" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_command_with_help_is_named(tmp_path: Path) -> None:
    result = run_ocstream("nosuch", "--help")
    assert result.returncode == 2
    assert "no such command: 'nosuch'" in result.stderr
