"""Helpers for tests outside this repository: recorded blocks in, ``blocks`` topic out.

An acceptance test of the XCM agent needs real blocks on the ``blocks`` topic, exactly as the
ingress writes them, without running a chain node. This module gets them from the recorded
fixtures (see the fixtures' ``README.md``):

* :func:`block_from_decoded` turns one block already decoded by polkadot-api ("papi",
  ``decoded/<chain>/<number>.cbor``) into an :class:`~ocstream.ingress.model.ExtendedBlock` shaped
  like the ingress's own decoder output (see :func:`from_papi_value` for the value rules);
* :func:`blocks_from_case` returns every block of a case manifest (``cases/*.json``), whatever its
  recorded format, with the manifest's storage values attached; raw blocks go through the real
  decoder (:func:`~ocstream.ingress.decode.build_extended_block`);
* :func:`publish_blocks` appends blocks to the topic with the ingress's key, value and
  partitioning, so a running ``ocstream worker`` consumes them as if the ingress had sent them;
* :func:`fixtures_path` finds the fixtures folder.

Usage::

    from ocstream.testing import blocks_from_case, fixtures_path, publish_blocks_sync

    case = fixtures_path() / "cases" / "head-hrmp-assethub-hydra.json"
    blocks = blocks_from_case(case)
    publish_blocks_sync("redis://127.0.0.1:6379/0", blocks)

See ``docs/testing.md`` for what the papi conversion does and does not reproduce.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import cbor2
import orjson
from pydantic import JsonValue

from .ingress.decode import DecoderCache, build_extended_block, extrinsic_outcomes, timestamp_of
from .ingress.model import VOUCHED_HEADERS, Event, ExtendedBlock, Extrinsic, Phase, StorageItem
from .ingress.raw import RawBlock, load_sidecar_json, load_v1_cbor
from .ingress.registry import NetworkRecord, NetworkRegistry
from .ingress.storage import downward_queue, storage_key
from .settings import load_settings
from .transport.client import connect
from .transport.keys import DEFAULT_PREFIX
from .transport.writer import TopicWriter
from .xcm.ss58 import ss58_decode

__all__ = [
    "BLOCKS_TOPIC",
    "ZERO_HASH",
    "block_from_decoded",
    "blocks_from_case",
    "fixtures_path",
    "from_papi_value",
    "publish_blocks",
    "publish_blocks_sync",
    "register_network",
    "register_network_sync",
]

#: The topic the ingress publishes to (``ocstream.ingress.service.BLOCKS_TOPIC``).
BLOCKS_TOPIC: Final = "blocks"

#: The parent hash given to a decoded block whose file does not record its parent (older files).
ZERO_HASH: Final = "0x" + "00" * 32

_REPO: Final = Path(__file__).resolve().parents[1]

# Decoders are costly to build (a fraction of a second per runtime); one shared cache keeps every
# metadata file compiled once per process, like the ingress does per runtime.
_DECODERS: Final = DecoderCache()


# --- fixtures -----------------------------------------------------------------------------------


#: The recorded fixtures shipped in the repository (``tests/fixtures``, with their README).
DEFAULT_FIXTURES: Final = _REPO / "tests" / "fixtures"


def fixtures_path() -> Path:
    """The recorded fixtures folder: ``$OCSTREAM_FIXTURES``, else the repository's
    ``tests/fixtures``. Raises FileNotFoundError when it holds no ``README.md``."""
    configured = os.environ.get("OCSTREAM_FIXTURES")
    path = Path(configured) if configured else DEFAULT_FIXTURES
    if not (path / "README.md").is_file():
        where = "$OCSTREAM_FIXTURES" if configured else "the default location"
        raise FileNotFoundError(
            f"no recorded fixtures at {path} ({where}): expected {path / 'README.md'}; "
            "set OCSTREAM_FIXTURES to the fixtures folder"
        )
    return path


# --- SS58 ---------------------------------------------------------------------------------------

_B58_CHARS: Final = frozenset("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")


def _ss58_public_key(address: str) -> bytes:
    """The 32-byte public key of an SS58 address (any network prefix); ValueError if the text is
    not one, or its checksum is wrong."""
    _, key = ss58_decode(address)
    if len(key) != 32:
        raise ValueError(f"{address!r}: not an SS58 account id ({len(key)}-byte payload)")
    return key


def _as_account(text: str) -> str | None:
    """``0x`` hex of the account if ``text`` is an SS58 account id, else None."""
    # 35 or 36 bytes in base58 are 47 to 49 characters; the cheap test first.
    if not 45 <= len(text) <= 50 or not _B58_CHARS.issuperset(text):
        return None
    try:
        return "0x" + _ss58_public_key(text).hex()
    except ValueError:
        return None


# --- papi values --------------------------------------------------------------------------------

_HEX: Final = re.compile(r"0x[0-9a-fA-F]*")


def _string(text: str) -> str:
    if text.startswith("0x"):
        # Hex is lowercase in the contract; papi keeps EIP-55 mixed case for H160/AccountId20.
        return text.lower() if _HEX.fullmatch(text) else text
    return _as_account(text) or text


def _enum_parts(value: Mapping[str, Any]) -> tuple[str, Any] | None:
    """(variant, payload) if ``value`` is a papi enum ``{type, value?}``, else None."""
    if not 1 <= len(value) <= 2 or not isinstance(value.get("type"), str):
        return None
    if len(value) == 2 and "value" not in value:
        return None
    return value["type"], value.get("value")


def _nested_call(value: Any) -> dict[str, JsonValue] | None:
    """A call inside call arguments, papi ``{type: Pallet, value: {type: call, value: args}}``,
    in the contract's shape ``{module, call, args}``; None for anything else."""
    if not isinstance(value, Mapping) or (outer := _enum_parts(value)) is None:
        return None
    pallet, inner = outer
    if not isinstance(inner, Mapping) or (parts := _enum_parts(inner)) is None:
        return None
    call, args = parts
    # Pallets are CamelCase, calls snake_case: anything else is an enum of enums, not a call.
    if not (pallet[:1].isupper() and call[:1].islower()):
        return None
    if args is not None and args is not cbor2.undefined and not isinstance(args, Mapping):
        return None
    converted = from_papi_value(args) if args is not None else {}
    return {"module": pallet, "call": call, "args": {} if converted is None else converted}


