"""The public testing API (``ocstream.testing``) against the recorded fixtures and real Redis."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import cbor2
import orjson
import pytest
import redis.asyncio as aioredis

from ocstream.ingress.model import NORMALISED_HEADER, ExtendedBlock, to_json_value
from ocstream.ingress.storage import HRMP_OUTBOUND, UPWARD, downward_queue
from ocstream.testing import (
    ZERO_HASH,
    block_from_decoded,
    blocks_from_case,
    fixtures_path,
    from_papi_value,
    publish_blocks,
    publish_blocks_sync,
)
from ocstream.transport.keys import Keyspace
from ocstream.transport.wire import decode_headers, entry_value, id_to_offset, partition_for_key

# decoded/<chain>/ folder -> network URN (fixtures README, "Chains and ids")
NETWORKS = {
    "polkadot": "urn:ocn:polkadot:0",
    "assethub": "urn:ocn:polkadot:1000",
    "bridgehub": "urn:ocn:polkadot:1002",
    "hydra": "urn:ocn:polkadot:2034",
    "bifrost": "urn:ocn:polkadot:2030",
    "astar": "urn:ocn:polkadot:2006",
    "moonbeam": "urn:ocn:polkadot:2004",
    "interlay": "urn:ocn:polkadot:2032",
    "kassethub": "urn:ocn:kusama:1000",
    "kbridgehub": "urn:ocn:kusama:1002",
    "kcoretime": "urn:ocn:kusama:1005",
}
EPOCH_2020_MS = 1_577_836_800_000
EPOCH_2030_MS = 1_893_456_000_000


def decoded_files(fixtures_dir: Path) -> list[Path]:
    files = sorted((fixtures_dir / "decoded").glob("*/*.cbor"))
    assert len(files) == 21
    return files


def cases(fixtures_dir: Path) -> list[Path]:
    found = sorted((fixtures_dir / "cases").glob("*.json"))
    assert len(found) == 15
    return found


def load_case(path: Path) -> dict[str, Any]:
    return orjson.loads(path.read_bytes())  # type: ignore[no-any-return]


def papi_enums(value: Any) -> Iterator[Any]:
    """Every value still shaped like a polkadot-api enum (``{type, value?}``)."""
    if isinstance(value, dict):
        if isinstance(value.get("type"), str) and set(value) <= {"type", "value"}:
            yield value
        for item in value.values():
            yield from papi_enums(item)
    elif isinstance(value, list):
        for item in value:
            yield from papi_enums(item)


def evidence(message: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The event references of a manifest message: (kind, {block, event_index, event, ...})."""
    for kind, value in message.items():
        if isinstance(value, dict) and "event_index" in value:
            yield kind, value


