"""The ``ocstream`` command.

``ocstream worker -l info [--config F] [--redis URL] [--address A] [--port P] [--data-dir D]
[--role all|match|deliver]`` runs a faust worker;
``ocstream topology [--format text|mermaid|dot|json|svg|png] [-o FILE] [--role R]``
describes the declared dataflow (svg and png drawn by Graphviz); every other faust command
(``agents``, ``tables``, ``send``, …) works as under ``faust``. ocstream's own options may
stand anywhere on the line; what is left goes to faust's command line.

With no Redis URL, ``worker`` starts the embedded Redis under the data dir and writes its URL
to ``<data dir>/redis/url``, so that other commands on the same data dir (``send``,
``topology``…) talk to the same server while the worker runs.

``--help`` (``-h``) and ``--version`` are answered here, before settings are read or anything
is built: help is ocstream's own text with the real defaults, and printing it starts no Redis
and creates no data dir. The heavy modules (faust, the dataflow) are imported only by the
commands that need them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .errors import ConfigError, OcstreamError
from .settings import Settings, load_settings

if TYPE_CHECKING:
    from topology import DataflowSettings

OWN_OPTIONS = {
    "--config": "config_file",
    "--redis": "redis_url",
    "--address": "address",
    "--port": "port",
    "--data-dir": "data_dir",
    "--role": "role",
}

ROLES = ("all", "match", "deliver")

TOPOLOGY_FORMATS = ("text", "mermaid", "dot", "json", "svg", "png")

HELP_FLAGS = ("-h", "--help")

#: faust's top-level options that take a value: their value is not the command's name.
_FAUST_VALUE_OPTIONS = frozenset(
    {"-l", "--loglevel", "-f", "--logfile", "-L", "--loop", "-A", "--app", "-W", "--workdir"}
    | {"--console-port", "--blocking-timeout"}
)

#: faust's options that would contradict ocstream's own: refused, naming the one to use.
_REPLACED_OPTIONS = {
    "-p": "--port",
    "--web-port": "--port",
    "-b": "--address",
    "--web-bind": "--address",
    "-D": "--data-dir",
    "--datadir": "--data-dir",
}

#: faust's commands that work on ocstream's app, with what they do.
FAUST_COMMANDS = {
    "agents": "list the agents of the dataflow",
    "tables": "list the tables of the dataflow",
    "models": "list the record types",
    "model": "show one record type",
    "send": "send a message to a topic or an agent",
    "reset": "delete the local table state under --data-dir",
    "clean-versions": "delete old version folders of the local table state",
}


# --- help and version: answered before anything is built ----------------------------------------


def _default(name: str) -> Any:
    return Settings.model_fields[name].default


def _common_options(parser: argparse.ArgumentParser, *, worker: bool = True) -> None:
    """ocstream's own options, as every command accepts them (the values are read elsewhere:
    these declarations only document them, with the defaults of :class:`Settings`)."""
    group = parser.add_argument_group(
        "ocstream's options",
        "Each may also come from an OCSTREAM_* variable or from the [worker] table of\n"
        "--config. The command line wins over the environment, which wins over the file.",
    )
    group.add_argument(
        "--config",
        metavar="F",
        help="TOML file: [worker], [transport] and the [[networks]] to follow "
        "(OCSTREAM_CONFIG_FILE; default: none, no network)",
    )
    group.add_argument(
        "--redis",
        metavar="URL",
        help="redis:// or rediss:// URL of a shared Redis (OCSTREAM_REDIS_URL; default: "
        + (
            "an embedded Redis 6.2 under --data-dir, started by the worker)"
            if worker
            else "the embedded Redis of a worker running on the same --data-dir)"
        ),
    )
    group.add_argument(
        "--address",
        metavar="A",
        help=f"HTTP bind address (OCSTREAM_ADDRESS; default: {_default('address')})",
    )
    group.add_argument(
        "--port",
        metavar="P",
        help=f"HTTP port (OCSTREAM_PORT; default: {_default('port')})",
    )
    group.add_argument(
        "--data-dir",
        metavar="D",
        help="local state: tables, the embedded Redis "
        f"(OCSTREAM_DATA_DIR; default: ./{_default('data_dir')})",
    )


def _role_option(parser: argparse.ArgumentParser, *, what: str) -> None:
    parser.add_argument(
        "--role",
        choices=ROLES,
        help=f"{what}: all (the default), match (extract and match XCM: the tables) or "
        "deliver (deliver the notifications: webhooks, websocket fan-out, subscription "
        "timers); docs/deploy.md shows a deployment split in two (OCSTREAM_ROLE)",
    )


def _loglevel_option(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "-l",
        "--loglevel",
        metavar="LEVEL",
        default=default,
        help=f"crit, error, warn, info or debug (default: {default})",
    )


def _top_parser() -> argparse.ArgumentParser:
    import textwrap

    commands = [
        (
            "worker",
            "run a worker: the XCM dataflow, the subscriptions API, the dashboard; in "
            "embedded mode also the ingress of --config's networks",
        ),
        ("ingress", "follow the networks of --config and publish their blocks to --redis"),
        ("record", "save the blocks FROM..TO of one network to a file, to replay offline"),
        ("topology", "describe the dataflow declared in topology/ (reads no Redis)"),
        *FAUST_COMMANDS.items(),
    ]
    width = max(len(name) for name, _ in commands) + 4
    listing = "\n".join(
        textwrap.fill(
            text, 88, initial_indent=f"  {name:<{width - 2}}", subsequent_indent=" " * width
        )
        for name, text in commands
    )
    about = (
        "ocstream follows Polkadot-ecosystem chains, matches their XCM messages into journeys "
        "and notifies subscribers (webhooks, websockets, log). It is a faust app on Redis "
        "Streams."
    )
    first_run = (
        "`ocstream COMMAND --help` describes a command. A first run: `ocstream worker -l info` "
        '(embedded Redis, API on http://127.0.0.1:3000); README.md, section "Try it offline", '
        "adds a local network to follow."
    )
    parser = argparse.ArgumentParser(
        prog="ocstream",
        usage="ocstream [OPTIONS] COMMAND [ARGS]...",
        description=textwrap.fill(about, 88),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"commands:\n{listing}\n\n{textwrap.fill(first_run, 88)}",
    )
    _common_options(parser)
    _loglevel_option(parser, "warn")
    parser.add_argument(
        "--version", action="store_true", help="print ocstream's and faust's versions"
    )
    return parser


def _worker_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocstream worker",
        usage="ocstream worker [OPTIONS]",
        description="Run a worker: the XCM dataflow (extract, match, deliver), the "
        "subscriptions API, /health, /metrics and the dashboard on --address:--port. Without "
        "--redis it starts a private Redis under --data-dir (stopped with the worker) and, "
        "with a --config that lists networks, follows them itself. With --redis, workers on "
        "the same Redis share the partitions, and the chains are followed by `ocstream "
        "ingress`.",
        epilog="faust's other worker options (--debug, --blocking-timeout, ...) are passed "
        "on; its --web-port, --web-bind and --datadir are replaced by --port, --address and "
        "--data-dir.",
    )
    _common_options(parser)
    _role_option(parser, what="what this worker runs, besides the API and its websockets")
    _loglevel_option(parser, "warn")
    parser.add_argument("-f", "--logfile", metavar="FILE", help="log file (default: stderr)")
    return parser


def _ingress_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocstream ingress",
        description="Follow the networks of --config and publish their blocks to --redis. "
        "/health and /metrics are served on --port, by default the worker's port + 1 "
        f"({_default('port') + 1}).",
    )
    _common_options(parser, worker=False)
    _loglevel_option(parser, "info")
    return parser


def _record_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocstream record",
        description="Save what the ingress reads for blocks FROM..TO of a network, for replay.",
    )
    parser.add_argument("--network", required=True, help="network URN from the config")
    parser.add_argument("--from", dest="first", type=int, required=True)
    parser.add_argument("--to", dest="last", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="file (.jsonl, or .jsonl.gz)")
    _loglevel_option(parser, "info")
    _common_options(parser, worker=False)
    return parser


def _topology_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocstream topology",
        description="Describe the dataflow declared in topology/: topics and their partitions, "
        "agents with their sources and sinks, tables, changelogs. It reads the declarations "
        "only and never connects to Redis.",
    )
    parser.add_argument(
        "--format",
        choices=TOPOLOGY_FORMATS,
        default="text",
        help="(default: text; svg and png are drawn by Graphviz's dot, which must be installed)",
    )
    parser.add_argument(
        "-o", "--output", type=Path, help="write to this file rather than to standard output"
    )
    _role_option(parser, what="describe what a worker of this role runs")
    _common_options(parser, worker=False)
    return parser


def _faust_parser(command: str) -> argparse.ArgumentParser:
    """The help of one of faust's commands, in ocstream's words (tests/test_cli.py checks that
    the options listed are faust's, so that this text cannot drift from what faust accepts)."""
    parser = argparse.ArgumentParser(
        prog=f"ocstream {command}",
        description=f"{FAUST_COMMANDS[command].capitalize()}. This is faust's `{command}` "
        "command, run on ocstream's app (the dataflow of topology/).",
    )
    if command == "agents":
        parser.add_argument(
            "--local",
            action="store_true",
            help="also list the agents that read a local channel instead of a topic",
        )
    elif command == "models":
        parser.add_argument("--builtins", action="store_true", help="include faust's own types")
    elif command == "model":
        parser.add_argument("name", help="the record type's name, as `models` lists it")
    elif command == "send":
        parser.add_argument("entity", help="a topic name, or an agent as @name")
        parser.add_argument("value", nargs="?", help="the message, JSON for a record")
        parser.add_argument("-k", "--key", help="the message key (JSON for a record)")
        parser.add_argument("-K", "--key-type", metavar="MODEL", help="record type of the key")
        parser.add_argument("-V", "--value-type", metavar="MODEL", help="record type of the value")
        parser.add_argument("--key-serializer", metavar="CODEC", help="serializer of the key")
        parser.add_argument("--value-serializer", metavar="CODEC", help="serializer of the value")
        parser.add_argument("--partition", type=int, help="partition to write to (default: by key)")
        parser.add_argument("-r", "--repeat", type=int, default=1, help="times (default: 1)")
        parser.add_argument(
            "--min-latency", type=float, default=0.0, help="seconds between sends at least"
        )
        parser.add_argument(
            "--max-latency", type=float, default=0.0, help="seconds between sends at most"
        )
    _common_options(parser, worker=False)
    return parser


def version_text() -> str:
    """``ocstream <version> (faust <version>)``, both read from what is installed."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    try:
        faust_version = version("faust-streaming")
    except PackageNotFoundError:  # pragma: no cover - faust is a dependency
        faust_version = "not installed"
    return f"ocstream {__version__} (faust {faust_version})"


def help_text(command: str | None) -> str:
    """The ``--help`` text of ``command`` (None: of ``ocstream`` itself)."""
    parsers = {
        None: _top_parser,
        "worker": _worker_parser,
        "ingress": _ingress_parser,
        "record": _record_parser,
        "topology": _topology_parser,
    }
    if command in parsers:
        return parsers[command]().format_help()
    assert command is not None
    if command not in FAUST_COMMANDS:
        raise ConfigError(f"no such command: {command!r} (`ocstream --help` lists them)")
    return _faust_parser(command).format_help()


def _command_of(rest: Sequence[str]) -> str | None:
    """The first word of ``rest`` that is neither an option nor an option's value."""
    skip = False
    for word in rest:
        if skip:
            skip = False
        elif word in _FAUST_VALUE_OPTIONS:
            skip = True
        elif not word.startswith("-"):
            return word
    return None


# --- running ------------------------------------------------------------------------------------


def _split_argv(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag, dest in OWN_OPTIONS.items():
        parser.add_argument(flag, dest=dest, type=int if dest == "port" else str)
    known, rest = parser.parse_known_args(list(argv))
    return vars(known), rest


def _embedded_url_file(settings: Settings) -> Path:
    return settings.data_dir.absolute() / "redis" / "url"


def _running_embedded_url(settings: Settings) -> str | None:
    """The URL of the embedded Redis a worker on this data dir is running, if it answers."""
    path = _embedded_url_file(settings)
    if not path.exists():
        return None
    url = path.read_text().strip()
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError:
        return None
    return url


def _check_environment() -> None:
    """Read the settings that modules take from the environment when imported (the
    transport's compression, the garbage collector's clock, RocksDB's memory bounds;
    ``ocstream/envvars.py``), so a bad value stops the command here, before an embedded Redis
    is started for nothing."""
    from . import gctune, rocks  # noqa: F401
    from .transport import wire  # noqa: F401


def _dataflow_settings() -> DataflowSettings:
    """What the dataflow takes from the environment (``OCSTREAM_DATAFLOW``, ``OCSTREAM_XCM_*``;
    :func:`topology.read_environment`), read once, before an embedded Redis is started, and
    handed to :func:`ocstream.app.build_app`."""
    import topology

    return topology.read_environment()


def _start_embedded(settings: Settings) -> str:
    from .embedded import EmbeddedRedis

    server = EmbeddedRedis(
        settings.data_dir.absolute() / "redis", appendfsync=settings.embedded_appendfsync
    ).start()
    _embedded_url_file(settings).write_text(server.url + "\n")
    print(f"ocstream: embedded Redis {server.version} at {server.url}", file=sys.stderr)
    return server.url


def _topology(settings: Settings, dataflow: DataflowSettings, argv: list[str]) -> int:
    args = _topology_parser().parse_args(argv)
    from .app import build_app
    from .dataflow import IMAGE_FORMATS, describe, render, render_image

    # Describing reads declarations only: nothing connects to this URL.
    app = build_app(
        settings, redis_url=settings.redis_url or "redis://127.0.0.1:6379/0", dataflow=dataflow
    )
    app.finalize()
    flow = describe(app)
    if args.format in IMAGE_FORMATS:
        data = render_image(flow, args.format)
    else:
        data = (render(flow, args.format) + "\n").encode()
    if args.output is not None:
        args.output.write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


def _ingress(settings: Settings, argv: list[str], *, port_given: bool) -> int:
    import asyncio
    import logging

    from .ingress.config import load_ingress_config
    from .ingress.service import IngressService

    args = _ingress_parser().parse_args(argv)
    logging.basicConfig(
        level=args.loglevel.upper(),
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s",
    )
    if settings.config_file is None:
        raise ConfigError("ocstream ingress needs --config (or OCSTREAM_CONFIG_FILE)")
    redis_url = settings.redis_url or _running_embedded_url(settings)
    if redis_url is None:
        raise ConfigError(
            "ocstream ingress needs --redis (or OCSTREAM_REDIS_URL), or a worker running the "
            "embedded Redis on the same --data-dir"
        )
    config = load_ingress_config(settings.config_file)
    service = IngressService(
        config,
        redis_url=redis_url,
        prefix=settings.transport.prefix,
        partitions=settings.partitions,
        stale_after=settings.health_stale_after,
    )
    # Its own port: next to a worker on the default 3000, the ingress takes 3001.
    port = settings.port if port_given else settings.port + 1
    asyncio.run(service.run(settings.address, port))
    return 0


def _record(settings: Settings, argv: list[str]) -> int:
    import asyncio
    import logging

    from .ingress.config import load_ingress_config
    from .ingress.follower import record

    args = _record_parser().parse_args(argv)
    logging.basicConfig(level=args.loglevel.upper(), format="[%(asctime)s] %(message)s")
    if settings.config_file is None:
        raise ConfigError("ocstream record needs --config (or OCSTREAM_CONFIG_FILE)")
    if args.last < args.first:
        raise ConfigError(f"--to {args.last} is before --from {args.first}")
    try:
        network = load_ingress_config(settings.config_file).network(args.network)
    except KeyError as exc:
        raise ConfigError(str(exc)) from exc
    count = asyncio.run(record(network, args.first, args.last, args.out))
    print(f"recorded {count} blocks of {args.network} to {args.out}")
    return 0


#: The line a worker with nothing to follow logs at start.
NO_NETWORKS = (
    "no networks to follow: the API and the dataflow run, but no chain feeds them blocks. "
    "Give --config a file with [[networks]] (examples in config/, keys in docs/config.md), "
    'or follow a local network as in README.md, "Try it offline".'
)


def _alone_in_its_group(settings: Settings) -> Settings:
    """An embedded Redis is private to its worker: no other member can join the group, so the
    wait of an empty group for more members (``initial_rebalance_delay``) is skipped unless it
    was set explicitly."""
    if "initial_rebalance_delay" in settings.transport.model_fields_set:
        return settings
    transport = settings.transport.model_copy(update={"initial_rebalance_delay": 0.0})
    return settings.model_copy(update={"transport": transport})


def _has_networks(settings: Settings) -> bool:
    if settings.config_file is None:
        return False
    from .ingress.config import declares_networks

    return declares_networks(settings.config_file)


def _say_there_are_no_networks(app: Any) -> None:
    import logging

    from mode import Service

    class NoNetworks(Service):
        async def on_start(self) -> None:
            logging.getLogger("ocstream").warning(NO_NETWORKS)

    app.service(NoNetworks)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        own, rest = _split_argv(args)
        command = _command_of(rest)
        if command is None and "--version" in rest:
            print(version_text())
            raise SystemExit(0)
        if command is None or any(flag in rest for flag in HELP_FLAGS):
            print(help_text(command), end="")
            raise SystemExit(0)
        replaced = next((o for o in rest if o.split("=")[0] in _REPLACED_OPTIONS), None)
        if replaced is not None:
            name = replaced.split("=")[0]
            raise ConfigError(f"{name} is faust's; ocstream's is {_REPLACED_OPTIONS[name]}")
        settings = load_settings(own)
        _check_environment()
        if command == "record":
            rest.remove("record")
            raise SystemExit(_record(settings, rest))
        if command == "ingress":
            rest.remove("ingress")
            port_given = own.get("port") is not None or "OCSTREAM_PORT" in os.environ
            raise SystemExit(_ingress(settings, rest, port_given=port_given))
        dataflow = _dataflow_settings()
        if command == "topology":
            rest.remove("topology")
            raise SystemExit(_topology(settings, dataflow, rest))
        if command == "worker" and settings.embedded and settings.role != "all":
            raise ConfigError(
                f"--role {settings.role} needs --redis (or OCSTREAM_REDIS_URL): the embedded "
                "Redis serves one worker, which must run everything (--role all)"
            )
        redis_url = settings.redis_url or _running_embedded_url(settings)
        if command == "worker" and settings.embedded:
            settings = _alone_in_its_group(settings)
        if redis_url is None and command == "worker":
            redis_url = _start_embedded(settings)
        if redis_url is None:
            redis_url = "redis://127.0.0.1:6379/0"
        from .app import build_app

        app = build_app(settings, redis_url=redis_url, dataflow=dataflow)
        if command == "worker" and settings.config_file is not None:
            from .ingress.config import declares_networks, load_ingress_config

            if declares_networks(settings.config_file):
                from .ingress.in_worker import attach_ingress, declare_networks

                config = load_ingress_config(settings.config_file)
                prefix = settings.transport.prefix
                # Declared at start in both modes: subscriptions to them are accepted at once.
                declare_networks(app, config, redis_url=redis_url, prefix=prefix)
                if settings.embedded:
                    attach_ingress(
                        app,
                        config,
                        redis_url=redis_url,
                        prefix=prefix,
                        partitions=settings.partitions,
                        stale_after=settings.health_stale_after,
                    )
        if command == "worker" and settings.embedded and not _has_networks(settings):
            _say_there_are_no_networks(app)
    except OcstreamError as exc:
        print(f"ocstream: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    sys.argv = ["ocstream", *rest]
    app.main()
    raise SystemExit(0)  # app.main() never returns; this keeps mypy's NoReturn honest
