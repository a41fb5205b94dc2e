"""The matching engine: legs in, journey notifications out (XCM.md §9; ``docs/matching.md``).

The engine is a deterministic state machine over key-value tables, one call per record of the
``xcm-legs`` topic. Every record is **keyed by the chain it concerns** (the chain that sent a sent
leg, received a received leg, or is the recipient of a relayed leg; the stop an index, extend,
close or tick record addresses), so everything known about one chain lives on one partition.
The one exception is a sent leg that nothing links to a receipt of its block: it can only start
a journey, which reads nothing of its chain's state, so it comes keyed by its origin and a
shard of its id (``keys.leg_key``), and its ``seen`` entry lives under that key.
Records for other chains are not handled in place: the engine returns them (``Step.records``) and
the dataflow sends them to the partition that owns that chain.

A journey's **owner** is its final stop: the owner holds the journey's deadline and is the only
place a terminal notification (``xcm.received``, ``xcm.timeout``, or a failed ``xcm.hop``) is
emitted, which is what makes the terminal exactly-once whatever the arrival order. Intermediate
stops hold ``hop`` entries; they emit hop and relayed notifications as those legs happen.

Record kinds (``record["kind"]``): ``sent``, ``received``, ``relayed``, ``bridge`` (legs from
extraction; bridge legs are handled in ``bridge.py``);
``index`` (a journey registers at a stop), ``extend`` (a hop-out adds its ids at the next stop),
``close`` (the journey ended: forget it at this stop), ``terminate`` (a hop failed: the owner
ends the journey), ``tick`` (a deadline may have passed), ``sweep`` (drop expired entries).

Tables (all JSON values; keys start with the chain so a partition's keys are its own):

* ``outbound`` ``{chain}:{id}`` → journey ids ending at that chain, oldest first (a FIFO: identical
  messages are separate journeys);
* ``hop`` ``{chain}:{id}`` → journey ids passing through that chain;
* ``inbound`` ``{chain}:{id}`` → received legs that matched nothing yet (with an expiry);
* ``relay`` ``{chain}:{id}`` → relayed legs that matched nothing yet, each with its expiry, the
  same entry under each of its ids (``{"legs": [...], "expires": <the earliest>}``);
* ``journeys`` ``{chain}|{journey id}`` → the journey as that stop knows it;
* ``seen`` ``{key}|{leg identity}`` → legs already handled (idempotency under re-delivery), under
  the record's key: the chain, or a spread sent leg's ``{origin}#{shard}``.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import JsonValue

from ..envvars import env_seconds
from . import bridge
from . import notifications as notify
from .coverage import CoverageOf, mark_timeout
from .keys import spread_origin, spreadable
from .legs import (
    NO_HASH,
    ReceivedLeg,
    RelayedLeg,
    SentLeg,
    consensus,
    continues_program,
    is_relay,
    is_slot,
    programs_of,
)

__all__ = [
    "Engine",
    "MatchSettings",
    "Step",
    "Store",
    "TABLES",
    "Tables",
    "expired_keys",
    "journey_id",
    "key_chain",
]

TABLES = ("outbound", "hop", "inbound", "relay", "journeys", "seen")


class Store(Protocol):
    """The part of a table the engine uses (a faust Table, a dict, ...)."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def __setitem__(self, key: str, value: Any) -> None: ...

    def __delitem__(self, key: str) -> None: ...


_MISSING = object()


class Tables:
    """The engine's view of its tables: reads see this step's own writes, writes wait in an
    overlay until :meth:`commit` (the dataflow commits after queueing the step's outputs, so a
    table's changelog never runs ahead of what was sent)."""

    def __init__(self, stores: dict[str, Store]) -> None:
        missing = set(TABLES) - stores.keys()
        if missing:
            raise ValueError(f"missing tables: {sorted(missing)}")
        self.stores = stores
        self.overlay: dict[tuple[str, str], Any] = {}

    def get(self, table: str, key: str) -> Any:
        value = self.overlay.get((table, key), _MISSING)
        if value is _MISSING:
            return self.stores[table].get(key)
        return value

    def set(self, table: str, key: str, value: Any) -> None:
        self.overlay[(table, key)] = value

    def delete(self, table: str, key: str) -> None:
        self.overlay[(table, key)] = None

    def commit(self) -> None:
        for (table, key), value in self.overlay.items():
            store = self.stores[table]
            if value is None:
                try:
                    del store[key]
                except KeyError:
                    pass
            else:
                store[key] = value
        self.overlay.clear()

    def rollback(self) -> None:
        self.overlay.clear()


@dataclass(frozen=True, slots=True)
class MatchSettings:
    """Durations in seconds."""

    journey_ttl: float = 3600.0  # a journey with no receipt times out after this
    bridge_journey_ttl: float = 86400.0  # ... or this when a leg crosses a bridge
    pending_ttl: float = 3600.0  # early inbound/relayed legs wait this long for their outbound
    seen_ttl: float = 86400.0  # how long a handled leg is remembered (re-delivery window)
    closed_ttl: float = 3600.0  # an ended journey's hop entries stay for late hop legs
    late_ttl: float = 86400.0  # a timed-out journey waits this long for its late receipt
    hold_ttl: float = 300.0  # a receipt waits this long for the last hop's message (see _final)
    park_ttl: float = 120.0  # a possible hop-out waits this long for its candidates' journeys
    clock_slack: float = 30.0  # a receipt may carry an older block time than its send by this
    clock_window: float = 6 * 3600.0  # block clocks further apart are not compared (test nets)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> MatchSettings:
        """Settings from ``OCSTREAM_XCM_JOURNEY_TTL``, ``OCSTREAM_XCM_PENDING_TTL``, ... (s,
        none of them negative)."""
        values: dict[str, float] = {}
        for name in cls.__dataclass_fields__:
            value = env_seconds(environ, f"OCSTREAM_XCM_{name.upper()}")
            if value is not None:
                values[name] = value
        return cls(**values)


