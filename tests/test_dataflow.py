"""Tests for ocstream.dataflow: describing and rendering a declared faust app."""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import faust
import pytest
from faust.types import AgentT, StreamT

from ocstream.dataflow import (
    FORMATS,
    AgentInfo,
    Dataflow,
    SinkInfo,
    TableInfo,
    TopicInfo,
    describe,
    render,
    render_dot,
    render_json,
    render_mermaid,
    render_text,
)


def _new_app(**conf: Any) -> faust.App:
    # Port 1 is never listening: if anything tried to reach the broker it
    # would fail loudly instead of silently talking to a local Kafka.
    return faust.App(
        f"t-{uuid.uuid4().hex[:12]}",
        broker="kafka://localhost:1",
        store="memory://",
        topic_partitions=4,
        **conf,
    )


def audit(value: Any) -> None:
    """A plain callable sink."""


class Pipeline:
    """One small app: orders(8) -> counter -> [notifier agent, out topic, audit]."""

    def __init__(self, **conf: Any) -> None:
        self.app = app = _new_app(**conf)
        self.orders = app.topic("orders", partitions=8)
        self.out = app.topic("out")
        self.counts = counts = app.Table("counts", default=int)
        self.unused = app.GlobalTable("lookup", partitions=2)

        async def notify(stream: StreamT[Any]) -> None:
            async for _ in stream:
                pass

        # No channel: faust gives this agent an internal "<id>-notifier" topic.
        self.notifier: AgentT[Any] = app.agent(name="notifier")(notify)

        async def count(stream: StreamT[Any]) -> AsyncIterator[Any]:
            async for order in stream:
                counts[order] += 1
                yield order

        self.counter = app.agent(
            self.orders,
            name="counter",
            sink=[self.notifier, self.out, audit],
            concurrency=3,
        )(count)

        self.df = describe(app)

    @property
    def app_id(self) -> str:
        return str(self.app.conf.id)

    def topic(self, name: str) -> TopicInfo:
        matches = [t for t in self.df.topics if t.name == name]
        assert len(matches) == 1, (name, self.df.topics)
        return matches[0]

    def agent(self, name: str) -> AgentInfo:
        matches = [a for a in self.df.agents if a.name == name]
        assert len(matches) == 1, (name, self.df.agents)
        return matches[0]

    def table(self, name: str) -> TableInfo:
        matches = [t for t in self.df.tables if t.name == name]
        assert len(matches) == 1, (name, self.df.tables)
        return matches[0]


@pytest.fixture
def pipeline() -> Pipeline:
    return Pipeline()


# -- describe: topics --------------------------------------------------------


def test_explicit_partitions_are_kept(pipeline: Pipeline) -> None:
    assert pipeline.topic("orders") == TopicInfo(
        name="orders", partitions=8, internal=False, kind="source"
    )


def test_topic_without_partitions_uses_app_default(pipeline: Pipeline) -> None:
    # "out" is only a sink; it must still be listed, with topic_partitions=4.
    assert pipeline.topic("out") == TopicInfo(
        name="out", partitions=4, internal=False, kind="output"
    )


def test_changelog_topics_are_named_after_app_and_table(pipeline: Pipeline) -> None:
    app_id = pipeline.app_id
    assert pipeline.topic(f"{app_id}-counts-changelog") == TopicInfo(
        name=f"{app_id}-counts-changelog", partitions=4, internal=True, kind="changelog"
    )
    # The table's own partition count carries over to its changelog topic.
    assert pipeline.topic(f"{app_id}-lookup-changelog").partitions == 2


def test_agent_without_channel_gets_internal_topic(pipeline: Pipeline) -> None:
    name = f"{pipeline.app_id}-notifier"
    assert pipeline.topic(name) == TopicInfo(
        name=name, partitions=4, internal=True, kind="internal"
    )


