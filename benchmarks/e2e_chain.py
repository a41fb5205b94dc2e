"""Synthetic chains for ``benchmarks/e2e.py``, cut from one real UMP journey.

The template is the fixtures' case ``v1-ump-assethub-polkadot``: a teleport from Polkadot Asset
Hub (para 1000, runtime 9430) to the Polkadot relay (runtime 9430). Asset Hub #4818937 holds the
``PolkadotXcm.limited_teleport_assets`` extrinsic, its 9 events (``UpwardMessageSent`` with the
message hash among them) and ``ParachainSystem.UpwardMessages``; Polkadot #17773282 holds the
execution at Initialization: 5 balance events for the beneficiary and ``MessageQueue.Processed``
whose id is the message hash.

Every synthetic block is one of those two blocks with its journey part repeated K times:

* Asset Hub block: the block's own ``set_validation_data`` and ``Timestamp.set``, then K copies
  of the transfer extrinsic, each with its 9 events (their ``ApplyExtrinsic`` phase renumbered)
  and one ``UpwardMessages`` entry;
* Polkadot block: K copies of the 6 execution events, then the block's own 39 events, its
  ``Timestamp.set`` and its 45 kB ``ParaInherent.enter``.

Each journey gets its own 32-byte account: the signer and beneficiary of the transfer, which is
also the last 32 bytes of the XCM program. Replacing it (same length) everywhere it appears
keeps the SCALE valid and makes every message unique; its blake2-256 hash then replaces the
real hash in ``UpwardMessageSent`` and ``Processed``. Signatures are not checked by anyone, so
the copied ones stay. Headers are rebuilt: the number counts up, the parent is the previous
block's hash, the hash is blake2-256 of the SCALE header (the follower checks it); state root,
extrinsics root and digest are the template's. ``Timestamp.set`` advances 12 s (Asset Hub) or
6 s (Polkadot) per block.

The receipt of the journeys of Asset Hub block ``i`` is in Polkadot block ``i + LAG``, as a real
upward message is executed a couple of relay blocks after it is sent. A segment (one rate step
of the benchmark) is ``n + LAG`` blocks of each chain: Asset Hub's last ``LAG`` and Polkadot's
first ``LAG`` carry no journey. Chains continue from one segment to the next, so one ingress
registry follows all segments in turn.

A segment is written as two ``ocstream record``-format files (``ocstream.ingress.replay``): the
answers to exactly the requests the follower makes (block hash, block, ``System.Events``,
runtime version, ``UpwardMessages`` where an ``UpwardMessageSent`` is; the runtime metadata at
the segment's first block). :func:`check_segment` decodes a segment through the follower's own
fetch path and extracts its legs with ``ocstream.xcm.extract``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ocstream.ingress.config import NetworkConfig
from ocstream.ingress.decode import DecoderCache, blake2_256, read_compact
from ocstream.ingress.follower import (
    KEYS_PAGE,
    METADATA_V15_ARG,
    SYSTEM_EVENTS_KEY,
    ChainFollower,
    encode_compact,
)
from ocstream.ingress.raw import RawBlock, load_v1_cbor
from ocstream.ingress.replay import FORMAT, ReplayNode
from ocstream.ingress.storage import DOWNWARD_QUEUES_PREFIX, UPWARD
from ocstream.xcm.codec import XcmCodec
from ocstream.xcm.extract import extract
from ocstream.xcm.legs import ReceivedLeg, SentLeg

ASSET_HUB = "urn:ocn:polkadot:1000"
RELAY = "urn:ocn:polkadot:0"
SPEC_VERSION = 9430
#: The real genesis hashes (the follower reads block 0's hash and the registry keeps it).
GENESIS = {
    RELAY: "0x91b171bb158e2d3848fa23a9f1c25182fb8e20313b2c1eb49219da7a70ce90c3",
    ASSET_HUB: "0x68d56f15f85d3136970ec16946040bc1752654e906147f7e43e9d539d7c3de2f",
}
SPEC_NAMES = {RELAY: "polkadot", ASSET_HUB: "statemint"}
#: Relay blocks between a send and its receipt.
LAG = 2

# What the case manifest says about the template journey.
ACCOUNT = bytes.fromhex("a0ce523c0e0ce46845d3fe6258d0e314e029bbcdd96e19646cc4ffd395ff0e5e")
MESSAGE = bytes.fromhex(
    "03100204000000000700fcf9d8080a13000000000700fcf9d808000d01020400010100" + ACCOUNT.hex()
)
MESSAGE_HASH = bytes.fromhex("fbc0ad07a5d82bfb829330eb25dbf93280e00fe602d5e0b93d57c0293926b041")
SEND_EXTRINSIC = 2  # in Asset Hub #4818937
SEND_EVENTS = range(3, 12)  # its events, UpwardMessageSent at 7
RECEIVE_EVENTS = range(0, 6)  # Polkadot #17773282, Initialization, Processed at 5


class SynthesisError(Exception):
    """The template is not what this module expects, or a check of the output failed."""


def _replace(data: bytes, old: bytes, new: bytes, count: int, what: str) -> bytes:
    found = data.count(old)
    if found != count:
        raise SynthesisError(f"{what}: expected {count} occurrence(s) of {old.hex()}, got {found}")
    return data.replace(old, new)


def _digest_items(header: bytes) -> list[bytes]:
    """The header's digest logs, each re-encoded as a SCALE ``DigestItem``."""
    _, pos = read_compact(header, 32)
    count, pos = read_compact(header, pos + 64)
    items = []
    for _ in range(count):
        start, tag = pos, header[pos]
        pos += 1
        if tag == 8:  # RuntimeEnvironmentUpdated: no payload
            items.append(header[start:pos])
            continue
        if tag != 0:
            pos += 4  # consensus engine id
        length, pos = read_compact(header, pos)
        pos += length
        items.append(header[start:pos])
    if pos != len(header):
        raise SynthesisError(f"header: {len(header) - pos} bytes after the digest")
    return items