@dataclass(slots=True)
class Step:
    """What one record produced."""

    notifications: list[dict[str, JsonValue]] = field(default_factory=list)
    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (chain, record)
    deadlines: list[tuple[float, str, str]] = field(default_factory=list)  # (at, chain, jid)
    counters: dict[str, int] = field(default_factory=dict)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n


def journey_id(identity: str) -> str:
    """A journey's id: a digest of its sent leg's identity (stable across re-processing)."""
    return hashlib.blake2b(identity.encode(), digest_size=16).hexdigest()


def _jkey(chain: str, jid: str) -> str:
    return f"{chain}|{jid}"


def _seen_key(chain: str, identity: str) -> str:
    """The ``seen`` key of a leg's identity: ``{chain}|s:`` and 22 characters of its blake2b
    digest (128 bits, base64url) instead of the identity's 100 or so. ``seen`` entries are the
    only thing a finished journey leaves for a day (``seen_ttl``), each in a changelog entry
    and its compaction index, so their keys are most of what it keeps (``docs/capacity.md``)."""
    digest = hashlib.blake2b(identity.encode(), digest_size=16).digest()
    return f"{chain}|s:{base64.urlsafe_b64encode(digest).rstrip(b'=').decode()}"


def _seen_entry(tables: Tables, chain: str, identity: str, key: str) -> Any:
    """The ``seen`` entry of ``identity``, under ``key`` (its :func:`_seen_key`) or under the
    whole identity, as versions before short keys wrote it: their entries are honoured until
    they expire, so a leg replayed across the upgrade is still known. That second lookup is a
    RocksDB miss for every new leg; it can go in the first release after this one, once no
    deployment can hold such entries (``seen_ttl``, a day, after its upgrade)."""
    entry = tables.get("seen", key)
    if entry is None:
        entry = tables.get("seen", _jkey(chain, identity))
    return entry


def _append(tables: Tables, table: str, key: str, item: Any) -> None:
    current = list(tables.get(table, key) or [])
    if item not in current:
        current.append(item)
        tables.set(table, key, current)


def _remove(tables: Tables, table: str, key: str, item: Any) -> None:
    current = [value for value in (tables.get(table, key) or []) if value != item]
    if current:
        tables.set(table, key, current)
    else:
        tables.delete(table, key)


