"""ocstream's Prometheus metrics, written by ``prometheus_client``.

Everything ``/metrics`` shows goes through this module; nothing else builds exposition text.
There are two kinds of metric, and a helper for each:

* **Updated as things happen**: declare it once at module level with :func:`counter`,
  :func:`gauge` or :func:`histogram` (thin wrappers of ``prometheus_client``'s classes, registered
  in :data:`REGISTRY`) and update it where the event happens::

      from ocstream import metrics

      RECONNECTS = metrics.counter(
          "ocstream_follower_reconnects_total", "Reconnections to a node.", ["network"]
      )
      ...
      RECONNECTS.labels(network=urn).inc()

  Every worker's (and ingress') ``/metrics`` includes :data:`REGISTRY`.

* **Read when scraped** from state the process already keeps (a ``Counter`` of a component, a
  figure from Redis): a function ``(app) -> Iterable[Metric]`` decorated with
  :func:`worker_collector`. It is called on every scrape of a worker's ``/metrics`` with the
  faust app; it yields ``prometheus_client.core`` metric families (``CounterMetricFamily``,
  ``GaugeMetricFamily``) and must tolerate a missing component (``getattr(app, "x", None)``).
  The collectors below are the worker's metrics; the ingress process renders
  :func:`ingress_families`, :func:`gc_families` and :func:`loop_families`.

A counter's name is given with its ``_total`` suffix, as it appears in the text. Names use
``[a-zA-Z0-9_]`` only: :func:`metric_name` turns anything else (the hyphens of dead-letter
kinds) into ``_``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .durations import Durations

__all__ = [
    "CONTENT_TYPE",
    "REGISTRY",
    "collect_worker",
    "counter",
    "gauge",
    "gc_families",
    "histogram",
    "ingress_families",
    "loop_families",
    "metric_name",
    "render",
    "render_worker",
    "websocket_families",
    "worker_collector",
]

# No ``*_created`` series next to counters: ocstream's counters are per process, and their
# start is ``process_start_time_seconds``'s business.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: The content type of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Metrics updated as things happen (see :func:`counter`); rendered by every ``/metrics``.
REGISTRY = CollectorRegistry(auto_describe=True)

WorkerCollector = Callable[[Any], Iterable[Metric]]
_WORKER_COLLECTORS: list[WorkerCollector] = []

_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(name: str) -> str:
    """``name`` with every character Prometheus does not allow in a name replaced by ``_``."""
    return _INVALID.sub("_", name)


def counter(name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
    """A counter in :data:`REGISTRY` (``name`` ends in ``_total``)."""
    return Counter(name, documentation, list(labels), registry=REGISTRY)


def gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
    """A gauge in :data:`REGISTRY`."""
    return Gauge(name, documentation, list(labels), registry=REGISTRY)


def histogram(
    name: str,
    documentation: str,
    labels: Sequence[str] = (),
    buckets: Sequence[float] = Histogram.DEFAULT_BUCKETS,
) -> Histogram:
    """A histogram in :data:`REGISTRY`."""
    return Histogram(name, documentation, list(labels), registry=REGISTRY, buckets=buckets)


def worker_collector(function: WorkerCollector) -> WorkerCollector:
    """Register ``function(app)`` to add metric families to every worker's ``/metrics``."""
    _WORKER_COLLECTORS.append(function)
    return function


class _Families(Collector):
    """A collector yielding what a function gives at each scrape."""

    def __init__(self, produce: Callable[[], Iterable[Metric]]) -> None:
        self._produce = produce

    def collect(self) -> Iterable[Metric]:
        return self._produce()


def render(
    *families: Callable[[], Iterable[Metric]], registry: CollectorRegistry | None = REGISTRY
) -> bytes:
    """Text exposition of ``registry`` (:data:`REGISTRY`; None: none) and of the families the
    callables yield."""
    combined = CollectorRegistry(auto_describe=False)
    if registry is not None:
        combined.register(_Families(registry.collect))
    for produce in families:
        combined.register(_Families(produce))
    return generate_latest(combined)


