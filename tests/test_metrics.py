"""``/metrics`` through prometheus_client: valid text, and the same metrics as before.

The hand-built exposition text of four modules gave, for the state of
:func:`tests.metrics_sample.sample_app`, the names, types and label names saved in
``tests/data/metrics_before.json``; :mod:`ocstream.metrics` must give the same set (dead-letter
kinds with hyphens aside: those names were not valid Prometheus names, they now use ``_``), as
text that prometheus_client's own parser reads.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ocstream import metrics
from ocstream.ingress.metrics import IngressMetrics
from tests.metrics_sample import metric_set, sample_app
from tests.workers import Worker, wait_for

BEFORE = Path(__file__).parent / "data" / "metrics_before.json"

#: Metrics added since ``metrics_before.json`` was captured, each for a reason of its own.
ADDED = [
    # Receipts after their journey's timeout, reported once (docs/matching.md; XCM.md §14).
    ["oc_engine_late_received_total", "counter", []],
    # Notifications published to the workers holding websocket subscriptions: none while no
    # socket is open anywhere (docs/notifications.md).
    ["oc_delivery_fanned_out_total", "counter", []],
    # Changelog records a standby wrote to its stores straight from the fetch
    # (docs/transport.md, Consumer).
    ["ocstream_transport_standby_records_applied_total", "counter", []],
    # Records agents took straight from the fetch, and those dropped as stale at a rebalance
    # (docs/transport.md, Consumer: direct feeds).
    ["ocstream_transport_direct_records_taken_total", "counter", []],
    ["ocstream_transport_direct_records_dropped_total", "counter", []],
    # Compressed values that did not decompress, handed on as they are (docs/transport.md,
    # Compressed values).
    ["ocstream_transport_values_undecompressed_total", "counter", []],
    # The group leader's checks of its assignment against the traffic, the rebalances it
    # started because traffic was uneven, and partitions the assignor swapped by traffic
    # (docs/transport.md, Assignment weighed by traffic).
    ["ocstream_transport_traffic_checks_total", "counter", []],
    ["ocstream_transport_traffic_rebalances_total", "counter", []],
    ["ocstream_transport_partition_swaps_total", "counter", []],
    # Records per partition the leader's current assignment was weighed against
    # (ocstream/transport/traffic.py).
    ["ocstream_group_assignment_weighed_records", "gauge", []],
    # The worker's garbage collections, timed (ocstream/runtime.py, docs/metrics.md).
    ["ocstream_gc_collections_total", "counter", ["generation"]],
    ["ocstream_gc_pause_max_seconds", "gauge", ["generation"]],
    ["ocstream_gc_seconds_total", "counter", ["generation"]],
    # How late the worker's event loop runs what is ready (ocstream/looplag.py); a histogram,
    # whose samples metric_set lists one by one (the type line names the family, not them).
    ["ocstream_event_loop_lag_max_seconds", "gauge", []],
    ["ocstream_event_loop_lag_seconds_bucket", "untyped", ["le"]],
    ["ocstream_event_loop_lag_seconds_count", "untyped", []],
    ["ocstream_event_loop_lag_seconds_sum", "untyped", []],
    # Extraction and matching waiting for what delivery holds (ocstream/stages.py).
    ["ocstream_delivery_first_wait_seconds_total", "counter", []],
    ["ocstream_delivery_first_waits_total", "counter", []],
    ["ocstream_delivery_backlog", "gauge", []],
    # Webhook deliveries attempted at once by the dispatcher that enqueued them
    # (ocstream/sinks/webhook.py, "Hand-off").
    ["oc_webhook_handed_off_total", "counter", []],
    # The producer's write round trips: records_produced over it is records per write
    # (docs/transport.md, Producer).
    ["ocstream_transport_produce_writes_total", "counter", []],
    # An agent held back until the producer had written what it queued, and for how long in all
    # (transport/producer.py, wait_room).
    ["ocstream_transport_produce_waits_total", "counter", []],
    ["ocstream_transport_produce_wait_seconds_total", "counter", []],
    # Records Redis refused for good (WRONGTYPE ...), not written (docs/transport.md, Producer).
    ["ocstream_transport_produce_failed_total", "counter", []],
    # Records the producer holds queued or being written, now and at most since start
    # (transport/producer.py; what wait_room bounds).
    ["ocstream_transport_produce_queued_records", "gauge", []],
    ["ocstream_transport_produce_queued_peak_records", "gauge", []],
    # How long the producer's write round trips took, each one transaction that Redis runs
    # without serving anyone else (docs/transport.md, "How large a round trip is").
    ["ocstream_transport_produce_round_trip_max_seconds", "gauge", []],
    ["ocstream_transport_produce_round_trip_seconds_bucket", "untyped", ["le"]],
    ["ocstream_transport_produce_round_trip_seconds_count", "untyped", []],
    ["ocstream_transport_produce_round_trip_seconds_sum", "untyped", []],
]


def parsed(text: str) -> dict[str, Any]:
    """Families by name, as prometheus_client's parser reads the text (it raises on bad text)."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_worker_metrics_are_those_of_before() -> None:
    app = sample_app()
    # The worker collectors only: metrics that modules register in metrics.REGISTRY are not
    # part of the comparison (they depend on what this process imported).
    text = metrics.render(lambda: metrics.collect_worker(app), registry=None).decode()
    families = parsed(text)
    before = json.loads(BEFORE.read_text())
    expected = sorted(
        [[metrics.metric_name(name), kind, labels] for name, kind, labels in before] + ADDED
    )
    assert metric_set(text) == expected
    # The dead-letter counters whose kinds have hyphens are there, under valid names.
    assert "oc_xcm_dead_letters_bad-block_total" in {name for name, _, _ in before}
    assert families["oc_xcm_dead_letters_bad_block"].samples[0].value == 1
    # Values, not only names: a counter, a labelled counter, a gauge, the consumer lag.
    assert families["oc_engine_hop"].samples[0].value == 2  # hop_in + hop_out
    samples = {s.labels["type"]: s.value for s in families["oc_notifier_notification"].samples}
    assert samples == {"xcm.sent": 6, "xcm.received": 4}
    assert families["oc_webhook_dead"].samples[0].value == 2
    lag = {
        (s.labels["topic"], s.labels["partition"]): s.value
        for s in families["ocstream_consumer_lag_records"].samples
    }
    assert lag == {("blocks", "0"): 15, ("xcm-legs", "1"): 20}
    assert families["ocstream_delivery_first_waits"].samples[0].value == 5
    assert families["ocstream_delivery_first_wait_seconds"].samples[0].value == 0.125
    assert families["ocstream_delivery_backlog"].samples[0].value == 5  # 4 - 2 + 3
    assert families["ocstream_group_assignment_weighed_records"].samples[0].value == 1250
    trips = {
        s.labels.get("le", s.name): s.value
        for s in families["ocstream_transport_produce_round_trip_seconds"].samples
    }
    assert (trips["0.0025"], trips["0.005"], trips["0.025"], trips["0.05"]) == (1, 2, 2, 3)
    assert trips["ocstream_transport_produce_round_trip_seconds_count"] == 3
    assert families["ocstream_transport_produce_round_trip_max_seconds"].samples[0].value == 0.03
    ingress = families["ocstream_ingress_backlog_blocks"].samples[0]
    assert (ingress.labels, ingress.value) == ({"network": "urn:ocn:polkadot:0"}, 2)


