"""The sender of a sent message, on recorded blocks, and subscription matching on it.

* Real sends: every case manifest whose message names a ``sender`` (extrinsic index, signer public
  key and, where known, its SS58 form and prefix) is checked on the real block, starting from the
  trigger event's extrinsic index as the agent will. Messages sent from an inherent or from the
  Initialization phase (a hop re-send, a relay hook) must have no sender.
* Real wrappers: a ``Proxy.proxy`` (Polkadot #17677889), a ``Utility.force_batch`` (#19511592) and
  a ``Utility.batch_all`` (#19772575) recorded on Polkadot; none sends XCM, but the sender is
  defined for any signed extrinsic.
* Nested wrappers the recordings do not hold (batches of proxies, multisigs): built as real SCALE
  bytes, from the signed part of the recorded proxy extrinsic and calls encoded by hand, and
  decoded by the ingress's decoder with the Polkadot 9430 metadata, so the arguments have the
  exact shapes of decoded blocks. The ``Multisig.MultisigExecuted`` event is encoded and decoded
  the same way. Expected multisig accounts are computed here with hashlib, independently of the
  code under test, and the derivation is checked against published vectors.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from ocstream.ingress.decode import RuntimeDecoder, build_extended_block, read_compact
from ocstream.ingress.model import Event, ExtendedBlock, Extrinsic
from ocstream.ingress.raw import load_sidecar_json, load_v1_cbor
from ocstream.testing import DEFAULT_FIXTURES, block_from_decoded
from ocstream.xcm.sender import (
    BlockSenders,
    ExtraSigner,
    Sender,
    Signer,
    multisig_account,
    sender_matches,
    sender_of,
)
from ocstream.xcm.ss58 import public_key_of, ss58_encode

DecoderFor = Callable[[str, str], RuntimeDecoder]

# Where conftest's fixtures_dir looks, known at collection time to name the parametrised cases.
FIXTURES = Path(os.environ.get("OCSTREAM_FIXTURES", DEFAULT_FIXTURES))


# --- blocks of the case manifests ---------------------------------------------------------------


@cache
def _v1_file(path: Path) -> list[Any]:
    return load_v1_cbor(path)


WRAPPERS = {
    ("Utility", "batch"),
    ("Utility", "batch_all"),
    ("Utility", "force_batch"),
    ("Proxy", "proxy"),
    ("Multisig", "as_multi"),
    ("Multisig", "as_multi_threshold_1"),
}


def block_of(fixtures_dir: Path, decoder_for: DecoderFor, entry: dict[str, Any]) -> ExtendedBlock:
    """The ExtendedBlock of a manifest ``blocks[]`` entry."""
    network = entry["chain"]
    path = fixtures_dir / entry["file"]
    if entry["format"] == "decoded-cbor":
        return block_from_decoded(path, network=network)
    if entry["format"] == "v1-cbor":
        raw = _v1_file(path)[entry["index"]]
    else:
        assert entry["format"] == "sidecar-json", entry
        raw = load_sidecar_json(path)
    metadata = entry.get("metadata") or raw.metadata
    decoder = decoder_for(network, Path(metadata).name)
    block = build_extended_block(network, decoder, raw.header, raw.extrinsics, raw.events)
    assert block.hash == entry["hash"]
    return block


def sent_messages(fixtures_dir: Path) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(case name, message, its block entry) for every message with ``sent`` evidence."""
    for path in sorted((fixtures_dir / "cases").glob("*.json")):
        case = orjson.loads(path.read_bytes())
        refs = {entry["ref"]: entry for entry in case["blocks"]}
        for message in case.get("messages", []):
            sent = message.get("sent")
            if sent and "event_index" in sent:
                yield path.stem, message, refs[sent["block"]]


def case_ids() -> list[str]:
    # Collected before fixtures exist; the default fixtures location is enough to name the cases.
    if not (FIXTURES / "cases").is_dir():
        return ["(fixtures missing)"]
    return [f"{name}:{message['label']}" for name, message, _ in sent_messages(FIXTURES)]