def test_leader_topic_is_internal_with_one_partition(pipeline: Pipeline) -> None:
    leaders = [t for t in pipeline.df.topics if "leader" in t.name]
    assert len(leaders) == 1
    assert leaders[0].name.startswith(pipeline.app_id)
    assert (leaders[0].partitions, leaders[0].internal, leaders[0].kind) == (1, True, "internal")


def test_leader_topic_absent_when_disabled() -> None:
    df = Pipeline(topic_disable_leader=True).df
    assert not [t for t in df.topics if "leader" in t.name]


def test_internal_topic_ending_in_repartition_is_repartition() -> None:
    app = _new_app()
    name = f"{app.conf.id}-by-key-repartition"

    @app.agent(app.topic(name, internal=True), name="regrouped")
    async def regrouped(stream: StreamT[Any]) -> None:
        async for _ in stream:
            pass

    kinds = {t.name: t.kind for t in describe(app).topics}
    assert kinds[name] == "repartition"


def test_external_topic_named_repartition_stays_source() -> None:
    app = _new_app()

    @app.agent(app.topic("legacy-repartition"), name="legacy")
    async def legacy(stream: StreamT[Any]) -> None:
        async for _ in stream:
            pass

    kinds = {t.name: t.kind for t in describe(app).topics}
    assert kinds["legacy-repartition"] == "source"


def test_pattern_topic_is_listed_by_its_pattern() -> None:
    app = _new_app()

    @app.agent(app.topic(pattern=r"^logs-.*$"), name="logs")
    async def logs(stream: StreamT[Any]) -> None:
        async for _ in stream:
            pass

    df = describe(app)
    assert df.agents[0].source_topics == (r"^logs-.*$",)
    assert r"^logs-.*$" in {t.name for t in df.topics}


def test_topics_registered_with_conductor_are_included() -> None:
    # A running worker registers topics (group_by, replies) with the conductor
    # that no declaration mentions.
    app = _new_app()
    app.topics.add(app.topic("late-arrival", partitions=3))
    topics = {t.name: t for t in describe(app).topics}
    assert topics["late-arrival"].partitions == 3


def test_topics_are_sorted_and_unique(pipeline: Pipeline) -> None:
    names = [t.name for t in pipeline.df.topics]
    assert names == sorted(set(names))


# -- describe: agents, sinks, tables -------------------------------------------


def test_agent_source_sinks_and_concurrency(pipeline: Pipeline) -> None:
    assert pipeline.agent("counter") == AgentInfo(
        name="counter",
        source_topics=("orders",),
        sink_names=tuple(sorted(["notifier", "out", f"{__name__}.audit"])),
        concurrency=3,
        tables=("counts",),
    )
    assert pipeline.agent("notifier") == AgentInfo(
        name="notifier",
        source_topics=(f"{pipeline.app_id}-notifier",),
        sink_names=(),
        concurrency=1,
        tables=(),
    )


def test_sinks_carry_their_kind(pipeline: Pipeline) -> None:
    assert set(pipeline.df.sinks) == {
        SinkInfo(name="notifier", kind="agent"),
        SinkInfo(name="out", kind="topic"),
        SinkInfo(name=f"{__name__}.audit", kind="callable"),
    }


def test_table_described_with_default_partitions(pipeline: Pipeline) -> None:
    assert pipeline.table("counts") == TableInfo(
        name="counts",
        kind="Table",
        changelog_topic=f"{pipeline.app_id}-counts-changelog",
        partitions=4,
        store="memory://",
        source_topics=("orders",),
    )


def test_table_kind_and_explicit_partitions(pipeline: Pipeline) -> None:
    lookup = pipeline.table("lookup")
    assert (lookup.kind, lookup.partitions) == ("GlobalTable", 2)
    # No agent refers to it, so there is nothing to derive its sources from.
    assert lookup.source_topics == ()


# Rebound by test_table_referenced_as_module_global; agents usually reach their
# tables as module globals rather than through a closure.
global_table: Any = None


