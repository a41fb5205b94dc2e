"""Settings read straight from the environment (``ocstream/envvars.py``): a value, the default,
or one clear error naming the variable, also on the command line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ocstream.envvars import env_choice, env_count, env_seconds
from ocstream.errors import ConfigError, SettingError

from .workers import run_worker_once


def test_a_period_must_be_more_than_zero_where_it_says_so() -> None:
    assert env_seconds({"X": "0"}, "X") == 0.0
    with pytest.raises(SettingError, match=r"^X: a duration in seconds, more than 0, not '0'$"):
        env_seconds({"X": "0"}, "X", positive=True)
    with pytest.raises(SettingError, match=r"^X: a duration in seconds, more than 0, not '-0'$"):
        env_seconds({"X": "-0"}, "X", positive=True)
    assert env_seconds({"X": "0.5"}, "X", positive=True) == 0.5
    assert env_seconds({"X": "inf"}, "X", positive=True) == math.inf
    assert env_seconds({}, "X", positive=True) is None


@pytest.mark.parametrize(("raw", "value"), [("0", 0), ("512", 512), (" 64 ", 64)])
def test_a_count_is_a_whole_number_from_zero(raw: str, value: int) -> None:
    assert env_count({"N": raw}, "N", 7) == value
    assert env_count({}, "N", 7) == 7


@pytest.mark.parametrize("raw", ["-1", "1.5", "1e3", "", "many"])
def test_what_is_not_a_count_is_refused_by_name(raw: str) -> None:
    with pytest.raises(SettingError, match=r"^N: a whole number, 0 or more, not ") as caught:
        env_count({"N": raw}, "N", 7)
    assert repr(raw) in str(caught.value)
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, ValueError)


def test_a_choice_is_one_of_its_names() -> None:
    assert env_choice({}, "C", ("zstd", "zlib"), "zstd") == "zstd"
    assert env_choice({"C": "zlib"}, "C", ("zstd", "zlib"), "zstd") == "zlib"
    with pytest.raises(SettingError, match=r"^C: zlib or zstd, not 'ZLIB'$"):
        env_choice({"C": "ZLIB"}, "C", ("zstd", "zlib"), "zstd")


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("OCSTREAM_TRANSPORT_COMPRESS_MIN_BYTES", "-1", "a whole number, 0 or more, not '-1'"),
        ("OCSTREAM_TRANSPORT_COMPRESSION", "lz4", "zlib or zstd or zstd-dict, not 'lz4'"),
        ("OCSTREAM_GC_YOUNG_EVERY", "0", "a duration in seconds, more than 0, not '0'"),
        ("OCSTREAM_ROCKSDB_CACHE_MB", "lots", "a whole number, 0 or more, not 'lots'"),
        ("OCSTREAM_ROCKSDB_MEMTABLES_MB", "-256", "a whole number, 0 or more, not '-256'"),
        # Read by topology.read_environment, before anything starts (they used to be read when
        # the dataflow was declared, after an embedded Redis had started).
        ("OCSTREAM_XCM_SWEEP_INTERVAL", "-5", "a duration in seconds, 0 or more, not '-5'"),
        ("OCSTREAM_XCM_JOURNEY_TTL", "soon", "not a number: 'soon'"),
    ],
)
def test_the_worker_refuses_a_bad_value_in_one_line_before_starting_redis(
    name: str, raw: str, message: str, tmp_path: Path
) -> None:
    """The command line reads these before it starts an embedded Redis (the transport's and the
    collector's by importing their modules), and says what is wrong in one line, without a
    traceback."""
    done = run_worker_once(tmp_path, **{name: raw})
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [f"ocstream: {name}: {message}"]
    assert not (tmp_path / "redis").exists()  # no embedded Redis was started