@pytest.mark.parametrize("case", case_ids())
def test_sender_of_real_sends(fixtures_dir: Path, decoder_for: DecoderFor, case: str) -> None:
    found = {
        f"{name}:{message['label']}": (message, entry)
        for name, message, entry in sent_messages(fixtures_dir)
    }
    message, entry = found[case]
    block = block_of(fixtures_dir, decoder_for, entry)
    sent = message["sent"]
    event = block.events[sent["event_index"]]
    assert f"{event.module}.{event.name}" == sent["event"]
    assert event.phase == sent["phase"]
    assert event.extrinsic_index == sent.get("extrinsic_index")

    expected = message.get("sender")
    if expected is None:
        extrinsic = (
            block.extrinsics[event.extrinsic_index] if event.extrinsic_index is not None else None
        )
        if extrinsic is not None and extrinsic.signer is not None:
            # Signed, though the manifest names no sender: the signer, and nothing else since the
            # call wraps none.
            assert (extrinsic.module, extrinsic.call) not in WRAPPERS
            sender = sender_of(block, event.extrinsic_index, ss58_prefix=0)
            assert sender is not None and sender.extraSigners == []
            assert sender.signer.publicKey == extrinsic.signer
            assert sender.signer.id == ss58_encode(extrinsic.signer, 0)
            return
        # An Initialization-phase send, or one from an inherent (a hop re-send): no sender.
        assert sender_of(block, event.extrinsic_index, ss58_prefix=0) is None
        return

    assert event.extrinsic_index == expected["extrinsic_index"]
    prefix = expected.get("ss58_prefix")
    sender = sender_of(block, event.extrinsic_index, ss58_prefix=prefix)
    assert sender is not None
    extrinsic = block.extrinsics[expected["extrinsic_index"]]
    assert f"{extrinsic.module}.{extrinsic.call}" == expected["call"]
    assert sender.signer.publicKey == expected["signer_public_key"]
    if prefix is not None:
        assert sender.signer.id == expected["signer_ss58"]
        assert public_key_of(expected["signer_ss58"]) == expected["signer_public_key"]
    else:  # the manifest does not know the chain's prefix: the id is the hex key
        assert sender.signer.id == expected["signer_public_key"]
    assert sender.extraSigners == []  # plain transfer calls, no wrapper
    keys = frozenset({expected["signer_public_key"]})
    assert sender_matches(sender, keys)
    assert sender_matches(sender, None)
    assert not sender_matches(sender, frozenset({"0x" + "00" * 32}))


def test_the_real_sends_were_checked(fixtures_dir: Path) -> None:
    """The parametrised test above covers the raw recordings whatever the tree's state: three
    signed sends and two sends without a sender."""
    raw = [
        (message.get("sender") is not None)
        for _, message, entry in sent_messages(fixtures_dir)
        if entry["format"] != "decoded-cbor"
    ]
    assert raw.count(True) == 3
    assert raw.count(False) == 2


# --- real wrapper calls -------------------------------------------------------------------------

POLKADOT = "urn:ocn:polkadot:0"
PROXY_SIGNER = "0x6e297c57d16b5cf63ad700fe102ada88eefe8e55b9d799346b7aead0f87ae010"
PROXY_REAL = "0x079c02bffb02bff47636132156cfbb4eb67ca98a364d506d280bc3c1b9fdad26"


def v1_block(
    fixtures_dir: Path, decoder_for: DecoderFor, file: str, metadata: str, number: int
) -> ExtendedBlock:
    for raw in _v1_file(fixtures_dir / "raw" / "v1" / file):
        if raw.number == number:
            decoder = decoder_for(POLKADOT, metadata)
            return build_extended_block(POLKADOT, decoder, raw.header, raw.extrinsics, raw.events)
    raise AssertionError(f"#{number} is not in {file}")


