"""What JSON costs the matcher per journey, and what the largest lever left would save.

    python benchmarks/json_costs.py [--journeys N] [--repeat R]

Runs ``--journeys`` synthetic journeys (``benchmarks/journeys.py``, what ``benchmarks/xcm.py``
publishes) through the real :class:`ocstream.xcm.matching.Engine` in this process, on the
in-memory model of the matching dataflow that the order tests use (``tests/xcm/sim.py``:
partitions with their own tables and queues, no broker), and times, in µs per item (the best of
``--repeat`` passes, all in this run):

* **leg intake**: what ``xcm_match`` does with each leg record: ``orjson.loads`` of the record,
  then the leg's pydantic model (``model_validate``), by kind; beside it pydantic's own JSON
  parser into a record model (``model_validate_json``), the one-pass alternative;
* **journey entries**, as the engine stores them at the first stop (``journeys`` table, the
  entry that index records carry between partitions and that relayed legs and receipts read):
  ``orjson.loads`` and ``orjson.dumps`` as they are, and with the origin context (the largest
  part: the event and the program) held as JSON text, one string, instead of nested objects;
* **notifications**, encoded as the matcher queues them (``wire.json_value``), by kind.

Prints ``RATIOS`` of the alternatives against what the engine does now. Nothing is written
anywhere; no Redis is needed. ``docs/benchmarks.md`` (Issue 14, twenty-sixth round) says what
the figures meant for the worker.
"""

from __future__ import annotations

import argparse
import random
import sys
import timeit
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from journeys import journey_legs  # noqa: E402  benchmarks/ is this script's directory

from ocstream.transport.wire import json_value  # noqa: E402
from ocstream.xcm.legs import ReceivedLeg, RelayedLeg, SentLeg  # noqa: E402
from ocstream.xcm.matching import Tables  # noqa: E402
from tests.xcm.sim import Cluster  # noqa: E402

MODELS: dict[str, type[BaseModel]] = {
    "sent": SentLeg,
    "relayed": RelayedLeg,
    "received": ReceivedLeg,
}


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class SentRecord(_Record):
    kind: Literal["sent"]
    leg: SentLeg


class RelayedRecord(_Record):
    kind: Literal["relayed"]
    leg: RelayedLeg


class ReceivedRecord(_Record):
    kind: Literal["received"]
    leg: ReceivedLeg


RECORDS: dict[str, type[_Record]] = {
    "sent": SentRecord,
    "relayed": RelayedRecord,
    "received": ReceivedRecord,
}


def best_us(items: Sequence[Any], work: Callable[[Any], Any], repeat: int) -> float:
    """µs per item: the best of ``repeat`` passes over ``items``."""

    def one_pass() -> None:
        for item in items:
            work(item)

    return min(timeit.repeat(one_pass, number=1, repeat=repeat)) / len(items) * 1e6


def _is_journey(table: str, value: Any) -> bool:
    return table == "journeys" and isinstance(value, dict) and "origin_context" in value


class CountingTables(Tables):
    """The engine's tables, counting the journey entries read from the store (in a worker,
    each is a decode: ``_View.get``) and written at a commit (an encode). Reads of a step's
    own writes come from its overlay and cost a worker nothing."""

    def __init__(self, stores: dict[str, Any], counts: Counter[str]) -> None:
        super().__init__(stores)
        self.counts = counts

    def get(self, table: str, key: str) -> Any:
        from_store = (table, key) not in self.overlay
        value = super().get(table, key)
        if from_store and _is_journey(table, value):
            self.counts["journey reads"] += 1
        return value

    def commit(self) -> None:
        written = sum(_is_journey(table, value) for (table, _), value in self.overlay.items())
        self.counts["journey writes"] += written
        super().commit()