def _timestamp_setter(extrinsic: bytes) -> tuple[bytes, int, int]:
    """(bytes before the moment, the moment in ms, its encoded length) of a ``Timestamp.set``."""
    # compact(len) ‖ 0x04 ‖ pallet ‖ call ‖ compact(moment): the moment ends the extrinsic.
    _, pos = read_compact(extrinsic, 0)
    moment, end = read_compact(extrinsic, pos + 3)
    if end != len(extrinsic):
        raise SynthesisError("Timestamp.set: unexpected layout")
    return extrinsic[: pos + 3], moment, end - pos - 3


@dataclass
class ChainState:
    """Where a synthetic chain is: the next block's number and parent, its clock."""

    network: str
    template: RawBlock
    timestamp_index: int
    block_time_ms: int
    number: int
    parent: bytes
    moment: int = 0
    digest: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.digest = _digest_items(self.template.header)
        prefix, moment, size = _timestamp_setter(self.template.extrinsics[self.timestamp_index])
        self._ts_prefix: bytes = prefix
        self._ts_size: int = size
        self.moment = moment

    def timestamp_extrinsic(self) -> bytes:
        encoded: bytes = encode_compact(self.moment)
        if len(encoded) != self._ts_size:
            raise SynthesisError(f"timestamp {self.moment} does not fit the template's length")
        return self._ts_prefix + encoded

    def header(self) -> bytes:
        t = self.template.header
        _, pos = read_compact(t, 32)
        roots = t[pos : pos + 64]
        return b"".join(
            [
                self.parent,
                encode_compact(self.number),
                roots,
                encode_compact(len(self.digest)),
                *self.digest,
            ]
        )


@dataclass(frozen=True, slots=True)
class Journey:
    index: int
    account: bytes
    message: bytes
    hash: str  # 0x hex
    sent_block: int  # Asset Hub block number
    received_block: int  # Polkadot block number


@dataclass
class Segment:
    """One rate step: recordings of both chains and the journeys in them."""

    per_block: int
    blocks: int  # blocks per chain, lead + LAG of them without journeys
    journeys: list[Journey]
    files: dict[str, Path]
    first: dict[str, int]
    last: dict[str, int]
    lead: int = 0  # quiet blocks per chain before the first journey