def test_a_real_proxy_call_adds_the_real_account(
    fixtures_dir: Path, decoder_for: DecoderFor
) -> None:
    block = v1_block(
        fixtures_dir, decoder_for, "ump-in-fail.cbor.bin", "polkadot-9430.scale", 17677889
    )
    extrinsic = block.extrinsics[2]
    assert (extrinsic.module, extrinsic.call, extrinsic.signer) == ("Proxy", "proxy", PROXY_SIGNER)
    assert isinstance(extrinsic.args, dict) and extrinsic.args["real"] == PROXY_REAL

    sender = sender_of(block, 2, ss58_prefix=0)
    assert sender == Sender(
        signer=Signer(id=ss58_encode(PROXY_SIGNER, 0), publicKey=PROXY_SIGNER),
        extraSigners=[
            ExtraSigner(type="proxy", id=ss58_encode(PROXY_REAL, 0), publicKey=PROXY_REAL)
        ],
    )
    # A subscription to the proxied account matches what its proxy did for it.
    assert sender_matches(sender, frozenset({PROXY_REAL}))
    assert sender_matches(sender, frozenset({PROXY_SIGNER}))
    # The inherents of the same block have no sender; nor has an event without an extrinsic.
    assert block.extrinsics[0].signer is None
    assert sender_of(block, 0, ss58_prefix=0) is None
    assert sender_of(block, None, ss58_prefix=0) is None
    assert sender_of(block, len(block.extrinsics), ss58_prefix=0) is None


def test_real_batches_add_no_extra_signer(fixtures_dir: Path, decoder_for: DecoderFor) -> None:
    block = v1_block(
        fixtures_dir,
        decoder_for,
        "ump-0-trapped-19511591.cbor.bin",
        "polkadot-1000001.scale",
        19511592,
    )
    extrinsic = block.extrinsics[3]
    assert (extrinsic.module, extrinsic.call) == ("Utility", "force_batch")
    sender = sender_of(block, 3, ss58_prefix=0)
    assert sender is not None and sender.extraSigners == []
    assert sender.signer.publicKey == extrinsic.signer

    raw = load_sidecar_json(fixtures_dir / "raw" / "sidecar" / "polkadot-19772575.json")
    decoder = decoder_for(POLKADOT, "polkadot-1000001.scale")
    block = build_extended_block(POLKADOT, decoder, raw.header, raw.extrinsics, raw.events)
    assert (block.extrinsics[4].module, block.extrinsics[4].call) == ("Utility", "batch_all")
    sender = sender_of(block, 4, ss58_prefix=0)
    assert sender is not None and sender.extraSigners == []
    assert sender.signer.publicKey == block.extrinsics[4].signer


def test_a_papi_decoded_batch_adds_no_extra_signer(fixtures_dir: Path) -> None:
    block = block_from_decoded(
        fixtures_dir / "decoded" / "hydra" / "6783591.cbor", network="urn:ocn:polkadot:2034"
    )
    extrinsic = block.extrinsics[3]
    assert (extrinsic.module, extrinsic.call) == ("Utility", "batch_all")
    assert extrinsic.signer is not None
    sender = sender_of(block, 3, ss58_prefix=None)
    assert sender is not None and sender.extraSigners == []
    assert sender.signer == Signer(id=extrinsic.signer, publicKey=extrinsic.signer)


# --- nested wrappers, as real SCALE decoded by the ingress's decoder ----------------------------

# Call indices in the Polkadot 9430 runtime (its metadata): Utility 26, Proxy 29, Multisig 30.
BATCH, BATCH_ALL, FORCE_BATCH = bytes([26, 0]), bytes([26, 2]), bytes([26, 4])
PROXY = bytes([29, 0])
AS_MULTI_THRESHOLD_1, AS_MULTI = bytes([30, 0]), bytes([30, 1])
MULTISIG_EXECUTED = bytes([30, 2])

