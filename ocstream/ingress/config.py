"""Network configuration of the ingress: which chains to follow, and through which provider.

The networks are the ``[[networks]]`` tables of a TOML file, in the reference deployment's
format (docs/config.md is the reference of every field)::

    [[networks]]
    id = "urn:ocn:polkadot:1000"
    relay = "urn:ocn:polkadot:0"
    provider = { type = "rpc", url = ["wss://polkadot-asset-hub-rpc.polkadot.io"] }

    config = load_ingress_config("config/polkadot.toml")
    config.network("urn:ocn:polkadot:1000").provider.urls

The same file may also hold the worker's ``[worker]`` and ``[transport]`` tables; those belong to
:mod:`ocstream.settings` and are ignored here. Every problem with the file is raised as a
:class:`~ocstream.errors.ConfigError` whose message names the file, the line and the field, one
problem per line::

    config/x.toml:12: networks[1].provider.url: value must start with ws:// or wss://, got 'https://…'
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from ..errors import ConfigError

__all__ = [
    "IngressConfig",
    "NetworkConfig",
    "Provider",
    "ReplayProvider",
    "RpcProvider",
    "load_ingress_config",
]

#: ``urn:ocn:<consensus>:<paraId>``. The paraId has no leading zeros so that one network has
#: exactly one spelling: the URN is a key in Redis and in every table.
NETWORK_URN = re.compile(r"urn:ocn:(?P<consensus>[a-z][a-z0-9-]*):(?P<para_id>0|[1-9][0-9]*)")

#: Top-level tables that the worker's settings own (see :mod:`ocstream.settings`).
WORKER_SECTIONS = frozenset({"worker", "transport"})

Loc = tuple[str | int, ...]


def _invalid(kind: str, message: str) -> PydanticCustomError:
    # The message travels as context, not as the template, so that braces in a user's value
    # (a URL, a key) are never read as placeholders.
    return PydanticCustomError(kind, "{message}", {"message": message})


def _check_urn(value: str) -> re.Match[str]:
    match = NETWORK_URN.fullmatch(value)
    if match is None:
        raise _invalid(
            "network_urn",
            "expected urn:ocn:<consensus>:<paraId> (consensus in lowercase letters, digits "
            f"and '-'; paraId a decimal number without leading zeros), got {value!r}",
        )
    return match


def _url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a chain's JSON-RPC endpoint, or None if it can."""
    # Only websockets: the ingress subscribes to finalized heads, which plain HTTP cannot carry.
    if not url.startswith(("ws://", "wss://")):
        return f"value must start with ws:// or wss://, got {url!r}"
    parts = urlsplit(url)
    if not parts.hostname:
        return f"URL has no host: {url!r}"
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when it is read
    except ValueError:
        return f"URL has an invalid port: {url!r}"
    return None


class RpcProvider(BaseModel):
    """Chain access over JSON-RPC websockets; several URLs are tried in turn on failure."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["rpc"] = "rpc"
    #: One ``ws://``/``wss://`` URL, or a list of them for failover, first one preferred.
    url: str | list[str]

    @field_validator("url", mode="before")
    @classmethod
    def _check_urls(cls, value: object) -> object:
        # Shape and scheme are checked together, before pydantic's union of str and list[str],
        # so that a bad entry is reported once, at its index (url[1]), rather than as a pair
        # of "not a string" / "not a list" errors.
        if isinstance(value, str):
            problem = _url_problem(value)
            if problem is not None:
                raise _invalid("ws_url", problem)
            return value
        if not isinstance(value, list):
            raise _invalid("ws_url_type", "expected a ws:// or wss:// URL or a list of them")
        if not value:
            raise _invalid("ws_url_empty", "at least one URL is required")
        errors: list[InitErrorDetails] = []
        for index, item in enumerate(value):
            item_problem = (
                _url_problem(item) if isinstance(item, str) else "expected a ws:// or wss:// URL"
            )
            if item_problem is not None:
                errors.append(
                    InitErrorDetails(
                        type=_invalid("ws_url", item_problem), loc=(index,), input=item
                    )
                )
        if errors:
            # pydantic merges a ValidationError raised by a validator into the outer one, with
            # each loc taken relative to this field: the error lands at url[index].
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return value

    @property
    def urls(self) -> list[str]:
        """The URLs in order of preference; never empty."""
        return [self.url] if isinstance(self.url, str) else list(self.url)


class ReplayProvider(BaseModel):
    """Blocks recorded in a file, replayed at a fixed rate (tests and offline runs)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["replay"] = "replay"
    #: The recording. Relative paths are taken from the config file's directory when the
    #: config comes from :func:`load_ingress_config`.
    file: Path
    #: Blocks per second.
    rate: float = Field(default=10.0, gt=0, allow_inf_nan=False, strict=True)

    @field_validator("file")
    @classmethod
    def _resolve_file(cls, value: Path, info: ValidationInfo) -> Path:
        if value == Path():
            raise _invalid("replay_file", "a file path is required")
        # Relative to the config file, so the same file works whatever the working directory
        # of the command that loads it.
        context = info.context
        config_dir = context.get("config_dir") if isinstance(context, Mapping) else None
        if isinstance(config_dir, Path) and not value.is_absolute():
            return config_dir / value
        return value