class Engine:
    """Apply records to tables; see the module docstring. ``now`` gives wall-clock seconds and
    ``monitored(urn)`` says whether a network is followed (only journeys that can end on a
    followed network are tracked)."""

    def __init__(
        self,
        settings: MatchSettings | None = None,
        *,
        now: Callable[[], float],
        monitored: Callable[[str], bool] = lambda urn: True,
        coverage: CoverageOf | None = None,
    ) -> None:
        self.settings = settings or MatchSettings()
        self.now = now
        self.monitored = monitored
        self.coverage = coverage  # where each network's ingress began (docs/ingress.md)

    # -- entry point --

    def handle(self, tables: Tables, chain: str, record: dict[str, Any]) -> Step:
        step = Step()
        kind = record["kind"]
        handler = getattr(self, f"_on_{kind}", None)
        if handler is None:
            raise ValueError(f"unknown xcm-legs record kind {kind!r}")
        handler(tables, chain, record, step)
        return step

    # -- legs from extraction --

    def _seen(self, tables: Tables, chain: str, identity: str) -> bool:
        key = _seen_key(chain, identity)
        entry = _seen_entry(tables, chain, identity, key)
        if entry is not None and entry["expires"] > self.now():
            return True
        tables.set("seen", key, {"expires": self.now() + self.settings.seen_ttl})
        return False

    def _on_sent(self, tables: Tables, chain: str, record: dict[str, Any], step: Step) -> None:
        leg = SentLeg.model_validate(record["leg"])
        if chain != leg.origin and (spread_origin(chain) != leg.origin or not spreadable(leg)):
            # Only a leg that can only start a journey may be spread (keys.py): the receipts a
            # hop-out continues are on its chain's partition, not on this one.
            raise ValueError(f"a sent leg from {leg.origin} keyed {chain!r}")
        if self._seen(tables, chain, leg.identity):
            step.count("duplicate_legs")
            return
        if leg.continues is not None:
            jid = tables.get("journeys", _jkey(chain, "in:" + leg.continues))
            if jid is not None:
                self._hop_out(tables, chain, jid["journey"], leg, step)
                return
            pending = tables.get("inbound", _jkey(chain, "leg:" + leg.continues))
            if pending is not None and self._expect_origin(pending["leg"]):
                pending = dict(pending)
                pending["parked"] = [*pending.get("parked", []), leg.model_dump(by_alias=True)]
                tables.set("inbound", _jkey(chain, "leg:" + leg.continues), pending)
                step.count("hop_out_parked")
                return
        # No sure link: a hop-out if one of the block's receipts brought a journey whose
        # forwarding this message carries out (same topic, or the content it asked for).
        waiting: list[str] = []
        for candidate in leg.hop_candidates:
            marker = tables.get("journeys", _jkey(chain, "in:" + candidate))
            if marker is not None:
                if self._forwards(tables, chain, marker["journey"], leg):
                    step.count("hop_out_by_content")
                    self._hop_out(tables, chain, marker["journey"], leg, step)
                    return
                continue
            pending = tables.get("inbound", _jkey(chain, "leg:" + candidate))
            if pending is not None and self._expect_origin(pending["leg"]):
                waiting.append(candidate)
        if waiting:
            # The receipts it may continue are waiting for their journeys: so does it, and the
            # first of them whose journey it forwards takes it (any arrival order, one answer).
            tables.set(
                "journeys",
                _jkey(chain, "parked:" + leg.identity),
                {
                    "parked_leg": leg.model_dump(by_alias=True),
                    "waiting": waiting,
                    "expires": self.now() + self.settings.park_ttl,
                },
            )
            for candidate in waiting:
                key = _jkey(chain, "leg:" + candidate)
                pending = dict(tables.get("inbound", key))
                pending["candidates"] = [*pending.get("candidates", []), leg.identity]
                tables.set("inbound", key, pending)
            step.count("hop_out_parked")
            return
        self._new_journey(tables, leg, step)

    def _forwards(self, tables: Tables, chain: str, journey: dict[str, Any], leg: SentLeg) -> bool:
        """Whether ``leg``, sent at ``chain`` with no sure link, is the hop-out of ``journey``
        (which arrived there): it carries the journey's topic, or it ends the way the journey's
        forwarding instruction asked (this heuristic can give ``xcm.hop``; a receipt still needs
        the hop-out's own ids)."""
        current = tables.get("journeys", _jkey(chain, journey["id"])) or journey
        if current.get("hopped_out"):
            return False  # one message forwarded per stop
        if leg.topic is not None and leg.topic == journey.get("topic"):
            return True
        programs = journey.get("programs") or []
        expected = journey["stop"]  # programs[k] is what stop k + 1 runs
        return expected < len(programs) and continues_program(programs[expected], leg.instructions)

    def _release_candidates(
        self,
        tables: Tables,
        chain: str,
        receipt: dict[str, Any],
        journey: dict[str, Any] | None,
        step: Step,
    ) -> None:
        """A pending receipt found its journey (``journey``: the one that hopped in here, or
        None when it was the final receipt or expired): each hop-out waiting on it is that
        journey's hop-out if it forwards it; otherwise it waits for its other candidates, and
        with none left it is a journey of its own."""
        for identity in receipt.get("candidates", []):
            key = _jkey(chain, "parked:" + identity)
            parked = tables.get("journeys", key)
            if parked is None:
                continue  # already placed
            leg = SentLeg.model_validate(parked["parked_leg"])
            if journey is not None and self._forwards(tables, chain, journey, leg):
                tables.delete("journeys", key)
                step.count("hop_out_by_content")
                self._hop_out(tables, chain, journey, leg, step)
                continue
            waiting = [c for c in parked["waiting"] if c != receipt["identity"]]
            if waiting:
                tables.set("journeys", key, {**parked, "waiting": waiting})
            else:
                tables.delete("journeys", key)
                self._new_journey(tables, leg, step)

    def _on_bridge(self, tables: Tables, chain: str, record: dict[str, Any], step: Step) -> None:
        bridge.on_bridge(self, tables, chain, record, step)  # bridge hook (xcm/bridge.py)

    def _expect_origin(self, received: dict[str, Any]) -> bool:
        """Whether the journey of an unmatched inbound can still show up: its immediate sender
        is followed (or unknown, in which case we wait rather than guess)."""
        sender = received.get("from_chain")
        return sender is None or self.monitored(sender)

    def _new_journey(self, tables: Tables, leg: SentLeg, step: Step) -> None:
        jid = journey_id(leg.identity)
        journey: dict[str, Any] = {
            "id": jid,
            "origin": leg.origin,
            "destination": leg.destination,
            "stops": [item.to for item in leg.legs] or [leg.recipient],
            "legs": [item.payload() for item in leg.legs],
            "sender": leg.sender,
            "topic": leg.topic,
            "origin_context": leg.context,
            "ids": leg.ids,
            "bridge": leg.has_bridge,
            # What each later stop is asked to run (the first runs the whole program).
            "programs": programs_of(leg.recipient, leg.instructions)[1:],
        }
        message = _message_fields(leg)
        if message != notify.origin_message(leg.context):
            journey["message"] = message  # else notify.journey_message derives it
        step.notifications.append(notify.sent(journey))
        step.count("sent")
        if leg.bridge_in is not None:  # bridge hook: it starts right after crossing a bridge
            step.notifications.append(bridge.origin_note(journey, leg.bridge_in))
        if not self.monitored(journey["destination"]) and not bridge.ends_at_bridge(
            journey, self.monitored
        ):
            step.count("untracked")
            return
        stops: list[str] = journey["stops"]
        # Later stops know the message by its topic only (a downward slot, like the hash,
        # names it at its first stop).
        topic_ids = [i for i in leg.ids if i != leg.message_hash and not is_slot(i)]
        for k, stop in enumerate(stops):
            ids = leg.ids if k == 0 else topic_ids
            role = "final" if k == len(stops) - 1 else "hop"
            step.records.append(
                (stop, {"kind": "index", "journey": journey, "stop": k, "role": role, "ids": ids})
            )

    def _on_received(self, tables: Tables, chain: str, record: dict[str, Any], step: Step) -> None:
        leg = ReceivedLeg.model_validate(record["leg"])
        identity = "rcv:" + leg.identity
        if _seen_entry(tables, chain, identity, _seen_key(chain, identity)) is not None:
            # This receipt already ended (or hopped) its journey: a re-delivery (a worker killed
            # after its outputs were written) must not become the receipt of a later journey
            # with the same bytes.
            step.count("duplicate_legs")
            return
        if self._is_pending(tables, "inbound", chain, leg.identity, step):
            return  # already waiting (perhaps with hop-outs parked on it)
        data = leg.model_dump(by_alias=True)
        if not self._match_received(tables, chain, data, step):
            self._keep_pending(tables, "inbound", chain, data, leg.ids, step)

    def _consume(self, tables: Tables, chain: str, leg: dict[str, Any]) -> None:
        """Remember that a receipt found its journey (see :meth:`_on_received`)."""
        tables.set(
            "seen",
            _seen_key(chain, "rcv:" + leg["identity"]),
            {"expires": self.now() + self.settings.seen_ttl},
        )

    def _before_send(self, journey: dict[str, Any], leg: dict[str, Any]) -> bool:
        """Whether the receipt is older than the journey's send, so it cannot be its receipt
        (an identical earlier message's).

        A downward message's receipt names the relay block that queued it (its slot): that is
        exact. Otherwise block times are compared, from each chain's own clock: a parachain's
        slot may trail the relay's, hence ``clock_slack``; clocks that disagree by more than
        ``clock_window`` (test networks started at different dates) are not compared, nor are
        those of ``local`` networks (chopsticks stamps each block with its parent's time plus
        a slot, so its clocks count blocks, not time)."""
        slot = leg.get("slot")
        origin = journey.get("origin_context") or {}
        if slot is not None and journey.get("stop") == 0 and is_relay(journey["origin"]):
            queued_at = int(slot.split(":")[1])
            return queued_at < int(origin.get("blockNumber") or 0)
        received_at = leg.get("context", {}).get("timestamp")
        sent_at = origin.get("timestamp")
        if not isinstance(received_at, int) or not isinstance(sent_at, int):
            return False
        if consensus(journey["origin"]) == "local":
            return False
        gap = (sent_at - received_at) / 1000
        return self.settings.clock_slack < gap < self.settings.clock_window

    def _match_received(self, tables: Tables, chain: str, leg: dict[str, Any], step: Step) -> bool:
        ids = list(dict.fromkeys((leg["message_id"], leg["message_hash"], leg.get("slot"))))
        ids = [i for i in ids if i is not None]  # the hash first: a slot is the fallback
        late: dict[str, Any] | None = None
        for table, role in (("outbound", "final"), ("hop", "hop")):
            for message_id in ids:
                for jid in tables.get(table, f"{chain}:{message_id}") or []:
                    journey = tables.get("journeys", _jkey(chain, jid))
                    if journey is None or not self._from_agrees(journey, leg):
                        continue
                    if self._before_send(journey, leg):
                        continue
                    if role == "final":
                        if journey.get("done") or journey.get("receipt"):
                            if late is None and _awaits_late_receipt(journey):
                                late = journey
                            continue
                        self._final(tables, chain, journey, leg, step)
                        return True
                    if journey.get("hopped_in"):
                        continue
                    self._hop_in(tables, chain, journey, leg, step)
                    return True
        if late is not None:
            self._late(tables, chain, late, leg, step)
            return True
        return False

    @staticmethod
    def _from_agrees(journey: dict[str, Any], leg: dict[str, Any]) -> bool:
        sender = leg.get("from_chain")
        if sender is None:
            return True
        return bool(journey["leg_from"] == sender)

    def _on_relayed(self, tables: Tables, chain: str, record: dict[str, Any], step: Step) -> None:
        # No seen-check: a journey notes each relayed leg once, and a waiting one is kept once.
        leg = RelayedLeg.model_validate(record["leg"])
        ids = list(dict.fromkeys(leg.ids))
        if not ids:
            return  # nothing could ever find it
        # A waiting leg is under every one of its ids: the first tells whether it waits.
        first = _relay_waiting(tables, chain, ids[0])
        if any(waiting["leg"]["identity"] == leg.identity for waiting in first):
            step.count("duplicate_legs")
            return
        data = leg.model_dump(by_alias=True)
        if self._match_relayed(tables, chain, data, step):
            return
        entry = {"leg": data, "ids": ids, "expires": self.now() + self.settings.pending_ttl}
        for message_id in ids:
            waiting = first if message_id == ids[0] else _relay_waiting(tables, chain, message_id)
            _set_relay(tables, chain, message_id, [*waiting, entry])
        step.count("relay_pending")

    # -- receipts waiting for their journey (table inbound; relayed legs: _relay_waiting) --

    @staticmethod
    def _is_pending(tables: Tables, table: str, chain: str, identity: str, step: Step) -> bool:
        if tables.get(table, _jkey(chain, "leg:" + identity)) is None:
            return False
        step.count("duplicate_legs")
        return True

    def _keep_pending(
        self,
        tables: Tables,
        table: str,
        chain: str,
        leg: dict[str, Any],
        ids: list[str],
        step: Step,
    ) -> None:
        """Nothing to match yet: keep the leg by identity (hop-outs park on it) and list it
        under each of its ids, until its journey arrives or it expires."""
        entry = {"leg": leg, "ids": ids, "expires": self.now() + self.settings.pending_ttl}
        for message_id in ids:
            _append(tables, table, f"{chain}:{message_id}", leg["identity"])
        tables.set(table, _jkey(chain, "leg:" + leg["identity"]), entry)
        step.count(f"{table}_pending")

    @staticmethod
    def _drop_pending(tables: Tables, table: str, chain: str, entry: dict[str, Any]) -> None:
        identity = entry["leg"]["identity"]
        for message_id in entry["ids"]:
            _remove(tables, table, f"{chain}:{message_id}", identity)
        tables.delete(table, _jkey(chain, "leg:" + identity))

    def _match_relayed(self, tables: Tables, chain: str, leg: dict[str, Any], step: Step) -> bool:
        for table in ("outbound", "hop"):
            for message_id in leg["ids"]:
                for jid in tables.get(table, f"{chain}:{message_id}") or []:
                    journey = tables.get("journeys", _jkey(chain, jid))
                    if journey is None or journey["leg_from"] != leg["origin"]:
                        continue
                    self._relayed(tables, chain, journey, leg, step)
                    return True
        return False

    def _relayed(
        self, tables: Tables, chain: str, journey: dict[str, Any], leg: dict[str, Any], step: Step
    ) -> None:
        leg_index = journey["stop"]
        if leg_index in journey.get("relayed", []):
            return
        journey = {**journey, "relayed": [*journey.get("relayed", []), leg_index]}
        tables.set("journeys", _jkey(chain, journey["id"]), journey)
        context = dict(leg["context"])
        message = notify.journey_message(journey)
        for name in ("messageData", "instructions"):
            if context.get(name) is None and message.get(name) is not None:
                context[name] = message[name]
        step.notifications.append(notify.relayed(journey, context, leg_index))
        step.count("relayed")

    # -- outcomes --

    def _final(
        self, tables: Tables, chain: str, journey: dict[str, Any], leg: dict[str, Any], step: Step
    ) -> None:
        self._consume(tables, chain, leg)
        if self._message_unknown(journey):
            # Matched by the topic before the last hop's message reached this stop: the receipt
            # waits (a short while) for it, so that it reports the message that ran here.
            hold_until = min(journey["deadline"], self.now() + self.settings.hold_ttl)
            tables.set(
                "journeys",
                _jkey(chain, journey["id"]),
                {**journey, "receipt": leg, "hold_until": hold_until},
            )
            step.deadlines.append((hold_until, chain, journey["id"]))
            step.count("receipt_held")
            return
        self._receive(tables, chain, journey, leg, step)

    def _message_unknown(self, journey: dict[str, Any]) -> bool:
        """Whether the final stop still lacks the message its previous stop forwarded (a
        journey of several stops whose last ``extend`` has not arrived), and it can come: the
        previous stop is followed."""
        return (
            len(journey["stops"]) > 1
            and not journey.get("extended")
            and self.monitored(journey["leg_from"])
        )

    def _receive(
        self,
        tables: Tables,
        chain: str,
        journey: dict[str, Any],
        leg: dict[str, Any],
        step: Step,
        *,
        late: bool = False,
    ) -> None:
        context = leg["context"]
        if len(journey["stops"]) > 1 and not journey.get("extended"):
            # The last hop's message never reached this stop: report what the receipt itself
            # says (its hash, when the event gives one) rather than the first leg's message.
            reported = leg["message_hash"]
            known = reported not in (journey.get("ids") or [])  # else it is the topic
            unknown: dict[str, Any] = {"messageData": None, "instructions": None}
            journey = {**journey, "message": {"messageHash": None, **unknown}}
            context = {**context, "messageHash": reported if known else None, **unknown}
        note = notify.received(journey, context, leg.get("assets_trapped"))
        if late:
            note["late"] = True
        step.notifications.append(note)
        if late:
            step.count("late_received")
            return
        step.count("received")
        self._end(tables, chain, journey, step)
        self._release_parked(tables, chain, leg, None, step)

    def _late(
        self, tables: Tables, chain: str, journey: dict[str, Any], leg: dict[str, Any], step: Step
    ) -> None:
        """The receipt of a journey that already timed out: reported once, flagged ``late``
        (the delivery layer counts it as late for subscriptions that had the timeout), and
        never kept for a later journey with the same bytes."""
        self._consume(tables, chain, leg)
        tables.set("journeys", _jkey(chain, journey["id"]), {**journey, "late": leg["identity"]})
        self._receive(tables, chain, journey, leg, step, late=True)
        self._release_parked(tables, chain, leg, None, step)

    def _release_parked(
        self,
        tables: Tables,
        chain: str,
        leg: dict[str, Any],
        journey: dict[str, Any] | None,
        step: Step,
    ) -> None:
        """Settle the hop-outs that waited on a receipt. With ``journey`` (the receipt was
        its hop-in here) they are its hop-outs, the possible ones if they forward it; without
        (the receipt ended its journey here, or expired) what they forwarded is a journey of
        its own."""
        if journey is None:
            for parked in leg.get("parked", []):
                self._new_journey(tables, SentLeg.model_validate(parked), step)
        else:
            for parked in leg.get("parked", []):
                self._hop_out(tables, chain, journey, SentLeg.model_validate(parked), step)
        self._release_candidates(tables, chain, leg, journey, step)

    def _hop_in(
        self, tables: Tables, chain: str, journey: dict[str, Any], leg: dict[str, Any], step: Step
    ) -> None:
        jid = journey["id"]
        self._consume(tables, chain, leg)
        journey = {**journey, "hopped_in": leg["identity"]}
        tables.set("journeys", _jkey(chain, jid), journey)
        tables.set("journeys", _jkey(chain, "in:" + leg["identity"]), {"journey": journey})
        if leg.get("kind") == "bridge":  # bridge hook: a bridge delivered it to this hub
            note = bridge.note(journey, leg, journey["stop"])
        else:
            note = notify.hop(
                journey, leg["context"], journey["stop"], "in", leg.get("assets_trapped")
            )
        if leg["outcome"] == "Fail" and not journey.get("done"):
            # The message stops here: the owner ends the journey with this as its terminal.
            step.records.append(
                (journey["owner"], {"kind": "terminate", "journey": jid, "notification": note})
            )
            step.count("hop_failed")
        else:
            step.notifications.append(note)
            step.count("hop_in")
        self._release_parked(tables, chain, leg, journey, step)

    def _hop_out(
        self, tables: Tables, chain: str, journey: dict[str, Any], leg: SentLeg, step: Step
    ) -> None:
        stops: list[str] = journey["stops"]
        k = journey["stop"]
        current = tables.get("journeys", _jkey(chain, journey["id"]))
        if current is not None and current.get("role") and not current.get("hopped_out"):
            tables.set("journeys", _jkey(chain, journey["id"]), {**current, "hopped_out": True})
        step.notifications.append(notify.hop(journey, leg.context, k + 1, "out"))
        step.count("hop_out")
        if k + 1 < len(stops):
            extend = {"kind": "extend", "journey": journey["id"], "ids": leg.ids}
            extend["message"] = _message_fields(leg)
            step.records.append((stops[k + 1], extend))

    def _end(
        self,
        tables: Tables,
        chain: str,
        journey: dict[str, Any],
        step: Step,
        *,
        ended: str = "received",
    ) -> None:
        """The journey is over (at its owner). Its entries stay, marked done, for
        ``closed_ttl`` (``late_ttl`` after a timeout, for the late receipt): relayed and hop
        legs that arrive late still notify, and a second receipt of the same id cannot end it
        twice. Every other stop is told."""
        ttl = self.settings.late_ttl if ended == "timeout" else self.settings.closed_ttl
        current = tables.get("journeys", _jkey(chain, journey["id"])) or journey
        tables.set(
            "journeys",
            _jkey(chain, journey["id"]),
            {**current, "done": True, "ended": ended, "expires": self.now() + ttl},
        )
        for stop in journey["stops"][:-1]:
            step.records.append((stop, {"kind": "close", "journey": journey["id"]}))

    def _forget(self, tables: Tables, chain: str, journey: dict[str, Any]) -> None:
        table = "outbound" if journey["role"] == "final" else "hop"
        for message_id in journey.get("keys", []):
            _remove(tables, table, f"{chain}:{message_id}", journey["id"])
        tables.delete("journeys", _jkey(chain, journey["id"]))
        if journey.get("hopped_in"):
            tables.delete("journeys", _jkey(chain, "in:" + journey["hopped_in"]))

    # -- records between partitions --

    def _on_index(self, tables: Tables, chain: str, record: dict[str, Any], step: Step) -> None:
        base = record["journey"]
        jid = base["id"]
        existing = tables.get("journeys", _jkey(chain, jid)) or {}
        if existing.get("role"):
            return  # re-delivered
        if existing.get("done"):
            return  # closed before it was indexed (records from two partitions raced)
        k = record["stop"]
        stops: list[str] = base["stops"]
        journey: dict[str, Any] = {
            **base,
            "stop": k,
            "role": record["role"],
            "owner": stops[-1],
            "leg_from": base["legs"][k]["from"] if k < len(base["legs"]) else base["origin"],
            "keys": [],
        }
        if record["role"] == "final":
            ttl = self.settings.bridge_journey_ttl if base["bridge"] else self.settings.journey_ttl
            journey["deadline"] = self.now() + ttl
            step.deadlines.append((journey["deadline"], chain, jid))
        for extension in existing.get("extensions", []):
            journey = {**_with_message(journey, extension.get("message")), "extended": True}
        ids = [*record["ids"], *(i for ext in existing.get("extensions", []) for i in ext["ids"])]
        self._add_keys(tables, chain, journey, ids, step)

    def _add_keys(
        self,
        tables: Tables,
        chain: str,
        journey: dict[str, Any],
        ids: Iterable[str],
        step: Step,
    ) -> None:
        table = "outbound" if journey["role"] == "final" else "hop"
        new = [i for i in dict.fromkeys(ids) if i not in journey["keys"]]
        journey = {**journey, "keys": [*journey["keys"], *new]}
        for message_id in new:
            _append(tables, table, f"{chain}:{message_id}", journey["id"])
        tables.set("journeys", _jkey(chain, journey["id"]), journey)
        bridge.pick_up(self, tables, chain, journey["id"], new, step)  # bridge hook
        # Legs that arrived before the journey was known here.
        for message_id in new:
            for pending in _relay_waiting(tables, chain, message_id):
                current = tables.get("journeys", _jkey(chain, journey["id"]))
                if current is None or current["leg_from"] != pending["leg"]["origin"]:
                    continue
                _drop_relay(tables, chain, pending)
                self._relayed(tables, chain, current, pending["leg"], step)
            for identity in list(tables.get("inbound", f"{chain}:{message_id}") or []):
                pending = tables.get("inbound", _jkey(chain, "leg:" + identity))
                if pending is None:
                    _remove(tables, "inbound", f"{chain}:{message_id}", identity)
                    continue
                leg = _with_waiters(pending)
                current = tables.get("journeys", _jkey(chain, journey["id"]))
                if current is None or not self._from_agrees(current, leg):
                    continue
                if self._before_send(current, leg):
                    continue  # an earlier identical message's receipt: not this journey's
                if current["role"] == "final" and _awaits_late_receipt(current):
                    # Its ids came late (a hop after the timeout): so did its receipt.
                    self._drop_pending(tables, "inbound", chain, pending)
                    self._late(tables, chain, current, leg, step)
                    return
                if current.get("done") or current.get("receipt"):
                    continue
                if current["role"] == "final":
                    self._drop_pending(tables, "inbound", chain, pending)
                    self._final(tables, chain, current, leg, step)
                    return
                if not current.get("hopped_in"):
                    self._drop_pending(tables, "inbound", chain, pending)
                    self._hop_in(tables, chain, current, leg, step)

    def _on_extend(self, tables: Tables, chain: str, record: dict[str, Any], step: Step) -> None:
        jid = record["journey"]
        journey = tables.get("journeys", _jkey(chain, jid))
        if journey is None or not journey.get("role"):
            if journey is not None and journey.get("done"):
                return
            # The index record has not arrived yet: keep the extension for it.
            pending = journey or {"id": jid, "expires": self.now() + self.settings.pending_ttl}
            pending = {**pending, "extensions": [*pending.get("extensions", []), record]}
            tables.set("journeys", _jkey(chain, jid), pending)
            return
        journey = {**_with_message(journey, record.get("message")), "extended": True}
        self._add_keys(tables, chain, journey, record["ids"], step)
        current = tables.get("journeys", _jkey(chain, jid))
        if current is not None and current.get("receipt") and not current.get("done"):
            # The receipt that waited for this message: now it can say what ran here.
            self._receive(tables, chain, current, current["receipt"], step)

    def _on_close(self, tables: Tables, chain: str, record: dict[str, Any], step: Step) -> None:
        jid = record["journey"]
        journey = tables.get("journeys", _jkey(chain, jid))
        if journey is None or not journey.get("role"):
            tables.set(
                "journeys",
                _jkey(chain, jid),
                {"id": jid, "done": True, "expires": self.now() + self.settings.closed_ttl},
            )
            return
        # Keep the hop entries a while so hop legs that arrive late still notify.
        tables.set(
            "journeys",
            _jkey(chain, jid),
            {**journey, "done": True, "expires": self.now() + self.settings.closed_ttl},
        )

    def _on_terminate(self, tables: Tables, chain: str, record: dict[str, Any], step: Step) -> None:
        journey = tables.get("journeys", _jkey(chain, record["journey"]))
        if journey is None or journey.get("done") or not journey.get("role"):
            # Ended already (received or timed out): the failed hop is an ordinary hop note.
            step.notifications.append(record["notification"])
            return
        step.notifications.append(record["notification"])
        step.count(record.get("counter", "terminal_hop_failed"))
        self._end(tables, chain, journey, step, ended="hop_failed")

    def _on_tick(self, tables: Tables, chain: str, record: dict[str, Any], step: Step) -> None:
        journey = tables.get("journeys", _jkey(chain, record["journey"]))
        if journey is None or journey.get("done") or journey.get("role") != "final":
            return
        if journey.get("receipt"):
            if journey["hold_until"] > self.now():
                step.deadlines.append((journey["hold_until"], chain, journey["id"]))
                return
            # The last hop's message did not come in time: report the receipt as it is.
            step.count("receipt_hold_expired")
            self._receive(tables, chain, journey, journey["receipt"], step)
            return
        if journey["deadline"] > self.now():
            step.deadlines.append((journey["deadline"], chain, journey["id"]))
            return
        step.notifications.append(mark_timeout(notify.timeout(journey), journey, self.coverage))
        step.count("timeout")
        self._end(tables, chain, journey, step, ended="timeout")

    def _on_sweep(self, tables: Tables, chain: str, record: dict[str, Any], step: Step) -> None:
        """Drop the expired entries a scan found (re-checked here: the scan may be stale)."""
        now = self.now()
        for table, key in record["keys"]:
            value = tables.get(table, key)
            if value is None or not isinstance(value, dict):
                continue
            expires = value.get("expires")
            if expires is None or expires > now:
                continue
            if table == "relay" and ("legs" in value or "leg" in value):
                if "leg" in value:  # one leg by identity, as versions before the current layout
                    tables.delete(table, key)
                    expired = [value]
                else:
                    expired = [pending for pending in value["legs"] if pending["expires"] <= now]
                for pending in expired:
                    _drop_relay(tables, chain, pending)
                    step.count("relay_expired")
            elif table == "inbound" and "leg" in value:
                self._drop_pending(tables, table, chain, value)
                step.count(f"{table}_expired")
                # Its journey never showed up: what it forwarded is a journey of its own.
                leg = _with_waiters(value)
                self._release_parked(tables, chain, leg, None, step)
            elif table == "journeys" and "parked_leg" in value:
                # None of its candidates' journeys came in time (their senders' ingress lags,
                # or they were sent before it started): it is announced as a journey of its own.
                tables.delete("journeys", key)
                self._new_journey(tables, SentLeg.model_validate(value["parked_leg"]), step)
            elif table == "journeys":
                if value.get("role"):
                    self._forget(tables, chain, value)
                else:
                    tables.delete("journeys", key)
            else:
                tables.delete(table, key)