# Two more real accounts: Alice and Bob of the Substrate dev chain.
ALICE = public_key_of("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY")
BOB = public_key_of("5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty")


def compact(n: int) -> bytes:
    assert 0 <= n < 64  # the single-byte mode is all these calls need
    return bytes([n << 2])


def account(key: str) -> bytes:
    return bytes.fromhex(key[2:])


def vec(items: list[bytes]) -> bytes:
    return compact(len(items)) + b"".join(items)


def expected_multisig(signatories: list[str], threshold: int) -> str:
    """pallet_multisig's account for these signatories, written out here with hashlib."""
    keys = sorted(account(key) for key in signatories)
    preimage = b"modlpy/utilisuba" + vec(keys) + threshold.to_bytes(2, "little")
    return "0x" + hashlib.blake2b(preimage, digest_size=32).hexdigest()


class Polkadot9430:
    """Signed extrinsics with any call, from the signed part of the recorded proxy extrinsic."""

    def __init__(self, fixtures_dir: Path, decoder_for: DecoderFor) -> None:
        self.decoder = decoder_for(POLKADOT, "polkadot-9430.scale")
        self.block = v1_block(
            fixtures_dir, decoder_for, "ump-in-fail.cbor.bin", "polkadot-9430.scale", 17677889
        )
        raws = _v1_file(fixtures_dir / "raw" / "v1" / "ump-in-fail.cbor.bin")
        recorded = next(r for r in raws if r.number == 17677889).extrinsics[2]
        length, start = read_compact(recorded, 0)
        body = recorded[start : start + length]
        # The call is the end of the extrinsic: Proxy.proxy, MultiAddress::Id(real), None, call.
        call_at = body.index(PROXY + b"\x00" + account(PROXY_REAL))
        self.signed_part = body[:call_at]
        self.proxy_call = body[call_at:]
        self.nominate_call = self.proxy_call[len(PROXY) + 1 + 32 + 1 :]

    def extrinsic(self, call: bytes, index: int = 2) -> Extrinsic:
        body = self.signed_part + call
        return self.decoder.decode_extrinsic(compact_any(len(body)) + body, index, success=True)

    def multisig_executed(self, index: int, approving: str, multisig: str) -> Event:
        record = (
            b"\x00"
            + (2).to_bytes(4, "little")  # ApplyExtrinsic(2)
            + MULTISIG_EXECUTED
            + account(approving)
            + (17677000).to_bytes(4, "little")  # timepoint.height
            + (3).to_bytes(4, "little")  # timepoint.index
            + account(multisig)
            + bytes(range(32))  # call_hash
            + b"\x00"  # result: Ok(())
            + b"\x00"  # no topics
        )
        return self.decoder.decode_event_record(record, index)

    def block_with(self, extrinsic: Extrinsic, events: list[Event] | None = None) -> ExtendedBlock:
        """The recorded block with ``extrinsic`` in place of its extrinsic 2, and ``events``."""
        return self.block.model_copy(
            update={"extrinsics": [*self.block.extrinsics[:2], extrinsic], "events": events or []}
        )


def compact_any(n: int) -> bytes:
    if n < 1 << 6:
        return bytes([n << 2])
    if n < 1 << 14:
        return ((n << 2) | 1).to_bytes(2, "little")
    return ((n << 2) | 2).to_bytes(4, "little")


def proxy(real: str, call: bytes) -> bytes:
    return PROXY + b"\x00" + account(real) + b"\x00" + call


def as_multi_threshold_1(others: list[str], call: bytes) -> bytes:
    return AS_MULTI_THRESHOLD_1 + vec([account(key) for key in sorted(others)]) + call


def as_multi(threshold: int, others: list[str], call: bytes) -> bytes:
    timepoint = b"\x01" + (17677000).to_bytes(4, "little") + (3).to_bytes(4, "little")
    weight = compact_any(1_000_000) + compact_any(10_000)  # Weight { ref_time, proof_size }
    return (
        AS_MULTI
        + threshold.to_bytes(2, "little")
        + vec([account(key) for key in sorted(others)])
        + timepoint
        + call
        + weight
    )


