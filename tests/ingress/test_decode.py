"""Block decoding on real recorded chain data: every raw fixture block decodes to an ExtendedBlock.

The expected facts (block ranges, metadata per file, hashes, counts) are read from the fixtures'
README tables and case manifests, so the tests check the recordings against what was documented
about them, not against numbers copied here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from ocstream.errors import OcstreamError
from ocstream.ingress.decode import (
    DecodeError,
    DecoderCache,
    RuntimeDecoder,
    build_extended_block,
    decode_header,
)
from ocstream.ingress.model import (
    MAX_SAFE_INTEGER,
    Event,
    ExtendedBlock,
    StorageItem,
    to_json_value,
)
from ocstream.ingress.raw import RawBlock, load_sidecar_json, load_v1_cbor

DecoderFor = Callable[[str, str], RuntimeDecoder]

# Block timestamps of the recordings lie between these (2020-01-01 and 2030-01-01, in ms).
EPOCH_2020_MS = 1_577_836_800_000
EPOCH_2030_MS = 1_893_456_000_000


def blake2_256_hex(data: bytes) -> str:
    return "0x" + hashlib.blake2b(data, digest_size=32).hexdigest()


def readme_table(fixtures_dir: Path, heading: str) -> list[list[str]]:
    """The rows of the first table under ``heading`` in the fixtures README, cells unquoted."""
    text = (fixtures_dir / "README.md").read_text()
    section = text.split(heading, 1)[1]
    rows: list[list[str]] = []
    for line in section.splitlines():
        if line.startswith("#") and rows:
            break
        if not line.startswith("|") or set(line) <= set("|- "):
            continue
        rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    assert rows, f"no table under {heading!r} in the fixtures README"
    return rows[1:]  # without the header row


def v1_table(fixtures_dir: Path) -> list[tuple[str, str, int, int, str]]:
    """(file, network, first, last, metadata) for each raw/v1 recording."""
    table = []
    for file, chain, blocks, metadata, *_ in readme_table(fixtures_dir, "### raw/v1/"):
        network = re.search(r"urn:ocn:[a-z]+:\d+", chain)
        first, _, last = blocks.partition("–")
        assert network, chain
        table.append((file, network.group(0), int(first), int(last or first), metadata))
    return table


def sidecar_table(fixtures_dir: Path) -> list[tuple[str, str, int, str, int, int, int]]:
    """(file, network, number, hash prefix, spec, extrinsics, events) for each sidecar block."""
    table = []
    for file, network, number, hash_prefix, spec, extrinsics, events in readme_table(
        fixtures_dir, "### raw/sidecar/"
    ):
        table.append(
            (
                file,
                network,
                int(number),
                hash_prefix.rstrip("…"),
                int(spec),
                int(extrinsics),
                int(events),
            )
        )
    return table


def json_leaves(value: Any) -> Iterator[Any]:
    """Every leaf of a JSON value, dict keys included."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from json_leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from json_leaves(item)
    else:
        yield value


def assert_json_conventions(value: Any, where: str) -> None:
    # Fully normalised means normalising again changes nothing: a tuple, a wide int or a non-string
    # key left anywhere would compare unequal after to_json_value.
    assert to_json_value(value) == value, where
    for leaf in json_leaves(value):
        assert not isinstance(leaf, (bytes, tuple)), where
        if isinstance(leaf, int) and not isinstance(leaf, bool):
            assert abs(leaf) <= MAX_SAFE_INTEGER, where


def decode_raw(network: str, decoder: RuntimeDecoder, raw: RawBlock) -> ExtendedBlock:
    return build_extended_block(network, decoder, raw.header, raw.extrinsics, raw.events)


def load_v1_blocks(
    fixtures_dir: Path, decoder_for: DecoderFor, file: str
) -> list[tuple[RawBlock, ExtendedBlock]]:
    for name, network, _, _, metadata in v1_table(fixtures_dir):
        if name == file:
            decoder = decoder_for(network, metadata)
            raws = load_v1_cbor(fixtures_dir / "raw" / "v1" / file)
            return [(raw, decode_raw(network, decoder, raw)) for raw in raws]
    raise AssertionError(f"{file} is not in the fixtures README")


