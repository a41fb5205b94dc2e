"""Who sent an XCM message: the signed extrinsic behind a send, and subscription matching on it.

A sent leg's sender is the signer of the extrinsic whose ``ApplyExtrinsic`` phase emitted the
trigger event (XCM.md §5.2). Events of the Initialization and Finalization phases, inherents,
hooks and hop re-sends have no sender.

Wrapping calls are looked through, and each account the inner calls act for is added as an
*extra signer*:

* ``Utility.batch`` / ``batch_all`` / ``force_batch``: every call of the batch;
* ``Proxy.proxy``: its ``real`` account (type ``"proxy"``), then its call, dispatched as ``real``;
* ``Multisig.as_multi``: the ``multisig`` account of the ``Multisig.MultisigExecuted`` event the
  same extrinsic emitted for it (type ``"multisig"``); an ``as_multi`` that only recorded an
  approval executed nothing, so it adds no account and its call is not looked into;
* ``Multisig.as_multi_threshold_1``: the multisig account, derived from the signatories
  (:func:`multisig_account`), since this call emits no event naming it.

The whole call tree is looked through, not only the branch that sent the message: an extrinsic
gives no way to tell which call of a batch emitted a given event. A subscription to an account
that acts anywhere in the extrinsic therefore matches every message the extrinsic sends.

**Which message a call sent**, when the only link is the call itself (a DMP sent by an old
relay's extrinsic, an HRMP or upward message of an old parachain, with no send event): the
queue may hold other messages of the same block, such as the ``SubscribeVersion`` that version
discovery queues before the transfer. :func:`sent_by_call` says whether a message carries the
call's beneficiary and amounts; :func:`is_version_control` recognises version negotiation,
which no user signs.

Usage::

    sender = sender_of(block, event.extrinsic_index, ss58_prefix=0)
    if sender_matches(sender, subscription_keys):
        ...
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints

from ..ingress.decode import blake2_256
from ..ingress.follower import encode_compact
from ..ingress.model import Event, ExtendedBlock, Extrinsic
from .ss58 import render_account

__all__ = [
    "BlockSenders",
    "ExtraSigner",
    "Sender",
    "Signer",
    "is_version_control",
    "multisig_account",
    "sender_matches",
    "sender_of",
    "sent_by_call",
]

_PublicKey = Annotated[str, StringConstraints(pattern=r"^0x([0-9a-f]{2})+$")]


class _Payload(BaseModel):
    # Part of the notification payload: immutable once built, unknown fields ignored on reading
    # (like the block contract, so a newer writer does not break an older reader).
    model_config = ConfigDict(frozen=True, extra="ignore")


class Signer(_Payload):
    """The account that signed the extrinsic."""

    id: str = Field(description="the address as the chain renders it: SS58, or 0x hex")
    publicKey: _PublicKey = Field(description="the account id bytes, 0x lowercase hex")


class ExtraSigner(_Payload):
    """An account the signed extrinsic acted for: a proxied account or a multisig."""

    type: Literal["proxy", "multisig"]
    id: str = Field(description="the address as the chain renders it: SS58, or 0x hex")
    publicKey: _PublicKey = Field(description="the account id bytes, 0x lowercase hex")


class Sender(_Payload):
    """The sender of a message: the signer, and the accounts it acted for (outermost first)."""

    signer: Signer
    extraSigners: list[ExtraSigner] = Field(description="outermost first; empty if none")


_BATCH_CALLS = frozenset({"batch", "batch_all", "force_batch"})
_MULTISIG_PREFIX = b"modlpy/utilisuba"
# Address variants that name an account directly (MultiAddress::Id, Address32, Address20).
_ACCOUNT_VARIANTS = ("Id", "Address32", "Address20")


def multisig_account(signatories: Iterable[str | bytes], threshold: int) -> str:
    """The account of the multisig of ``signatories`` (all of them, the caller included) and
    ``threshold``, as ``0x`` hex: what ``pallet_multisig::multi_account_id`` computes.

    It is ``blake2_256(b"modlpy/utilisuba" ‖ compact(n) ‖ sorted signatories ‖ u16_le(threshold))``,
    truncated to the signatories' length on chains with 20-byte accounts.
    """
    accounts = sorted({_account_bytes(account) for account in signatories})
    if not accounts:
        raise ValueError("a multisig needs at least one signatory")
    lengths = {len(account) for account in accounts}
    if len(lengths) != 1:
        raise ValueError(f"signatories of different lengths: {sorted(lengths)}")
    if not 0 <= threshold <= 0xFFFF:
        raise ValueError(f"a multisig threshold is a u16, not {threshold}")
    preimage = b"".join(
        [
            _MULTISIG_PREFIX,
            encode_compact(len(accounts)),
            *accounts,
            threshold.to_bytes(2, "little"),
        ]
    )
    # The pallet decodes the account from the hash: a 20-byte account takes its first 20 bytes.
    return "0x" + blake2_256(preimage)[: lengths.pop()].hex()


def sender_of(
    block: ExtendedBlock, extrinsic_index: int | None, *, ss58_prefix: int | None
) -> Sender | None:
    """The sender of what extrinsic ``extrinsic_index`` of ``block`` did, or None when there is no
    signed extrinsic there (no index: an Initialization/Finalization event; or an inherent).

    Addresses render with ``ss58_prefix`` (the chain's SS58 format), or as hex when it is None.
    For several extrinsics of one block, :class:`BlockSenders` reads the block's events once.
    """
    return BlockSenders(block, ss58_prefix=ss58_prefix).of(extrinsic_index)


class BlockSenders:
    """:func:`sender_of` for the extrinsics of one block: the block's multisig executions are
    indexed once, at the first question. Extraction asks about every send of a block in turn,
    and scanning the block's events once per send made that quadratic (50 sends in an Asset Hub
    block of 450 events: 1.4 ms of 4.3 to extract it)."""

    __slots__ = ("block", "ss58_prefix", "_multisigs")

    def __init__(self, block: ExtendedBlock, *, ss58_prefix: int | None) -> None:
        self.block = block
        self.ss58_prefix = ss58_prefix
        self._multisigs: dict[int, list[tuple[str | None, str]]] | None = None

    def of(self, extrinsic_index: int | None) -> Sender | None:
        """The sender of extrinsic ``extrinsic_index`` (see :func:`sender_of`)."""
        if extrinsic_index is None:
            return None
        extrinsic = _extrinsic_at(self.block, extrinsic_index)
        if extrinsic is None or not extrinsic.signer or extrinsic.signer == "0x":
            return None
        signer = extrinsic.signer.lower()
        walk = _CallWalk(self._executed_multisigs(extrinsic_index))
        walk.visit(extrinsic.module, extrinsic.call, extrinsic.args, signer)
        prefix = self.ss58_prefix
        return Sender(
            signer=Signer(id=render_account(signer, prefix), publicKey=signer),
            extraSigners=[
                ExtraSigner(type=kind, id=render_account(key, prefix), publicKey=key)
                for kind, key in walk.extra
            ],
        )

    def as_json(self, _block: ExtendedBlock, extrinsic_index: int | None) -> dict[str, Any] | None:
        """:meth:`of` as JSON, in the form of ``extract``'s ``sender_of`` callback (extract asks
        only about the block it was given: this one)."""
        found = self.of(extrinsic_index)
        return found.model_dump() if found is not None else None

    def _executed_multisigs(self, extrinsic_index: int) -> list[tuple[str | None, str]]:
        """(approving, multisig) of each ``Multisig.MultisigExecuted`` the extrinsic emitted, in
        event order (a new list: the caller consumes it)."""
        if self._multisigs is None:
            self._multisigs = _index_multisigs(self.block.events)
        return list(self._multisigs.get(extrinsic_index, ()))


def sender_matches(sender: Sender | None, keys: frozenset[str] | None) -> bool:
    """Whether a subscription's senders select a message of ``sender``.

    ``keys`` are the subscription's senders as lowercase ``0x`` public keys (see
    :func:`~ocstream.xcm.ss58.public_key_of`); None stands for ``"*"`` or no ``senders`` at all,
    which selects every message, those without a sender included. Otherwise the signer or one of
    the extra signers must be among ``keys``; a message without a sender never matches.
    """
    if keys is None:
        return True
    if sender is None:
        return False
    if sender.signer.publicKey.lower() in keys:
        return True
    return any(extra.publicKey.lower() in keys for extra in sender.extraSigners)


# --- internals ----------------------------------------------------------------------------------


def _extrinsic_at(block: ExtendedBlock, index: int) -> Extrinsic | None:
    extrinsics = block.extrinsics
    if 0 <= index < len(extrinsics) and extrinsics[index].index == index:
        return extrinsics[index]
    # Blocks built by hand may list extrinsics out of order; the index field is authoritative.
    return next((extrinsic for extrinsic in extrinsics if extrinsic.index == index), None)


def _account_bytes(account: str | bytes) -> bytes:
    if isinstance(account, bytes):
        return account
    if not account.startswith(("0x", "0X")):
        raise ValueError(f"not a 0x hex account: {account!r}")
    return bytes.fromhex(account[2:])


def _account_of(value: JsonValue) -> str | None:
    """The account id (lowercase 0x hex) an account argument names, or None if it names none.

    cyscale decodes ``MultiAddress::Id`` to the bare hex; other producers may keep the enum
    (``{"Id": "0x.."}``). ``Index`` and ``Raw`` addresses need chain state to resolve.
    """
    if isinstance(value, dict) and len(value) == 1:
        ((variant, inner),) = value.items()
        value = inner if variant in _ACCOUNT_VARIANTS else None
    if isinstance(value, str) and value.startswith("0x") and len(value) in (42, 66):
        try:
            bytes.fromhex(value[2:])
        except ValueError:
            return None
        return value.lower()
    return None


def _index_multisigs(events: Sequence[Event]) -> dict[int, list[tuple[str | None, str]]]:
    """The executed multisigs of a block's events, by the extrinsic that emitted them."""
    executed: dict[int, list[tuple[str | None, str]]] = {}
    for event in events:
        if (
            event.name != "MultisigExecuted"
            or event.module != "Multisig"
            or event.phase != "ApplyExtrinsic"
            or event.extrinsic_index is None
        ):
            continue
        fields = event.fields
        if isinstance(fields, dict):
            approving, multisig = fields.get("approving"), fields.get("multisig")
        elif isinstance(fields, list) and len(fields) >= 3:  # unnamed: (approving, timepoint, ms)
            approving, multisig = fields[0], fields[2]
        else:
            continue
        account = _account_of(multisig)
        if account is not None:
            executed.setdefault(event.extrinsic_index, []).append((_account_of(approving), account))
    return executed