#: A network's chain access; TOML picks the kind with ``type = "rpc"`` or ``type = "replay"``.
Provider = Annotated[RpcProvider | ReplayProvider, Field(discriminator="type")]


class NetworkConfig(BaseModel):
    """One chain the ingress follows.

    The TOML keys are the reference deployment's camelCase ones (``batchSize``,
    ``maxBlockDist``); in Python the attributes are snake_case::

        NetworkConfig(id="urn:ocn:polkadot:0", provider=RpcProvider(url="wss://…"), batchSize=10)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    #: The relay chain of a parachain (its URN, paraId 0, same consensus); absent on a relay.
    relay: str | None = Field(default=None, validate_default=True)
    provider: Provider
    #: On restart, fill the gap from the stored tip (False: start at the current finalized head).
    recovery: bool = Field(default=True, strict=True)
    #: Blocks fetched per round trip while catching up.
    batch_size: int = Field(default=25, ge=1, le=1000, alias="batchSize", strict=True)
    #: A distance (in blocks) from the stored tip to the finalized head beyond which the
    #: ingress catches up in batches. Never a limit: older blocks are not skipped.
    max_block_dist: int = Field(default=50, ge=1, alias="maxBlockDist", strict=True)

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        _check_urn(value)
        return value

    @field_validator("relay")
    @classmethod
    def _check_relay(cls, value: str | None, info: ValidationInfo) -> str | None:
        relay_consensus = None
        if value is not None:
            match = _check_urn(value)
            if match["para_id"] != "0":
                raise _invalid(
                    "relay_urn", f"a relay chain has paraId 0, got {value!r} (a parachain)"
                )
            relay_consensus = match["consensus"]
        network_id = info.data.get("id")
        if network_id is None:
            return value  # the id is invalid and reported on its own; nothing to compare with
        match = _check_urn(network_id)
        consensus, is_relay = match["consensus"], match["para_id"] == "0"
        if is_relay and value is not None:
            raise _invalid(
                "relay_on_relay", f"{network_id} is a relay chain (paraId 0): remove its relay"
            )
        if not is_relay and value is None:
            raise _invalid(
                "relay_missing",
                f'{network_id} is a parachain: it needs relay = "urn:ocn:{consensus}:0"',
            )
        if relay_consensus is not None and relay_consensus != consensus:
            raise _invalid(
                "relay_consensus",
                f"the relay must be in the network's consensus ({consensus!r}), got {value!r}",
            )
        return value

    @property
    def consensus(self) -> str:
        """``polkadot`` for ``urn:ocn:polkadot:1000``."""
        return self.id.split(":")[2]

    @property
    def para_id(self) -> int:
        """``1000`` for ``urn:ocn:polkadot:1000``; 0 for a relay chain."""
        return int(self.id.split(":")[3])

    @property
    def is_relay(self) -> bool:
        return self.para_id == 0


class IngressConfig(BaseModel):
    """The networks of one config file; each relay a parachain names is declared too."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    networks: list[NetworkConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_network_set(self) -> IngressConfig:
        errors: list[InitErrorDetails] = []
        first_index: dict[str, int] = {}
        for index, network in enumerate(self.networks):
            if network.id in first_index:
                # The URN keys blocks and the registry: two entries would publish twice.
                message = (
                    f"duplicate network id: {network.id} is networks[{first_index[network.id]}]"
                )
                errors.append(
                    InitErrorDetails(
                        type=_invalid("duplicate_network", message),
                        loc=("networks", index, "id"),
                        input=network.id,
                    )
                )
            else:
                first_index[network.id] = index
        for index, network in enumerate(self.networks):
            # Relayed legs and the relay hop of HRMP are read from the relay's blocks, so a
            # parachain without its relay in the same deployment cannot be matched.
            if network.relay is not None and network.relay not in first_index:
                message = (
                    f"relay {network.relay} is not declared in this file: add a [[networks]] "
                    f'table with id = "{network.relay}"'
                )
                errors.append(
                    InitErrorDetails(
                        type=_invalid("relay_undeclared", message),
                        loc=("networks", index, "relay"),
                        input=network.relay,
                    )
                )
        if errors:
            # Raised as a ValidationError so each problem keeps its own field path and line.
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self

    def network(self, urn: str) -> NetworkConfig:
        """The network with id ``urn``; KeyError if the file does not declare it."""
        for network in self.networks:
            if network.id == urn:
                return network
        declared = ", ".join(network.id for network in self.networks)
        raise KeyError(f"network {urn!r} is not configured (declared: {declared})")