def _rpc_block(header: bytes, extrinsics: list[bytes], digest: list[bytes]) -> dict[str, Any]:
    number, pos = read_compact(header, 32)
    return {
        "block": {
            "header": {
                "parentHash": "0x" + header[:32].hex(),
                "number": hex(number),
                "stateRoot": "0x" + header[pos : pos + 32].hex(),
                "extrinsicsRoot": "0x" + header[pos + 32 : pos + 64].hex(),
                "digest": {"logs": ["0x" + item.hex() for item in digest]},
            },
            "extrinsics": ["0x" + x.hex() for x in extrinsics],
        },
        "justifications": None,
    }


def _entry(method: str, params: list[Any], result: Any) -> bytes:
    return orjson.dumps({"method": method, "params": params, "result": result})


def _events_value(records: list[bytes]) -> str:
    value: bytes = encode_compact(len(records)) + b"".join(records)
    return "0x" + value.hex()


class Synthesizer:
    """Makes consecutive segments of the two chains from the fixtures' template blocks."""

    def __init__(self, fixtures: Path) -> None:
        self.fixtures = fixtures
        sender = load_v1_cbor(fixtures / "raw/v1/ump-out-1000.cbor.bin")[1]
        receiver = load_v1_cbor(fixtures / "raw/v1/ump-in-success.cbor.bin")[2]
        if sender.number != 4818937 or receiver.number != 17773282:
            raise SynthesisError("unexpected template blocks")
        if "0x" + blake2_256(MESSAGE).hex() != "0x" + MESSAGE_HASH.hex():
            raise SynthesisError("the template message does not hash to its recorded hash")
        self.metadata = {
            ASSET_HUB: (fixtures / "metadata/assethub-9430.scale").read_bytes(),
            RELAY: (fixtures / "metadata/polkadot-9430.scale").read_bytes(),
        }
        assert isinstance(sender.events, list) and isinstance(receiver.events, list)
        self.send_extrinsic = sender.extrinsics[SEND_EXTRINSIC]
        self.send_events = [sender.events[i] for i in SEND_EVENTS]
        self.sender_background = [e for i, e in enumerate(sender.events) if i not in SEND_EVENTS]
        self.receive_events = [receiver.events[i] for i in RECEIVE_EVENTS]
        self.receiver_background = [
            e for i, e in enumerate(receiver.events) if i not in RECEIVE_EVENTS
        ]
        phase = b"\x00" + SEND_EXTRINSIC.to_bytes(4, "little")
        if any(not e.startswith(phase) for e in self.send_events):
            raise SynthesisError("the send events are not all in the send extrinsic's phase")
        assert sender.decoded_header is not None and receiver.decoded_header is not None
        self.chains = {
            ASSET_HUB: ChainState(
                ASSET_HUB,
                sender,
                timestamp_index=1,
                # Both chains advance one block per step, so their clocks must advance alike:
                # at 12 s here, Asset Hub's clock ran 30 s ahead of the relay's after five
                # steps, and the matcher rightly refused receipts older than their sends.
                block_time_ms=6_000,
                number=sender.number,
                parent=bytes.fromhex(sender.decoded_header.parent_hash[2:]),
            ),
            RELAY: ChainState(
                RELAY,
                receiver,
                timestamp_index=0,
                block_time_ms=6_000,
                number=receiver.number,
                parent=bytes.fromhex(receiver.decoded_header.parent_hash[2:]),
            ),
        }
        self.journeys = 0

    def _journey(self, sent_block: int, received_block: int) -> Journey:
        index = self.journeys
        self.journeys += 1
        account = hashlib.blake2b(f"ocstream-e2e:{index}".encode(), digest_size=32).digest()
        message = MESSAGE[: -len(ACCOUNT)] + account
        return Journey(
            index, account, message, "0x" + blake2_256(message).hex(), sent_block, received_block
        )

    def _sender_parts(self, journeys: list[Journey]) -> tuple[list[bytes], list[bytes], str]:
        extrinsics, events = [], list(self.sender_background)
        for k, j in enumerate(journeys):
            extrinsics.append(
                _replace(self.send_extrinsic, ACCOUNT, j.account, 2, "send extrinsic")
            )
            phase = b"\x00" + (SEND_EXTRINSIC + k).to_bytes(4, "little")
            for record in self.send_events:
                record = phase + record[5:]
                record = record.replace(ACCOUNT, j.account)
                record = record.replace(MESSAGE_HASH, bytes.fromhex(j.hash[2:]))
                events.append(record)
        upward = encode_compact(len(journeys)) + b"".join(
            encode_compact(len(j.message)) + j.message for j in journeys
        )
        return extrinsics, events, "0x" + upward.hex()

    def _receiver_events(self, journeys: list[Journey]) -> list[bytes]:
        events = []
        for j in journeys:
            for record in self.receive_events:
                record = record.replace(ACCOUNT, j.account)
                record = record.replace(MESSAGE_HASH, bytes.fromhex(j.hash[2:]))
                events.append(record)
        return events + list(self.receiver_background)

    def _block(
        self, network: str, extrinsics_tail: list[bytes], events: list[bytes]
    ) -> tuple[int, str, list[bytes]]:
        """Advance ``network`` by one block; (number, hash, recording lines)."""
        chain = self.chains[network]
        t = chain.template
        if network == ASSET_HUB:
            extrinsics = [t.extrinsics[0], chain.timestamp_extrinsic(), *extrinsics_tail]
        else:
            extrinsics = [chain.timestamp_extrinsic(), t.extrinsics[1]]
        header = chain.header()
        block_hash = "0x" + blake2_256(header).hex()
        number = chain.number
        lines = [
            _entry("chain_getBlockHash", [number], block_hash),
            _entry("chain_getBlock", [block_hash], _rpc_block(header, extrinsics, chain.digest)),
            _entry("state_getStorage", [SYSTEM_EVENTS_KEY, block_hash], _events_value(events)),
            _entry(
                "state_getRuntimeVersion",
                [block_hash],
                {"specName": SPEC_NAMES[network], "specVersion": SPEC_VERSION},
            ),
        ]
        if network == RELAY:
            # A relay block that executes upward messages also has its downward queues listed
            # (docs/ingress.md): none here.
            lines.append(
                _entry(
                    "state_getKeysPaged", [DOWNWARD_QUEUES_PREFIX, KEYS_PAGE, None, block_hash], []
                )
            )
        chain.parent = bytes.fromhex(block_hash[2:])
        chain.number += 1
        chain.moment += chain.block_time_ms
        return number, block_hash, lines

    def segment(
        self, directory: Path, name: str, blocks: int, per_block: int, lead: int = 0
    ) -> Segment:
        """``blocks`` blocks of journeys at ``per_block`` each, after ``lead`` quiet ones and
        followed by LAG quiet ones, per chain. The quiet lead lets a new ingress build its
        decoders (on its first block) before the first journey's block is published."""
        ah, relay = self.chains[ASSET_HUB], self.chains[RELAY]
        journeys = [
            [
                self._journey(ah.number + lead + i, relay.number + lead + i + LAG)
                for _ in range(per_block)
            ]
            for i in range(blocks)
        ]
        lines: dict[str, list[bytes]] = {ASSET_HUB: [], RELAY: []}
        first: dict[str, int] = {}
        last: dict[str, int] = {}
        for i in range(-lead, blocks + LAG):
            sent = journeys[i] if 0 <= i < blocks else []
            extrinsics, events, upward = self._sender_parts(sent)
            number, block_hash, out = self._block(ASSET_HUB, extrinsics, events)
            if sent:
                out.append(_entry("state_getStorage", [UPWARD.key, block_hash], upward))
            lines[ASSET_HUB] += out
            first.setdefault(ASSET_HUB, number)
            last[ASSET_HUB] = number
            received = journeys[i - LAG] if 0 <= i - LAG < blocks else []
            number, block_hash, out = self._block(RELAY, [], self._receiver_events(received))
            lines[RELAY] += out
            first.setdefault(RELAY, number)
            last[RELAY] = number
        files = {}
        for network, body in lines.items():
            path = directory / f"{name}-{network.rsplit(':', 1)[1]}.jsonl"
            files[network] = path
            self._write(path, network, first[network], last[network], body)
        return Segment(
            per_block=per_block,
            blocks=lead + blocks + LAG,
            journeys=[j for group in journeys for j in group],
            files=files,
            first=first,
            last=last,
            lead=lead,
        )

    def _write(self, path: Path, network: str, first: int, last: int, body: list[bytes]) -> None:
        header = {"format": FORMAT, "version": 1, "network": network, "from": first, "to": last}
        # The metadata, read at the first block the follower fetches (a fresh registry), and
        # the V15 call a 9430 runtime does not have (the follower then asks for V14).
        first_hash = orjson.loads(body[0])["result"]
        extra = [
            _entry("chain_getBlockHash", [0], GENESIS[network]),
            orjson.dumps(
                {
                    "method": "state_call",
                    "params": ["Metadata_metadata_at_version", METADATA_V15_ARG, first_hash],
                    "error": {"code": -32000, "message": "Exported method not found"},
                }
            ),
            _entry("state_getMetadata", [first_hash], "0x" + self.metadata[network].hex()),
        ]
        with path.open("wb") as fh:
            fh.write(orjson.dumps(header) + b"\n")
            for line in extra + body:
                fh.write(line + b"\n")