@pytest.fixture(scope="module")
def chain(fixtures_dir: Path, decoder_for: DecoderFor) -> Polkadot9430:
    return Polkadot9430(fixtures_dir, decoder_for)


def extra(sender: Sender | None) -> list[tuple[str, str]]:
    assert sender is not None
    return [(signer.type, signer.publicKey) for signer in sender.extraSigners]


def test_the_built_calls_decode_like_recorded_ones(chain: Polkadot9430) -> None:
    recorded = chain.block.extrinsics[2]
    rebuilt = chain.extrinsic(chain.proxy_call)
    assert rebuilt.args == recorded.args and rebuilt.signer == recorded.signer == PROXY_SIGNER

    nested = chain.extrinsic(as_multi_threshold_1([ALICE, BOB], chain.nominate_call))
    assert (nested.module, nested.call) == ("Multisig", "as_multi_threshold_1")
    assert isinstance(nested.args, dict)
    assert nested.args["other_signatories"] == sorted([ALICE, BOB])
    inner = nested.args["call"]
    assert isinstance(inner, dict) and (inner["module"], inner["call"]) == ("Staking", "nominate")

    event = chain.multisig_executed(0, PROXY_SIGNER, ALICE)
    assert (event.module, event.name, event.extrinsic_index) == ("Multisig", "MultisigExecuted", 2)
    assert isinstance(event.fields, dict)
    assert (event.fields["approving"], event.fields["multisig"]) == (PROXY_SIGNER, ALICE)


def test_threshold_1_multisig_is_derived_from_the_signer(chain: Polkadot9430) -> None:
    extrinsic = chain.extrinsic(as_multi_threshold_1([ALICE, BOB], chain.nominate_call))
    sender = sender_of(chain.block_with(extrinsic), 2, ss58_prefix=0)
    multisig = expected_multisig([PROXY_SIGNER, ALICE, BOB], 1)
    assert extra(sender) == [("multisig", multisig)]
    assert sender is not None and sender.extraSigners[0].id == ss58_encode(multisig, 0)
    assert sender_matches(sender, frozenset({multisig}))
    assert not sender_matches(sender, frozenset({ALICE, BOB}))  # co-signatories did not act


def test_a_batch_of_a_proxy_and_a_threshold_1_multisig(chain: Polkadot9430) -> None:
    call = BATCH_ALL + vec(
        [chain.proxy_call, as_multi_threshold_1([ALICE, BOB], chain.nominate_call)]
    )
    sender = sender_of(chain.block_with(chain.extrinsic(call)), 2, ss58_prefix=0)
    assert extra(sender) == [
        ("proxy", PROXY_REAL),
        ("multisig", expected_multisig([PROXY_SIGNER, ALICE, BOB], 1)),
    ]


def test_a_multisig_inside_a_proxy_is_the_real_accounts(chain: Polkadot9430) -> None:
    # Inside Proxy.proxy the call is dispatched as the real account: it is the signatory.
    call = proxy(PROXY_REAL, as_multi_threshold_1([ALICE], chain.nominate_call))
    sender = sender_of(chain.block_with(chain.extrinsic(call)), 2, ss58_prefix=0)
    assert extra(sender) == [
        ("proxy", PROXY_REAL),
        ("multisig", expected_multisig([PROXY_REAL, ALICE], 1)),
    ]


def test_nested_batches_are_flattened(chain: Polkadot9430) -> None:
    inner = BATCH + vec([chain.nominate_call, chain.proxy_call])
    call = FORCE_BATCH + vec([chain.nominate_call, inner])
    sender = sender_of(chain.block_with(chain.extrinsic(call)), 2, ss58_prefix=0)
    assert extra(sender) == [("proxy", PROXY_REAL)]


