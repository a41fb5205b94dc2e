"""Which queued message a send call gets its signer on, when nothing but the call links them.

Real behaviour reproduced: on the local network (relay rococo 9140, paras statemine 900) no
send emits an event, and version discovery queues a ``SubscribeVersion`` to the destination
ahead of the transfer when the destination's XCM version is unknown. The storage then holds two
messages for one signed call: the signer belongs to the transfer (the message that carries the
call's beneficiary and amounts), and the ``SubscribeVersion`` has no sender.

The local network's runtimes have no metadata among the fixtures, so the same shapes are built
on real recorded blocks of the same era that send by extrinsic: Polkadot #17844552 (polkadot
9430, ``XcmPallet.limited_reserve_transfer_assets`` to para 2000, no ``Sent`` event) and Polkadot
Asset Hub #4818937 (statemint 9430, ``PolkadotXcm.limited_teleport_assets`` to the relay, with
its ``UpwardMessageSent`` removed as statemine 900 emits none). The messages are V2, as the
runtimes wrap them for a destination of unknown version, encoded by hand and decoded by the
block's own runtime.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ocstream.ingress.decode import RuntimeDecoder, blake2_256, build_extended_block
from ocstream.ingress.follower import encode_compact
from ocstream.ingress.model import ExtendedBlock, StorageItem
from ocstream.ingress.raw import load_v1_cbor
from ocstream.ingress.storage import UPWARD, downward_queue
from ocstream.xcm.codec import XcmCodec
from ocstream.xcm.extract import extract
from ocstream.xcm.sender import is_version_control, sender_of, sent_by_call

DecoderFor = Callable[[str, str], RuntimeDecoder]
POLKADOT = "urn:ocn:polkadot:0"
ASSET_HUB = "urn:ocn:polkadot:1000"
SUBSCRIBE = bytes.fromhex("02041a0000")  # V2 [SubscribeVersion {query_id 0, weight 0}]
UPWARD_SENT = ("ParachainSystem", "UpwardMessageSent")


def _vec(*items: bytes) -> bytes:
    return encode_compact(len(items)) + b"".join(items)


def _hash(data: bytes) -> str:
    return "0x" + blake2_256(data).hex()


def v2_reserve_transfer(amount: int, account: str) -> bytes:
    """What the relay sends for a reserve transfer of ``amount`` DOT to ``account``, in V2:
    ReserveAssetDeposited, ClearOrigin, BuyExecution (Unlimited), DepositAsset (Wild All)."""
    dot = b"\x00\x01\x00" + b"\x00" + encode_compact(amount)  # Concrete {1, Here}, Fungible
    beneficiary = b"\x00\x01\x01\x00" + bytes.fromhex(account[2:])  # {0, X1(AccountId32 Any)}
    return (
        b"\x02"
        + encode_compact(4)
        + b"\x01"
        + _vec(dot)
        + b"\x0a"
        + b"\x13"
        + dot
        + b"\x00"
        + b"\x0d\x01\x00"
        + encode_compact(1)
        + beneficiary
    )


def _senders(block: ExtendedBlock, codec: XcmCodec) -> dict[str, Any]:
    def sender(b: ExtendedBlock, index: int | None) -> Any:
        found = sender_of(b, index, ss58_prefix=0)
        return found.model_dump() if found is not None else None

    found = extract(block, codec, sender_of=sender)
    return {leg.message_hash: leg.sender for leg in found.sent}


def _relay_block(fixtures_dir: Path, decoder: RuntimeDecoder) -> ExtendedBlock:
    raw = load_v1_cbor(fixtures_dir / "raw/v1/dmp-out.cbor.bin")[0]
    return build_extended_block(POLKADOT, decoder, raw.header, raw.extrinsics, raw.events)


def test_the_relay_signer_goes_to_the_transfer_not_to_the_subscribe_version(
    fixtures_dir: Path, decoder_for: DecoderFor
) -> None:
    decoder = decoder_for(POLKADOT, "polkadot-9430.scale")
    block = _relay_block(fixtures_dir, decoder)
    [call] = [x for x in block.extrinsics if x.module == "XcmPallet"]
    assert not any(e.module == "XcmPallet" and e.name == "Sent" for e in block.events)
    args: Any = call.args  # JSON: indexed below by the shape of this call
    assert isinstance(args, dict)
    amount = args["assets"]["V3"][0]["fun"]["Fungible"]
    account = args["beneficiary"]["V3"]["interior"]["X1"]["AccountId32"]["id"]
    transfer = v2_reserve_transfer(amount, account)
    codec = XcmCodec(decoder)
    instructions: Any = codec.message(transfer).instructions
    assert isinstance(instructions, dict)
    assert [i if isinstance(i, str) else next(iter(i)) for i in instructions["V2"]] == [
        "ReserveAssetDeposited",
        "ClearOrigin",
        "BuyExecution",
        "DepositAsset",
    ]

    def entry(msg: bytes) -> bytes:
        return block.number.to_bytes(4, "little") + encode_compact(len(msg)) + msg

    queue = _vec(entry(SUBSCRIBE), entry(transfer))
    block = block.model_copy(
        update={
            "storage": [
                StorageItem(
                    pallet="Dmp",
                    item="DownwardMessageQueues",
                    key=downward_queue(2000).key,
                    value="0x" + queue.hex(),
                )
            ]
        }
    )
    senders = _senders(block, codec)
    assert set(senders) == {_hash(SUBSCRIBE), _hash(transfer)}
    assert senders[_hash(transfer)]["signer"]["publicKey"] == call.signer
    assert senders[_hash(SUBSCRIBE)] is None

    # The same when the transfer is queued first: the order does not decide.
    queue = _vec(entry(transfer), entry(SUBSCRIBE))
    block = block.model_copy(
        update={"storage": [block.storage[0].model_copy(update={"value": "0x" + queue.hex()})]}
    )
    senders = _senders(block, codec)
    assert senders[_hash(transfer)]["signer"]["publicKey"] == call.signer
    assert senders[_hash(SUBSCRIBE)] is None


def test_a_queue_holding_only_version_discovery_gives_the_call_no_message(
    fixtures_dir: Path, decoder_for: DecoderFor
) -> None:
    # The transfer's bytes are missing (chopsticks forwarded it already): the SubscribeVersion
    # is not taken for it. The call becomes a byteless send (matched by its downward slot).
    decoder = decoder_for(POLKADOT, "polkadot-9430.scale")
    block = _relay_block(fixtures_dir, decoder)
    entry = block.number.to_bytes(4, "little") + encode_compact(len(SUBSCRIBE)) + SUBSCRIBE
    block = block.model_copy(
        update={
            "storage": [
                StorageItem(
                    pallet="Dmp",
                    item="DownwardMessageQueues",
                    key=downward_queue(2000).key,
                    value="0x" + _vec(entry).hex(),
                )
            ]
        }
    )
    found = extract(block, XcmCodec(decoder), sender_of=lambda b, i: i)
    by_hash = {leg.message_hash: leg for leg in found.sent}
    assert by_hash[_hash(SUBSCRIBE)].sender is None
    [byteless] = [leg for leg in found.sent if leg.message_data is None]
    assert byteless.sender is not None  # the call's signer (its extrinsic index here)
    assert any(problem.kind == "missing-bytes" for problem in found.problems)


def test_an_old_parachain_signer_goes_to_its_transfer_only(
    fixtures_dir: Path, decoder_for: DecoderFor
) -> None:
    decoder = decoder_for(ASSET_HUB, "assethub-9430.scale")
    raw = load_v1_cbor(fixtures_dir / "raw/v1/ump-out-1000.cbor.bin")[1]
    block = build_extended_block(ASSET_HUB, decoder, raw.header, raw.extrinsics, raw.events)
    [call] = [x for x in block.extrinsics if x.module == "PolkadotXcm"]
    manifest = json.loads((fixtures_dir / "cases/v1-ump-assethub-polkadot.json").read_text())
    [item] = manifest["storage"]
    transfer = bytes.fromhex(item["entries"][0][2:])
    upward = _vec(
        encode_compact(len(SUBSCRIBE)) + SUBSCRIBE,
        encode_compact(len(transfer)) + transfer,
    )
    silent = [e for e in block.events if (e.module, e.name) != UPWARD_SENT]
    assert len(silent) == len(block.events) - 1
    block = block.model_copy(
        update={
            "events": silent,
            "storage": [
                StorageItem(
                    pallet="ParachainSystem",
                    item="UpwardMessages",
                    key=UPWARD.key,
                    value="0x" + upward.hex(),
                )
            ],
        }
    )
    senders = _senders(block, XcmCodec(decoder))
    assert senders[_hash(transfer)]["signer"]["publicKey"] == call.signer
    assert senders[_hash(SUBSCRIBE)] is None


def test_sent_by_call_compares_beneficiary_and_amounts() -> None:
    account = "0x" + "ab" * 32
    args = {
        "beneficiary": {"V3": {"parents": 0, "interior": {"X1": {"AccountId32": {"id": account}}}}},
        "assets": {"V3": [{"id": {"Concrete": {}}, "fun": {"Fungible": 5}}]},
    }
    deposit = {"DepositAsset": {"beneficiary": {"X1": {"AccountId32": {"id": account}}}}}
    assert sent_by_call(
        args, {"V2": [{"ReceiveTeleportedAsset": [{"fun": {"Fungible": 5}}]}, deposit]}
    )
    assert (
        sent_by_call(
            args, {"V2": [{"ReceiveTeleportedAsset": [{"fun": {"Fungible": 6}}]}, deposit]}
        )
        is False
    )
    assert sent_by_call(args, {"V2": [{"SubscribeVersion": {"query_id": 0}}]}) is False
    assert sent_by_call({"dest": {}, "message": {}}, {"V2": [deposit]}) is None  # send/execute
    assert is_version_control({"V2": [{"SubscribeVersion": {"query_id": 0}}]})
    assert not is_version_control({"V2": [deposit]})