def collect_worker(app: Any) -> Iterator[Metric]:
    """The families of every :func:`worker_collector`, for ``app``."""
    for function in _WORKER_COLLECTORS:
        yield from function(app)


def render_worker(app: Any) -> bytes:
    """A worker's ``/metrics``: :data:`REGISTRY` and the worker collectors for ``app``.

    ``app.webhook_gauges`` (read from Redis) must be filled in before, by the async caller.
    """
    return render(lambda: collect_worker(app))


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _labelled(
    family: CounterMetricFamily | GaugeMetricFamily, rows: Iterable[tuple[Sequence[str], float]]
) -> CounterMetricFamily | GaugeMetricFamily:
    for labels, value in rows:
        family.add_metric(list(labels), value)
    return family


# -- the worker's metrics ------------------------------------------------------------------------

TRANSPORT_HELP = {
    "records_produced": "Records appended to topics by this process.",
    "produce_writes": "Round trips in which the producer appended records.",
    "produce_retries": (
        "Produce round trips retried because Redis did not answer or refused writes for now "
        "(out of memory, read-only, loading)."
    ),
    "produce_failed": (
        "Records Redis refused for good (e.g. WRONGTYPE: another value holds the topic's key); "
        "they were not written."
    ),
    "produce_waits": (
        "Times an agent waited for the producer to write the records it had queued (it had "
        "queued more than Redis took in)."
    ),
    "produce_wait_seconds": "Seconds agents spent in those waits, summed.",
    "records_fetched": "Records fetched from topic partitions.",
    "fetch_errors": "Fetches that failed with a Redis error.",
    "commits": "Offset commits attempted.",
    "commits_fenced": "Offset commits refused because the generation moved on.",
    "rebalances": "Assignments taken by this process.",
    "traffic_checks": (
        "Times this process, as leader, weighed the traffic against its assignment (looks "
        "at too little traffic to weigh are not counted)."
    ),
    "traffic_rebalances": "Rebalances this process started as leader because traffic was uneven.",
    "partition_swaps": "Active partitions this process, as leader, swapped to even out traffic.",
    "retention_trimmed": "Entries removed by retention.",
    "retention_trimmed_uncommitted": "Entries removed by retention before a group committed them.",
    "tombstones_removed": "Changelog tombstones removed once every holder applied them.",
    "standby_records_applied": "Changelog records of standby partitions written to local stores.",
    "direct_records_taken": "Records agents took straight from the fetch (direct feeds).",
    "direct_records_dropped": (
        "Records direct feeds dropped as stale at a rebalance (read again by the partition's "
        "next owner)."
    ),
    "values_undecompressed": (
        "Compressed values that could not be decompressed (damaged, another writer's codec, or "
        "a dictionary this version lacks), handed on as they are."
    ),
}


@worker_collector
def transport_families(app: Any) -> Iterator[Metric]:
    """``ocstream_transport_*_total``: the transport's counters of this process; what its
    producer holds, ``ocstream_transport_produce_queued_records`` and ``…_queued_peak_records``;
    and how long its write round trips took, ``…_produce_round_trip_seconds`` and
    ``…_round_trip_max_seconds``."""
    from .transport import METRICS

    for name, value in METRICS.as_dict().items():
        yield _counter(f"ocstream_transport_{name}_total", TRANSPORT_HELP.get(name, name), value)
    producer: Any = getattr(app, "producer", None)
    if hasattr(producer, "outstanding_peak"):
        yield _gauge(
            "ocstream_transport_produce_queued_records",
            "Records queued to be appended to topics, or being appended, not written yet.",
            producer.outstanding,
        )
        yield _gauge(
            "ocstream_transport_produce_queued_peak_records",
            "The most records queued or being appended at once since start (agents wait above "
            "10,000 when Redis takes records in slower than they come).",
            producer.outstanding_peak,
        )
    round_trips = getattr(producer, "round_trips", None)
    if round_trips is not None:
        yield from _durations(
            "ocstream_transport_produce_round_trip",
            "How long the producer's write round trips took, each one transaction of at most "
            "produce_batch_records records, from packing to the last reply.",
            "The longest write round trip since start.",
            round_trips,
        )


