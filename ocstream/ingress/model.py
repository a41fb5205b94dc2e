"""The ExtendedBlock contract: one decoded block as the ingress publishes it on the `blocks` topic.

An :class:`ExtendedBlock` carries everything the XCM agent needs from one block of one network:
the header facts, the decoded extrinsics (call, signer, outcome), the decoded events (with phase and
extrinsic index) and the storage items read at that block (see ``docs/extended-block.md``).

JSON conventions, enforced by :func:`to_json_value` on every decoded value:

* bytes are ``0x``-prefixed lowercase hex strings;
* integers outside JavaScript's safe range (``|n| > 2**53 - 1``) are decimal strings, so that every
  JSON reader (JavaScript included) reads the same number;
* tuples become arrays; maps whose keys are not all strings become arrays of ``[key, value]`` pairs;
* a call nested in an argument (``Utility.batch``, ``Sudo.sudo``, ...) becomes
  ``{"module", "call", "args"}``, the same shape as a top-level extrinsic.

Usage::

    data = block.to_json_bytes()          # orjson bytes, what goes on the topic
    same = ExtendedBlock.from_json_bytes(data)
    assert same == block

The model is versioned: ``version`` is a ``Literal`` so a reader refuses a block written under a
contract it does not know, instead of misreading it. Fields may be added without a version bump
(readers ignore fields they do not know); anything an old reader cannot ignore bumps the version.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, TypeVar, cast

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationInfo,
)

__all__ = [
    "MAX_SAFE_INTEGER",
    "NORMALISED_HEADER",
    "VOUCHED_HEADERS",
    "Event",
    "ExtendedBlock",
    "Extrinsic",
    "Phase",
    "StorageItem",
    "construct_trusted",
    "trusted_constructor",
    "to_json_value",
]

#: The largest integer every JSON reader represents exactly (JavaScript's Number.MAX_SAFE_INTEGER).
MAX_SAFE_INTEGER = 2**53 - 1

Phase = Literal["ApplyExtrinsic", "Finalization", "Initialization"]

# The keys of a call as cyscale's compiled call decoder returns it; a nested call (an argument of
# Utility.batch, Sudo.sudo, Proxy.proxy, ...) is recognised by them and reshaped like an extrinsic.
_CALL_KEYS = frozenset({"call_index", "call_function", "call_module", "call_args", "call_hash"})


def to_json_value(value: Any) -> JsonValue:
    """Normalise a decoded SCALE value (as cyscale returns it) into a JSON value of the contract.

    >>> to_json_value({"amount": 2**64, "data": b"\\x01\\x02", "pair": (1, "a")})
    {'amount': '18446744073709551616', 'data': '0x0102', 'pair': [1, 'a']}

    Idempotent: normalising an already normalised value returns an equal value.
    """
    # Dispatch on the exact type first: this runs on every node of every decoded event, and the
    # common leaves (str, small int, None, bool) must cost one comparison each.
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return value  # type: ignore[no-any-return]
    if kind is int:
        return value if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else str(value)
    if kind is dict:
        return _mapping_to_json(value)
    if kind is list or kind is tuple:
        return [to_json_value(item) for item in value]
    if kind is bytes or kind is bytearray or kind is memoryview:
        return "0x" + bytes(value).hex()
    if kind is float:
        # JSON has no NaN/Infinity; a string keeps the information instead of a silent null.
        return value if math.isfinite(value) else str(value)
    # Subclasses (IntEnum, OrderedDict, ...) are rare; handle them by their base behaviour.
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return to_json_value(int(value))
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Mapping):
        return _mapping_to_json(dict(value))
    if isinstance(value, (list, tuple)):
        return [to_json_value(item) for item in value]
    raise TypeError(f"not a JSON-compatible decoded value: {kind.__name__}")


def _mapping_to_json(value: dict[Any, Any]) -> JsonValue:
    if len(value) == len(_CALL_KEYS) and value.keys() == _CALL_KEYS:
        return {
            "module": value["call_module"],
            "call": value["call_function"],
            "args": {arg["name"]: to_json_value(arg["value"]) for arg in value["call_args"]},
        }
    if all(type(key) is str for key in value):
        return {key: to_json_value(item) for key, item in value.items()}
    # BTreeMap<u32, _>, BTreeMap<(A, B), _>, ...: JSON object keys must be strings, and turning a
    # tuple key into one would lose its structure, so such maps become [key, value] pairs.
    return [[to_json_value(key), to_json_value(item)] for key, item in value.items()]


_Model = TypeVar("_Model", bound=BaseModel)

# pydantic v2 keeps a model's state in these slots; filling them directly is what model_construct
# does, minus its per-field default handling, which costs three times the rest of decoding an event.
_PYDANTIC_SLOTS = ("__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")
_FAST_CONSTRUCT = all(slot in BaseModel.__slots__ for slot in _PYDANTIC_SLOTS)
_set_attribute = object.__setattr__


def trusted_constructor(model: type[_Model]) -> Callable[[dict[str, Any]], _Model]:
    """A function building ``model`` instances from values that are already valid, unvalidated.

    For the decoder's hot path only: the values dict must hold every field (it becomes the
    instance's ``__dict__``), each value already following the contract (our decoder and
    :func:`to_json_value` produced them). Anything else goes through normal validation
    (``Model(...)`` or ``model_validate``).

    >>> new_event = trusted_constructor(Event)
    >>> event = new_event({"index": 0, "phase": "Finalization", ...})
    """
    if not _FAST_CONSTRUCT:  # a pydantic whose internals moved: the public, slower way
        return lambda values: model.model_construct(**values)
    # Shared by all instances: these models are frozen, so pydantic never adds to the set in place
    # (model_copy copies it before updating).
    fields_set = set(model.model_fields)
    new = object.__new__  # BaseModel defines no __new__

    def construct(values: dict[str, Any]) -> _Model:
        instance = new(model)
        _set_attribute(instance, "__dict__", values)
        _set_attribute(instance, "__pydantic_fields_set__", fields_set)
        _set_attribute(instance, "__pydantic_extra__", None)
        _set_attribute(instance, "__pydantic_private__", None)
        return instance

    return construct


def construct_trusted(model: type[_Model], values: dict[str, Any]) -> _Model:
    """Build one ``model`` instance from valid values; see :func:`trusted_constructor`."""
    constructor = _CONSTRUCTORS.get(model)
    if constructor is None:
        constructor = _CONSTRUCTORS[model] = trusted_constructor(model)
    return cast(_Model, constructor(values))


_CONSTRUCTORS: dict[type[BaseModel], Callable[[dict[str, Any]], BaseModel]] = {}


_CHECK = orjson.OPT_STRICT_INTEGER


#: The header of a ``blocks`` record whose producer vouches that every value in it already
#: follows the JSON conventions above (``ocstream ingress`` writes it: its decoder normalised
#: them). Such a block is read without checking each value again (:meth:`ExtendedBlock.
#: from_json_bytes`); its structure is validated all the same.
NORMALISED_HEADER = "normalised"

#: The headers of a ``blocks`` record that vouch for its values, as a producer writes them.
VOUCHED_HEADERS = ((NORMALISED_HEADER, b"1"),)

#: The validation context of a block read under :data:`NORMALISED_HEADER`.
_VOUCHED = {"normalised": True}


def _normalised_field(value: JsonValue, info: ValidationInfo) -> JsonValue:
    """:func:`_normalised`, skipped for a block whose producer vouched for its values."""
    if info.context is _VOUCHED:
        return value
    return _normalised(value)


def _normalised(value: JsonValue) -> JsonValue:
    """:func:`to_json_value` for a value pydantic already validated as ``JsonValue`` (dicts with
    string keys, lists, str, int, float, bool, None), without walking it in Python when it is
    already normalised, as every block of our own ingress is. orjson serialises it (in C)
    refusing integers beyond 53 bits; a value with no ``"call_module"`` key (a nested call in
    cyscale's shape) and no float that is NaN or infinite is one :func:`to_json_value` would
    return unchanged. orjson writes those floats as ``null``, like a real None, so a value
    whose output has a ``null`` is read back: it comes back equal only if no float turned into
    None (most XCM arguments hold a real None, a junction's ``network``). Walking them in Python
    cost 14 µs each; reading back costs a third of what the standard library's encoder (which
    refuses NaN) took before. Anything else, or a false alarm (that text inside a string),
    takes the full walk. On a relay block of 340 kB this is 0.3 ms where the walk took 4 ms."""
    try:
        encoded = orjson.dumps(value, option=_CHECK)
    except TypeError:  # a wide integer
        return to_json_value(value)
    if b'"call_module"' in encoded:
        return to_json_value(value)
    if b"null" in encoded and orjson.loads(encoded) != value:  # NaN or an infinity
        return to_json_value(value)
    return value


# A JSON value as the contract allows it; values that do not come from our own decoder (another
# producer, a hand-written test) are normalised on validation, so the conventions always hold.
NormalisedJson = Annotated[JsonValue, AfterValidator(_normalised_field)]

HexString = Annotated[str, StringConstraints(pattern=r"^0x([0-9a-f]{2})*$")]
Hash32 = Annotated[str, StringConstraints(pattern=r"^0x[0-9a-f]{64}$")]
NetworkUrn = Annotated[str, StringConstraints(pattern=r"^urn:ocn:[a-z0-9_-]+:[0-9]+$")]


class _Frozen(BaseModel):
    # Unknown fields are ignored (not forbidden) so that a worker still on an older release reads
    # blocks written by a newer ingress during a rolling upgrade; see the version policy above.
    model_config = ConfigDict(frozen=True, extra="ignore")


class Extrinsic(_Frozen):
    """One extrinsic of the block, decoded, with the outcome its events report."""

    index: int = Field(ge=0, description="position in the block")
    module: str = Field(description="pallet name, e.g. 'XcmPallet'")
    call: str = Field(description="call name, e.g. 'limited_reserve_transfer_assets'")
    args: NormalisedJson = Field(description="call arguments by name")
    signer: HexString | None = Field(
        default=None, description="account id (public key) of a signed extrinsic, 0x hex"
    )
    success: bool = Field(description="System.ExtrinsicSuccess (true) or ExtrinsicFailed (false)")
    error: NormalisedJson = Field(
        default=None, description="the dispatch error of System.ExtrinsicFailed, else null"
    )
    hash: Hash32 | None = Field(default=None, description="blake2-256 of the encoded extrinsic")


class Event(_Frozen):
    """One event of the block (one `frame_system::EventRecord`)."""

    index: int = Field(ge=0, description="position in the block's event list")
    phase: Phase
    extrinsic_index: int | None = Field(
        default=None, ge=0, description="the extrinsic that emitted it, in phase ApplyExtrinsic"
    )
    module: str = Field(description="pallet name, e.g. 'XcmpQueue'")
    name: str = Field(description="event name, e.g. 'XcmpMessageSent'")
    fields: NormalisedJson = Field(
        description="an object by field name, or an array in order for unnamed fields"
    )
    topics: list[Hash32] = Field(default_factory=list)


class StorageItem(_Frozen):
    """A storage value read at the block's hash (raw SCALE; the reader decodes it)."""

    pallet: str = Field(description="e.g. 'ParachainSystem'")
    item: str = Field(description="e.g. 'HrmpOutboundMessages'")
    key: HexString = Field(description="the full storage key")
    value: HexString | None = Field(description="the SCALE value, null when the key is empty")


class ExtendedBlock(_Frozen):
    """A finalized block of one network, decoded, with the storage items the XCM agent needs."""

    version: Literal[1] = 1
    network: NetworkUrn = Field(description="e.g. 'urn:ocn:polkadot:1000'")
    number: int = Field(ge=0)
    hash: Hash32
    parent_hash: Hash32
    spec_version: int | None = Field(default=None, description="runtime spec version")
    timestamp: int | None = Field(default=None, description="Timestamp.set, ms since the epoch")
    extrinsics: list[Extrinsic] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list)
    storage: list[StorageItem] = Field(default_factory=list)

    def to_json_bytes(self) -> bytes:
        """The block as compact JSON (orjson); the topic's wire format."""
        return orjson.dumps(self.model_dump(mode="python"))

    @classmethod
    def from_json_bytes(cls, data: bytes | str, *, normalised: bool = False) -> ExtendedBlock:
        """Parse and validate a block written by :meth:`to_json_bytes` (or any producer).

        pydantic parses the JSON itself: half the time of ``orjson.loads`` and then
        ``model_validate`` on the Python objects (2.2 against 4.7 ms for an Asset Hub block of
        50 transfers), with the same validation. ``normalised``: the producer vouched for the
        values (:data:`NORMALISED_HEADER`), which are then taken as they are; that was a third
        of the time (the normalising check runs once per event and extrinsic)."""
        if normalised:
            return cls.model_validate_json(data, context=_VOUCHED)
        return cls.model_validate_json(data)