class _CallWalk:
    """One depth-first pass over an extrinsic's call tree, collecting the extra signers in order.

    ``origin`` follows the account each call is dispatched as: the signer at the top, the ``real``
    account inside ``Proxy.proxy``, the multisig account inside ``Multisig.as_multi*``.
    """

    def __init__(self, executed: list[tuple[str | None, str]]) -> None:
        self._executed = executed  # consumed as as_multi calls claim them
        self.extra: list[tuple[Literal["proxy", "multisig"], str]] = []

    def visit(self, module: str, call: str, args: JsonValue, origin: str | None) -> None:
        if not isinstance(args, dict):
            return
        if module == "Utility" and call in _BATCH_CALLS:
            calls = args.get("calls")
            if isinstance(calls, list):
                for item in calls:
                    self._visit_nested(item, origin)
        elif module == "Proxy" and call == "proxy":
            real = _account_of(args.get("real"))
            if real is not None:
                self._add("proxy", real)
            self._visit_nested(args.get("call"), real)
        elif module == "Multisig" and call == "as_multi_threshold_1":
            multisig = self._threshold_1_account(args.get("other_signatories"), origin)
            if multisig is not None:
                self._add("multisig", multisig)
            self._visit_nested(args.get("call"), multisig)
        elif module == "Multisig" and call == "as_multi":
            multisig = self._claim_executed(origin)
            if multisig is not None:
                self._add("multisig", multisig)
                self._visit_nested(args.get("call"), multisig)

    def _visit_nested(self, value: JsonValue, origin: str | None) -> None:
        # A nested call is {"module", "call", "args"}; an opaque one (old runtimes' OpaqueCall) is
        # hex bytes and cannot be looked into.
        if isinstance(value, dict):
            module, call = value.get("module"), value.get("call")
            if isinstance(module, str) and isinstance(call, str):
                self.visit(module, call, value.get("args"), origin)

    def _add(self, kind: Literal["proxy", "multisig"], account: str) -> None:
        if (kind, account) not in self.extra:
            self.extra.append((kind, account))

    @staticmethod
    def _threshold_1_account(others: JsonValue, origin: str | None) -> str | None:
        if origin is None or not isinstance(others, list):
            return None
        accounts = [_account_of(other) for other in others]
        if any(account is None or len(account) != len(origin) for account in accounts):
            return None
        return multisig_account([origin, *(a for a in accounts if a is not None)], 1)

    def _claim_executed(self, origin: str | None) -> str | None:
        """The multisig of the first unclaimed MultisigExecuted approved by ``origin`` (any, if
        the origin is unknown), claimed so that a second as_multi gets the next one."""
        for position, (approving, multisig) in enumerate(self._executed):
            if origin is None or approving is None or approving == origin:
                del self._executed[position]
                return multisig
        return None