def _bit_sequence(value: Mapping[Any, Any]) -> str | None:
    """papi's ``BitVec`` ``{bytes, bitsLen}`` (bytes as a JS ``Uint8Array`` serialised into an
    object ``{"0": b0, ...}``) as the decoder's ``"0b…"`` string; None for anything else."""
    if len(value) != 2 or "bitsLen" not in value or "bytes" not in value:
        return None
    bits, raw = value["bitsLen"], value["bytes"]
    if isinstance(raw, Mapping):
        raw = [raw.get(str(i)) for i in range(len(raw))]
    if not isinstance(bits, int) or not isinstance(raw, list | bytes):
        return None
    if len(raw) != (bits + 7) // 8 or not all(isinstance(b, int) and 0 <= b < 256 for b in raw):
        return None
    # cyscale reads the bytes as one little-endian integer and prints it over bitsLen digits.
    return "0b" + bin(int.from_bytes(bytes(raw), "little"))[2:].zfill(bits)


def _mapping(value: Mapping[Any, Any]) -> JsonValue:
    if (bit_sequence := _bit_sequence(value)) is not None:
        return bit_sequence
    parts = _enum_parts(value)
    if parts is not None:
        variant, payload = parts
        if payload is None or payload is cbor2.undefined:
            return variant
        if variant == "Id" and isinstance(payload, str) and (account := _as_account(payload)):
            # MultiAddress::Id: the ingress's decoder gives the bare account id.
            return account
        return {variant: from_papi_value(payload)}
    if not all(isinstance(key, str) for key in value):
        # like the contract: a map with non-string keys is a list of [key, value] pairs
        return [[from_papi_value(key), from_papi_value(item)] for key, item in value.items()]
    out: dict[str, JsonValue] = {}
    for name, item in value.items():
        if name == "call" and (call := _nested_call(item)) is not None:
            out[name] = call
        elif name == "calls" and isinstance(item, list):
            calls: list[JsonValue] = []
            for entry in item:
                call = _nested_call(entry)
                calls.append(from_papi_value(entry) if call is None else call)
            out[name] = calls
        else:
            out[name] = from_papi_value(item)
    return out