def compact(n: int) -> bytes:
    if n < 1 << 6:
        return bytes([n << 2])
    if n < 1 << 14:
        return ((n << 2) | 1).to_bytes(2, "little")
    if n < 1 << 30:
        return ((n << 2) | 2).to_bytes(4, "little")
    raw = n.to_bytes((n.bit_length() + 7) // 8, "little")
    return bytes([((len(raw) - 4) << 2) | 3]) + raw


# --- decoded (polkadot-api) blocks --------------------------------------------------------------


def test_every_decoded_block_converts(fixtures_dir: Path) -> None:
    for path in decoded_files(fixtures_dir):
        where = f"{path.parent.name}/{path.name}"
        raw = cbor2.loads(path.read_bytes())
        network = NETWORKS[path.parent.name]
        block = block_from_decoded(path, network=network)

        assert block.network == network
        assert block.hash == raw["hash"], where
        assert block.number == int(raw["number"]) == int(path.stem), where
        assert block.parent_hash == raw.get("parent", ZERO_HASH), where
        assert block.spec_version == raw.get("specVersion"), where
        assert block.timestamp is not None and EPOCH_2020_MS < block.timestamp < EPOCH_2030_MS
        assert [e.index for e in block.events] == list(range(len(raw["events"]))), where
        assert [x.index for x in block.extrinsics] == list(range(len(raw["extrinsics"]))), where
        # the three ways in are the same block
        assert block_from_decoded(path.read_bytes(), network=network) == block
        assert block_from_decoded(raw, network=network) == block
        # valid under the contract, and stable through the topic's wire format
        assert ExtendedBlock.from_json_bytes(block.to_json_bytes()) == block
        assert ExtendedBlock.model_validate(block.model_dump()) == block

        for extrinsic, source in zip(block.extrinsics, raw["extrinsics"], strict=True):
            assert (extrinsic.module, extrinsic.call) == (source["module"], source["method"])
            assert extrinsic.hash == source.get("hash"), where
            assert (extrinsic.signer is not None) == bool(source.get("signed")), where
            outcomes = [
                e.name == "ExtrinsicSuccess"
                for e in block.events
                if e.module == "System"
                and e.name in ("ExtrinsicSuccess", "ExtrinsicFailed")
                and e.extrinsic_index == extrinsic.index
            ]
            assert outcomes == [extrinsic.success], f"{where} extrinsic {extrinsic.index}"
            assert (extrinsic.error is None) == extrinsic.success
            assert not list(papi_enums(extrinsic.args)), where
        for event, source in zip(block.events, raw["events"], strict=True):
            assert (event.module, event.name) == (
                source["event"]["module"],
                source["event"]["name"],
            )
            assert event.phase == source["phase"]["type"]
            assert event.extrinsic_index == source["phase"].get("value")
            assert event.topics == source["topics"]
            assert not list(papi_enums(event.fields)), f"{where} event {event.index}"
            assert to_json_value(event.fields) == event.fields


def test_header_hash_recomputes_where_the_file_has_the_header(fixtures_dir: Path) -> None:
    """Where a decoded file records the header parts, they hash to the block's hash: the parent
    and number the conversion keeps are the real ones."""
    checked = 0
    for path in decoded_files(fixtures_dir):
        raw = cbor2.loads(path.read_bytes())
        digest = raw.get("digest") or raw.get("disgest")
        if digest is None or "stateRoot" not in raw:
            continue
        block = block_from_decoded(path, network=NETWORKS[path.parent.name])
        logs = [bytes.fromhex(item[2:]) for item in digest["logs"]]
        header = (
            bytes.fromhex(block.parent_hash[2:])
            + compact(block.number)
            + bytes.fromhex(raw["stateRoot"][2:])
            + bytes.fromhex(raw["extrinsicsRoot"][2:])
            + compact(len(logs))
            + b"".join(logs)
        )
        assert "0x" + hashlib.blake2b(header, digest_size=32).hexdigest() == block.hash, path
        checked += 1
    assert checked == 7


def test_manifest_event_references_hold_in_the_converted_blocks(fixtures_dir: Path) -> None:
    """Every event a manifest points at is at that index, with that pallet, name, phase and field
    value; values written in polkadot-api shape compare after the same conversion."""
    checked_decoded = checked_raw = 0
    for path in cases(fixtures_dir):
        case = load_case(path)
        formats = {entry["ref"]: entry["format"] for entry in case["blocks"]}
        blocks = dict(zip(formats, blocks_from_case(path, fixtures_dir), strict=True))
        for message in case["messages"]:
            for kind, ref in evidence(message):
                where = f"{path.name} {message['label']} {kind}"
                block = blocks[ref["block"]]
                event = block.events[ref["event_index"]]
                assert f"{event.module}.{event.name}" == ref["event"], where
                assert event.phase == ref["phase"], where
                if "extrinsic_index" in ref:
                    assert event.extrinsic_index == ref["extrinsic_index"], where
                field = ref["field"]
                fields = event.fields
                if isinstance(field, int):
                    assert isinstance(fields, list), where
                    actual = fields[field]
                else:
                    assert isinstance(fields, dict), where
                    actual = fields[field]
                assert actual == from_papi_value(ref["value"]), where
                if "queue_origin" in ref:
                    assert isinstance(fields, dict)
                    assert fields["origin"] == from_papi_value(ref["queue_origin"]), where
                if ref["event"] == "MessageQueue.Processed" and "outcome" in ref:
                    assert isinstance(fields, dict)
                    assert fields["success"] == (ref["outcome"] == "Success"), where
                if formats[ref["block"]] == "decoded-cbor":
                    checked_decoded += 1
                else:
                    checked_raw += 1
    assert (checked_decoded, checked_raw) == (37, 28)


def test_signers_are_the_manifests_public_keys(fixtures_dir: Path) -> None:
    checked: dict[str, int] = {}
    for path in cases(fixtures_dir):
        case = load_case(path)
        formats = {entry["ref"]: entry["format"] for entry in case["blocks"]}
        blocks = dict(zip(formats, blocks_from_case(path, fixtures_dir), strict=True))
        for message in case["messages"]:
            sender = message.get("sender")
            if not sender or "signer_public_key" not in sender:
                continue
            extrinsic = blocks[sender["block"]].extrinsics[sender["extrinsic_index"]]
            assert extrinsic.signer == sender["signer_public_key"], path.name
            assert f"{extrinsic.module}.{extrinsic.call}" == sender["call"], path.name
            assert extrinsic.success
            kind = formats[sender["block"]]
            checked[kind] = checked.get(kind, 0) + 1
    assert checked == {"decoded-cbor": 4, "v1-cbor": 3}


def test_enums_become_scalecodec_style(fixtures_dir: Path) -> None:
    decoded = fixtures_dir / "decoded"
    hydra = block_from_decoded(decoded / "hydra" / "6253481.cbor", network=NETWORKS["hydra"])
    processed = hydra.events[5]
    assert (processed.module, processed.name) == ("MessageQueue", "Processed")
    assert processed.fields == {
        "id": "0xd09353c7e2e9359951f4b8b9a348cf5c4dad2757e9a59062caef085d62d603c9",
        "origin": {"Sibling": 1000},
        "weight_used": {"ref_time": "500000000", "proof_size": "0"},  # papi u64: decimal strings
        "success": True,
    }
    # a unit variant is its bare name
    success = hydra.events[6]
    assert success.name == "ExtrinsicSuccess"
    assert isinstance(success.fields, dict)
    assert success.fields["dispatch_info"] == {
        "weight": {"ref_time": "256012000", "proof_size": "1493"},
        "class": "Mandatory",
        "pays_fee": "Yes",
    }

    relay = block_from_decoded(decoded / "polkadot" / "23088963.cbor", network=NETWORKS["polkadot"])
    ump = relay.events[56]
    assert ump.name == "Processed" and ump.phase == "Finalization"
    assert isinstance(ump.fields, dict) and ump.fields["origin"] == {"Ump": {"Para": 1000}}

    # a call argument: versioned locations nest enums three deep
    origin = block_from_decoded(decoded / "assethub" / "7392940.cbor", network=NETWORKS["assethub"])
    transfer = origin.extrinsics[3]
    assert transfer.call == "limited_reserve_transfer_assets"
    assert isinstance(transfer.args, dict)
    assert transfer.args["dest"] == {"V3": {"parents": 1, "interior": {"X1": {"Parachain": 2034}}}}
    assert transfer.args["weight_limit"] == "Unlimited"


def test_failed_extrinsic_carries_its_dispatch_error(fixtures_dir: Path) -> None:
    failed = []
    for path in decoded_files(fixtures_dir):
        block = block_from_decoded(path, network=NETWORKS[path.parent.name])
        failed += [x for x in block.extrinsics if not x.success]
    assert failed, "the decoded fixtures hold a failed extrinsic"
    for extrinsic in failed:
        # papi resolves module errors by name; the raw decoder gives {index, error} instead
        assert isinstance(extrinsic.error, dict) and "Module" in extrinsic.error


def test_from_papi_value_rules() -> None:
    alice = "15oF4uVJwmo4TdGW7VfQxNLavjCXviqxT9S1MgbjMNHr6Sp5"  # SS58 prefix 0
    alice_key = "0xd43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d"
    assert from_papi_value({"type": "Here"}) == "Here"
    assert from_papi_value({"type": "Here", "value": None}) == "Here"
    assert from_papi_value({"type": "Here", "value": cbor2.undefined}) == "Here"
    assert from_papi_value({"type": "V4", "value": [{"type": "Parachain", "value": 2}]}) == {
        "V4": [{"Parachain": 2}]
    }
    # a struct that happens to have a "type" field is not an enum
    assert from_papi_value({"type": "x", "other": 1}) == {"type": "x", "other": 1}
    assert from_papi_value({"type": 3, "value": 1}) == {"type": 3, "value": 1}
    # numbers: kept as they are
    assert from_papi_value("18446744073709551616") == "18446744073709551616"
    assert from_papi_value("506") == "506"
    assert from_papi_value(7) == 7
    # accounts: SS58 -> public key, MultiAddress::Id -> the bare key, hex lowercased
    assert from_papi_value(alice) == alice_key
    assert from_papi_value({"type": "Id", "value": alice}) == alice_key
    assert from_papi_value({"type": "Index", "value": 5}) == {"Index": 5}
    assert from_papi_value("0xA21e0C8154Df29a06cfEF16B9937F62B465Cd3D7") == (
        "0xa21e0c8154df29a06cfef16b9937f62b465cd3d7"
    )
    corrupted = alice[:-1] + ("6" if alice[-1] != "6" else "7")
    assert from_papi_value(corrupted) == corrupted  # bad checksum: just text
    # nested calls, as the decoder shapes them
    batch = {
        "calls": [
            {"type": "Balances", "value": {"type": "transfer_keep_alive", "value": {"v": "1"}}},
            {"type": "System", "value": {"type": "remark_with_event", "value": {"remark": "0x"}}},
            {"type": "Timestamp", "value": {"type": "nothing"}},
        ]
    }
    assert from_papi_value(batch) == {
        "calls": [
            {"module": "Balances", "call": "transfer_keep_alive", "args": {"v": "1"}},
            {"module": "System", "call": "remark_with_event", "args": {"remark": "0x"}},
            {"module": "Timestamp", "call": "nothing", "args": {}},
        ]
    }
    # an enum of enums under a "call" key that is no call (CamelCase inner variant) stays an enum
    assert from_papi_value({"call": {"type": "A", "value": {"type": "B"}}}) == {"call": {"A": "B"}}
    # BitVec: papi's Uint8Array object -> cyscale's "0b" string (little-endian integer)
    assert from_papi_value({"bytes": {"0": 1, "1": 2}, "bitsLen": 10}) == "0b1000000001"
    assert from_papi_value(b"\x01\xab") == "0x01ab"
    assert from_papi_value({1: {"type": "A"}}) == [[1, "A"]]  # non-string keys: pairs
    with pytest.raises(TypeError):
        from_papi_value(object())


def test_signed_extrinsic_addresses(fixtures_dir: Path) -> None:
    path = fixtures_dir / "decoded" / "assethub" / "7392940.cbor"
    raw = cbor2.loads(path.read_bytes())
    sender = raw["extrinsics"][3]
    assert sender["address"]["type"] == "Id"
    expected = "0x584de43a94c9dfc618bd7245cef1452ab9cc0cf8889cae3ee8346efc0600427e"

    def signer_of(address: Any) -> str | None:
        raw["extrinsics"][3] = {**sender, "address": address}
        return block_from_decoded(raw, network=NETWORKS["assethub"]).extrinsics[3].signer

    assert signer_of(sender["address"]) == expected
    assert signer_of(sender["address"]["value"]) == expected  # a bare SS58 string (Hydration)
    assert signer_of(expected.upper().replace("0X", "0x")) == expected  # hex (AccountId20 chains)
    assert signer_of({"type": "Index", "value": 3}) is None  # no account id without a lookup
    ss58 = sender["address"]["value"]
    with pytest.raises(ValueError, match="checksum"):
        signer_of(ss58[:-1] + ("2" if ss58[-1] != "2" else "3"))
    with pytest.raises(ValueError, match="no address"):
        signer_of(None)


def test_missing_outcome_and_unknown_phase_raise(fixtures_dir: Path) -> None:
    raw = cbor2.loads((fixtures_dir / "decoded" / "hydra" / "6253481.cbor").read_bytes())
    trimmed = {**raw, "events": [e for e in raw["events"] if e["event"]["module"] != "System"]}
    with pytest.raises(ValueError, match="extrinsic 0 has no"):
        block_from_decoded(trimmed, network=NETWORKS["hydra"])
    odd = {**raw, "events": [{**raw["events"][0], "phase": {"type": "Sometime"}}]}
    with pytest.raises(ValueError, match="unknown phase"):
        block_from_decoded(odd, network=NETWORKS["hydra"])


def test_explicit_spec_version_and_storage(fixtures_dir: Path) -> None:
    path = fixtures_dir / "decoded" / "hydra" / "6783592.cbor"
    dmp = downward_queue(2034)
    block = block_from_decoded(
        path,
        network=NETWORKS["hydra"],
        spec_version=300,
        storage=[{"item": "Dmp.DownwardMessageQueues(2034)", "key": dmp.key, "value": "0x00"}],
    )
    assert block.spec_version == 300
    assert [(s.pallet, s.item, s.key, s.value) for s in block.storage] == [
        ("Dmp", "DownwardMessageQueues", dmp.key, "0x00")
    ]
    with pytest.raises(ValueError, match="the ingress reads"):
        block_from_decoded(
            path,
            network=NETWORKS["hydra"],
            storage=[{"item": "Dmp.DownwardMessageQueues(2035)", "key": dmp.key, "value": "0x"}],
        )
    with pytest.raises(ValueError, match="the ingress reads"):
        block_from_decoded(
            path,
            network=NETWORKS["hydra"],
            storage=[{"item": "ParachainSystem.UpwardMessages", "key": dmp.key, "value": "0x"}],
        )


# --- case manifests -----------------------------------------------------------------------------


def test_every_case_gives_its_blocks_with_their_storage(fixtures_dir: Path) -> None:
    expected_keys = {
        "ParachainSystem.HrmpOutboundMessages": HRMP_OUTBOUND.key,
        "ParachainSystem.UpwardMessages": UPWARD.key,
        "Dmp.DownwardMessageQueues(2034)": downward_queue(2034).key,
    }
    attached = 0
    for path in cases(fixtures_dir):
        case = load_case(path)
        blocks = blocks_from_case(path, fixtures_dir)
        assert len(blocks) == len(case["blocks"]), path.name
        for entry, block in zip(case["blocks"], blocks, strict=True):
            where = f"{path.name} {entry['ref']}"
            assert block.network == entry["chain"], where
            assert (block.hash, block.number) == (entry["hash"], entry["number"]), where
            if "parent" in entry:
                assert block.parent_hash == entry["parent"], where
            assert ExtendedBlock.from_json_bytes(block.to_json_bytes()) == block, where
            wanted = [s for s in case.get("storage", []) if s["block"] == entry["ref"]]
            assert len(block.storage) == len(wanted), where
            for item, source in zip(block.storage, wanted, strict=True):
                assert f"{item.pallet}.{item.item}" == source["item"].split("(")[0], where
                assert item.key == source["key"] == expected_keys[source["item"]], where
                assert item.value == source["value"], where
                attached += 1
        # the parsed manifest (with an explicit folder) gives the same blocks
        assert blocks_from_case(case, fixtures_dir) == blocks
    assert attached == 14


def test_case_errors_are_not_skipped(fixtures_dir: Path) -> None:
    case = load_case(fixtures_dir / "cases" / "head-hrmp-assethub-hydra.json")
    unknown = {**case, "blocks": [{**case["blocks"][0], "format": "papi-json"}]}
    with pytest.raises(ValueError, match="unknown block format 'papi-json'"):
        blocks_from_case(unknown, fixtures_dir)
    wrong = {**case, "blocks": [{**case["blocks"][0], "hash": "0x" + "11" * 32}]}
    with pytest.raises(ValueError, match="the manifest says"):
        blocks_from_case(wrong, fixtures_dir)
    orphan = {**case, "blocks": case["blocks"][1:]}  # its storage entry points at a missing block
    with pytest.raises(ValueError, match="unknown blocks"):
        blocks_from_case(orphan, fixtures_dir)


def test_fixtures_path(fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OCSTREAM_FIXTURES", str(fixtures_dir))
    assert fixtures_path() == fixtures_dir
    monkeypatch.setenv("OCSTREAM_FIXTURES", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="OCSTREAM_FIXTURES"):
        fixtures_path()


# --- publishing ---------------------------------------------------------------------------------


async def read_topic(
    redis_url: str, prefix: str, topic: str = "blocks"
) -> tuple[int, dict[int, list[tuple[str, dict[bytes, bytes]]]]]:
    """The topic's partition count and, per partition, its entries as (entry id, fields)."""
    client = aioredis.Redis.from_url(redis_url)
    keys = Keyspace(prefix)
    try:
        count = int(await client.hget(keys.topics, topic) or 0)
        partitions: dict[int, list[tuple[str, dict[bytes, bytes]]]] = {}
        for partition in range(count):
            entries: Any = await client.xrange(keys.stream(topic, partition))
            partitions[partition] = [(entry_id.decode(), fields) for entry_id, fields in entries]
        return count, partitions
    finally:
        await client.aclose()


async def test_publish_blocks_as_the_ingress_does(
    fixtures_dir: Path, redis_url: str, prefix: str
) -> None:
    case = fixtures_dir / "cases" / "head-hops-vmp-bifrost-polkadot-hydra.json"
    blocks = blocks_from_case(case, fixtures_dir)[1:]  # Polkadot, then two Hydration blocks
    assert [b.network for b in blocks] == [
        NETWORKS["polkadot"],
        NETWORKS["hydra"],
        NETWORKS["hydra"],
    ]

    assert await publish_blocks(redis_url, blocks, prefix=prefix, partitions=4) == 3

    count, partitions = await read_topic(redis_url, prefix)
    assert count == 4
    seen: list[ExtendedBlock] = []
    for partition, entries in partitions.items():
        # offsets are dense from 0: entry ids 0-1, 0-2, ... (offset = seq - 1)
        assert [entry_id for entry_id, _ in entries] == [f"0-{n + 1}" for n in range(len(entries))]
        assert [id_to_offset(entry_id) for entry_id, _ in entries] == list(range(len(entries)))
        for _, fields in entries:
            key = fields[b"k"]
            assert partition == partition_for_key(key, count)  # the ingress's partitioning
            assert decode_headers(fields[b"h"]) == [(NORMALISED_HEADER, b"1")]  # as it vouches
            block = ExtendedBlock.from_json_bytes(cast(bytes, entry_value(fields)))
            assert key == block.network.encode()
            seen.append(block)
    assert sorted(seen, key=blocks.index) == blocks
    # one network's blocks share a partition, in order
    hydra = partition_for_key(NETWORKS["hydra"].encode(), count)
    assert [
        ExtendedBlock.from_json_bytes(cast(bytes, entry_value(f))).number
        for _, f in partitions[hydra]
    ][-2:] == [
        6783591,
        6783592,
    ]

    # a second run appends after the first, and the topic keeps its partition count
    assert await publish_blocks(redis_url, blocks[:1], prefix=prefix, partitions=9) == 1
    count, partitions = await read_topic(redis_url, prefix)
    assert count == 4
    relay = partition_for_key(NETWORKS["polkadot"].encode(), count)
    assert [id_to_offset(entry_id) for entry_id, _ in partitions[relay]] == list(
        range(len(partitions[relay]))
    )
    assert sum(len(entries) for entries in partitions.values()) == 4


def test_publish_blocks_sync_uses_the_settings_partitions(
    fixtures_dir: Path, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCSTREAM_PARTITIONS", "3")
    monkeypatch.delenv("OCSTREAM_CONFIG_FILE", raising=False)
    path = fixtures_dir / "decoded" / "kcoretime" / "4708533.cbor"
    block = block_from_decoded(path, network=NETWORKS["kcoretime"])
    assert publish_blocks_sync(redis_url, [block], prefix=prefix, topic="blocks-sync") == 1
    count, partitions = asyncio.run(read_topic(redis_url, prefix, "blocks-sync"))
    assert count == 3
    [(entry_id, fields)] = [entry for entries in partitions.values() for entry in entries]
    assert entry_id == "0-1"
    assert ExtendedBlock.from_json_bytes(cast(bytes, entry_value(fields))) == block