class CountingCluster(Cluster):
    """The matching dataflow's in-memory model (``tests/xcm/sim.py``: partitions with their
    own tables and queues, the real engine), counting the journey entries its steps decode and
    encode, and the records that carry a journey to a stop."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def tables(self, partition: int) -> Tables:
        return CountingTables(self.stores[partition], self.counts)

    def send(self, chain: str, record: dict[str, Any]) -> None:
        if "origin_context" in (record.get("journey") or {}):
            self.counts["records carrying a journey"] += 1
        super().send(chain, record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--journeys", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"command: python benchmarks/json_costs.py --journeys {args.journeys} "
          f"--repeat {args.repeat}")  # fmt: skip

    rng = random.Random(args.seed)
    legs = [leg for j in range(args.journeys) for leg in journey_legs(j, rng)]
    by_kind: dict[str, list[bytes]] = {}
    for _, raw in legs:
        by_kind.setdefault(orjson.loads(raw)["kind"], []).append(raw)

    # Sends first (each journey's entry at its stop is then as the index wrote it), then the
    # relayed legs and receipts, which end the journeys and give their notifications.
    matcher = CountingCluster()
    parsed = [(key, orjson.loads(raw)) for key, raw in legs]

    def match(sends: bool) -> None:
        for key, record in parsed:
            if (record["kind"] == "sent") == sends:
                matcher.send(key, record)
        matcher.drain()

    match(sends=True)
    journeys = [
        value
        for stores in matcher.stores
        for value in stores["journeys"].values()
        if "origin_context" in value
    ]
    match(sends=False)
    ended = matcher.counters.get("received", 0)
    if not journeys or ended != args.journeys:
        raise SystemExit(f"the engine ended {ended} of {args.journeys} journeys; nothing to time")

    ratios: dict[str, float] = {}
    print("\nleg intake (µs per leg)        bytes   loads+validate   validate_json   ratio")
    for kind, raws in by_kind.items():
        model, record_model = MODELS[kind], RECORDS[kind]

        def intake(raw: bytes, model: type[BaseModel] = model) -> BaseModel:
            return model.model_validate(orjson.loads(raw)["leg"])

        now = best_us(raws, intake, args.repeat)
        one_pass = best_us(raws, record_model.model_validate_json, args.repeat)
        size = sum(map(len, raws)) / len(raws)
        ratios[f"{kind}_validate_json"] = one_pass / now
        print(f"  {kind:<28} {size:>6,.0f}   {now:>14.2f}   {one_pass:>13.2f}   "
              f"{one_pass / now:>5.2f}")  # fmt: skip

    as_text = [
        {**journey, "origin_context": orjson.dumps(journey["origin_context"]).decode()}
        for journey in journeys
    ]
    stored = [orjson.dumps(journey) for journey in journeys]
    stored_text = [orjson.dumps(journey) for journey in as_text]
    context = [len(orjson.dumps(journey["origin_context"])) for journey in journeys]
    print(f"\njourney entries at their first stop: {len(journeys):,}, "
          f"{sum(map(len, stored)) / len(stored):,.0f} B, of which the origin context "
          f"{sum(context) / len(context):,.0f} B")  # fmt: skip
    decode_now = best_us(stored, orjson.loads, args.repeat)
    decode_text = best_us(stored_text, orjson.loads, args.repeat)
    encode_now = best_us(journeys, json_value, args.repeat)
    encode_text = best_us(as_text, json_value, args.repeat)
    ratios["journey_decode_text"] = decode_text / decode_now
    ratios["journey_encode_text"] = encode_text / encode_now
    print("                                 context as objects   context as text   ratio")
    print(f"  decode (µs)                    {decode_now:>18.2f}   {decode_text:>15.2f}   "
          f"{decode_text / decode_now:>5.2f}")  # fmt: skip
    print(f"  encode (µs)                    {encode_now:>18.2f}   {encode_text:>15.2f}   "
          f"{encode_text / encode_now:>5.2f}")  # fmt: skip

    per = {name: n / args.journeys for name, n in matcher.counts.items()}
    print("  per journey: " + ", ".join(f"{name} {n:.1f}" for name, n in sorted(per.items())))
    decodes = per.get("journey reads", 0) + per.get("records carrying a journey", 0)
    encodes = per.get("journey writes", 0) + per.get("records carrying a journey", 0)
    saved = decodes * (decode_now - decode_text) + encodes * (encode_now - encode_text)
    print(f"  so {decodes:.1f} decodes and {encodes:.1f} encodes of a journey per journey; "
          f"the context as text would save about {saved:.1f} µs of them")  # fmt: skip

    print("\nnotifications (µs to encode)   count    bytes     µs")
    kinds: dict[str, list[dict[str, Any]]] = {}
    for note in matcher.notifications:
        kinds.setdefault(str(note["type"]), []).append(note)
    total = 0.0
    for kind, notes in sorted(kinds.items()):
        size = sum(len(json_value(note)) for note in notes) / len(notes)
        took = best_us(notes, json_value, args.repeat)
        total += took * len(notes)
        print(f"  {kind:<28} {len(notes):>6,} {size:>8,.0f} {took:>6.2f}")
    print(f"  per journey: {total / args.journeys:.1f} µs")

    print("RATIOS " + " ".join(f"{name}={value:.2f}" for name, value in ratios.items()))


if __name__ == "__main__":
    main()