def from_papi_value(value: Any) -> JsonValue:
    """Convert a value decoded by polkadot-api into the shape the ingress's decoder gives.

    * an enum ``{"type": X, "value": V}`` becomes ``{X: convert(V)}``, and ``{"type": X}`` (no
      value, or a null one) the bare string ``"X"`` (scalecodec style), recursively;
    * an SS58 account id becomes its ``0x`` public key, and ``MultiAddress::Id``
      (``{"type": "Id", "value": <ss58>}``) the bare key, as the ingress decodes them;
    * ``0x`` hex is lowercased (papi keeps the EIP-55 case of 20-byte accounts);
    * a nested call under an argument named ``call``/``calls`` becomes ``{module, call, args}``;
    * a ``BitVec`` (``{bytes, bitsLen}``) becomes the decoder's ``"0b…"`` string;
    * decimal strings stay strings and ints stay ints (see :func:`~.ingress.model.to_json_value`).

    >>> from_papi_value({"type": "Ump", "value": {"type": "Para", "value": 1000}})
    {'Ump': {'Para': 1000}}
    >>> from_papi_value({"type": "Parent"})
    'Parent'
    """
    if isinstance(value, str):
        return _string(value)
    if value is None or value is cbor2.undefined:
        return None
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return _mapping(value)
    if isinstance(value, list | tuple):
        return [from_papi_value(item) for item in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return "0x" + bytes(value).hex()
    raise TypeError(f"not a polkadot-api decoded value: {type(value).__name__}")


# --- decoded (papi) blocks ----------------------------------------------------------------------

_PHASES: Final[frozenset[Phase]] = frozenset({"ApplyExtrinsic", "Finalization", "Initialization"})


def _read_decoded(data: Mapping[str, Any] | bytes | Path) -> Mapping[str, Any]:
    if isinstance(data, Path):
        data = data.read_bytes()
    if isinstance(data, bytes | bytearray):
        data = cbor2.loads(data)
    if not isinstance(data, Mapping):
        raise ValueError(f"a decoded block is a map, found {type(data).__name__}")
    return data


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{what}: expected an integer, found {value!r}")
    return int(value)


def _event(index: int, record: Mapping[str, Any]) -> Event:
    phase = record["phase"]
    kind = phase["type"] if isinstance(phase, Mapping) else phase
    if kind not in _PHASES:
        raise ValueError(f"event {index}: unknown phase {phase!r}")
    extrinsic_index = (
        _int(phase["value"], f"event {index} phase") if kind == "ApplyExtrinsic" else None
    )
    body = record["event"]
    payload = body.get("value")
    fields: JsonValue
    if payload is None or payload is cbor2.undefined:
        fields = {}  # a variant without fields
    elif isinstance(payload, Mapping) and _enum_parts(payload) is None:
        fields = from_papi_value(payload)  # named fields
    elif isinstance(payload, list):
        fields = from_papi_value(payload)  # several unnamed fields
    else:
        fields = [from_papi_value(payload)]  # one unnamed field: the decoder gives a 1-array
    return Event(
        index=index,
        phase=kind,
        extrinsic_index=extrinsic_index,
        module=body["module"],
        name=body["name"],
        fields=fields,
        topics=[_string(topic) for topic in record.get("topics") or ()],
    )


def _signer(address: Any, index: int) -> str | None:
    """The account id of a papi extrinsic address, like the ingress's ``_signer_of``."""
    if isinstance(address, Mapping) and (parts := _enum_parts(address)) is not None:
        kind, value = parts
        if kind not in ("Id", "Address32", "Address20"):
            return None  # Index/Raw: no account id without an on-chain lookup
        address = value
    if isinstance(address, str):
        if _HEX.fullmatch(address) and address.startswith("0x"):
            return address.lower()  # AccountId20 chains (Moonbeam), or raw Address32/20
        try:
            return "0x" + _ss58_public_key(address).hex()
        except ValueError as exc:
            raise ValueError(f"extrinsic {index}: address {address!r}: {exc}") from exc
    raise ValueError(f"extrinsic {index}: unreadable address {address!r}")


def _storage_item(entry: StorageItem | Mapping[str, Any]) -> StorageItem:
    if isinstance(entry, StorageItem):
        return entry
    if "pallet" in entry:  # already the contract's shape
        return StorageItem.model_validate(entry)
    match = re.fullmatch(r"(\w+)\.(\w+)(?:\((.*)\))?", str(entry.get("item", "")))
    if match is None:
        raise ValueError(f"storage entry: item {entry.get('item')!r} is not 'Pallet.Item(...)'")
    pallet, item, argument = match.groups()
    key = str(entry["key"]).lower()
    # Check the key against the one the ingress would read, so that a test never attaches an item
    # under a name the ingress would not give it.
    if argument is None:
        expected = storage_key(pallet, item)
    elif (pallet, item) == ("Dmp", "DownwardMessageQueues"):
        expected = downward_queue(int(argument)).key
    else:
        expected = None
        if not key.startswith(storage_key(pallet, item)):
            raise ValueError(
                f"storage entry {entry['item']}: key {key} is not under {pallet}.{item}"
            )
    if expected is not None and key != expected:
        raise ValueError(f"storage entry {entry['item']}: key {key}, the ingress reads {expected}")
    value = entry.get("value")
    return StorageItem(
        pallet=pallet, item=item, key=key, value=None if value is None else str(value).lower()
    )


def block_from_decoded(
    data: Mapping[str, Any] | bytes | Path,
    *,
    network: str,
    storage: Iterable[StorageItem | Mapping[str, Any]] = (),
    spec_version: int | None = None,
) -> ExtendedBlock:
    """Turn one block decoded by polkadot-api into an :class:`ExtendedBlock`.

    ``data`` is the block's map, its CBOR bytes, or the path of a ``decoded/<chain>/<n>.cbor``
    file. Values are converted by :func:`from_papi_value`. Each extrinsic's outcome comes from the
    ``System.ExtrinsicSuccess``/``ExtrinsicFailed`` event of its ApplyExtrinsic phase, its signer
    from its address (SS58, ``MultiAddress::Id`` or ``0x`` hex), the timestamp from
    ``Timestamp.set``. A file without ``parent`` gets :data:`ZERO_HASH` as parent hash.
    ``spec_version`` overrides the file's ``specVersion``. ``storage`` takes
    :class:`StorageItem` values or manifest ``storage[]`` entries (``item``, ``key``, ``value``).

    Raises ValueError for a block that cannot be converted faithfully (an extrinsic without an
    outcome event, an address with a bad checksum, an unknown phase).
    """
    block = _read_decoded(data)
    number = _int(block["number"], "number")
    where = f"{network} #{number}"

    events = [_event(index, record) for index, record in enumerate(block.get("events") or ())]
    outcomes = extrinsic_outcomes(events)

    raw_extrinsics = block.get("extrinsics") or ()
    if outcomes and max(outcomes) >= len(raw_extrinsics):
        raise ValueError(
            f"{where}: an event names extrinsic {max(outcomes)}, "
            f"the block has {len(raw_extrinsics)}"
        )
    extrinsics: list[Extrinsic] = []
    timestamp: int | None = None
    for index, raw in enumerate(raw_extrinsics):
        outcome = outcomes.get(index)
        if outcome is None:
            raise ValueError(f"{where}: extrinsic {index} has no ExtrinsicSuccess/Failed event")
        args = from_papi_value(raw.get("args")) if raw.get("args") is not None else {}
        signer = None
        if raw.get("signed"):
            if raw.get("address") is None:
                raise ValueError(f"{where}: extrinsic {index} is signed but has no address")
            signer = _signer(raw["address"], index)
        extrinsic = Extrinsic(
            index=index,
            module=raw["module"],
            call=raw["method"],
            args=args,
            signer=signer,
            success=outcome[0],
            error=outcome[1],
            hash=_string(raw["hash"]) if raw.get("hash") else None,
        )
        if extrinsic.module == "Timestamp" and extrinsic.call == "set":
            timestamp = timestamp_of(extrinsic.args)
        extrinsics.append(extrinsic)

    if spec_version is None and block.get("specVersion") is not None:
        spec_version = _int(block["specVersion"], "specVersion")
    return ExtendedBlock(
        network=network,
        number=number,
        hash=_string(block["hash"]),
        parent_hash=_string(block["parent"]) if block.get("parent") else ZERO_HASH,
        spec_version=spec_version,
        timestamp=timestamp,
        extrinsics=extrinsics,
        events=events,
        storage=[_storage_item(entry) for entry in storage],
    )


# --- case manifests -----------------------------------------------------------------------------


def _spec_of_metadata(name: str) -> int:
    # metadata/<chain>-<specVersion>.scale (the spec is the file's own System.Version)
    try:
        return int(Path(name).stem.rsplit("-", 1)[1])
    except (IndexError, ValueError) as exc:
        raise ValueError(f"metadata file {name!r} is not named <chain>-<spec>.scale") from exc


def blocks_from_case(
    manifest: Path | str | Mapping[str, Any],
    fixtures_dir: Path | str | None = None,
    *,
    decoders: DecoderCache | None = None,
) -> list[ExtendedBlock]:
    """Every block of a case manifest, in its ``blocks[]`` order, as the ingress would publish it.

    ``manifest`` is a ``cases/*.json`` path or its parsed content; ``fixtures_dir`` the folder the
    manifest's file names are relative to (by default the manifest's ``..``, else
    :func:`fixtures_path`). ``decoded-cbor`` blocks go through :func:`block_from_decoded`;
    ``v1-cbor`` and ``sidecar-json`` blocks through the ingress's own decoder with the metadata the
    entry names (decoders are cached in ``decoders``, by default one shared cache). Each block gets
    the manifest's ``storage[]`` entries whose ``block`` is its ``ref``.

    Raises ValueError for an unknown format, or when a block's hash, number or parent differ from
    what the manifest says.
    """
    if isinstance(manifest, Mapping):
        case = manifest
        base = Path(fixtures_dir) if fixtures_dir is not None else fixtures_path()
    else:
        path = Path(manifest)
        case = orjson.loads(path.read_bytes())
        base = Path(fixtures_dir) if fixtures_dir is not None else path.resolve().parent.parent
    cache = _DECODERS if decoders is None else decoders
    name = case.get("name", "case")

    storage_by_ref: dict[str, list[StorageItem]] = {}
    for entry in case.get("storage") or ():
        storage_by_ref.setdefault(entry["block"], []).append(_storage_item(entry))
    refs = {entry["ref"] for entry in case["blocks"]}
    if unknown := set(storage_by_ref) - refs:
        raise ValueError(f"{name}: storage entries for unknown blocks {sorted(unknown)}")

    v1_files: dict[Path, list[RawBlock]] = {}
    blocks: list[ExtendedBlock] = []
    for entry in case["blocks"]:
        network = entry["chain"]
        storage = storage_by_ref.get(entry["ref"], [])
        file = base / entry["file"]
        kind = entry.get("format")
        where = f"{name} block {entry['ref']} ({entry['file']})"
        if kind == "decoded-cbor":
            block = block_from_decoded(file, network=network, storage=storage)
        elif kind in ("v1-cbor", "sidecar-json"):
            if kind == "v1-cbor":
                if file not in v1_files:
                    v1_files[file] = load_v1_cbor(file)
                raw = v1_files[file][entry["index"]]
            else:
                raw = load_sidecar_json(file)
            metadata = entry.get("metadata") or raw.metadata
            if not metadata:
                raise ValueError(f"{where}: no metadata file named for a raw block")
            spec = _spec_of_metadata(metadata)
            decoder = cache.get_or_build(network, spec, (base / metadata).read_bytes)
            block = build_extended_block(
                network,
                decoder,
                raw.header,
                raw.extrinsics,
                raw.events,
                storage,
                spec_version=raw.spec_version,
            )
        else:
            raise ValueError(f"{where}: unknown block format {kind!r}")
        if block.hash != entry["hash"] or block.number != int(entry["number"]):
            raise ValueError(
                f"{where}: the file holds #{block.number} {block.hash}, "
                f"the manifest says #{entry['number']} {entry['hash']}"
            )
        if entry.get("parent") and block.parent_hash != entry["parent"]:
            raise ValueError(f"{where}: parent {block.parent_hash}, manifest {entry['parent']}")
        blocks.append(block)
    return blocks


# --- publishing ---------------------------------------------------------------------------------

_PUBLISH_BATCH: Final = 256


async def publish_blocks(
    redis_url: str,
    blocks: Iterable[ExtendedBlock],
    *,
    topic: str = BLOCKS_TOPIC,
    prefix: str = DEFAULT_PREFIX,
    partitions: int | None = None,
) -> int:
    """Append ``blocks`` to ``topic`` as the ingress does; returns how many were written.

    Key = the network URN, value = :meth:`ExtendedBlock.to_json_bytes`, partition chosen from the
    key by the transport (so one network's blocks stay in order in one partition), offsets dense
    through :class:`~ocstream.transport.writer.TopicWriter`. A topic that does not exist yet is
    created with ``partitions`` (by default the ``ocstream`` settings' partition count, like
    ``ocstream ingress``); an existing topic keeps its own count.
    """
    if partitions is None:
        partitions = load_settings().partitions
    written = 0
    async with TopicWriter.from_url(redis_url, prefix=prefix) as writer:
        await writer.create_topic(topic, partitions)
        batch: list[tuple[bytes | str | None, bytes | str | None]] = []
        for block in blocks:
            batch.append((block.network, block.to_json_bytes()))
            if len(batch) >= _PUBLISH_BATCH:
                written += len(await writer.send_many(topic, batch, headers=VOUCHED_HEADERS))
                batch = []
        if batch:
            written += len(await writer.send_many(topic, batch, headers=VOUCHED_HEADERS))
    return written


def publish_blocks_sync(
    redis_url: str,
    blocks: Iterable[ExtendedBlock],
    *,
    topic: str = BLOCKS_TOPIC,
    prefix: str = DEFAULT_PREFIX,
    partitions: int | None = None,
) -> int:
    """:func:`publish_blocks` for synchronous code (runs its own event loop)."""
    return asyncio.run(
        publish_blocks(redis_url, blocks, topic=topic, prefix=prefix, partitions=partitions)
    )


# --- the network registry ------------------------------------------------------------------------


async def register_network(
    redis_url: str,
    network: str,
    *,
    spec_version: int,
    metadata: bytes,
    relay: str | None = None,
    ss58_prefix: int | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> None:
    """Put ``network`` and its runtime metadata in the registry, as an ingress following it
    would: workers decode the XCM of that network's blocks with this metadata, and count the
    network as followed (journeys that end on it are tracked)."""
    client = connect(redis_url, name="ocstream-testing")
    try:
        registry = NetworkRegistry(client, prefix)
        current = await registry.get(network)
        fields: dict[str, Any] = current.model_dump() if current is not None else {"id": network}
        fields["spec_version"] = spec_version
        if relay is not None:
            fields["relay"] = relay
        if ss58_prefix is not None:
            fields["ss58_prefix"] = ss58_prefix
        await registry.put(NetworkRecord.model_validate(fields))
        await registry.put_metadata(network, spec_version, metadata)
    finally:
        await client.aclose()


def register_network_sync(redis_url: str, network: str, **kwargs: Any) -> None:
    """:func:`register_network` for synchronous code."""
    asyncio.run(register_network(redis_url, network, **kwargs))