# --- every raw v1 recording ---------------------------------------------------------------------


def test_the_v1_table_lists_every_recording(fixtures_dir: Path) -> None:
    listed = {row[0] for row in v1_table(fixtures_dir)}
    on_disk = {path.name for path in (fixtures_dir / "raw" / "v1").glob("*.cbor.bin")}
    assert listed == on_disk
    assert len(listed) == 17


def test_every_v1_block_decodes_completely(fixtures_dir: Path, decoder_for: DecoderFor) -> None:
    seen_failure = False
    for file, network, first, last, metadata in v1_table(fixtures_dir):
        decoder = decoder_for(network, metadata)
        raws = load_v1_cbor(fixtures_dir / "raw" / "v1" / file)
        assert [raw.number for raw in raws] == list(range(first, last + 1)), file
        previous: ExtendedBlock | None = None
        for raw in raws:
            where = f"{file} #{raw.number}"
            block = decode_raw(network, decoder, raw)
            assert block.network == network
            assert block.number == raw.number, where
            assert block.hash == blake2_256_hex(raw.header), where
            if previous is not None:
                # The chain links each header to the hash of the previous one: this checks the
                # header decoding and the hash against the recorded chain itself.
                assert block.parent_hash == previous.hash, where
            previous = block

            assert block.spec_version == decoder.spec_version
            assert block.timestamp is not None
            assert EPOCH_2020_MS < block.timestamp < EPOCH_2030_MS, where
            assert len(block.events) == len(raw.events), where
            assert [event.index for event in block.events] == list(range(len(raw.events)))
            assert len(block.extrinsics) == len(raw.extrinsics), where
            for extrinsic in block.extrinsics:
                assert extrinsic.hash == blake2_256_hex(raw.extrinsics[extrinsic.index])
                outcomes = [
                    event.name
                    for event in block.events
                    if event.module == "System"
                    and event.name in ("ExtrinsicSuccess", "ExtrinsicFailed")
                    and event.extrinsic_index == extrinsic.index
                ]
                assert outcomes == (
                    ["ExtrinsicSuccess"] if extrinsic.success else ["ExtrinsicFailed"]
                ), f"{where} extrinsic {extrinsic.index}"
                assert (extrinsic.error is None) == extrinsic.success
                seen_failure |= not extrinsic.success
                assert_json_conventions(extrinsic.args, f"{where} {extrinsic.call}")
            for event in block.events:
                assert event.phase in ("ApplyExtrinsic", "Finalization", "Initialization")
                assert (event.extrinsic_index is not None) == (event.phase == "ApplyExtrinsic")
                assert_json_conventions(event.fields, f"{where} {event.module}.{event.name}")
    assert seen_failure, "the recordings hold a failed extrinsic; it was not found"


def test_asset_hub_hrmp_send_event(fixtures_dir: Path, decoder_for: DecoderFor) -> None:
    manifest = orjson.loads(
        (fixtures_dir / "cases" / "v1-hrmp-assethub-interlay.json").read_bytes()
    )
    recorded = next(b for b in manifest["blocks"] if b["ref"] == "ah4833171")
    sent = manifest["messages"][0]["sent"]
    sender = manifest["messages"][0]["sender"]

    _, block = load_v1_blocks(fixtures_dir, decoder_for, "hrmp-out-1000.cbor.bin")[0]

    assert block.number == 4833171
    assert block.hash == recorded["hash"]
    assert block.parent_hash == recorded["parent"]
    event = block.events[sent["event_index"]]
    assert (event.module, event.name) == ("XcmpQueue", "XcmpMessageSent")
    assert event.phase == "ApplyExtrinsic"
    assert event.extrinsic_index == sent["extrinsic_index"] == 2
    assert isinstance(event.fields, dict)
    assert event.fields["message_hash"] == (
        "0x19f82753eb9718974dd2d6dfc5e3b238625d012c1a8de5e3347f56079f143867"
    )
    extrinsic = block.extrinsics[sender["extrinsic_index"]]
    assert f"{extrinsic.module}.{extrinsic.call}" == sender["call"]
    assert extrinsic.signer == sender["signer_public_key"]
    assert extrinsic.success is True