async def _uses_global_table(stream: StreamT[Any]) -> None:
    async for key in stream:
        global_table[key] = True


def test_table_referenced_as_module_global() -> None:
    global global_table
    app = _new_app()
    global_table = app.Table("seen-global")
    try:
        app.agent(app.topic("clicks", partitions=6), name="clicker")(_uses_global_table)
        df = describe(app)
    finally:
        global_table = None
    (table,) = df.tables
    (agent,) = df.agents
    assert table.source_topics == ("clicks",)
    assert agent.tables == ("seen-global",)


def test_set_table_kind() -> None:
    app = _new_app()
    app.SetTable("members")
    (table,) = describe(app).tables
    assert table.kind == "SetTable"


def test_table_store_overrides_app_store() -> None:
    app = _new_app()
    app.Table("cached", store="rocksdb:///var/lib/ocstream")
    app.Table("plain")
    stores = {t.name: t.store for t in describe(app).tables}
    assert stores == {"cached": "rocksdb:///var/lib/ocstream", "plain": "memory://"}


def test_table_store_reports_what_faust_will_use() -> None:
    # faust picks ``table._store or app.conf.store`` and yarl's URL("rocksdb://")
    # is falsy, so such a table really runs on the app's store.
    app = _new_app()
    app.Table("bare", store="rocksdb://")
    (table,) = describe(app).tables
    assert table.store == "memory://"


def test_app_store_is_written_with_its_authority() -> None:
    app = faust.App(f"t-{uuid.uuid4().hex[:12]}", broker="kafka://localhost:1", store="rocksdb://")
    app.Table("t")
    (table,) = describe(app).tables
    assert table.store == "rocksdb://"


def test_describe_neither_starts_app_nor_binds_loop() -> None:
    p = Pipeline()
    assert not p.app.started
    # faust binds the loop lazily; describe must not be what binds it, or the
    # app would be pinned to a loop that is never run.
    assert vars(p.app).get("_loop") is None
    assert "_leader_assignor" not in vars(p.app)


def test_describe_is_repeatable(pipeline: Pipeline) -> None:
    assert describe(pipeline.app) == pipeline.df


def test_dataclasses_are_frozen(pipeline: Pipeline) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        pipeline.df.topics[0].partitions = 1  # type: ignore[misc]


# -- renderers ---------------------------------------------------------------


def _expected_fragments(p: Pipeline) -> list[str]:
    return [
        "orders",
        "8 partitions",
        "out",
        "counter",
        "concurrency 3",
        "notifier",
        "counts",
        f"{p.app_id}-counts-changelog",
        "lookup",
        "2 partitions",
        f"{__name__}.audit",
    ]


@pytest.mark.parametrize("fmt", ["text", "mermaid", "dot", "json"])
def test_every_format_names_everything(pipeline: Pipeline, fmt: str) -> None:
    out = render(pipeline.df, fmt)
    missing = [f for f in _expected_fragments(pipeline) if f not in out]
    if fmt == "json":
        # JSON carries numbers, not phrases.
        missing = [f for f in missing if "partitions" not in f and "concurrency" not in f]
        assert '"partitions": 8' in out
        assert '"partitions": 2' in out
    assert missing == []


def test_text_lists_each_topic_with_partitions_and_kind(pipeline: Pipeline) -> None:
    text = render_text(pipeline.df)
    assert re.search(r"^\s+orders\s+8 partitions\s+source$", text, re.M)
    assert re.search(r"^\s+out\s+4 partitions\s+output$", text, re.M)
    assert re.search(
        rf"^\s+{re.escape(pipeline.app_id)}-counts-changelog\s+4 partitions\s+changelog$",
        text,
        re.M,
    )


