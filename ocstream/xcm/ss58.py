"""SS58 addresses: encode and decode them, and turn a subscription's sender into a public key.

An SS58 address is ``base58(prefix ‖ payload ‖ checksum)``:

* ``prefix`` is the network's address format (0 Polkadot, 2 Kusama, 42 generic Substrate, ...).
  Below 64 it is one byte. From 64 to 16383 it takes two bytes: the first has bit 6 set and holds
  bits 2..7 of the prefix, the second holds bits 0..1 (in its top two bits) and bits 8..13.
* ``payload`` is the public key (32 bytes for an AccountId32, 33 for a compressed ECDSA key) or a
  short account index (1, 2, 4 or 8 bytes).
* ``checksum`` is the start of ``blake2b_512(b"SS58PRE" ‖ prefix ‖ payload)``: two bytes after a
  public key, one byte after an account index.

Accounts are matched by public key, never by address, since one key renders differently on every
chain (XCM.md §5.2 and §11.2)::

    >>> public_key_of("14DqgdKU6Zfh1UjdU4PYwpoHi2QTp37R6djehfbhXe9zoyQT")
    '0x8e7f870a8cac3fa165c8531a304fcc59c7e29aec176fb03f630ceeea397b1368'
    >>> render_account("0x8e7f870a8cac3fa165c8531a304fcc59c7e29aec176fb03f630ceeea397b1368", 42)
    '5FHYYJ4QEnQDZwj7WRLYofy8rQQp7jZH291AYNcLyZ8UdQ7f'

Errors: every malformed input raises :class:`ValueError` with a message saying what is wrong.
"""

from __future__ import annotations

import functools
import hashlib
import re

__all__ = [
    "MAX_PREFIX",
    "public_key_of",
    "render_account",
    "ss58_decode",
    "ss58_encode",
]

#: The largest address format two prefix bytes can carry (14 bits).
MAX_PREFIX = 16383

_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_DIGIT = {char: value for value, char in enumerate(_ALPHABET)}
_CHECKSUM_PREAMBLE = b"SS58PRE"

# Payload length → checksum length (public keys get two bytes, account indices one).
_CHECKSUM_LENGTH = {1: 1, 2: 1, 4: 1, 8: 1, 32: 2, 33: 2}
# The longest valid address: 2 prefix bytes + 33 key bytes + 2 checksum bytes is 37 bytes, which
# base58 writes in at most 51 characters. Anything far longer is refused before any big-int work.
_MAX_ADDRESS_CHARS = 64

_HEX_ACCOUNT = re.compile(r"0x(?:[0-9a-fA-F]{40}|[0-9a-fA-F]{64})")
_HEX = re.compile(r"0x(?:[0-9a-fA-F]{2})*")


# --- base58 (Bitcoin alphabet) --------------------------------------------------------------------


def _b58encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    digits: list[str] = []
    while number:
        number, remainder = divmod(number, 58)
        digits.append(_ALPHABET[remainder])
    # Each leading zero byte is written as the zero digit "1"; the number itself lost them.
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(digits))


def _b58decode(text: str) -> bytes:
    number = 0
    for position, char in enumerate(text):
        digit = _DIGIT.get(char)
        if digit is None:
            raise ValueError(
                f"invalid SS58 address {text!r}: {char!r} at position {position} is not a "
                "base58 character"
            )
        number = number * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\0" * zeros + body


# --- SS58 ---------------------------------------------------------------------------------------


def _checksum(prefixed_payload: bytes, length: int) -> bytes:
    return hashlib.blake2b(_CHECKSUM_PREAMBLE + prefixed_payload, digest_size=64).digest()[:length]


def _prefix_bytes(prefix: int) -> bytes:
    if isinstance(prefix, bool) or not isinstance(prefix, int):
        raise ValueError(f"an SS58 prefix is an integer, not {prefix!r}")
    if not 0 <= prefix <= MAX_PREFIX:
        raise ValueError(f"SS58 prefix {prefix} is out of range (0 to {MAX_PREFIX})")
    if prefix < 64:
        return bytes([prefix])
    first = 0b0100_0000 | ((prefix & 0b1111_1100) >> 2)
    second = (prefix >> 8) | ((prefix & 0b11) << 6)
    return bytes([first, second])