def _message_fields(leg: SentLeg) -> dict[str, JsonValue]:
    return {
        # A DMP whose bytes were not read has no hash yet (never the all-zero placeholder).
        "messageHash": None if leg.message_hash == NO_HASH else leg.message_hash,
        "messageData": leg.message_data,
        "instructions": leg.instructions,
    }


def _relay_waiting(tables: Tables, chain: str, message_id: str) -> list[dict[str, Any]]:
    """The relayed legs waiting at ``chain`` under ``message_id`` (``{"leg", "ids",
    "expires"}`` each), oldest first.

    A relayed leg waits under each of its ids and nowhere else: nothing parks on it, as
    hop-outs park on a waiting receipt, so it needs no entry of its own by identity. That is
    one key fewer than a receipt, two changelog records fewer per leg that comes before its
    journey (written, then deleted). Versions before this layout listed identities here and
    kept each leg under ``leg:<identity>``: such a list is converted on first read
    (:func:`_upgrade_relay`)."""
    value = tables.get("relay", f"{chain}:{message_id}")
    if isinstance(value, list):
        value = _upgrade_relay(tables, chain, message_id)
    return list(value["legs"]) if value else []


def _set_relay(tables: Tables, chain: str, message_id: str, legs: list[dict[str, Any]]) -> None:
    """Store what waits under ``message_id``; its ``expires`` (the earliest of its legs', the
    value's last key, which the expiry index reads) brings the sweep when the first expires."""
    key = f"{chain}:{message_id}"
    if legs:
        tables.set("relay", key, {"legs": legs, "expires": min(leg["expires"] for leg in legs)})
    else:
        tables.delete("relay", key)