def test_as_multi_takes_the_executed_event(chain: Polkadot9430) -> None:
    multisig = expected_multisig([PROXY_SIGNER, ALICE], 2)
    extrinsic = chain.extrinsic(as_multi(2, [ALICE], chain.proxy_call))
    executed = chain.multisig_executed(0, PROXY_SIGNER, multisig)
    sender = sender_of(chain.block_with(extrinsic, [executed]), 2, ss58_prefix=0)
    # The multisig (outer) first, then the proxy it dispatched through.
    assert extra(sender) == [("multisig", multisig), ("proxy", PROXY_REAL)]

    # Without MultisigExecuted the call only recorded an approval: nothing ran, nothing added.
    assert extra(sender_of(chain.block_with(extrinsic, []), 2, ss58_prefix=0)) == []
    # An event of another extrinsic is not this one's.
    other = executed.model_copy(update={"extrinsic_index": 1})
    assert extra(sender_of(chain.block_with(extrinsic, [other]), 2, ss58_prefix=0)) == []


def test_nested_as_multi_match_their_events_by_approving_account(chain: Polkadot9430) -> None:
    # as_multi(S: 2 of {S, Alice}) dispatching as_multi(M1: 2 of {M1, Bob}) dispatching a proxy.
    outer = expected_multisig([PROXY_SIGNER, ALICE], 2)
    inner = expected_multisig([outer, BOB], 2)
    call = as_multi(2, [ALICE], as_multi(2, [BOB], chain.proxy_call))
    # The inner call's event comes first: it is emitted while the outer call dispatches.
    events = [
        chain.multisig_executed(0, outer, inner),
        chain.multisig_executed(1, PROXY_SIGNER, outer),
    ]
    sender = sender_of(chain.block_with(chain.extrinsic(call), events), 2, ss58_prefix=0)
    assert extra(sender) == [("multisig", outer), ("multisig", inner), ("proxy", PROXY_REAL)]