def gc_families() -> Iterator[Metric]:
    """``ocstream_gc_*``: Python's garbage collections in this process since its collector was
    tuned, per generation (``ocstream/gctune.py`` sets when they run): a worker's, and an
    ``ocstream ingress`` process's."""
    from .gctune import GC_STATS

    yield _labelled(
        CounterMetricFamily(
            "ocstream_gc_collections", "Garbage collections since start.", labels=["generation"]
        ),
        ((str(g), stats[0]) for g, stats in GC_STATS.items()),
    )
    yield _labelled(
        CounterMetricFamily(
            "ocstream_gc_seconds", "Seconds spent collecting garbage.", labels=["generation"]
        ),
        ((str(g), stats[1]) for g, stats in GC_STATS.items()),
    )
    yield _labelled(
        GaugeMetricFamily(
            "ocstream_gc_pause_max_seconds",
            "The longest garbage collection since start (the event loop stops meanwhile).",
            labels=["generation"],
        ),
        ((str(g), stats[2]) for g, stats in GC_STATS.items()),
    )


@worker_collector
def worker_gc_families(app: Any) -> Iterator[Metric]:
    """:func:`gc_families`, on every worker's ``/metrics``."""
    return gc_families()


def loop_families() -> Iterator[Metric]:
    """``ocstream_event_loop_lag_*``: how late this process's event loop ran what was ready
    (``ocstream/looplag.py``): a worker's, and an ``ocstream ingress`` process's."""
    from .looplag import LOOP_LAG

    yield from _durations(
        "ocstream_event_loop_lag",
        "How much later than asked the event loop woke a task that sleeps 50 ms at a time: "
        "what anything ready waited for the loop.",
        "The longest such wait since start: the longest the event loop was held.",
        LOOP_LAG,
    )


def _durations(name: str, help_text: str, max_help: str, durations: Durations) -> Iterator[Metric]:
    """``durations`` as a histogram, ``<name>_seconds``, and its longest, ``<name>_max_seconds``."""
    yield HistogramMetricFamily(
        f"{name}_seconds",
        help_text,
        buckets=durations.cumulative(),
        sum_value=durations.total,
    )
    yield _gauge(f"{name}_max_seconds", max_help, durations.longest)


@worker_collector
def worker_loop_families(app: Any) -> Iterator[Metric]:
    """:func:`loop_families`, on every worker's ``/metrics``."""
    return loop_families()


@worker_collector
def group_families(app: Any) -> Iterator[Metric]:
    """``ocstream_group_*``: this worker's place in its consumer group."""
    consumer = getattr(app, "consumer", None)
    if consumer is None:
        return
    group = getattr(consumer, "group", None)
    yield _gauge(
        "ocstream_group_generation", "Generation this worker holds.", app.consumer_generation_id
    )
    yield _gauge(
        "ocstream_group_assigned_partitions",
        "Topic partitions assigned to this worker.",
        len(consumer.assignment()),
    )
    yield _gauge(
        "ocstream_group_leader",
        "1 if this worker holds the group's leader lease.",
        int(bool(group and group.is_leader)),
    )
    yield _gauge(
        "ocstream_group_assignment_weighed_records",
        "Records per partition the group's assignment has been weighed against (on the "
        "leader; 0 on other members and during a rebalance).",
        group.assignment_weighed_records if group is not None else 0.0,
    )


#: The engine's counters under the names dashboards know (XCM.md §14; the engine is global, so
#: without the subscription label): metric -> (help, the counters it adds up).
ENGINE_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "oc_engine_out_total": ("Journeys started by a sent message.", ("sent",)),
    "oc_engine_in_total": ("Received legs read by the matcher.", ("legs_received",)),
    "oc_engine_matched_total": ("Journeys matched with their receipt.", ("received",)),
    "oc_engine_relayed_total": ("Messages seen on their relay chain.", ("relayed",)),
    "oc_engine_hop_total": ("Hops seen (in, out, failed).", ("hop_in", "hop_out", "hop_failed")),
    "oc_engine_timeout_total": ("Journeys timed out.", ("timeout",)),
    "oc_engine_orphan_inbound_total": (
        "Receipts that expired without their origin.",
        ("inbound_expired",),
    ),
    "oc_engine_late_received_total": (
        "Receipts that came after their journey timed out (reported once, flagged late).",
        ("late_received",),
    ),
    "oc_xcm_unknown_page_format_total": (
        "Message pages in a format the extractor does not know.",
        ("dead_letters_unknown-page-format",),
    ),
    "oc_xcm_missing_bytes_total": (
        "Messages whose bytes were not in the block.",
        ("dead_letters_missing-bytes",),
    ),
}


