"""SS58 encoding and decoding, and the normalisation of subscription senders to public keys.

Vectors: the account of the Asset Hub → Interlay case (XCM.md §5.2), and the published test vectors
of polkadot-js/common (``packages/util-crypto/src/address/encode.spec.ts``: subkey-generated
addresses with one- and two-byte prefixes, an ECDSA key and account indices).
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocstream.xcm.ss58 import (
    MAX_PREFIX,
    public_key_of,
    render_account,
    ss58_decode,
    ss58_encode,
)

KEY = "0x8e7f870a8cac3fa165c8531a304fcc59c7e29aec176fb03f630ceeea397b1368"
KEY_POLKADOT = "14DqgdKU6Zfh1UjdU4PYwpoHi2QTp37R6djehfbhXe9zoyQT"
KEY_GENERIC = "5FHYYJ4QEnQDZwj7WRLYofy8rQQp7jZH291AYNcLyZ8UdQ7f"

ALICE = "0xd43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d"

# (address, public key, prefix) from polkadot-js/common encode.spec.ts.
PUBLISHED = [
    (
        "5DA4D4GL5iakrn22h5uKoevgvo18Pqj5BcdEUv8etEDPdijA",
        "0x3050f8456519829fe03302da802d22d3233a5f4037b9a3e2bcc403ccfcb2d735",
        42,
    ),
    (
        "cLtA6nCDyvwKcEHH4QkZDSHMhS9s78BvUJUsKUbUAn1Jc2SCF",
        "0x08e8969768fc14399930d4b8d693f68a2ff6c6a597325d6946095e5e9d9d1b0e",
        65,
    ),
    (
        "cTGShekJ1L1UKFZR9xmv9UTJod7vqjFAPo4sDhXih2c3y1yLS",
        "0x04a047d52fe542484c69bc528990cfeaf3a663dded0638ee1b51cf78bacd1072",
        66,
    ),
    (
        "cnVRwXfAnz3RSVQyBUC8f8McrK3YBX2QYd4WoctpeSC6VTJYm",
        "0xae640d53cfa815f4a6a50ae70235cd7d9d134d0f1c3a4ccd118e321dfb6ab51f",
        69,
    ),
    (
        "4pbsSkWcBaYoFHrKJZp5fDVUKbqSYD9dhZZGvpp3vQ5ysVs5ybV",
        "0x035676109c54b9a16d271abeb4954316a40a32bcce023ac14c8e26e958aa68fba9",
        200,
    ),
    (
        "xw5g1Eec8LT99pZLZMaTWwrwvNtfM6vrSuZeVbtEszCDUwByg",
        "0x5c64f1151f0ce4358c27238fb20c88e7c899825436f565410724c8c2c5add869",
        252,
    ),
    (
        "yGF4JP7q5AK46d1FPCEm9sYQ4KooSjHMpyVAjLnsCSWVafPnf",
        "0x66cd6cf085627d6c85af1aaf2bd10cf843033e929b4e3b1c2ba8e4aa46fe111b",
        255,
    ),
    (
        "yGDYxQatQwuxqT39Zs4LtcTnpzE12vXb7ZJ6xpdiHv6gTu1hF",
        "0x242fd5a078ac6b7c3c2531e9bcf1314343782aeb58e7bc6880794589e701db55",
        255,
    ),
    (
        "mHm8k9Emsvyfp3piCauSH684iA6NakctF8dySQcX94GDdrJrE",
        "0x44d5a3ac156335ea99d33a83c57c7146c40c8e2260a8a4adf4e7a86256454651",
        4242,
    ),
    (
        "r6Gr4gaMP8TsjhFbqvZhv3YvnasugLiRJpzpRHifsqqG18UXa",
        "0x88f01441682a17b52d6ae12d1a5670cf675fd254897efabaa5069eb3a701ab73",
        14269,
    ),
    ("15oF4uVJwmo4TdGW7VfQxNLavjCXviqxT9S1MgbjMNHr6Sp5", ALICE, 0),
    ("HNZata7iMYWmk5RvZRTiAsSDhV8366zq2YGb3tLH5Upf74F", ALICE, 2),
    ("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY", ALICE, 42),
    # Account indices: 1, 2, 4 and 8 bytes, with a one-byte checksum.
    ("F7NZ", "0x01", 42),
    ("g4b", "0x01", 2),
    ("3xygo", "0x0001", 2),
    ("zswfoZa", "0x01020304", 2),
    ("848Gh2GcGaZia", "0x2a2c0a0000000000", 2),
]

ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def test_the_design_vectors() -> None:
    assert ss58_encode(KEY, 0) == KEY_POLKADOT
    assert ss58_encode(KEY, 42) == KEY_GENERIC
    assert ss58_encode(bytes.fromhex(KEY[2:]), 0) == KEY_POLKADOT
    assert ss58_decode(KEY_POLKADOT) == (0, bytes.fromhex(KEY[2:]))
    assert ss58_decode(KEY_GENERIC) == (42, bytes.fromhex(KEY[2:]))


@pytest.mark.parametrize(("address", "key", "prefix"), PUBLISHED)
def test_published_vectors(address: str, key: str, prefix: int) -> None:
    assert ss58_encode(key, prefix) == address
    assert ss58_decode(address) == (prefix, bytes.fromhex(key[2:]))


def test_interlay_renders_with_its_two_byte_prefix() -> None:
    # Interlay (2032) addresses start with "wd"; the round trip keeps the prefix and the key.
    address = ss58_encode(KEY, 2032)
    assert address.startswith("wd")
    assert ss58_decode(address) == (2032, bytes.fromhex(KEY[2:]))
    assert public_key_of(address) == KEY


@given(
    key=st.one_of(st.binary(min_size=32, max_size=32), st.binary(min_size=33, max_size=33)),
    prefix=st.integers(min_value=0, max_value=MAX_PREFIX),
)
def test_any_key_and_prefix_round_trip(key: bytes, prefix: int) -> None:
    address = ss58_encode(key, prefix)
    assert ss58_decode(address) == (prefix, key)
    if len(key) == 32:
        assert public_key_of(address) == "0x" + key.hex()


@given(
    key=st.binary(min_size=32, max_size=32),
    prefix=st.integers(min_value=0, max_value=MAX_PREFIX),
    flip=st.integers(min_value=1, max_value=0xFFFF),
)
def test_a_corrupted_checksum_is_detected(key: bytes, prefix: int, flip: int) -> None:
    # Rebuild the address with its two checksum bytes changed (everything else intact).
    data = _b58decode_for_test(ss58_encode(key, prefix))
    checksum = int.from_bytes(data[-2:], "big") ^ flip
    corrupted = _b58encode_for_test(data[:-2] + checksum.to_bytes(2, "big"))
    with pytest.raises(ValueError, match="bad checksum"):
        ss58_decode(corrupted)
    with pytest.raises(ValueError, match="bad checksum"):
        public_key_of(corrupted)


def test_a_changed_character_is_detected() -> None:
    # Every single-character substitution of the Polkadot vector is refused (checked once, here:
    # a 2-byte checksum could in principle let one through, and this shows none of these does).
    for position, char in enumerate(KEY_POLKADOT):
        replacement = ALPHABET[(ALPHABET.index(char) + 1) % len(ALPHABET)]
        changed = KEY_POLKADOT[:position] + replacement + KEY_POLKADOT[position + 1 :]
        with pytest.raises(ValueError):
            ss58_decode(changed)


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("", "empty"),
        (KEY_POLKADOT[:-1] + "0", "not a base58 character"),  # 0, O, I and l are not base58
        ("O" + KEY_POLKADOT[1:], "not a base58 character"),
        (KEY_POLKADOT[:10] + "l" + KEY_POLKADOT[11:], "not a base58 character"),
        ("1" * 65, "too long"),
        (KEY_POLKADOT[:-3], "fit no payload length"),
    ],
)
def test_malformed_addresses_are_refused(address: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ss58_decode(address)


def test_a_payload_of_no_known_length_is_refused() -> None:
    # A 20-byte payload with a valid checksum: SS58 has no such form (H160 accounts are hex).
    body = bytes([0]) + bytes(range(20))
    digest = hashlib.blake2b(b"SS58PRE" + body, digest_size=64).digest()
    with pytest.raises(ValueError, match="fit no payload length"):
        ss58_decode(_b58encode_for_test(body + digest[:2]))


def test_reserved_first_byte_is_refused() -> None:
    body = bytes([0x80]) + bytes(32)
    digest = hashlib.blake2b(b"SS58PRE" + body, digest_size=64).digest()
    with pytest.raises(ValueError, match="reserved prefix"):
        ss58_decode(_b58encode_for_test(body + digest[:2]))


def test_encoding_refuses_bad_inputs() -> None:
    for prefix in (-1, MAX_PREFIX + 1):
        with pytest.raises(ValueError, match="out of range"):
            ss58_encode(KEY, prefix)
    with pytest.raises(ValueError, match="integer"):
        ss58_encode(KEY, True)
    with pytest.raises(ValueError, match="cannot SS58-encode 20 bytes"):
        ss58_encode("0x" + "11" * 20, 0)
    with pytest.raises(ValueError, match="hex"):
        ss58_encode("8e7f", 0)
    with pytest.raises(ValueError, match="hex"):
        ss58_encode("0x8e7", 0)


def test_public_key_of_normalises_every_accepted_form() -> None:
    assert public_key_of(KEY) == KEY
    assert public_key_of(KEY.upper().replace("0X", "0x")) == KEY
    assert public_key_of("0X" + KEY[2:]) == KEY
    h160 = "0x7369626cD00700000000000000000000000000AB"
    assert public_key_of(h160) == h160.lower()
    assert public_key_of(KEY_POLKADOT) == KEY
    assert public_key_of(KEY_GENERIC) == KEY
    assert public_key_of("HNZata7iMYWmk5RvZRTiAsSDhV8366zq2YGb3tLH5Upf74F") == ALICE


@pytest.mark.parametrize(
    ("sender", "message"),
    [
        ("0x" + "ab" * 31, "64 hex digits"),
        ("0x" + "ab" * 33, "64 hex digits"),
        ("0x" + "zz" * 32, "64 hex digits"),
        ("0x", "64 hex digits"),
        ("4pbsSkWcBaYoFHrKJZp5fDVUKbqSYD9dhZZGvpp3vQ5ysVs5ybV", "33 bytes"),  # an ECDSA key
        ("848Gh2GcGaZia", "8 bytes"),  # an account index
        ("not an address", "base58"),
        (KEY_POLKADOT[:-1] + "U", "checksum"),
    ],
)
def test_public_key_of_refuses(sender: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        public_key_of(sender)


def test_render_account() -> None:
    assert render_account(KEY, 0) == KEY_POLKADOT
    assert render_account(KEY, 42) == KEY_GENERIC
    assert render_account(KEY, None) == KEY
    assert render_account(KEY.upper().replace("0X", "0x"), None) == KEY
    h160 = "0x7369626cd00700000000000000000000000000ab"
    assert render_account(h160, 0) == h160  # no SS58 form for 20-byte accounts
    assert render_account(h160, None) == h160
    with pytest.raises(ValueError):
        render_account("14DqgdKU", 0)


# --- an independent base58 for building test inputs ---------------------------------------------


def _b58encode_for_test(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    out = ""
    while number:
        number, digit = divmod(number, 58)
        out = ALPHABET[digit] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def _b58decode_for_test(text: str) -> bytes:
    number = 0
    for char in text:
        number = number * 58 + ALPHABET.index(char)
    body = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body