def _drop_relay(tables: Tables, chain: str, entry: dict[str, Any]) -> None:
    """Take a waiting relayed leg out from under each of its ids."""
    identity = entry["leg"]["identity"]
    for message_id in entry["ids"]:
        waiting = _relay_waiting(tables, chain, message_id)
        _set_relay(
            tables, chain, message_id, [w for w in waiting if w["leg"]["identity"] != identity]
        )


def _upgrade_relay(tables: Tables, chain: str, message_id: str) -> Any:
    """Convert the earlier layout (``{chain}:{id}`` listing identities, each leg under
    ``{chain}|leg:{identity}``) to the current one, for ``message_id`` and everything linked
    to it: every id of every leg listed there, and every leg listed under those ids, so that
    no leg is left in both layouts. Returns the converted value of ``message_id``."""
    holders = [message_id]
    legs: dict[str, dict[str, Any]] = {}
    at = 0
    while at < len(holders):
        listed = tables.get("relay", f"{chain}:{holders[at]}")
        at += 1
        if not isinstance(listed, list):
            continue
        for identity in listed:
            if identity in legs:
                continue
            entry = tables.get("relay", _jkey(chain, "leg:" + identity))
            if entry is None:
                continue  # matched or expired; the list had not been cleaned
            legs[identity] = entry
            tables.delete("relay", _jkey(chain, "leg:" + identity))
            holders.extend(i for i in entry["ids"] if i not in holders)
    for holder in holders:
        value = tables.get("relay", f"{chain}:{holder}")
        kept = [entry for entry in legs.values() if holder in entry["ids"]]  # older: first
        kept += value["legs"] if isinstance(value, dict) else []
        _set_relay(tables, chain, holder, kept)
    return tables.get("relay", f"{chain}:{message_id}")


