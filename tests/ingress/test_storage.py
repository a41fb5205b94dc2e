"""Which storage items the ingress reads for a block, on real blocks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ocstream.ingress.decode import RuntimeDecoder, build_extended_block
from ocstream.ingress.raw import load_v1_cbor
from ocstream.ingress.storage import (
    HRMP_OUTBOUND,
    UPWARD,
    child_para,
    downward_queue,
    storage_needed,
)


def test_keys_are_the_ones_real_chains_use() -> None:
    # The constants of shared/design/XCM.md §4, seen in real data.
    assert HRMP_OUTBOUND.key == (
        "0x45323df7cc47150b3930e2666b0aa3134ec0959dca9d4616632a822d7523ba63"
    )
    assert UPWARD.key == "0x45323df7cc47150b3930e2666b0aa313549294c71991aee810463ccf34a0f1d1"
    prefix = "0x63f78c98723ddc9073523ef3beefda0ca95dac46c07a40d91506e7637ec4ba57"
    assert downward_queue(1000).key == prefix + "b6ff6f7d467b87a9e8030000"
    assert downward_queue(1001).key == prefix + "adc7217647a32b0be9030000"
    assert downward_queue(2034).key == prefix + "c77a93d174890f1ff2070000"


@pytest.mark.parametrize(
    ("location", "para"),
    [
        ({"V3": {"parents": 0, "interior": {"X1": {"Parachain": 2034}}}}, 2034),
        ({"V4": {"parents": 0, "interior": {"X1": [{"Parachain": 1000}]}}}, 1000),
        ({"parents": 0, "interior": {"X2": [{"Parachain": 7}, {"GeneralIndex": 1}]}}, 7),
        ({"V3": {"parents": 1, "interior": {"X1": {"Parachain": 1000}}}}, None),
        ({"V3": {"parents": 0, "interior": "Here"}}, None),
        (None, None),
    ],
)
def test_child_para_reads_every_location_shape(location: object, para: int | None) -> None:
    assert child_para(location) == para


@pytest.mark.parametrize(
    ("recording", "metadata", "network", "relay", "expected"),
    [
        # DMP by event (XcmPallet.Sent to Hydration) in the first block only.
        (
            "polkadot-hop-19777220.cbor.bin",
            "polkadot-1000001.scale",
            "urn:ocn:polkadot:0",
            True,
            [["DownwardMessageQueues:2034"], []],
        ),
        # DMP by extrinsic on an old relay that emits no Sent event (to para 2000).
        (
            "dmp-out.cbor.bin",
            "polkadot-9430.scale",
            "urn:ocn:polkadot:0",
            True,
            [["DownwardMessageQueues:2000"], [], []],
        ),
        # HRMP and UMP sends on Asset Hub.
        (
            "hrmp-out-1000.cbor.bin",
            "assethub-9430.scale",
            "urn:ocn:polkadot:1000",
            False,
            [["HrmpOutboundMessages"], [], []],
        ),
        (
            "ump-out-1000.cbor.bin",
            "assethub-9430.scale",
            "urn:ocn:polkadot:1000",
            False,
            [[], ["UpwardMessages"], []],
        ),
        # A receiving chain reads nothing.
        (
            "hrmp-in-2032-success.cbor.bin",
            "interlay-1025002.scale",
            "urn:ocn:polkadot:2032",
            False,
            [[], [], []],
        ),
    ],
)
def test_storage_needed_on_real_blocks(
    fixtures_dir: Path,
    decoder_for: Callable[[str, str], RuntimeDecoder],
    recording: str,
    metadata: str,
    network: str,
    relay: bool,
    expected: list[list[str]],
) -> None:
    decoder = decoder_for(network, metadata)
    found = []
    for raw in load_v1_cbor(fixtures_dir / "raw/v1" / recording):
        block = build_extended_block(network, decoder, raw.header, raw.extrinsics, raw.events)
        names = []
        for request in storage_needed(block, is_relay=relay, runtime=decoder):
            name = request.item
            if request.item == "DownwardMessageQueues":
                name += f":{int.from_bytes(bytes.fromhex(request.key[-8:]), 'little')}"
            names.append(name)
        found.append(names)
    assert found == expected