def test_block_senders_index_the_executions_once_and_answer_each_extrinsic(
    chain: Polkadot9430, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``BlockSenders`` (extraction asks about each send of a block in turn) reads the block's
    events once, and gives every question its own answer: an answer does not consume the
    executions, and another block is another index."""
    from ocstream.xcm import sender as module

    indexed: list[int] = []
    real = module._index_multisigs

    def counted(events: Any) -> Any:
        indexed.append(len(events))
        return real(events)

    monkeypatch.setattr(module, "_index_multisigs", counted)
    multisig = expected_multisig([PROXY_SIGNER, ALICE], 2)
    extrinsic = chain.extrinsic(as_multi(2, [ALICE], chain.proxy_call))
    executed = chain.multisig_executed(0, PROXY_SIGNER, multisig)
    with_event = chain.block_with(extrinsic, [executed])
    want = [("multisig", multisig), ("proxy", PROXY_REAL)]
    senders = BlockSenders(with_event, ss58_prefix=0)
    assert extra(senders.of(2)) == want
    assert extra(senders.of(2)) == want  # asked again: the same executions
    assert senders.of(None) is None
    # extract's callback form: the same sender as JSON
    assert senders.as_json(with_event, 2) == senders.of(2).model_dump()  # type: ignore[union-attr]
    assert senders.as_json(with_event, None) is None
    assert indexed == [1]  # one scan of the block's events for all the questions
    assert extra(sender_of(with_event, 2, ss58_prefix=0)) == want  # the one-off form
    # Another block, equal to the first but for the event's extrinsic, has its own index.
    moved = executed.model_copy(update={"extrinsic_index": 1})
    other = with_event.model_copy(update={"events": [moved]})
    assert extra(BlockSenders(other, ss58_prefix=0).of(2)) == []
    assert extra(senders.of(2)) == want
    assert extra(BlockSenders(chain.block_with(extrinsic, []), ss58_prefix=0).of(2)) == []


# --- hand-built shapes other producers may use ---------------------------------------------------


def hand_block(extrinsic: Extrinsic, events: list[Event] | None = None) -> ExtendedBlock:
    return ExtendedBlock(
        network="urn:ocn:polkadot:2004",
        number=1,
        hash="0x" + "11" * 32,
        parent_hash="0x" + "22" * 32,
        extrinsics=[extrinsic],
        events=events or [],
    )


def hand_extrinsic(module: str, call: str, args: Any, signer: str | None) -> Extrinsic:
    return Extrinsic(index=0, module=module, call=call, args=args, signer=signer, success=True)


def test_multiaddress_enums_and_unresolvable_addresses() -> None:
    nominate = {"module": "Staking", "call": "chill", "args": {}}
    calls = [
        {
            "module": "Proxy",
            "call": "proxy",
            "args": {"real": {"Id": PROXY_REAL}, "call": nominate},
        },
        {"module": "Proxy", "call": "proxy", "args": {"real": {"Address32": ALICE}, "call": None}},
        {"module": "Proxy", "call": "proxy", "args": {"real": {"Index": 7}, "call": nominate}},
        {"module": "Proxy", "call": "proxy", "args": {"real": PROXY_REAL, "call": nominate}},
    ]
    extrinsic = hand_extrinsic("Utility", "batch", {"calls": calls}, PROXY_SIGNER)
    sender = sender_of(hand_block(extrinsic), 0, ss58_prefix=None)
    # Index needs chain state: skipped. The repeated real account is listed once.
    assert extra(sender) == [("proxy", PROXY_REAL), ("proxy", ALICE)]
    assert sender is not None and sender.signer.id == PROXY_SIGNER  # no prefix: hex


def test_twenty_byte_accounts() -> None:
    # AccountId20 chains (Moonbeam): ids stay hex whatever the prefix, and the multisig account is
    # the first 20 bytes of the hash.
    signer = "0x" + "ab" * 20
    other = "0x" + "0c" * 20
    real = "0x" + "f0" * 20
    inner = {"module": "System", "call": "remark", "args": {"remark": "0x"}}
    calls = [
        {"module": "Proxy", "call": "proxy", "args": {"real": {"Address20": real}, "call": inner}},
        {
            "module": "Multisig",
            "call": "as_multi_threshold_1",
            "args": {"other_signatories": [other], "call": inner},
        },
    ]
    extrinsic = hand_extrinsic("Utility", "batch_all", {"calls": calls}, signer)
    sender = sender_of(hand_block(extrinsic), 0, ss58_prefix=1284)
    multisig = expected_multisig([signer, other], 1)[: 2 + 40]
    assert extra(sender) == [("proxy", real), ("multisig", multisig)]
    assert sender is not None
    assert sender.signer == Signer(id=signer, publicKey=signer)
    assert [s.id for s in sender.extraSigners] == [real, multisig]


def test_unnamed_multisig_event_fields() -> None:
    # Old runtimes' events have positional fields: (approving, timepoint, multisig, hash, result).
    multisig = expected_multisig([PROXY_SIGNER, ALICE], 2)
    inner = {"module": "System", "call": "remark", "args": {"remark": "0x"}}
    args = {"threshold": 2, "other_signatories": [ALICE], "call": inner}
    event = Event(
        index=0,
        phase="ApplyExtrinsic",
        extrinsic_index=0,
        module="Multisig",
        name="MultisigExecuted",
        fields=[PROXY_SIGNER, {"height": 1, "index": 0}, multisig, "0x" + "00" * 32, {"Ok": []}],
    )
    extrinsic = hand_extrinsic("Multisig", "as_multi", args, PROXY_SIGNER)
    assert extra(sender_of(hand_block(extrinsic, [event]), 0, ss58_prefix=0)) == [
        ("multisig", multisig)
    ]


def test_an_opaque_call_is_not_looked_into() -> None:
    # Old runtimes pass the multisig's call as opaque bytes: nothing to flatten, no error.
    args = {"other_signatories": [ALICE], "call": "0x0000"}
    extrinsic = hand_extrinsic("Multisig", "as_multi_threshold_1", args, PROXY_SIGNER)
    sender = sender_of(hand_block(extrinsic), 0, ss58_prefix=0)
    assert extra(sender) == [("multisig", expected_multisig([PROXY_SIGNER, ALICE], 1))]


def test_unsigned_extrinsics_have_no_sender() -> None:
    extrinsic = hand_extrinsic("Utility", "batch", {"calls": []}, None)
    assert sender_of(hand_block(extrinsic), 0, ss58_prefix=0) is None


# --- the multisig derivation against published vectors ------------------------------------------


def test_multisig_account_published_vectors() -> None:
    # polkadot-js/common keyMulti.spec.ts ("aligning with Rust"): three u64 accounts, threshold 2.
    # The pallet keeps as many bytes as an account has, so 8 here.
    accounts = [bytes([1, 0, 0, 0, 0, 0, 0, 0]), bytes([3, 0, 0, 0, 0, 0, 0, 0])]
    accounts.append(bytes([2, 0, 0, 0, 0, 0, 0, 0]))
    assert multisig_account(accounts, 2) == "0x4397c49bb3cf2f7b"
    # polkadot-js/common encodeMulti.spec.ts: Alice, Bob, Charlie, threshold 2.
    signatories = [
        "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY",
        "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty",
        "5FLSigC9HGRKVhB9FiEo4Y3koPsNmBmLJbpXg2mp1hXcS59Y",
    ]
    keys = [public_key_of(address) for address in signatories]
    assert ss58_encode(multisig_account(keys, 2), 42) == (
        "5DjYJStmdZ2rcqXbXGX7TW85JsrW6uG4y9MUcLq2BoPMpRA7"
    )
    # Order and duplicates do not change the account.
    assert multisig_account([keys[2], keys[0], keys[1], keys[0]], 2) == multisig_account(keys, 2)
    with pytest.raises(ValueError):
        multisig_account([], 1)
    with pytest.raises(ValueError):
        multisig_account([keys[0], "0x" + "ab" * 20], 1)


# --- matching and the payload --------------------------------------------------------------------


def test_sender_matches() -> None:
    sender = Sender(
        signer=Signer(id="s", publicKey=PROXY_SIGNER),
        extraSigners=[ExtraSigner(type="proxy", id="r", publicKey=PROXY_REAL)],
    )
    assert sender_matches(sender, None)
    assert sender_matches(None, None)  # "*" selects messages without a sender too
    assert not sender_matches(None, frozenset({PROXY_SIGNER}))
    assert sender_matches(sender, frozenset({PROXY_SIGNER}))
    assert sender_matches(sender, frozenset({ALICE, PROXY_REAL}))
    assert not sender_matches(sender, frozenset({ALICE}))
    assert not sender_matches(sender, frozenset())
    # Keys come from public_key_of, so any SS58 form of the account selects it.
    key = public_key_of(ss58_encode(PROXY_REAL, 2))
    assert sender_matches(sender, frozenset({key}))


def test_the_payload_shape() -> None:
    sender = Sender(
        signer=Signer(id="14Dq", publicKey=PROXY_SIGNER),
        extraSigners=[ExtraSigner(type="multisig", id="1abc", publicKey=ALICE)],
    )
    assert sender.model_dump(mode="json") == {
        "signer": {"id": "14Dq", "publicKey": PROXY_SIGNER},
        "extraSigners": [{"type": "multisig", "id": "1abc", "publicKey": ALICE}],
    }
    assert Sender.model_validate_json(sender.model_dump_json()) == sender
    with pytest.raises(ValidationError):
        sender.signer = Signer(id="x", publicKey=ALICE)
    with pytest.raises(ValidationError):
        ExtraSigner(type="delegate", id="x", publicKey=ALICE)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        Signer(id="x", publicKey="0xABCD")  # public keys are lowercase hex