def test_the_ingress_and_the_hub_render_through_the_same_module() -> None:
    ingress = IngressMetrics()
    ingress.networks["urn:ocn:polkadot:1000"].errors = 4
    families = parsed(ingress.render().decode())
    assert families["ocstream_ingress_errors"].type == "counter"
    assert families["ocstream_ingress_errors"].samples[0].value == 4
    hub = sample_app().websocket_hub
    hub.frames_forwarded, hub.frames_dropped, hub.reconnects = 7, 1, 0
    hub_text = metrics.render(lambda: metrics.websocket_families(hub)).decode()
    assert parsed(hub_text)["oc_ws_frames_forwarded"].samples[0].value == 7


def test_a_registered_metric_shows_in_every_worker_render() -> None:
    counter = metrics.counter("oc_test_registry_probe_total", "A test's counter.", ["kind"])
    try:
        counter.labels(kind="x").inc(3)
        families = parsed(metrics.render_worker(sample_app()).decode())
        (sample,) = families["oc_test_registry_probe"].samples
        assert (sample.name, sample.labels, sample.value) == (
            "oc_test_registry_probe_total",
            {"kind": "x"},
            3,
        )
    finally:
        metrics.REGISTRY.unregister(counter)


def test_a_real_worker_serves_parseable_metrics(
    redis_url: str, prefix: str, app_id: str, tmp_path: Path
) -> None:
    worker = Worker("w1", tmp_path, redis_url=redis_url, prefix=prefix, app_id=app_id)
    try:
        worker.start()
        worker.wait_assigned()
        url = f"http://127.0.0.1:{worker.port}/metrics"

        def scrape() -> tuple[str, str]:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.headers["Content-Type"], response.read().decode()

        content_type, text = wait_for(scrape, 30, "/metrics")
    finally:
        worker.stop()
    assert content_type.startswith("text/plain; version=0.0.4")
    families = parsed(text)
    assert families["ocstream_group_generation"].samples[0].value >= 1
    assert families["ocstream_group_assigned_partitions"].samples[0].value >= 1
    assert families["ocstream_transport_records_fetched"].type == "counter"
    assert "oc_engine_out" in families and "oc_active_subscriptions_count" in families
