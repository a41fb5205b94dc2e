"""The matcher's settings from the environment: numbers, or a clear error naming the variable."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import topology
from ocstream.envvars import env_number, env_seconds
from ocstream.errors import ConfigError
from ocstream.xcm.matching import MatchSettings
from topology.xcm import (
    BATCH_SECONDS,
    NO_STANDBY_TABLES,
    XcmSettings,
    _setting,
    record_bound,
    table_names,
)

from ..workers import run_worker_once


def test_numbers_are_read_and_unset_ones_are_none() -> None:
    env = {"OCSTREAM_XCM_JOURNEY_TTL": "90", "OCSTREAM_XCM_BATCH_SECONDS": "0.01"}
    assert env_number(env, "OCSTREAM_XCM_BATCH_SECONDS") == 0.01
    assert env_number(env, "OCSTREAM_XCM_SWEEP_INTERVAL") is None
    assert env_number({"X": "inf"}, "X") == math.inf  # "never": a limit may mean it
    settings = MatchSettings.from_env(env)
    assert settings.journey_ttl == 90.0
    assert settings.pending_ttl == MatchSettings().pending_ttl


@pytest.mark.parametrize("raw", ["abc", "", "nan", "NaN", "1,5"])
def test_what_is_not_a_number_is_refused_by_name(raw: str) -> None:
    with pytest.raises(ValueError, match=r"^OCSTREAM_XCM_PENDING_TTL: not a number: "):
        MatchSettings.from_env({"OCSTREAM_XCM_PENDING_TTL": raw})
    with pytest.raises(ValueError, match=r"^X: not a number: "):
        env_number({"X": raw}, "X")


def test_the_match_agents_settings_are_read_from_the_environment_given() -> None:
    """What ``topology/xcm.py`` reads at start-up (the batch bounds, the sweep interval)."""
    assert XcmSettings.from_env({}) == XcmSettings()
    assert XcmSettings().batch_seconds == BATCH_SECONDS
    env = {
        "OCSTREAM_XCM_BATCH_SECONDS": "0.01",
        "OCSTREAM_XCM_BATCH_RECORDS": "inf",
        "OCSTREAM_XCM_SWEEP_INTERVAL": "2",
        "OCSTREAM_XCM_JOURNEY_TTL": "8",
    }
    settings = XcmSettings.from_env(env)
    assert (settings.batch_seconds, settings.batch_records, settings.sweep_every) == (
        0.01,
        math.inf,
        2.0,
    )
    assert settings.match.journey_ttl == 8.0
    with pytest.raises(ValueError, match="OCSTREAM_XCM_BATCH_SECONDS: not a number: 'ten ms'"):
        XcmSettings.from_env({"OCSTREAM_XCM_BATCH_SECONDS": "ten ms"})


@pytest.mark.parametrize(
    ("raw", "tables"),
    [
        (None, NO_STANDBY_TABLES),
        ("none", ()),
        (" None ", ()),
        ("inbound", ("inbound",)),
        ("seen, journeys,seen", ("seen", "journeys")),
        ("inbound,relay,", ("inbound", "relay")),
    ],
)
def test_the_tables_without_standbys_are_named_in_a_list(
    raw: str | None, tables: tuple[str, ...]
) -> None:
    """``OCSTREAM_XCM_NO_STANDBY_TABLES``: table names separated by commas (each once), or
    ``none``; unset, the tables of waiting legs."""
    env = {} if raw is None else {"OCSTREAM_XCM_NO_STANDBY_TABLES": raw}
    assert XcmSettings.from_env(env).no_standby_tables == tables
    assert NO_STANDBY_TABLES == ("inbound", "relay")


@pytest.mark.parametrize("raw", ["", " , ", "inbound,journey", "all", "inbound relay"])
def test_a_table_that_is_not_one_is_refused_by_name(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"^OCSTREAM_XCM_NO_STANDBY_TABLES='.*': expected 'none'"):
        table_names({"OCSTREAM_XCM_NO_STANDBY_TABLES": raw}, "OCSTREAM_XCM_NO_STANDBY_TABLES", ())


def test_the_dataflow_reads_its_environment_once_and_declares_with_it() -> None:
    """``topology.read_environment`` is what the command line calls before it starts anything;
    a bad part name or XCM value is refused there, by name."""
    settings = topology.read_environment({"OCSTREAM_XCM_SWEEP_INTERVAL": "3"})
    assert settings.parts == tuple(topology.PARTS)
    assert settings.xcm.sweep_every == 3.0
    assert topology.read_environment({"OCSTREAM_DATAFLOW": " demo, xcm "}).parts == ("demo", "xcm")
    with pytest.raises(ConfigError, match=r"OCSTREAM_DATAFLOW: unknown parts \['nope'\]"):
        topology.read_environment({"OCSTREAM_DATAFLOW": "xcm,nope"})
    with pytest.raises(ConfigError, match="^OCSTREAM_XCM_PENDING_TTL: not a number: 'x'"):
        topology.read_environment({"OCSTREAM_XCM_PENDING_TTL": "x"})


@pytest.mark.parametrize(
    ("value", "bound"),
    [(500.0, 500), (2.7, 2), (0.0, 1), (-3.0, 1), (math.inf, math.inf), (-math.inf, 1)],
)
def test_a_batch_bound_in_records_is_whole_at_least_one_or_none(value: float, bound: float) -> None:
    """``OCSTREAM_XCM_BATCH_RECORDS=inf`` is no bound by count, not an overflow at start-up."""
    assert record_bound(value) == bound


@pytest.mark.parametrize("name", ["OCSTREAM_XCM_SWEEP_INTERVAL", "OCSTREAM_XCM_BATCH_SECONDS"])
def test_a_negative_duration_is_refused_by_name(name: str) -> None:
    """A negative interval or batch time meant nothing (it acted as 0): a clear error instead."""
    with pytest.raises(ValueError, match=f"^{name}: a duration in seconds, 0 or more, not '-5'"):
        _setting({name: "-5"}, name, 1.0, env_seconds)
    for raw, value in (("0", 0.0), ("2.5", 2.5), ("inf", math.inf)):
        assert _setting({name: raw}, name, 1.0, env_seconds) == value
    assert _setting({name: "-5"}, name, 1.0) == -5.0  # a plain number may be negative (a bound)
    assert _setting({}, name, 1.0, env_seconds) == 1.0


def test_a_negative_time_limit_of_the_matcher_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="^OCSTREAM_XCM_JOURNEY_TTL: a duration in seconds"):
        MatchSettings.from_env({"OCSTREAM_XCM_JOURNEY_TTL": "-1"})
    assert env_seconds({"X": "-0"}, "X") == 0.0  # negative zero is zero
    assert MatchSettings.from_env({"OCSTREAM_XCM_CLOCK_SLACK": "0"}).clock_slack == 0.0


def test_an_unknown_dataflow_part_is_refused_before_starting_redis(tmp_path: Path) -> None:
    done = run_worker_once(tmp_path, OCSTREAM_DATAFLOW="xcm,nope")
    assert done.returncode == 2, done.stderr[-2000:]
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("ocstream: OCSTREAM_DATAFLOW: unknown parts ['nope']")
    assert not (tmp_path / "redis").exists()
