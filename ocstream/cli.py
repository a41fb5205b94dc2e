"""The ``ocstream`` command.

``ocstream worker -l info [--config F] [--redis URL] [--address A] [--port P] [--data-dir D]``
runs a faust worker; ``ocstream topology [--format text|mermaid|dot|json|svg|png] [-o FILE]``
describes the declared dataflow (svg and png drawn by Graphviz); every other faust command
(``agents``, ``tables``, ``send``, …) works as under ``faust``. ocstream's own options may
stand anywhere on the line; what is left goes to faust's command line.

With no Redis URL, ``worker`` starts the embedded Redis under the data dir and writes its URL
to ``<data dir>/redis/url``, so that other commands on the same data dir (``send``,
``topology``…) talk to the same server while the worker runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .errors import OcstreamError
from .settings import Settings, load_settings

OWN_OPTIONS = {
    "--config": "config_file",
    "--redis": "redis_url",
    "--address": "address",
    "--port": "port",
    "--data-dir": "data_dir",
}

TOPOLOGY_FORMATS = ("text", "mermaid", "dot", "json", "svg", "png")


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


def _start_embedded(settings: Settings) -> str:
    from .embedded import EmbeddedRedis

    server = EmbeddedRedis(
        settings.data_dir.absolute() / "redis", appendfsync=settings.embedded_appendfsync
    ).start()
    _embedded_url_file(settings).write_text(server.url + "\n")
    print(f"ocstream: embedded Redis {server.version} at {server.url}", file=sys.stderr)
    return server.url


def _topology(settings: Settings, argv: list[str]) -> int:
    from .app import build_app
    from .dataflow import IMAGE_FORMATS, describe, render, render_image

    parser = argparse.ArgumentParser(
        prog="ocstream topology", description="Describe the dataflow declared in topology/."
    )
    parser.add_argument(
        "--format",
        choices=TOPOLOGY_FORMATS,
        default="text",
        help="svg and png are drawn by Graphviz's dot, which must be installed",
    )
    parser.add_argument(
        "-o", "--output", type=Path, help="write to this file rather than to standard output"
    )
    args = parser.parse_args(argv)
    # Describing reads declarations only: nothing connects to this URL.
    app = build_app(settings, redis_url=settings.redis_url or "redis://127.0.0.1:6379/0")
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

    from .errors import ConfigError
    from .ingress.config import load_ingress_config
    from .ingress.service import IngressService

    parser = argparse.ArgumentParser(
        prog="ocstream ingress",
        description="Follow the networks of --config and publish their blocks to --redis.",
    )
    parser.add_argument("-l", "--loglevel", default="info")
    args = parser.parse_args(argv)
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
    )
    # Its own port: next to a worker on the default 3000, the ingress takes 3001.
    port = settings.port if port_given else settings.port + 1
    asyncio.run(service.run(settings.address, port))
    return 0


def _record(settings: Settings, argv: list[str]) -> int:
    import asyncio
    import logging

    from .errors import ConfigError
    from .ingress.config import load_ingress_config
    from .ingress.follower import record

    parser = argparse.ArgumentParser(
        prog="ocstream record",
        description="Save what the ingress reads for blocks FROM..TO of a network, for replay.",
    )
    parser.add_argument("--network", required=True, help="network URN from the config")
    parser.add_argument("--from", dest="first", type=int, required=True)
    parser.add_argument("--to", dest="last", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="file (.jsonl, or .jsonl.gz)")
    parser.add_argument("-l", "--loglevel", default="info")
    args = parser.parse_args(argv)
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


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        own, rest = _split_argv(args)
        settings = load_settings(own)
        command = next((a for a in rest if not a.startswith("-")), None)
        if command == "topology":
            rest.remove("topology")
            raise SystemExit(_topology(settings, rest))
        if command == "record":
            rest.remove("record")
            raise SystemExit(_record(settings, rest))
        if command == "ingress":
            rest.remove("ingress")
            port_given = own.get("port") is not None or "OCSTREAM_PORT" in os.environ
            raise SystemExit(_ingress(settings, rest, port_given=port_given))
        redis_url = settings.redis_url or _running_embedded_url(settings)
        if redis_url is None and command == "worker":
            redis_url = _start_embedded(settings)
        if redis_url is None:
            redis_url = "redis://127.0.0.1:6379/0"
        from .app import build_app

        app = build_app(settings, redis_url=redis_url)
        if command == "worker" and settings.config_file is not None:
            from .ingress.config import declares_networks, load_ingress_config

            if declares_networks(settings.config_file):
                from .ingress.in_worker import attach_ingress, declare_networks

                config = load_ingress_config(settings.config_file)
                prefix = settings.transport.prefix
                if settings.embedded:
                    attach_ingress(
                        app,
                        config,
                        redis_url=redis_url,
                        prefix=prefix,
                        partitions=settings.partitions,
                    )
                else:
                    declare_networks(app, config, redis_url=redis_url, prefix=prefix)
    except OcstreamError as exc:
        print(f"ocstream: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    sys.argv = ["ocstream", *rest]
    app.main()
    raise SystemExit(0)  # app.main() never returns; this keeps mypy's NoReturn honest