def test_failed_extrinsic_carries_its_dispatch_error(
    fixtures_dir: Path, decoder_for: DecoderFor
) -> None:
    blocks = dict(
        (block.number, block)
        for _, block in load_v1_blocks(fixtures_dir, decoder_for, "hrmp-in-2032-fail.cbor.bin")
    )
    extrinsic = blocks[3638017].extrinsics[2]
    assert (extrinsic.module, extrinsic.call) == ("Replace", "cancel_replace")
    assert extrinsic.success is False
    assert extrinsic.error == {"Module": {"index": 61, "error": "0x04000000"}}
    assert extrinsic.signer is not None and len(extrinsic.signer) == 66


def test_downward_message_bytes_are_hex(fixtures_dir: Path, decoder_for: DecoderFor) -> None:
    """A Vec<u8> inside a call stays bytes (hex), whatever it contains: hashing the decoded hex
    gives the id the receiving chain reported for that message."""
    _, block = load_v1_blocks(fixtures_dir, decoder_for, "dmp-in-1000-success.cbor.bin")[0]
    inherent = block.extrinsics[0]
    assert (inherent.module, inherent.call) == ("ParachainSystem", "set_validation_data")
    assert isinstance(inherent.args, dict) and isinstance(inherent.args["data"], dict)
    messages = inherent.args["data"]["downward_messages"]
    assert isinstance(messages, list) and len(messages) == 1
    assert isinstance(messages[0], dict)
    message = messages[0]["msg"]
    assert isinstance(message, str) and message.startswith("0x")
    executed = [e for e in block.events if (e.module, e.name) == ("DmpQueue", "ExecutedDownward")]
    assert len(executed) == 1 and isinstance(executed[0].fields, dict)
    assert executed[0].fields["message_id"] == blake2_256_hex(bytes.fromhex(message[2:]))


# --- sidecar recordings -------------------------------------------------------------------------


def test_the_sidecar_table_lists_every_recording(fixtures_dir: Path) -> None:
    listed = {row[0] for row in sidecar_table(fixtures_dir)}
    assert listed == {path.name for path in (fixtures_dir / "raw" / "sidecar").glob("*.json")}
    assert len(listed) == 4


def test_sidecar_blocks_decode(fixtures_dir: Path, decoder_cache: DecoderCache) -> None:
    for file, network, number, hash_prefix, spec, n_extrinsics, n_events in sidecar_table(
        fixtures_dir
    ):
        raw = load_sidecar_json(fixtures_dir / "raw" / "sidecar" / file)
        assert raw.metadata is not None and raw.spec_version == spec
        decoder = decoder_cache.get_or_build(
            network, spec, (fixtures_dir / raw.metadata).read_bytes
        )
        block = decode_raw(network, decoder, raw)

        assert block.hash == raw.hash, file
        assert block.hash.startswith(hash_prefix), file
        assert block.number == number == raw.number
        assert block.spec_version == spec
        assert len(block.extrinsics) == n_extrinsics, file
        assert len(block.events) == n_events, file
        assert block.timestamp is not None
        assert EPOCH_2020_MS < block.timestamp < EPOCH_2030_MS
        for extrinsic in block.extrinsics:
            outcome = [
                e.name == "ExtrinsicSuccess"
                for e in block.events
                if e.module == "System"
                and e.name in ("ExtrinsicSuccess", "ExtrinsicFailed")
                and e.extrinsic_index == extrinsic.index
            ]
            assert outcome == [extrinsic.success], f"{file} extrinsic {extrinsic.index}"
        for event in block.events:
            assert_json_conventions(event.fields, f"{file} {event.module}.{event.name}")