def network_config(network: str, path: Path, rate: float) -> NetworkConfig:
    return NetworkConfig.model_validate(
        {
            "id": network,
            "relay": None if network == RELAY else RELAY,
            "provider": {"type": "replay", "file": str(path), "rate": rate},
        }
    )


async def check_segment(segment: Segment, blocks: int = 4) -> str:
    """Decode the first ``blocks`` blocks after the quiet lead (and the lead) of each chain of
    ``segment`` the way the ingress does
    (``ChainFollower.fetch`` on the recording) and extract their legs; SynthesisError unless
    every journey of those blocks is one sent leg on Asset Hub and one received leg on the
    relay, with its own hash, sender and outcome, and nothing else comes out."""
    decoders = DecoderCache()
    by_block: dict[tuple[str, int], list[Journey]] = {}
    for j in segment.journeys:
        by_block.setdefault((ASSET_HUB, j.sent_block), []).append(j)
        by_block.setdefault((RELAY, j.received_block), []).append(j)
    checked = {"sent": 0, "received": 0}
    got: list[tuple[Any, ...]]
    want: list[tuple[Any, ...]]
    for network, path in segment.files.items():
        follower = ChainFollower(
            network_config(network, path, 1.0), writer=None, registry=None, decoders=decoders
        )
        node = ReplayNode(path, 1.0)
        first = segment.first[network]  # from the first: the metadata is read there
        for number in range(first, min(first + segment.lead + blocks, segment.last[network] + 1)):
            block = await follower.fetch(node, number)
            decoder = decoders.get(network, SPEC_VERSION)
            assert decoder is not None
            found = extract(block, XcmCodec(decoder), ss58_prefix=decoder.ss58_prefix)
            if found.problems:
                raise SynthesisError(f"{network} #{number}: {found.problems}")
            expected = by_block.get((network, number), [])
            if network == ASSET_HUB:
                got = [
                    (leg.kind, leg.message_hash, leg.recipient)
                    if isinstance(leg, SentLeg)
                    else (leg.kind,)
                    for leg in found.legs
                ]
                want = [("sent", j.hash, RELAY) for j in expected]
                signers = [x.signer for x in block.extrinsics[2:]]
                if signers != ["0x" + j.account.hex() for j in expected]:
                    raise SynthesisError(f"{network} #{number}: signers {signers}")
                checked["sent"] += len(got)
            else:
                got = [
                    (leg.kind, leg.message_hash, leg.from_chain, leg.outcome)
                    if isinstance(leg, ReceivedLeg)
                    else (leg.kind,)
                    for leg in found.legs
                ]
                want = [("received", j.hash, ASSET_HUB, "Success") for j in expected]
                checked["received"] += len(got)
            if got != want:
                raise SynthesisError(f"{network} #{number}: extracted {got}, expected {want}")
    return (
        f"{blocks} blocks of each chain (after {segment.lead} quiet ones) decoded by the "
        "follower and extracted: "
        f"{checked['sent']} sent and {checked['received']} received legs, each journey's own "
        f"hash, sender and outcome, no problem"
    )