def _key_bytes(public_key: bytes | str) -> bytes:
    if isinstance(public_key, str):
        if not _HEX.fullmatch(public_key):
            raise ValueError(f"not a 0x-prefixed hex key: {public_key!r}")
        return bytes.fromhex(public_key[2:])
    return bytes(public_key)


def ss58_encode(public_key: bytes | str, prefix: int) -> str:
    """The SS58 address of ``public_key`` (bytes or ``0x`` hex) under address format ``prefix``.

    The payload may be a public key (32 or 33 bytes) or an account index (1, 2, 4 or 8 bytes).
    """
    key = _key_bytes(public_key)
    checksum_length = _CHECKSUM_LENGTH.get(len(key))
    if checksum_length is None:
        raise ValueError(
            f"cannot SS58-encode {len(key)} bytes: a payload is 32 or 33 bytes (a public key) "
            "or 1, 2, 4 or 8 bytes (an account index)"
        )
    body = _prefix_bytes(prefix) + key
    return _b58encode(body + _checksum(body, checksum_length))


def ss58_decode(address: str) -> tuple[int, bytes]:
    """Split an SS58 address into its (prefix, payload), after checking the checksum."""
    if not isinstance(address, str):
        raise ValueError(f"an SS58 address is a string, not {type(address).__name__}")
    if not address:
        raise ValueError("invalid SS58 address: empty")
    if len(address) > _MAX_ADDRESS_CHARS:
        raise ValueError(f"invalid SS58 address: {len(address)} characters is too long")
    data = _b58decode(address)
    if not data:
        raise ValueError(f"invalid SS58 address {address!r}: no data")
    first = data[0]
    if first < 64:
        prefix, prefix_length = first, 1
    elif first < 128:
        if len(data) < 2:
            raise ValueError(f"invalid SS58 address {address!r}: truncated prefix")
        second = data[1]
        lower = ((first << 2) | (second >> 6)) & 0xFF
        prefix, prefix_length = lower | ((second & 0b0011_1111) << 8), 2
    else:
        raise ValueError(
            f"invalid SS58 address {address!r}: first byte {first} is a reserved prefix form"
        )
    rest = len(data) - prefix_length
    for key_length, checksum_length in _CHECKSUM_LENGTH.items():
        if key_length + checksum_length == rest:
            break
    else:
        raise ValueError(
            f"invalid SS58 address {address!r}: {rest} bytes after the prefix fit no payload "
            "length (1, 2, 4, 8, 32 or 33 bytes plus checksum)"
        )
    body, checksum = data[:-checksum_length], data[-checksum_length:]
    if _checksum(body, checksum_length) != checksum:
        raise ValueError(f"invalid SS58 address {address!r}: bad checksum")
    return prefix, body[prefix_length:]


def public_key_of(address: str) -> str:
    """The account a subscription sender names, as a lowercase ``0x`` hex public key.

    ``0x`` + 64 hex digits is an AccountId32 and ``0x`` + 40 an AccountId20 (Moonbeam-style),
    taken as they are; anything else must be an SS58 address (any prefix) of a 32-byte account.
    """
    if not isinstance(address, str):
        raise ValueError(f"a sender address is a string, not {type(address).__name__}")
    if address[:2] in ("0x", "0X"):
        if not _HEX_ACCOUNT.fullmatch("0x" + address[2:]):
            raise ValueError(
                f"invalid hex account {address!r}: expected 0x and 64 hex digits (AccountId32) "
                "or 40 (AccountId20)"
            )
        return "0x" + address[2:].lower()
    _, key = ss58_decode(address)
    if len(key) != 32:
        raise ValueError(f"SS58 address {address!r} holds {len(key)} bytes, not a 32-byte account")
    return "0x" + key.hex()


@functools.lru_cache(maxsize=4096)
def render_account(public_key_hex: str, ss58_prefix: int | None) -> str:
    """An account as its chain shows it: SS58 for a 32-byte key when the chain's prefix is known,
    else the lowercase ``0x`` hex (always for 20-byte keys, which have no SS58 form).

    Remembered for the last 4,096 accounts: the same signers (exchanges, bridges, bots) send
    again and again, and base58 costs 16 µs per address; a miss costs under a microsecond."""
    key = _key_bytes(public_key_hex)
    if len(key) == 32 and ss58_prefix is not None:
        return ss58_encode(key, ss58_prefix)
    return "0x" + key.hex()
