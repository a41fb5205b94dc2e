"""Shared fixtures of the ingress tests: the recorded chain data and runtime decoders built from it.

The data is ``../shared/fixtures`` next to the repository (or ``$OCSTREAM_FIXTURES``). Without it
the ingress tests fail: they are the proof that real blocks decode, and a silent skip would hide
that the proof did not run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from ocstream.ingress.decode import DecoderCache, RuntimeDecoder

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    path = Path(os.environ.get("OCSTREAM_FIXTURES", REPO.parent / "shared" / "fixtures"))
    if not (path / "README.md").is_file():
        pytest.fail(f"the recorded chain fixtures are missing: no {path / 'README.md'}")
    return path


@pytest.fixture(scope="session")
def decoder_cache() -> DecoderCache:
    """One cache for the whole session: each metadata file is read and compiled once."""
    return DecoderCache()


@pytest.fixture(scope="session")
def decoder_for(
    fixtures_dir: Path, decoder_cache: DecoderCache
) -> Callable[[str, str], RuntimeDecoder]:
    """``decoder_for(network, "polkadot-1000001.scale")``: the runtime decoder of that metadata file
    (the spec version is the number in its name, which the decoder checks against the file)."""

    def get(network: str, metadata_file: str) -> RuntimeDecoder:
        spec_version = int(metadata_file.removesuffix(".scale").rsplit("-", 1)[1])
        path = fixtures_dir / "metadata" / metadata_file
        return decoder_cache.get_or_build(network, spec_version, path.read_bytes)

    return get
