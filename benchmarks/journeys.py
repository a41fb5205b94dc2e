"""Synthetic XCM legs shaped like real ones, for the benchmarks (``xcm.py``, ``capacity.py``).

A journey is a sent leg from one of ten ``urn:ocn:polkadot`` parachains to another (a
reserve-transfer program, its bytes, the sender, the events; half of them with a topic), the
relayed leg at the relay and the received leg at the destination, as ``(key, value)`` records
of ``xcm-legs`` keyed as extraction keys them (``ocstream/xcm/keys.py``).
"""

from __future__ import annotations

import random
from typing import Any

from ocstream.xcm.keys import leg_key
from ocstream.xcm.legs import ReceivedLeg, RelayedLeg, SentLeg, leg_record, legs_of

RELAY = "urn:ocn:polkadot:0"
PARAS = [
    f"urn:ocn:polkadot:{n}" for n in (1000, 2000, 2004, 2006, 2030, 2032, 2034, 2035, 2051, 2104)
]


def _hex(rng: random.Random, size: int = 32) -> str:
    return "0x" + rng.randbytes(size).hex()


def _event(section: str, method: str, data: dict[str, Any], number: int, bh: str, pos: int) -> Any:
    return {
        "section": section,
        "method": method,
        "data": data,
        "eventId": f"{number}-{pos}",
        "blockPosition": pos,
        "extrinsicId": f"{number}-1",
        "blockNumber": str(number),
        "blockHash": bh,
    }


def _program(rng: random.Random, origin_para: int, beneficiary: str, topic: str | None) -> Any:
    asset = {
        "id": {
            "Concrete": {
                "parents": 1,
                "interior": {
                    "X3": [
                        {"Parachain": origin_para},
                        {"PalletInstance": 50},
                        {"GeneralIndex": 1984},
                    ]
                },
            }
        },
        "fun": {"Fungible": rng.randrange(10**6, 10**12)},
    }
    program: list[Any] = [
        {"ReserveAssetDeposited": [asset]},
        "ClearOrigin",
        {"BuyExecution": {"fees": asset, "weight_limit": "Unlimited"}},
        {
            "DepositAsset": {
                "assets": {"Wild": {"AllCounted": 1}},
                "beneficiary": {
                    "parents": 0,
                    "interior": {"X1": {"AccountId32": {"network": None, "id": beneficiary}}},
                },
            }
        },
    ]
    if topic is not None:
        program.append({"SetTopic": topic})
    return {"V3": program}


def journey_legs(
    j: int,
    rng: random.Random,
    *,
    origins: int = len(PARAS),
    partitions: int = 8,
    sends_by: str = "id",
) -> list[tuple[str, bytes]]:
    """The three leg records of journey ``j`` as ``(key, value)``, keyed as extraction keys
    them (``ocstream/xcm/keys.py``): sent -> a shard of the origin by the message's id (with
    ``sends_by="chain"``: the origin, as before new journeys were spread), relayed -> recipient,
    received -> the receiving chain. Origins are the first ``origins`` parachains."""
    origin = rng.choice(PARAS[:origins])
    recipient = rng.choice([p for p in PARAS if p != origin])
    message_hash = _hex(rng)
    topic = _hex(rng) if rng.random() < 0.5 else None
    ids = [message_hash, *([topic] if topic else [])]
    account = _hex(rng)
    data = _hex(rng, 90 if topic else 58)
    instructions = _program(rng, int(origin.rsplit(":", 1)[1]), account, topic)
    number = 5_000_000 + j
    now_ms = 1_700_000_000_000 + j * 6000

    def context(chain: str, bh: str, event: Any, **extra: Any) -> dict[str, Any]:
        return {
            "chainId": chain,
            "blockNumber": str(number),
            "blockHash": bh,
            "timestamp": now_ms,
            "extrinsicId": f"{number}-1",
            "event": event,
            "outcome": "Success",
            "error": None,
            "messageHash": message_hash,
            "messageData": None,
            "instructions": None,
            **extra,
        }

    bh = _hex(rng)
    sent_event = _event(
        "XcmpQueue", "XcmpMessageSent", {"message_hash": message_hash}, number, bh, 5
    )
    sent = SentLeg(
        identity=f"{origin}|{bh}|hrmp|0|0",
        origin=origin,
        recipient=recipient,
        transport="hrmp",
        block_number=number,
        block_hash=bh,
        message_hash=message_hash,
        message_data=data,
        topic=topic,
        ids=ids,
        version=3,
        instructions=instructions,
        stops=[recipient],
        legs=legs_of(origin, [recipient]),
        sender={"signer": {"id": account[:50], "publicKey": account}, "extraSigners": []},
        context=context(origin, bh, sent_event, messageData=data, instructions=instructions),
        timestamp=now_ms,
    )
    rbh = _hex(rng)
    relayed = RelayedLeg(
        identity=f"{RELAY}|{rbh}|0|0|0",
        relay=RELAY,
        origin=origin,
        recipient=recipient,
        block_number=number,
        block_hash=rbh,
        message_hash=message_hash,
        message_id=topic or message_hash,
        ids=ids,
        outcome="Success",
        context=context(RELAY, rbh, None, messageData=data),
    )
    dbh = _hex(rng)
    # With a topic the destination reports it as the id; its own hash of the message differs.
    seen_hash = _hex(rng) if topic else message_hash
    received_event = _event(
        "MessageQueue",
        "Processed",
        {"id": topic or message_hash, "origin": origin, "success": True},
        number,
        dbh,
        9,
    )
    received = ReceivedLeg(
        identity=f"{recipient}|{dbh}|9",
        chain=recipient,
        from_chain=origin,
        block_number=number,
        block_hash=dbh,
        message_hash=seen_hash,
        message_id=topic or message_hash,
        outcome="Success",
        context=context(recipient, dbh, received_event, messageHash=seen_hash),
    )

    def record(leg: SentLeg | RelayedLeg | ReceivedLeg) -> tuple[str, bytes]:
        key = origin if sends_by == "chain" and leg is sent else leg_key(leg, partitions)
        return key, leg_record(leg)

    return [record(sent), record(relayed), record(received)]


def build_journeys(
    first: int, count: int, seed: int, **keying: Any
) -> list[list[tuple[str, bytes]]]:
    rng = random.Random(seed)
    return [journey_legs(j, rng, **keying) for j in range(first, first + count)]


def shuffled(journeys: list[list[tuple[str, bytes]]], seed: int) -> list[tuple[str, bytes]]:
    records = [record for legs in journeys for record in legs]
    random.Random(seed).shuffle(records)
    return records