def test_polkadot_19772575(fixtures_dir: Path, decoder_cache: DecoderCache) -> None:
    raw = load_sidecar_json(fixtures_dir / "raw" / "sidecar" / "polkadot-19772575.json")
    assert raw.metadata == "metadata/polkadot-1000001.scale"
    decoder = decoder_cache.get_or_build(
        "urn:ocn:polkadot:0", 1000001, (fixtures_dir / raw.metadata).read_bytes
    )
    block = decode_raw("urn:ocn:polkadot:0", decoder, raw)
    calls = [(x.module, x.call, x.signer is not None) for x in block.extrinsics]
    assert calls == [
        ("Timestamp", "set", False),
        ("ParaInherent", "enter", False),
        ("Balances", "transfer_keep_alive", True),
        ("Balances", "transfer_allow_death", True),
        ("Utility", "batch_all", True),
    ]
    timestamp_args = block.extrinsics[0].args
    assert isinstance(timestamp_args, dict)
    assert block.timestamp == timestamp_args["now"] == 1709675886001
    # A nested call has the shape of an extrinsic's call.
    batch = block.extrinsics[4].args
    assert isinstance(batch, dict) and isinstance(batch["calls"], list)
    assert all(
        isinstance(call, dict) and call.keys() == {"module", "call", "args"}
        for call in batch["calls"]
    )
    assert len(block.events) == 81
    assert sum(e.phase == "Initialization" for e in block.events) > 0


# --- errors -------------------------------------------------------------------------------------


def test_v16_metadata_is_refused_by_name(fixtures_dir: Path) -> None:
    metadata = (fixtures_dir / "metadata" / "assethub-2000007.scale").read_bytes()
    assert metadata[:5] == b"meta\x10"
    with pytest.raises(DecodeError) as caught:
        RuntimeDecoder(metadata, network="urn:ocn:polkadot:1000", spec_version=2000007)
    message = str(caught.value)
    assert "urn:ocn:polkadot:1000" in message
    assert "2000007" in message
    assert "V16" in message
    assert isinstance(caught.value, OcstreamError)


