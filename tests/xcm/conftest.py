"""Fixtures of the XCM tests: decoders and codecs for the recorded blocks."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ocstream.ingress.decode import DecoderCache, RuntimeDecoder
from ocstream.xcm.codec import VersionRoutedCodec, XcmCodec


@pytest.fixture(scope="module")
def decoders() -> DecoderCache:
    return DecoderCache()


@pytest.fixture(scope="module")
def routed_codec(decoder_for: Callable[[str, str], RuntimeDecoder]) -> XcmCodec:
    """For decoded blocks (no runtime metadata recorded): relay runtimes by XCM version."""
    v3_v5 = XcmCodec(decoder_for("urn:ocn:polkadot:0", "polkadot-1005001.scale"))
    v2_v4 = XcmCodec(decoder_for("urn:ocn:polkadot:0", "polkadot-1003003.scale"))
    return VersionRoutedCodec({2: v2_v4, 3: v3_v5, 4: v3_v5, 5: v3_v5})
