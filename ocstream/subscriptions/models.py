"""The subscription schema (XCM.md §11.1) and the notify-time filters (§10.5).

One validation path for everything that creates or changes a subscription (POST, PATCH, the
websocket API): :meth:`Subscription.model_validate` on the decoded JSON. It

* refuses unknown properties at every level (``extra="forbid"``);
* checks the id, the webhook ``url`` and ``contentType`` against *anchored* patterns, matched
  with :func:`re.fullmatch` so that a trailing newline is no loophole (pitfall 2);
* is strict about JSON types: ``"6000"`` or ``6000.0`` is no integer, ``1`` is no boolean;
* deduplicates ``senders``, ``destinations`` and ``events`` (first occurrence kept, order kept);
* normalises each sender to its public key (:func:`~ocstream.xcm.ss58.public_key_of`), kept
  privately; the senders are echoed back as written;
* applies the ephemeral rule (pitfall 17).

Whether ``origin`` and ``destinations`` are networks the registry knows is checked by the
caller (it needs Redis): :func:`unknown_networks`.

Round trip: ``sub.to_json()`` (``model_dump(mode="json", exclude_unset=True)``) gives back the
body as posted, minus duplicates; defaults such as a webhook's ``limit`` are not added.

Errors are :class:`pydantic.ValidationError`; the messages of the rules above are the v1 texts
where v1 had one (``"XCM outbound message TTL should be at least 6 seconds"``, ...).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Final, Literal, TypeAlias

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..sinks.templates import TemplateError, compile_template
from ..xcm.notifications import NOTIFICATION_TYPES
from ..xcm.ss58 import public_key_of

__all__ = [
    "EVENT_TYPES",
    "MAX_SAFE_INTEGER",
    "Channel",
    "LogChannel",
    "Subscription",
    "WebhookChannel",
    "WebsocketChannel",
    "public_json",
    "unknown_networks",
]

#: Notification types a subscription (or a webhook channel) can ask for, in v1's order.
EVENT_TYPES: Final = (
    "xcm.sent",
    "xcm.received",
    "xcm.relayed",
    "xcm.timeout",
    "xcm.hop",
    "xcm.bridge",
)
assert set(EVENT_TYPES) == set(NOTIFICATION_TYPES)

#: 2^53 - 1, the largest integer every JSON reader keeps exact (JavaScript's MAX_SAFE_INTEGER).
MAX_SAFE_INTEGER: Final = 2**53 - 1

ID_PATTERN: Final = r"^[A-Za-z0-9:.\-_]{1,100}$"
URN_PATTERN: Final = r"^urn:ocn:[a-z][a-z0-9-]*:[A-Za-z0-9]+$"
URL_PATTERN: Final = r"^https?://"
CONTENT_TYPE_PATTERN: Final = r"^(application|text)/[a-z0-9+.\-]+$"
MIN_OUTBOUND_TTL: Final = 6000

_ID = re.compile(r"[A-Za-z0-9:.\-_]{1,100}")
_URN = re.compile(r"urn:ocn:[a-z][a-z0-9-]*:[A-Za-z0-9]+")
# The url is anchored at both ends: a scheme, a host part, then no whitespace or control
# characters anywhere (a newline in a url is a header-injection attempt, not an address).
_URL = re.compile(r"https?://[^\s/?#\x00-\x1f\x7f]+[^\s\x00-\x1f\x7f]*", re.IGNORECASE)
_CONTENT_TYPE = re.compile(r"(application|text)/[a-z0-9+.\-]+", re.IGNORECASE)

_EVENTS_REQUIRED = "at least 1 event type is required [" + ",".join(EVENT_TYPES) + "]"


def _error(kind: str, message: str) -> PydanticCustomError:
    # PydanticCustomError keeps the message as written (a ValueError would get "Value error, ").
    return PydanticCustomError(kind, message)


def _dedup(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _check_events(value: str | list[str]) -> str | list[str]:
    if isinstance(value, str):
        if value != "*":
            raise _error("events", _EVENTS_REQUIRED)
        return value
    if not value:
        raise _error("events", _EVENTS_REQUIRED)
    unknown = [event for event in value if event not in EVENT_TYPES]
    if unknown:
        raise _error(
            "events",
            f"unknown event type {unknown[0]!r}: expected one of [{','.join(EVENT_TYPES)}]",
        )
    return _dedup(value)


def _check_urn(value: str) -> str:
    if not _URN.fullmatch(value):
        raise _error("chain_id", f"Invalid chain id:{value}")
    return value


_Events: TypeAlias = str | list[str]
_EVENTS_SCHEMA: Final[dict[str, Any]] = {
    "anyOf": [
        {"const": "*"},
        {"type": "array", "items": {"enum": list(EVENT_TYPES)}, "minItems": 1},
    ]
}


def _schema_without_nulls(schema: dict[str, Any]) -> None:
    # An optional field is left out, never null: the JSON schema says so (pydantic would
    # document "anyOf [..., null]" with "default": null for the Python None default).
    properties = schema.get("properties", {})
    for prop in properties.values():
        prop.pop("title", None)
        any_of = prop.get("anyOf")
        if isinstance(any_of, list) and {"type": "null"} in any_of:
            rest = [option for option in any_of if option != {"type": "null"}]
            del prop["anyOf"]
            if len(rest) == 1:
                prop.update(rest[0])
            else:
                prop["anyOf"] = rest
        if "default" in prop and prop["default"] is None:
            del prop["default"]


class _Strict(BaseModel):
    # Inputs stay out of error texts: a webhook's bearer or secret must not reach a log.
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        hide_input_in_errors=True,
        json_schema_extra=_schema_without_nulls,
    )

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, value in data.items():
                if value is None:
                    raise _error("null", f"{name} must not be null (leave it out instead)")
        return data


class WebhookChannel(_Strict):
    """POST each notification to ``url`` (XCM.md §13)."""

    type: Literal["webhook"]
    url: str = Field(
        min_length=5,
        max_length=2000,
        description="http(s) endpoint; each delivery goes to <url>/<deliveryId>",
        json_schema_extra={"pattern": URL_PATTERN},
    )
    contentType: str = Field(
        default="application/json",
        max_length=250,
        description="content-type of the delivered body (case-insensitive pattern)",
        json_schema_extra={"pattern": CONTENT_TYPE_PATTERN},
    )
    events: _Events | None = Field(
        default=None,
        description='"*" or the notification types this channel gets; overrides the '
        "subscription's events",
        json_schema_extra=_EVENTS_SCHEMA,
    )
    template: str | None = Field(
        default=None,
        min_length=5,
        max_length=32000,
        description="a body template rendered with the notification (instead of its JSON)",
    )
    bearer: str | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="sent as 'authorization: Bearer <bearer>'",
    )
    limit: int = Field(
        default=5,
        ge=0,
        le=MAX_SAFE_INTEGER,
        description="immediate retries of a failed delivery",
    )
    secret: str | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="Standard Webhooks signing secret: 'whsec_' + base64 key bytes, or any "
        "other string, whose UTF-8 bytes are the key",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not _URL.fullmatch(value):
            raise _error(
                "url",
                "url must be an http:// or https:// URL without spaces or control characters",
            )
        return value

    @field_validator("contentType")
    @classmethod
    def _content_type(cls, value: str) -> str:
        if not _CONTENT_TYPE.fullmatch(value):
            raise _error(
                "content_type",
                f"contentType must match {CONTENT_TYPE_PATTERN} (case-insensitive)",
            )
        return value

    @field_validator("events")
    @classmethod
    def _events(cls, value: str | list[str] | None) -> str | list[str] | None:
        return None if value is None else _check_events(value)

    @field_validator("template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        # Compiled here, so a template that cannot work is a 400 now, not a dead letter later.
        if value is not None:
            try:
                compile_template(value)
            except TemplateError as exc:
                raise _error("template", f"template: {exc}") from None
        return value

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("whsec_"):
            try:
                key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
            except (binascii.Error, ValueError):
                key = b""
            if not key:
                raise _error("secret", "a 'whsec_' secret must be followed by base64 key bytes")
        return value

    def signing_key(self) -> bytes | None:
        """The HMAC key of the Standard Webhooks signature, or None without a ``secret``:
        the base64-decoded bytes after ``whsec_``, else the secret's UTF-8 bytes."""
        if self.secret is None:
            return None
        if self.secret.startswith("whsec_"):
            return base64.b64decode(self.secret.removeprefix("whsec_"))
        return self.secret.encode()