# --- which message a call sent -------------------------------------------------------------------

#: Programs made only of these are version negotiation (XCM.md §9.9), sent by the runtime itself.
_VERSION_CONTROL = {"SubscribeVersion", "UnsubscribeVersion", "QueryResponse"}


def _program(instructions: Any) -> list[Any]:
    """The instruction list of a (versioned) program: ``{"V2": [...]}`` or ``[...]``."""
    if isinstance(instructions, Mapping) and len(instructions) == 1:
        [(tag, inner)] = instructions.items()
        if isinstance(tag, str) and tag.startswith("V") and tag[1:].isdigit():
            instructions = inner
    return list(instructions) if isinstance(instructions, list) else []


def _names(program: list[Any]) -> list[str]:
    return [
        next(iter(item)) if isinstance(item, Mapping) else str(item)
        for item in program
        if isinstance(item, Mapping | str) and item
    ]


def is_version_control(instructions: Any) -> bool:
    """Whether a program only negotiates versions (``SubscribeVersion``, ``QueryResponse``...)."""
    names = _names(_program(instructions))
    return bool(names) and set(names) <= _VERSION_CONTROL


def _walk(value: Any, key: str | None = None) -> Iterator[tuple[str | None, Any]]:
    yield key, value
    if isinstance(value, Mapping):
        for k, inner in value.items():
            yield from _walk(inner, str(k))
    elif isinstance(value, list):
        for inner in value:
            yield from _walk(inner, key)