def _mermaid_nodes(out: str) -> dict[str, str]:
    """Map node label's first line -> node id."""
    nodes = {}
    for m in re.finditer(r"^\s+(\w+)[\[\(>]+\"([^\"<]*)", out, re.M):
        nodes[m.group(2)] = m.group(1)
    return nodes


def test_mermaid_edges(pipeline: Pipeline) -> None:
    out = render_mermaid(pipeline.df)
    assert out.startswith("flowchart LR\n")
    nodes = _mermaid_nodes(out)
    changelog = f"{pipeline.app_id}-counts-changelog"
    expected = [
        (nodes["orders"], nodes["counter"]),
        (nodes["counter"], nodes["notifier"]),
        (nodes["counter"], nodes["out"]),
        (nodes["counter"], nodes[f"{__name__}.audit"]),
        (nodes["counter"], nodes["counts"]),
        (nodes["counts"], nodes[changelog]),
        (nodes[f"{pipeline.app_id}-notifier"], nodes["notifier"]),
    ]
    edges = set(re.findall(r"^\s+(\w+) --> (\w+)$", out, re.M))
    assert set(expected) <= edges
    assert len(edges) == len(expected) + 1  # plus lookup -> its changelog


def test_mermaid_escapes_markup() -> None:
    app = _new_app()
    app.topic('we"ird<x>')

    @app.agent(app.topic('we"ird<x>'), name="weird")
    async def weird(stream: StreamT[Any]) -> None:
        async for _ in stream:
            pass

    out = render_mermaid(describe(app))
    assert "we#quot;ird#lt;x#gt;" in out
    assert 'we"ird' not in out


def test_dot_edges_and_escaping(pipeline: Pipeline) -> None:
    out = render_dot(pipeline.df)
    assert out.startswith(f'digraph "{pipeline.app_id}" {{')
    assert out.rstrip().endswith("}")
    ids = {label: node for node, label in re.findall(r'^\s+(\w+) \[.*label="([^"\\]*)', out, re.M)}
    assert f"  {ids['orders']} -> {ids['counter']};" in out
    assert f"  {ids['counter']} -> {ids['out']};" in out
    changelog = f"{pipeline.app_id}-counts-changelog"
    assert f"  {ids['counts']} -> {ids[changelog]};" in out
    assert 'label="orders\\n8 partitions\\nsource"' in out


def test_dot_escapes_quotes() -> None:
    app = _new_app()

    @app.agent(app.topic('say "hi"'), name="greeter")
    async def greeter(stream: StreamT[Any]) -> None:
        async for _ in stream:
            pass

    assert 'label="say \\"hi\\"\\n' in render_dot(describe(app))


def test_json_round_trips_to_dict(pipeline: Pipeline) -> None:
    out = render_json(pipeline.df)
    assert json.loads(out) == pipeline.df.to_dict()
    # Stable output: sorted keys and two-space indentation.
    assert out == json.dumps(json.loads(out), sort_keys=True, indent=2)


def test_to_dict_shape(pipeline: Pipeline) -> None:
    d = pipeline.df.to_dict()
    assert d["app_id"] == pipeline.app_id
    assert d["default_partitions"] == 4
    assert {"name": "orders", "partitions": 8, "internal": False, "kind": "source"} in d["topics"]
    assert [a["name"] for a in d["agents"]] == ["counter", "notifier"]


def test_render_dispatches_to_each_renderer(pipeline: Pipeline) -> None:
    df: Dataflow = pipeline.df
    assert render(df, "text") == render_text(df)
    assert render(df, "mermaid") == render_mermaid(df)
    assert render(df, "dot") == render_dot(df)
    assert render(df, "json") == render_json(df)
    assert FORMATS == ("text", "mermaid", "dot", "json")


def test_unknown_format_raises_value_error(pipeline: Pipeline) -> None:
    with pytest.raises(ValueError, match="yaml") as exc:
        render(pipeline.df, "yaml")
    for fmt in FORMATS:
        assert fmt in str(exc.value)