class WebsocketChannel(_Strict):
    """Stream notifications to the websockets attached to the subscription."""

    type: Literal["websocket"]


class LogChannel(_Strict):
    """Write one log line per notification."""

    type: Literal["log"]


Channel: TypeAlias = Annotated[
    WebhookChannel | WebsocketChannel | LogChannel, Field(discriminator="type")
]


class Subscription(_Strict):
    """One subscription, as the API takes and gives it (XCM.md §11.1)."""

    id: str = Field(
        description="unique id: 1-100 of A-Z a-z 0-9 : . - _",
        json_schema_extra={"pattern": ID_PATTERN, "minLength": 1, "maxLength": 100},
    )
    origin: str = Field(
        description="the network URN messages leave from (must be known to the registry)",
        json_schema_extra={"pattern": URN_PATTERN},
    )
    senders: str | list[str] | None = Field(
        default=None,
        description='"*" or the sender accounts (SS58 with any prefix, or 0x public keys); '
        "absent: any sender",
        json_schema_extra={
            "anyOf": [
                {"const": "*"},
                {"type": "array", "items": {"type": "string"}, "minItems": 1},
            ]
        },
    )
    destinations: list[str] = Field(
        description="final destination network URNs (may be empty; must be known)",
        json_schema_extra={"items": {"type": "string", "pattern": URN_PATTERN}},
    )
    events: _Events | None = Field(
        default=None,
        description='"*" or the notification types to deliver; absent: all',
        json_schema_extra=_EVENTS_SCHEMA,
    )
    ephemeral: bool | None = Field(
        default=None,
        description="held by one websocket, never stored (created over /ws/subs only)",
    )
    outboundTTL: int | None = Field(
        default=None,
        description="milliseconds to wait for the message to arrive before xcm.timeout",
        json_schema_extra={"minimum": MIN_OUTBOUND_TTL, "maximum": MAX_SAFE_INTEGER},
    )
    channels: list[Channel] = Field(min_length=1, description="where notifications go")

    _sender_keys: frozenset[str] | None = PrivateAttr(default=None)
    _destination_set: frozenset[str] = PrivateAttr(default=frozenset())
    _json: dict[str, Any] | None = PrivateAttr(default=None)
    # The filters below read these through ``_own``, not as ``self._name``: pydantic serves a
    # private attribute from ``__getattr__``, after the ordinary lookup has failed, which cost
    # 3.5 us a read against 0.1 us from the dict that holds them. ``matches`` runs for each
    # notification and subscription, ``json_view`` at every webhook attempt.

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.fullmatch(value):
            raise _error(
                "id",
                f"id must be 1 to 100 characters of A-Z a-z 0-9 : . - _ (pattern {ID_PATTERN})",
            )
        return value

    @field_validator("origin")
    @classmethod
    def _origin(cls, value: str) -> str:
        return _check_urn(value)

    @field_validator("destinations")
    @classmethod
    def _destinations(cls, value: list[str]) -> list[str]:
        return _dedup(_check_urn(urn) for urn in value)

    @field_validator("senders")
    @classmethod
    def _senders(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value is None or value == "*":
            return value
        if isinstance(value, str) or not value:
            raise _error("senders", 'at least 1 sender address (or "*") is required')
        seen: dict[str, str] = {}
        for address in value:
            try:
                key = public_key_of(address)
            except ValueError as exc:
                raise _error("sender", f"invalid sender address {address!r}: {exc}") from None
            seen.setdefault(key, address)
        # Two spellings of one account (another SS58 prefix, hex) count once: the first stays.
        return list(seen.values())

    @field_validator("events")
    @classmethod
    def _events(cls, value: str | list[str] | None) -> str | list[str] | None:
        return None if value is None else _check_events(value)

    @field_validator("outboundTTL")
    @classmethod
    def _ttl(cls, value: int | None) -> int | None:
        if value is not None:
            if value < MIN_OUTBOUND_TTL:
                raise _error(
                    "outbound_ttl", "XCM outbound message TTL should be at least 6 seconds"
                )
            if value > MAX_SAFE_INTEGER:
                raise _error("outbound_ttl", f"outboundTTL must be at most {MAX_SAFE_INTEGER}")
        return value

    @model_validator(mode="after")
    def _ephemeral(self) -> Subscription:
        if self.ephemeral and (
            len(self.channels) != 1 or not isinstance(self.channels[0], WebsocketChannel)
        ):
            raise _error(
                "ephemeral", "ephemeral subscriptions only supports websocket notifications"
            )
        return self

    def model_post_init(self, context: Any, /) -> None:
        senders = self.senders
        if isinstance(senders, list):
            self._sender_keys = frozenset(public_key_of(address) for address in senders)
        self._destination_set = frozenset(self.destinations)

    # --- the user's JSON ---

    def to_json(self) -> dict[str, Any]:
        """The subscription as the user gave it (no defaults added)."""
        return self.model_dump(mode="json", exclude_unset=True)

    def json_view(self) -> dict[str, Any]:
        """:meth:`to_json`, dumped once per subscription object and shared by every caller:
        for readers that never change it (the webhook dispatcher reads it at every attempt).
        The object is frozen, and a changed subscription is a new object."""
        own = self._own()
        found = own["_json"]
        if found is None:
            found = own["_json"] = self.to_json()
        return found  # type: ignore[no-any-return]

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json(exclude_unset=True).encode()

    # --- filters (XCM.md §10.5) ---

    @property
    def is_ephemeral(self) -> bool:
        return bool(self.ephemeral)

    def sender_keys(self) -> frozenset[str] | None:
        """The senders as lowercase ``0x`` public keys; None for ``"*"`` or no ``senders``."""
        return self._own()["_sender_keys"]  # type: ignore[no-any-return]

    def _own(self) -> dict[str, Any]:
        """The private attributes, as pydantic keeps them."""
        return self.__pydantic_private__  # type: ignore[return-value]

    def matches(self, notification: Mapping[str, Any]) -> bool:
        """Filters 1, 2 and 4 of XCM.md §10.5: the origin, the *final* destination and the
        sender of the notification's journey. The type (filter 3) is :meth:`wants`'s."""
        origin = notification.get("origin")
        if not isinstance(origin, Mapping) or origin.get("chainId") != self.origin:
            return False
        own = self._own()
        destination = final_destination(notification)
        if destination is None or destination not in own["_destination_set"]:
            return False
        return sender_matches_keys(notification.get("sender"), own["_sender_keys"])

    def wants(self, notification_type: str, channel_index: int) -> bool:
        """Filter 3 for channel ``channel_index``: a webhook channel's own ``events``, when set,
        override the subscription's; absent or ``"*"`` lets every type through."""
        events = self.events
        channel = self.channels[channel_index]
        if isinstance(channel, WebhookChannel) and channel.events is not None:
            events = channel.events
        return events is None or events == "*" or notification_type in events

    def channel_indexes(self, notification_type: str) -> list[int]:
        """The channels that get a notification of ``notification_type``."""
        return [i for i in range(len(self.channels)) if self.wants(notification_type, i)]


def final_destination(notification: Mapping[str, Any]) -> str | None:
    """The journey's final stop: the last leg's ``to``, else ``destination.chainId``."""
    legs = notification.get("legs")
    if isinstance(legs, list) and legs and isinstance(legs[-1], Mapping):
        to = legs[-1].get("to")
        if isinstance(to, str):
            return to
    destination = notification.get("destination")
    if isinstance(destination, Mapping):
        chain = destination.get("chainId")
        if isinstance(chain, str):
            return chain
    return None


def sender_matches_keys(sender: Any, keys: frozenset[str] | None) -> bool:
    """:func:`ocstream.xcm.sender.sender_matches` on a notification's ``sender`` (a dict, or
    None): the signer's or an extra signer's ``publicKey`` must be among ``keys``."""
    if keys is None:
        return True
    if not isinstance(sender, Mapping):
        return False
    signer = sender.get("signer")
    if isinstance(signer, Mapping) and _key(signer) in keys:
        return True
    extras = sender.get("extraSigners")
    if isinstance(extras, list):
        return any(isinstance(extra, Mapping) and _key(extra) in keys for extra in extras)
    return False


def _key(account: Mapping[str, Any]) -> str | None:
    key = account.get("publicKey")
    return key.lower() if isinstance(key, str) else None


def unknown_networks(subscription: Subscription, known: Iterable[str]) -> list[str]:
    """The subscription's origin and destinations that are not among ``known``, in order.
    An Ethereum destination needs no registration: ocstream follows a journey there up to the
    bridge that takes it out (Snowbridge's accept at the bridge hub, ``docs/matching.md``)."""
    known_set = set(known)
    destinations = [urn for urn in subscription.destinations if not urn.startswith(_ETHEREUM)]
    wanted = [subscription.origin, *destinations]
    return [urn for urn in _dedup(wanted) if urn not in known_set]


def public_json(subscription: dict[str, Any]) -> dict[str, Any]:
    """A subscription's JSON as answers show it: each channel's ``secret`` and ``bearer``
    replaced by ``"hasSecret": true`` and ``"hasBearer": true`` (a copy; the input is kept)."""
    channels = subscription.get("channels")
    if not isinstance(channels, list):
        return subscription
    shown: list[Any] = []
    for channel in channels:
        if isinstance(channel, dict) and ("secret" in channel or "bearer" in channel):
            channel = dict(channel)
            if channel.pop("secret", None) is not None:
                channel["hasSecret"] = True
            if channel.pop("bearer", None) is not None:
                channel["hasBearer"] = True
        shown.append(channel)
    return {**subscription, "channels": shown}


_ETHEREUM: Final = "urn:ocn:ethereum:"