def declares_networks(path: str | os.PathLike[str]) -> bool:
    """Whether a config file has any ``[[networks]]`` (a worker-only file has none)."""
    try:
        return bool(tomllib.loads(_read_text(Path(path))).get("networks"))
    except tomllib.TOMLDecodeError:
        return True  # let load_ingress_config report the syntax error with its line


def load_ingress_config(path: str | os.PathLike[str]) -> IngressConfig:
    """Read and validate the networks of a TOML config file.

    Raises :class:`~ocstream.errors.ConfigError` naming the file, line and field of every
    problem found.
    """
    config_path = Path(path)
    text = _read_text(config_path)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_syntax_error_message(config_path, text, exc)) from exc
    networks_part = {key: value for key, value in document.items() if key not in WORKER_SECTIONS}
    try:
        return IngressConfig.model_validate(
            networks_part, context={"config_dir": config_path.absolute().parent}
        )
    except ValidationError as exc:
        raise ConfigError(_validation_message(config_path, text, networks_part, exc)) from exc


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such config file") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from exc


def _syntax_error_message(path: Path, text: str, exc: tomllib.TOMLDecodeError) -> str:
    # tomllib (3.11) has no lineno attribute; the position is only in the message.
    position = re.search(r"\(at line (\d+), column \d+\)", str(exc))
    if position is not None:
        line = int(position[1])
    else:  # "(at end of document)"
        line = max(1, len(text.splitlines()))
    return f"{path}:{line}: not valid TOML: {exc}"


def _validation_message(
    path: Path, text: str, document: Mapping[str, object], exc: ValidationError
) -> str:
    lines = _TomlLines(text)
    problems: list[tuple[int, str]] = []
    for error in exc.errors(include_url=False):
        field_path = _field_path(error["loc"], document)
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            field_path.append("type")  # the provider's kind is chosen by its `type` key
        line = lines.line_of(field_path)
        problem = f"{path}:{line}: {_format_path(field_path)}: {_describe(error, field_path)}"
        if (line, problem) not in problems:
            problems.append((line, problem))
    # In file order, as an editor shows them.
    return "\n".join(problem for _, problem in sorted(problems, key=lambda item: item[0]))


def _field_path(loc: Loc, document: Mapping[str, object]) -> list[str | int]:
    """``loc`` of a pydantic error as a path through the file's keys.

    pydantic puts labels for union members into ``loc`` (``provider.rpc.url``); walking the
    parsed document tells the file's keys (and list indexes) from those labels.
    """
    node: object = document
    path: list[str | int] = []
    for position, part in enumerate(loc):
        if isinstance(node, Mapping) and isinstance(part, str) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            path.append(part)
        elif position == len(loc) - 1 and isinstance(node, Mapping):
            path.append(part)  # a missing key: not in the document, but it is the field
    return path


