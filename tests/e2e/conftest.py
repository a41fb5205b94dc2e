"""Fixtures of the end-to-end tests: one local network for the whole session (each test has its
own Redis prefix, subscriptions and receiver, and looks only at its own transfers' blocks)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.localnet.network import LocalNet, prepare

from .harness import WORKDIR


def _ports_busy() -> str:
    out = subprocess.run(["ss", "-ltn"], capture_output=True, text=True, check=False).stdout
    return "\n".join(
        line for line in out.splitlines() if any(f":{p} " in line for p in (8100, 8101, 8102))
    )


@pytest.fixture(scope="session")
def net() -> Iterator[LocalNet]:
    busy = _ports_busy()
    if busy:
        pytest.fail(f"the local network's ports 8100-8102 are taken (another run?):\n{busy}")
    prepare(WORKDIR)
    with LocalNet(WORKDIR) as network:
        yield network


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path
