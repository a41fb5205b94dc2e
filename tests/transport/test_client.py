from __future__ import annotations

from ocstream.transport.client import Backoff


def test_backoff_grows_to_its_cap_and_never_overflows() -> None:
    backoff = Backoff(base=0.1, cap=5.0)
    first = backoff.next_delay()
    assert 0.05 <= first <= 0.1
    delays = [backoff.next_delay() for _ in range(5000)]  # days of retries
    assert all(2.5 <= d <= 5.0 for d in delays[20:])
    backoff.reset()
    assert backoff.next_delay() <= 0.1
