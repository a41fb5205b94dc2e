"""The ingress and the XCM dataflow on a real local network (chopsticks: a relay chain and two
parachains).

Real signed DMP, UMP and XCMP transfers are executed by real runtimes. The ingress, run as
``ocstream ingress``, must follow all three networks, register them with their metadata, and
publish each transfer's "sent" block with the storage item that holds the message bytes; the
message's hash must match the id the destination chain reports. An ``ocstream worker`` on the
same Redis must turn each transfer into a journey whose ``xcm.received`` carries the outcome the
destination reported. ``tests/localnet/check.py``
does the work and prints one line per check. The first run installs chopsticks from npm into
``.localnet/`` (5 to 12 minutes); later runs reuse it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import SYSTEM_REDIS_URL
from tests.localnet.check import run

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_ingress_follows_the_local_network_and_attaches_the_sent_messages(
    capsys: pytest.CaptureFixture[str],
) -> None:
    workdir = Path(os.environ.get("OCSTREAM_LOCALNET_DIR", REPO / ".localnet")).resolve()
    code = run(workdir, SYSTEM_REDIS_URL)
    report = capsys.readouterr().out
    print(report)
    assert code == 0, report
    # The checks the issue names must have run (and passed), not just "no failure".
    for check in (
        "registry urn:ocn:local:0",
        "metadata urn:ocn:local:0",
        "metadata urn:ocn:local:1000",
        "metadata urn:ocn:local:1001",
        "DMP storage Dmp.DownwardMessageQueues(1000) attached",
        "UMP storage ParachainSystem.UpwardMessages attached",
        "XCMP storage ParachainSystem.HrmpOutboundMessages attached",
        "DMP correlated",
        "UMP correlated",
        "XCMP correlated",
        "DMP journey urn:ocn:local:0 -> urn:ocn:local:1000: outcome Success",
        "UMP journey urn:ocn:local:1000 -> urn:ocn:local:0: outcome Success",
        "XCMP journey urn:ocn:local:1000 -> urn:ocn:local:1001: outcome Fail "
        "(UntrustedReserveLocation)",
    ):
        assert f"PASS {check}" in report, f"no 'PASS {check}' in the report"