def _format_path(path: Sequence[str | int]) -> str:
    """``networks[1].provider.url``; ``(file)`` for the document itself."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "(file)"


_NETWORK_KEYS = frozenset((info.alias or name) for name, info in NetworkConfig.model_fields.items())


def _describe(error: ErrorDetails, path: Sequence[str | int]) -> str:
    kind = error["type"]
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_not_found":
        return 'required key is missing: "rpc" or "replay"'
    if kind == "extra_forbidden":
        key = path[-1] if path else ""
        if len(path) == 1:
            return (
                "unknown top-level key: the file holds [[networks]] tables, and [worker] and "
                "[transport] for the worker"
            )
        camel = re.sub(r"_([a-z])", lambda match: match[1].upper(), str(key))
        if len(path) == 3 and camel != key and camel in _NETWORK_KEYS:
            return f"unknown key; did you mean {camel}?"
        return "unknown key"
    return error["msg"]


# --- Line numbers -------------------------------------------------------------------------
# tomllib reports no positions for values, so the lines are found by scanning the text: table
# headers ([a.b], [[a]]) give each table a path with list indexes, and `key = …` lines give the
# keys of each table. This is a scan, not a parser: a line inside a multi-line array that looks
# like a header would confuse it, but then the answer is only a nearby line.

_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED_KEY = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_KEY_LINE = re.compile(rf"\s*(?P<key>{_DOTTED_KEY})\s*=")
_TABLE_HEADER = re.compile(rf"\s*\[\s*(?P<key>{_DOTTED_KEY})\s*\]\s*(?:#.*)?")
_ARRAY_HEADER = re.compile(rf"\s*\[\[\s*(?P<key>{_DOTTED_KEY})\s*\]\]\s*(?:#.*)?")


def _key_parts(dotted: str) -> tuple[str, ...]:
    return tuple(part.strip("\"'") for part in re.findall(_KEY_PART, dotted))


@dataclass
class _Table:
    #: Line of the header; None for the root table.
    header_line: int | None
    #: Keys and list indexes from the document's root, e.g. ("networks", 1, "provider").
    path: Loc
    #: (line, dotted key) of each `key = …` line directly in this table.
    keys: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)


class _TomlLines:
    """Where each table and key of a TOML text is, by line number (1-based)."""

    def __init__(self, text: str) -> None:
        self.tables = [_Table(header_line=None, path=())]
        # Index of the last element of each array of tables, by its path.
        self._array_last: dict[Loc, int] = {}
        multiline_string: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if multiline_string is not None:
                if line.count(multiline_string) % 2 == 1:
                    multiline_string = None
                continue
            if array := _ARRAY_HEADER.fullmatch(line):
                path = self._resolve(_key_parts(array["key"]), is_array=True)
                self.tables.append(_Table(header_line=number, path=path))
            elif table := _TABLE_HEADER.fullmatch(line):
                path = self._resolve(_key_parts(table["key"]), is_array=False)
                self.tables.append(_Table(header_line=number, path=path))
            elif key := _KEY_LINE.match(line):
                self.tables[-1].keys.append((number, _key_parts(key["key"])))
            for delimiter in ('"""', "'''"):
                if line.count(delimiter) % 2 == 1:
                    multiline_string = delimiter

    def _resolve(self, parts: tuple[str, ...], *, is_array: bool) -> Loc:
        # [networks.provider] after the 2nd [[networks]] is ("networks", 1, "provider").
        path: list[str | int] = []
        for depth, part in enumerate(parts):
            path.append(part)
            key = tuple(path)
            if is_array and depth == len(parts) - 1:
                self._array_last[key] = self._array_last.get(key, -1) + 1
                path.append(self._array_last[key])
            elif key in self._array_last:
                path.append(self._array_last[key])
        return tuple(path)

    def line_of(self, field_path: Sequence[str | int]) -> int:
        """The line that defines ``field_path``, or the nearest enclosing one that exists."""
        target = tuple(field_path)
        # The deepest table that contains the field; the root always does.
        owner = max(
            (table for table in self.tables if target[: len(table.path)] == table.path),
            key=lambda table: len(table.path),
        )
        rest = target[len(owner.path) :]
        if rest:
            # The longest dotted-key match wins: `provider.url = …` over `provider = {…}`.
            best_line, best_length = None, 0
            for number, parts in owner.keys:
                length = _common_prefix(parts, rest)
                if length > best_length:
                    best_line, best_length = number, length
            if best_line is not None:
                return best_line
            # A field with no line of its own but tables below it: `networks` → [[networks]].
            for table in self.tables:
                if table.header_line is not None and table.path[: len(target)] == target:
                    return table.header_line
        return owner.header_line or 1


def _common_prefix(left: Sequence[object], right: Sequence[object]) -> int:
    length = 0
    for a, b in zip(left, right, strict=False):
        if a != b:
            break
        length += 1
    return length