@worker_collector
def xcm_families(app: Any) -> Iterator[Metric]:
    """``oc_xcm_<counter>_total`` for each counter of the extractor and the engine, and the
    engine metrics of :data:`ENGINE_METRICS`."""
    counters: Mapping[str, int] = getattr(app, "xcm_counters", {})
    for name, value in sorted(counters.items()):
        yield _counter(metric_name(f"oc_xcm_{name}_total"), f"XCM counter {name}.", value)
    for metric, (documentation, names) in ENGINE_METRICS.items():
        yield _counter(metric, documentation, sum(counters.get(name, 0) for name in names))


DELIVERY_HELP = {
    "late": "Notifications for a subscription that already had its terminal.",
    "duplicates": "Notifications delivered before (dropped).",
    "errors": "Notifications whose delivery failed with an unexpected error.",
    "subscription_timeouts": "Journeys timed out for one subscription.",
    "fanned_out": "Notifications published to the workers holding websocket subscriptions.",
}


@worker_collector
def subscription_families(app: Any) -> Iterator[Metric]:
    """``oc_active_subscriptions_count{type}``."""
    live = getattr(app, "subscriptions_live", None)
    if live is None:
        return
    persistent = len(live.persistent())
    ephemeral = len(live.all()) - persistent
    yield _labelled(
        GaugeMetricFamily(
            "oc_active_subscriptions_count", "Subscriptions in this worker.", labels=["type"]
        ),
        [(["persistent"], persistent), (["ephemeral"], ephemeral)],
    )


@worker_collector
def delivery_families(app: Any) -> Iterator[Metric]:
    """``oc_notifier_notification_total{type}`` and ``oc_delivery_*_total``."""
    delivery = getattr(app, "delivery", None)
    if delivery is None:
        return
    counters: Mapping[str, int] = delivery.counters
    yield _labelled(
        CounterMetricFamily(
            "oc_notifier_notification_total",
            "Notifications handed to channels, by notification type.",
            labels=["type"],
        ),
        [
            ([name.removeprefix("delivered_")], value)
            for name, value in sorted(counters.items())
            if name.startswith("delivered_")
        ],
    )
    for name, documentation in DELIVERY_HELP.items():
        yield _counter(f"oc_delivery_{name}_total", documentation, counters.get(name, 0))


@worker_collector
def delivery_first_families(app: Any) -> Iterator[Metric]:
    """How often, and how long, this worker's extraction and matching waited for its delivery
    (``ocstream/stages.py``); absent on a worker that does not deliver."""
    backlog = getattr(app, "delivery_backlog", None)
    if backlog is None:
        return
    yield _counter(
        "ocstream_delivery_first_waits_total",
        "Blocks and matching batches that waited for the notifications delivery held.",
        backlog.waits,
    )
    yield _counter(
        "ocstream_delivery_first_wait_seconds_total",
        "Seconds extraction and matching spent waiting for the notifications delivery held.",
        backlog.waited,
    )
    yield _gauge(
        "ocstream_delivery_backlog",
        "Notifications delivery has taken or has waiting in its stream and not finished.",
        backlog.pending(),
    )


@worker_collector
def webhook_families(app: Any) -> Iterator[Metric]:
    """``oc_webhook_<counter>_total`` of this worker's dispatcher and ``oc_webhook_<gauge>``
    (``app.webhook_gauges``: due, due_now, in_flight, dead, active)."""
    webhooks = getattr(app, "webhooks", None)
    if webhooks is None:
        return
    for name, value in sorted(webhooks.counters.items()):
        yield _counter(f"oc_webhook_{name}_total", f"Webhook deliveries: {name}.", value)
    for name, value in sorted(getattr(app, "webhook_gauges", {}).items()):
        yield _gauge(f"oc_webhook_{name}", f"Webhook deliveries now: {name}.", value)


