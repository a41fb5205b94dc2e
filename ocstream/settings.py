"""Worker settings: parsed once, from the command line, the environment and a TOML file.

Precedence, highest first: command-line options, ``OCSTREAM_*`` environment variables, the
``[worker]`` and ``[transport]`` tables of the config file (``--config`` or
``OCSTREAM_CONFIG_FILE``), then the defaults below.

=========================  =======================  ======================================
option                     environment              meaning
=========================  =======================  ======================================
``--config F``             ``OCSTREAM_CONFIG_FILE``  TOML file
``--redis URL``            ``OCSTREAM_REDIS_URL``    Redis to use; absent: embedded Redis
``--address A``            ``OCSTREAM_ADDRESS``      HTTP bind address (127.0.0.1)
``--port P``               ``OCSTREAM_PORT``         HTTP port (3000)
``--data-dir D``           ``OCSTREAM_DATA_DIR``     local state: tables, embedded Redis
``--role R``               ``OCSTREAM_ROLE``         what the worker runs: all, match, deliver
(none)                     ``OCSTREAM_APP_ID``       faust app id = consumer group (ocstream)
(none)                     ``OCSTREAM_PARTITIONS``   default partition count (16)
(none)                     ``OCSTREAM_API_TOKENS``   bearer tokens for the API's write routes
(none)                     ``OCSTREAM_READ_TOKENS``  bearer tokens for the API's read routes
(none)                     ``OCSTREAM_ADMIN_TOKENS`` bearer tokens for the admin routes
(none)                     ``OCSTREAM_ALLOWED_HOSTS``  ``Host`` header values accepted
(none)                     ``OCSTREAM_SUBS_PER_CLIENT``  persistent subscriptions per client
(none)                     ``OCSTREAM_WS_PER_CLIENT``  websockets per client and worker
(none)                     ``OCSTREAM_HEADER_TIMEOUT``  seconds to send a request's headers
(none)                     ``OCSTREAM_BODY_TIMEOUT``  seconds to send a request's body
(none)                     ``OCSTREAM_WEBHOOK_ALLOW_PRIVATE``  allow webhooks to private hosts
(none)                     ``OCSTREAM_WEBHOOK_TIMEOUT``  seconds per webhook attempt
(none)                     ``OCSTREAM_WEBHOOK_SCHEDULE``  delay before each attempt, seconds,
                                                    comma-separated, the first 0
(none)                     ``OCSTREAM_WEBHOOK_CONCURRENCY``  webhook POSTs in flight per
                                                    worker (all three: docs/webhooks.md)
(none)                     ``OCSTREAM_HEALTH_STALE_AFTER``  seconds without a new block before
                                                    /health calls a network stale (120)
=========================  =======================  ======================================

Token and host lists in the environment are comma-separated; in the file they are arrays.
``docs/security.md`` explains the access settings and limits.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError
from .transport.settings import TransportSettings

ENV_NAMES = {
    "config_file": "OCSTREAM_CONFIG_FILE",
    "redis_url": "OCSTREAM_REDIS_URL",
    "address": "OCSTREAM_ADDRESS",
    "port": "OCSTREAM_PORT",
    "data_dir": "OCSTREAM_DATA_DIR",
    "role": "OCSTREAM_ROLE",
    "app_id": "OCSTREAM_APP_ID",
    "partitions": "OCSTREAM_PARTITIONS",
    "instance_id": "OCSTREAM_INSTANCE_ID",
    "api_tokens": "OCSTREAM_API_TOKENS",
    "admin_tokens": "OCSTREAM_ADMIN_TOKENS",
    "read_tokens": "OCSTREAM_READ_TOKENS",
    "allowed_hosts": "OCSTREAM_ALLOWED_HOSTS",
    "subs_per_client": "OCSTREAM_SUBS_PER_CLIENT",
    "ws_per_client": "OCSTREAM_WS_PER_CLIENT",
    "header_timeout": "OCSTREAM_HEADER_TIMEOUT",
    "body_timeout": "OCSTREAM_BODY_TIMEOUT",
    "webhook_allow_private": "OCSTREAM_WEBHOOK_ALLOW_PRIVATE",
    "webhook_timeout": "OCSTREAM_WEBHOOK_TIMEOUT",
    "webhook_schedule": "OCSTREAM_WEBHOOK_SCHEDULE",
    "webhook_concurrency": "OCSTREAM_WEBHOOK_CONCURRENCY",
    "health_stale_after": "OCSTREAM_HEALTH_STALE_AFTER",
}
_LISTS = ("api_tokens", "admin_tokens", "read_tokens", "allowed_hosts", "webhook_schedule")
#: ``Host`` names accepted by default when the worker listens on a loopback address.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    app_id: str = Field(default="ocstream", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    config_file: Path | None = None
    #: ``redis://`` or ``rediss://`` URL; None starts the embedded Redis.
    redis_url: str | None = Field(default=None, pattern=r"^rediss?://")
    address: str = "127.0.0.1"
    port: int = Field(default=3000, ge=1, le=65535)
    data_dir: Path = Path("data")
    #: What this worker runs (docs/deploy.md, "Matching apart from delivery"): ``all``, or
    #: ``match`` (extract and match: the XCM tables) or ``deliver`` (``xcm_deliver``, the
    #: webhook dispatcher, the subscriptions' timers). Every worker serves the API and its
    #: websockets.
    role: Literal["all", "match", "deliver"] = "all"
    partitions: int = Field(default=16, ge=1, le=1024)
    standby_replicas: int = Field(default=1, ge=0)
    commit_interval: float = Field(default=1.0, gt=0)
    commit_every: int = Field(default=10_000, ge=1)
    #: Static membership: a stable id per worker lets a restart keep its partitions.
    instance_id: str | None = None
    embedded_appendfsync: Literal["always", "everysec", "no"] = "everysec"
    #: Bearer tokens accepted on the API's write routes (POST/PATCH/DELETE /subs); none: open.
    api_tokens: tuple[str, ...] = ()
    #: Bearer tokens of the admin routes (/admin/...); none: the admin routes are disabled.
    admin_tokens: tuple[str, ...] = ()
    #: Bearer tokens accepted on the read routes (GET /subs, /ws/subs, ...); a write token also
    #: works. None set: reads are open.
    read_tokens: tuple[str, ...] = ()
    #: ``Host`` header values (names, without the port) the HTTP server answers; ``*`` allows
    #: any. Empty: the loopback names when bound to a loopback address, else the bind address
    #: and any name (see :meth:`effective_allowed_hosts`).
    allowed_hosts: tuple[str, ...] = ()
    #: Persistent subscriptions one client (bearer token, else IP address) may create; 0: no
    #: limit beyond the global one.
    subs_per_client: int = Field(default=1000, ge=0)
    #: Websockets one client may hold open on one worker; 0: no limit beyond the global one.
    ws_per_client: int = Field(default=100, ge=0)
    #: Seconds a client has to send a request's headers (also the idle keep-alive time).
    header_timeout: float = Field(default=15.0, gt=0)
    #: Seconds a client has to send a request's body.
    body_timeout: float = Field(default=30.0, gt=0)
    #: Let webhooks target loopback, private and link-local addresses (off: SSRF guard).
    webhook_allow_private: bool = False
    #: Webhook delivery (``docs/webhooks.md``); None: the dispatcher's default
    #: (``ocstream.sinks.webhook.WebhookSettings``). Seconds one attempt may take: the DNS
    #: check, connecting, sending and the answer's headers.
    webhook_timeout: float | None = Field(default=None, gt=0, le=300)
    #: Delay before each webhook attempt, in seconds, counted from the previous failure; its
    #: length is the number of attempts, after which a delivery is a dead letter. Every worker
    #: of a deployment should have the same: whichever worker attempts a delivery next
    #: schedules its retry by its own.
    webhook_schedule: tuple[Annotated[float, Field(ge=0, allow_inf_nan=False)], ...] | None = Field(
        default=None, min_length=1, max_length=100
    )
    #: Webhook POSTs in flight at once on one worker.
    webhook_concurrency: int | None = Field(default=None, ge=1, le=10_000)
    #: Seconds without a new block of a network after which /health reports it stale.
    health_stale_after: float = Field(default=120.0, gt=0)
    transport: TransportSettings = Field(default_factory=TransportSettings)

    @field_validator("webhook_schedule")
    @classmethod
    def _first_attempt_at_once(cls, schedule: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if schedule is not None and schedule[0] != 0:
            raise ValueError(
                "the first step must be 0: a notification's first attempt is made as soon as "
                "it is queued, the steps after it are the retries' delays"
            )
        return schedule

    @property
    def embedded(self) -> bool:
        return self.redis_url is None

    def effective_allowed_hosts(self) -> tuple[str, ...] | None:
        """The ``Host`` names to accept, lower case; None: any. Configured hosts win; without
        them a loopback bind accepts the loopback names, a wildcard bind (``0.0.0.0``, ``::``)
        any name, and any other bind its own address plus the loopback names."""
        if self.allowed_hosts:
            if "*" in self.allowed_hosts:
                return None
            return tuple(host.lower().strip("[]") for host in self.allowed_hosts)
        address = self.address.lower().strip("[]")
        if address in ("0.0.0.0", "::", ""):
            return None
        return tuple(dict.fromkeys((address, *LOOPBACK_HOSTS)))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such config file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def load_settings(
    cli: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Merge the sources (see the module docstring) into one validated :class:`Settings`."""
    env = os.environ if environ is None else environ
    cli_values = {k: v for k, v in (cli or {}).items() if v is not None}
    env_values: dict[str, Any] = {name: env[var] for name, var in ENV_NAMES.items() if env.get(var)}
    for name in _LISTS:
        if name in env_values:
            env_values[name] = tuple(t.strip() for t in env_values[name].split(",") if t.strip())
    config_file = cli_values.get("config_file") or env_values.get("config_file")
    file_values: dict[str, Any] = {}
    transport_values: dict[str, Any] = {}
    source = "defaults"
    if config_file:
        path = Path(config_file)
        source = str(path)
        document = _read_toml(path)
        worker = document.get("worker", {})
        transport = document.get("transport", {})
        if not isinstance(worker, dict) or not isinstance(transport, dict):
            raise ConfigError(f"{path}: [worker] and [transport] must be tables")
        file_values = dict(worker)
        transport_values = dict(transport)
        file_values["config_file"] = path
    values = {**file_values, **env_values, **cli_values}
    try:
        values["transport"] = TransportSettings.from_env(env, **transport_values)
        return Settings(**values)
    except (ValidationError, ValueError) as exc:
        raise ConfigError(f"invalid settings (from {source}, environment, options): {exc}") from exc