def garbage_inputs(fixtures_dir: Path) -> list[bytes]:
    real = (fixtures_dir / "metadata" / "polkadot-1000001.scale").read_bytes()
    noise = b"".join(hashlib.sha256(bytes([i])).digest() for i in range(64))
    return [
        b"",
        b"meta",
        noise,
        b"meta\x0e" + noise,
        b"meta\x0f" + noise,
        b"meta\x0e" + b"\x00" * 100,
        real[: len(real) // 2],  # truncated
        real[:5] + real[6:],  # one byte missing near the start
    ]


def test_garbage_metadata_raises_decode_error(fixtures_dir: Path) -> None:
    for index, garbage in enumerate(garbage_inputs(fixtures_dir)):
        with pytest.raises(DecodeError, match="urn:ocn:polkadot:0 spec 1000001"):
            RuntimeDecoder(garbage, network="urn:ocn:polkadot:0", spec_version=1000001)
        assert index >= 0


def test_metadata_of_another_runtime_is_refused(fixtures_dir: Path) -> None:
    metadata = (fixtures_dir / "metadata" / "polkadot-9430.scale").read_bytes()
    with pytest.raises(DecodeError, match="polkadot 9430"):
        RuntimeDecoder(metadata, network="urn:ocn:polkadot:0", spec_version=1000001)


def test_garbage_blocks_raise_decode_error(
    fixtures_dir: Path, decoder_for: DecoderFor, tmp_path: Path
) -> None:
    decoder = decoder_for("urn:ocn:polkadot:0", "polkadot-9430.scale")
    raws = load_v1_cbor(fixtures_dir / "raw" / "v1" / "polkadot-17844552-20.cbor.bin")
    first = raws[0]
    assert isinstance(first.events, list)
    noise = b"".join(hashlib.sha256(bytes([i])).digest() for i in range(8))
    for garbage in (b"", b"\xff" * 64, noise, first.events[0] + b"\x00", first.events[0][:-1]):
        with pytest.raises(DecodeError):
            decoder.decode_event_record(garbage)
        with pytest.raises(DecodeError):
            decoder.decode_events(garbage)
        with pytest.raises(DecodeError):
            decoder.decode_extrinsic(garbage, 0)
        with pytest.raises(DecodeError):
            decode_header(garbage)
    with pytest.raises(DecodeError):
        decoder.decode_extrinsic(first.extrinsics[0] + b"\x00", 0)
    with pytest.raises(DecodeError):
        decode_header(first.header + b"\x00")

    # Events of one block with the extrinsics of another: the outcomes do not line up.
    other = next(raw for raw in raws if len(raw.extrinsics) != len(first.extrinsics))
    with pytest.raises(DecodeError, match="extrinsic"):
        build_extended_block(
            "urn:ocn:polkadot:0", decoder, first.header, other.extrinsics, first.events
        )

    not_cbor = tmp_path / "broken.cbor.bin"
    not_cbor.write_bytes(b"\xff\xff\xff")
    with pytest.raises(DecodeError, match="broken.cbor.bin"):
        load_v1_cbor(not_cbor)
    not_json = tmp_path / "broken.json"
    not_json.write_text('{"header": "0x00"')
    with pytest.raises(DecodeError, match="broken.json"):
        load_sidecar_json(not_json)


# --- the cache ----------------------------------------------------------------------------------


def test_cache_reuses_decoders(fixtures_dir: Path) -> None:
    metadata = (fixtures_dir / "metadata" / "assethub-9430.scale").read_bytes()
    loads: list[str] = []

    def load() -> bytes:
        loads.append("load")
        return metadata

    cache = DecoderCache()
    first = cache.get_or_build("urn:ocn:polkadot:1000", 9430, load)
    again = cache.get_or_build("urn:ocn:polkadot:1000", 9430, load)
    assert again is first
    assert cache.get("urn:ocn:polkadot:1000", 9430) is first
    assert (cache.builds, loads) == (1, ["load"])
    assert first.spec_version == 9430 and first.network == "urn:ocn:polkadot:1000"

    # Another network with the same runtime is another key.
    other = cache.get_or_build("urn:ocn:kusama:1000", 9430, load)
    assert other is not first
    assert (cache.builds, len(cache)) == (2, 2)
    assert cache.get("urn:ocn:polkadot:1000", 9431) is None

    # Decoding goes through the same compiled decoders, however many blocks: nothing is rebuilt.
    raws = load_v1_cbor(fixtures_dir / "raw" / "v1" / "ump-out-1000.cbor.bin")
    for raw in raws * 3:
        decode_raw(
            "urn:ocn:polkadot:1000", cache.get_or_build("urn:ocn:polkadot:1000", 9430, load), raw
        )
    assert cache.builds == 2 and len(loads) == 2


def test_cache_evicts_least_recently_used(fixtures_dir: Path, decoder_cache: DecoderCache) -> None:
    metadata = (fixtures_dir / "metadata" / "assethub-9430.scale").read_bytes()
    cache = DecoderCache(max_entries=2)
    a = cache.get_or_build("urn:ocn:polkadot:1000", 9430, metadata)
    cache.get_or_build("urn:ocn:polkadot:1001", 9430, metadata)
    assert cache.get("urn:ocn:polkadot:1000", 9430) is a  # now the most recently used
    cache.get_or_build("urn:ocn:polkadot:1002", 9430, metadata)
    assert ("urn:ocn:polkadot:1001", 9430) not in cache
    assert ("urn:ocn:polkadot:1000", 9430) in cache
    assert cache.builds == 3


# --- the JSON contract --------------------------------------------------------------------------


def test_json_round_trip_keeps_wide_integers_as_strings(
    fixtures_dir: Path, decoder_for: DecoderFor
) -> None:
    wide: list[str] = []
    for file in ("hrmp-in-2032-success.cbor.bin", "hrmp-2032-trapped-3781567.cbor.bin"):
        for _, block in load_v1_blocks(fixtures_dir, decoder_for, file):
            data = block.to_json_bytes()
            again = ExtendedBlock.from_json_bytes(data)
            assert again == block
            assert again.to_json_bytes() == data

            parsed = orjson.loads(data)
            for leaf in json_leaves(parsed):
                if isinstance(leaf, int) and not isinstance(leaf, bool):
                    assert abs(leaf) <= MAX_SAFE_INTEGER
                if isinstance(leaf, str) and leaf.isdigit() and int(leaf) > 2**53:
                    wide.append(leaf)
                    assert f'"{leaf}"'.encode() in data
            hashes = [parsed["hash"], parsed["parent_hash"]]
            assert all(re.fullmatch(r"0x[0-9a-f]{64}", h) for h in hashes)
    # Interlay's lending and reward events carry u128 amounts beyond 2**53.
    assert wide, "no integer beyond 2**53 in the Interlay blocks"


def test_json_round_trip_with_storage(fixtures_dir: Path, decoder_for: DecoderFor) -> None:
    _, block = load_v1_blocks(fixtures_dir, decoder_for, "hrmp-out-1000.cbor.bin")[0]
    storage = StorageItem(
        pallet="ParachainSystem",
        item="HrmpOutboundMessages",
        key="0x45323df7cc47150b3930e2666b0aa3134ec0959dca9d4616632a822d7523ba63",
        value="0x00",
    )
    with_storage = block.model_copy(update={"storage": [storage]})
    again = ExtendedBlock.from_json_bytes(with_storage.to_json_bytes())
    assert again == with_storage
    assert again.storage == [storage]
    assert again != block


def test_validation_enforces_the_contract() -> None:
    block = {
        "network": "urn:ocn:polkadot:0",
        "number": 1,
        "hash": "0x" + "11" * 32,
        "parent_hash": "0x" + "22" * 32,
        "extrinsics": [],
        "events": [
            {
                "index": 0,
                "phase": "Finalization",
                "module": "Balances",
                "name": "Deposit",
                "fields": {"amount": 2**64, "pair": [1, 2]},
            }
        ],
    }
    parsed = ExtendedBlock.model_validate(block)
    assert parsed.version == 1
    assert parsed.events[0].fields == {"amount": str(2**64), "pair": [1, 2]}
    assert parsed.storage == [] and parsed.timestamp is None

    with pytest.raises(ValidationError):
        ExtendedBlock.model_validate({**block, "version": 2})
    with pytest.raises(ValidationError):
        ExtendedBlock.model_validate({**block, "hash": "0x1234"})
    with pytest.raises(ValidationError):
        ExtendedBlock.model_validate({**block, "network": "polkadot"})
    with pytest.raises(ValidationError):
        parsed.__setattr__("number", 2)  # frozen


def test_blocks_read_from_json_are_normalised_like_decoded_values() -> None:
    """``from_json_bytes`` skips the Python walk for values that are already normalised; every
    value that is not must still come out as :func:`to_json_value` makes it."""
    nested_call = {
        "call_index": "0x0500",
        "call_function": "transfer_keep_alive",
        "call_module": "Balances",
        "call_args": [{"name": "value", "type": "Balance", "value": 5}],
        "call_hash": "0x" + "00" * 32,
    }
    cases: list[tuple[bytes, Any]] = [
        (b'{"amount": 9007199254740991}', {"amount": MAX_SAFE_INTEGER}),
        (b'{"amount": 9007199254740992}', {"amount": "9007199254740992"}),
        (b'{"a": [1, {"b": -18446744073709551616}]}', {"a": [1, {"b": str(-(2**64))}]}),
        (b"[1e999, NaN, -Infinity, 1.5]", ["inf", "nan", "-inf", 1.5]),
        (b'{"x": null, "y": 1e999}', {"x": None, "y": "inf"}),
        (b'{"a": [null, {"b": [1.5, -0.0, NaN]}]}', {"a": [None, {"b": [1.5, -0.0, "nan"]}]}),
        (b'{"a": [null, {"b": [1.5, -0.0, 5e-324]}]}', {"a": [None, {"b": [1.5, -0.0, 5e-324]}]}),
        (b'{"call": ' + orjson.dumps(nested_call) + b"}",
         {"call": {"module": "Balances", "call": "transfer_keep_alive", "args": {"value": 5}}}),
        (b'{"text": "null \\"call_module\\""}', {"text": 'null "call_module"'}),
        (b'{"plain": ["0x00ff", true, false, 0, -3, 2.5, {}, []]}',
         {"plain": ["0x00ff", True, False, 0, -3, 2.5, {}, []]}),
    ]  # fmt: skip
    for raw, want in cases:
        block = (
            b'{"network": "urn:ocn:polkadot:0", "number": 1, "hash": "0x' + b"11" * 32
            + b'", "parent_hash": "0x' + b"22" * 32 + b'", "events": [{"index": 0, '
            b'"phase": "Finalization", "module": "M", "name": "N", "fields": ' + raw + b"}], "
            b'"extrinsics": [{"index": 0, "module": "M", "call": "c", "success": false, '
            b'"args": ' + raw + b', "error": ' + raw + b"}]}"
        )  # fmt: skip
        parsed = ExtendedBlock.from_json_bytes(block)
        assert parsed.events[0].fields == want, raw
        assert parsed.extrinsics[0].args == want and parsed.extrinsics[0].error == want, raw
        assert to_json_value(parsed.events[0].fields) == parsed.events[0].fields


def test_a_vouched_block_is_read_as_it_is_and_equal_for_the_ingress_s_own(
    fixtures_dir: Path, decoder_for: DecoderFor
) -> None:
    """Under the ingress's ``normalised`` header the values are taken as they are: for the
    ingress's own blocks that is the same block, with its structure still validated; a
    producer that vouches for values that are not normalised gets them back unchanged."""
    for file in ("hrmp-in-2032-success.cbor.bin", "hrmp-out-1000.cbor.bin"):
        for _, block in load_v1_blocks(fixtures_dir, decoder_for, file):
            data = block.to_json_bytes()
            vouched = ExtendedBlock.from_json_bytes(data, normalised=True)
            assert vouched == block == ExtendedBlock.from_json_bytes(data)
            assert vouched.to_json_bytes() == data

    raw = (
        b'{"network": "urn:ocn:polkadot:0", "number": 1, "hash": "0x' + b"11" * 32
        + b'", "parent_hash": "0x' + b"22" * 32 + b'", "events": [{"index": 0, "phase": '
        b'"Finalization", "module": "M", "name": "N", "fields": {"amount": 9007199254740992}}]}'
    )  # fmt: skip
    assert ExtendedBlock.from_json_bytes(raw).events[0].fields == {"amount": "9007199254740992"}
    assert ExtendedBlock.from_json_bytes(raw, normalised=True).events[0].fields == {"amount": 2**53}
    with pytest.raises(ValidationError):  # the structure is checked all the same
        ExtendedBlock.from_json_bytes(raw.replace(b'"0x' + b"11" * 32, b'"0x1'), normalised=True)


def test_to_json_value() -> None:
    assert to_json_value(b"\x00\xff") == "0x00ff"
    assert to_json_value((1, (2, 3))) == [1, [2, 3]]
    assert to_json_value(2**53) == str(2**53)
    assert to_json_value(MAX_SAFE_INTEGER) == MAX_SAFE_INTEGER
    assert to_json_value(-(2**60)) == str(-(2**60))
    assert to_json_value(True) is True
    assert to_json_value({1000: "a", 2000: "b"}) == [[1000, "a"], [2000, "b"]]
    assert to_json_value({(1, 2): 3}) == [[[1, 2], 3]]
    assert to_json_value(float("nan")) == "nan"
    nested_call = {
        "call_index": "0x0500",
        "call_function": "transfer_keep_alive",
        "call_module": "Balances",
        "call_args": [{"name": "value", "type": "Balance", "value": 2**70}],
        "call_hash": "0x" + "00" * 32,
    }
    assert to_json_value({"calls": [nested_call]}) == {
        "calls": [
            {"module": "Balances", "call": "transfer_keep_alive", "args": {"value": str(2**70)}}
        ]
    }
    with pytest.raises(TypeError):
        to_json_value(object())


def test_events_given_decoded_or_raw_give_the_same_block(
    fixtures_dir: Path, decoder_for: DecoderFor
) -> None:
    decoder = decoder_for("urn:ocn:polkadot:1000", "assethub-9430.scale")
    raw = load_v1_cbor(fixtures_dir / "raw" / "v1" / "ump-out-1000.cbor.bin")[0]
    assert isinstance(raw.events, list)
    events: list[Event] = [decoder.decode_event_record(r, i) for i, r in enumerate(raw.events)]
    from_raw = decode_raw("urn:ocn:polkadot:1000", decoder, raw)
    from_events = build_extended_block(
        "urn:ocn:polkadot:1000", decoder, raw.header, raw.extrinsics, events
    )
    assert from_events == from_raw
    # and both equal the validated model of their own dump (the trusted construction is sound)
    assert ExtendedBlock.model_validate(from_raw.model_dump()) == from_raw


# --- storage values -----------------------------------------------------------------------------


def test_storage_values_of_the_case_manifests(fixtures_dir: Path, decoder_for: DecoderFor) -> None:
    """Every storage value in the manifests decodes to the entries recorded beside it.

    ParachainSystem's items have the same types in every parachain runtime, so Asset Hub's
    metadata decodes those of any parachain; Dmp's are decoded with the relay's.
    """
    parachain = decoder_for("urn:ocn:polkadot:1000", "assethub-9430.scale")
    relay = decoder_for("urn:ocn:polkadot:0", "polkadot-1000001.scale")
    checked = 0
    for manifest in sorted((fixtures_dir / "cases").glob("*.json")):
        for storage in orjson.loads(manifest.read_bytes()).get("storage", []):
            pallet, item = storage["item"].split("(")[0].split(".")
            decoder = relay if pallet == "Dmp" else parachain
            raw = bytes.fromhex(storage["value"][2:])
            value = decoder.decode_storage_value(pallet, item, raw)
            assert value == storage["entries"], f"{manifest.name} {storage['item']}"
            checked += 1
    assert checked >= 10


def test_empty_upward_message_stays_bytes(fixtures_dir: Path, decoder_for: DecoderFor) -> None:
    """The empty entry that separates XCMs from UMP signals is the empty byte string ``0x``, not
    an empty text: a ``Vec<u8>`` is hex even when it would be valid UTF-8."""
    manifest = orjson.loads(
        (fixtures_dir / "cases" / "head-ump-trailing-signal-kcoretime.json").read_bytes()
    )
    (storage,) = manifest["storage"]
    decoder = decoder_for("urn:ocn:polkadot:1000", "assethub-9430.scale")
    value = decoder.decode_storage_value(
        "ParachainSystem", "UpwardMessages", bytes.fromhex(storage["value"][2:])
    )
    assert isinstance(value, list) and len(value) == 3
    assert value[1] == "0x"
    assert all(isinstance(entry, str) and entry.startswith("0x") for entry in value)

    with pytest.raises(DecodeError, match="no storage item"):
        decoder.decode_storage_value("ParachainSystem", "NoSuchItem", b"")
    with pytest.raises(DecodeError, match="UpwardMessages"):
        decoder.decode_storage_value("ParachainSystem", "UpwardMessages", b"\x08\x00")
