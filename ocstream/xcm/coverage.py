"""The start-up boundary: journeys whose receipt may lie before a stop's ingress began.

An ingress that starts a network with no stored tip (or skips a gap with ``recovery = false``)
publishes from the current finalized block on, and records that block in the network registry
(``covered_from`` and ``covered_from_timestamp`` of
:class:`~ocstream.ingress.registry.NetworkRecord`). Chains are followed independently, so a
message sent from an origin block published after that start may have been received (or
hopped) on another stop in a block before that stop's start: its receipt will never be seen.

Such a journey is not timed out silently. When its deadline passes, the owner asks
:func:`uncovered_stop`: if a stop's continuous coverage began **after** the send (block
timestamps, which all chains take from wall-clock time), the ``xcm.timeout`` says so with
:func:`mark_timeout`: ``timeoutReason: "not-covered"`` and the stop's coverage start. A stop
followed since before the send gives a plain timeout: its receipt, if any, was published.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import JsonValue

__all__ = ["Coverage", "CoverageOf", "coverage_of_record", "mark_timeout", "uncovered_stop"]


@dataclass(frozen=True, slots=True)
class Coverage:
    """Where a network's continuous coverage began: the first block of the current stretch."""

    block_number: int
    timestamp: int  # ms since the epoch, the block's Timestamp.set


CoverageOf = Callable[[str], Coverage | None]


def coverage_of_record(record: Any) -> Coverage | None:
    """The coverage a registry record states (None for records written before it existed, or a
    start block without a timestamp)."""
    number = getattr(record, "covered_from", None)
    timestamp = getattr(record, "covered_from_timestamp", None)
    if number is None or timestamp is None:
        return None
    return Coverage(int(number), int(timestamp))


def uncovered_stop(
    journey: Mapping[str, Any], coverage_of: CoverageOf
) -> dict[str, JsonValue] | None:
    """The first stop of ``journey`` whose coverage began after the journey was sent, as the
    payload's ``coverage`` object; None when every stop was covered (or nothing is known)."""
    origin = journey.get("origin_context") or {}
    sent = origin.get("timestamp") if isinstance(origin, Mapping) else None
    if not isinstance(sent, int):
        return None
    for stop in journey.get("stops") or []:
        coverage = coverage_of(stop)
        if coverage is not None and coverage.timestamp > sent:
            return {
                "chainId": stop,
                "coveredFromBlock": str(coverage.block_number),
                "coveredFromTimestamp": coverage.timestamp,
                "sentTimestamp": sent,
            }
    return None


def mark_timeout(
    payload: dict[str, JsonValue], journey: Mapping[str, Any], coverage_of: CoverageOf | None
) -> dict[str, JsonValue]:
    """``payload`` (an ``xcm.timeout``), flagged when a stop was not covered at the send."""
    if coverage_of is None:
        return payload
    gap = uncovered_stop(journey, coverage_of)
    if gap is not None:
        payload["timeoutReason"] = "not-covered"
        payload["coverage"] = gap
    return payload