def websocket_families(hub: Any, *, counters: bool = True) -> Iterator[Metric]:
    """``oc_socket_listener_count{type}`` and, with ``counters``, ``oc_ws_*_total``."""
    yield _labelled(
        GaugeMetricFamily(
            "oc_socket_listener_count",
            "Websocket clients connected to this worker.",
            labels=["type"],
        ),
        [([kind], count) for kind, count in sorted(hub.clients_by_type().items())],
    )
    if not counters:
        return
    yield _counter(
        "oc_ws_frames_forwarded_total", "Frames sent to websocket clients.", hub.frames_forwarded
    )
    yield _counter(
        "oc_ws_frames_dropped_total", "Frames dropped for slow clients.", hub.frames_dropped
    )
    yield _counter(
        "oc_ws_fanout_reconnects_total", "Reconnections of the pub/sub fan-out.", hub.reconnects
    )


@worker_collector
def worker_websocket_families(app: Any) -> Iterator[Metric]:
    """The websocket hub's gauge (its counters are in ``hub.render_metrics()`` only)."""
    hub = getattr(app, "websocket_hub", None)
    if hub is not None:
        yield from websocket_families(hub, counters=False)


@worker_collector
def lag_families(app: Any) -> Iterator[Metric]:
    """``ocstream_consumer_lag_records{topic,partition}``."""
    if getattr(app, "consumer", None) is None:
        return
    from .ops import consumer_lag

    rows = []
    for key, behind in consumer_lag(app).items():
        topic, partition = key.rsplit(":", 1)
        rows.append(([topic, partition], behind))
    yield _labelled(
        GaugeMetricFamily(
            "ocstream_consumer_lag_records",
            "Records of an assigned partition not processed yet (its end minus the committed "
            "offset).",
            labels=["topic", "partition"],
        ),
        rows,
    )


#: The ingress series: metric -> (type, attribute of NetworkMetrics, help).
INGRESS_SERIES = {
    "ocstream_ingress_blocks_published_total": (
        "counter",
        "blocks_published",
        "Blocks published to the blocks topic.",
    ),
    "ocstream_ingress_finalized_height": ("gauge", "finalized_height", "Last finalized height."),
    "ocstream_ingress_tip_height": ("gauge", "tip_height", "Height of the last published block."),
    "ocstream_ingress_backlog_blocks": ("gauge", "backlog", "Finalized blocks not published yet."),
    "ocstream_ingress_errors_total": ("counter", "errors", "Errors while following."),
    "ocstream_ingress_reconnects_total": ("counter", "reconnects", "Reconnections to a node."),
    "ocstream_ingress_decode_seconds_total": (
        "counter",
        "decode_seconds",
        "Seconds spent decoding blocks.",
    ),
}


def ingress_families(metrics: Any) -> Iterator[Metric]:
    """The ingress series of an ``IngressMetrics``, one sample per network."""
    for metric, (kind, attribute, documentation) in INGRESS_SERIES.items():
        family_type = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        yield _labelled(
            family_type(metric, documentation, labels=["network"]),
            [
                ([network], getattr(values, attribute))
                for network, values in sorted(metrics.networks.items())
            ],
        )
    # The v1 name dashboards know (XCM.md §14), by network (origin) and failed step.
    yield _labelled(
        CounterMetricFamily(
            "oc_catcher_errors_total",
            "Errors while following a chain, by the step that failed (rpc, decode, redis, crash).",
            labels=["origin", "step"],
        ),
        [
            ([network, step], count)
            for network, values in sorted(metrics.networks.items())
            for step, count in sorted(values.errors_by_step.items())
        ],
    )


@worker_collector
def worker_ingress_families(app: Any) -> Iterator[Metric]:
    """The ingress series when the worker runs the ingress (embedded mode)."""
    ingress = getattr(app, "ingress", None)
    if ingress is not None:
        yield from ingress_families(ingress.metrics)