def _accounts(value: Any) -> set[str]:
    """The account keys named in a location (``AccountId32.id``, ``AccountKey20.key``)."""
    found: set[str] = set()
    for key, inner in _walk(value):
        if key in ("AccountId32", "AccountKey20") and isinstance(inner, Mapping):
            account = inner.get("id", inner.get("key"))
            if isinstance(account, str):
                found.add(account.lower())
    return found


def _amounts(value: Any) -> set[int]:
    """The fungible amounts of the assets in ``value``."""
    found: set[int] = set()
    for key, inner in _walk(value):
        if key == "Fungible" and isinstance(inner, int | str) and str(inner).isdigit():
            found.add(int(inner))
    return found


def sent_by_call(args: Mapping[str, Any], instructions: Any) -> bool | None:
    """Whether a message is the one a transfer call sent: it names the call's beneficiary and
    carries each amount the call moved (the asset ids differ: the message sees them from the
    destination). None when the call has no beneficiary or assets to compare (``send``,
    ``execute``), or the message did not decode."""
    # XcmPallet/PolkadotXcm name a beneficiary and assets; XTokens puts the account in its
    # ``dest`` and gives a plain ``amount``.
    beneficiary = _accounts(args.get("beneficiary")) or _accounts(args.get("dest"))
    amounts = _amounts(args.get("assets")) or _amounts(args.get("asset"))
    amount = args.get("amount")
    if not amounts and isinstance(amount, int | str) and str(amount).isdigit():
        amounts = {int(amount)}
    program = _program(instructions)
    if not beneficiary or not amounts or not program:
        return None
    return beneficiary <= _accounts(program) and amounts <= _amounts(program)