def _with_waiters(entry: dict[str, Any]) -> dict[str, Any]:
    """A pending receipt's leg with the hop-outs waiting on it: ``parked`` (sure links) and
    ``candidates`` (identities of possible hop-outs, see ``Engine._release_candidates``)."""
    return {
        **entry["leg"],
        "parked": entry.get("parked", []),
        "candidates": entry.get("candidates", []),
    }


def _awaits_late_receipt(journey: dict[str, Any]) -> bool:
    """A journey that timed out and has not had its late receipt yet."""
    return journey.get("ended") == "timeout" and not journey.get("late")


def _with_message(journey: dict[str, Any], message: dict[str, Any] | None) -> dict[str, Any]:
    if not message:
        return journey
    return {**journey, "message": message}


def key_chain(key: str) -> str:
    """The chain a table key belongs to: what comes before ``|`` (journeys, seen, receipts
    kept by identity), else the chain's URN that starts a ``{chain}:{id}`` key. A URN has four
    ``:``-separated parts (``urn:ocn:<consensus>:<chain id>``, an alphanumeric id); an id may
    have colons of its own (a downward slot, ``dmp:<block>:<k>``)."""
    if "|" in key:
        return key.split("|", 1)[0]
    return ":".join(key.split(":", 4)[:4])


def expired_keys(
    table: str, items: Iterable[tuple[str, Any]], now: float
) -> Iterator[tuple[str, tuple[str, str]]]:
    """``(chain, (table, key))`` for each expired entry of a table scan (what sweeps delete)."""
    for key, value in items:
        if not isinstance(value, dict):
            continue
        expires = value.get("expires")
        if expires is None or expires > now:
            continue
        yield key_chain(key), (table, key)
