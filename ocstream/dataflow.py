"""Describe the dataflow declared on a faust ``App`` without running it.

This backs ``ocstream topology``: it walks the declarations that faust keeps
on the app object -- agents, their channels and sinks, tables and their
changelog topics, the leader topic and whatever is already registered with
the topic conductor -- and renders them as text, Mermaid, Graphviz DOT or JSON.

Nothing here starts the app, binds an event loop or contacts a broker, so it
is safe to call at import time or from a CLI that never runs a worker.

Topic kinds:

``source``
    a topic the application did not declare as internal (it is owned by
    someone else, whether the app reads from it or only writes to it);
``changelog``
    a table's changelog topic;
``repartition``
    an internal topic whose name ends in ``-repartition`` (``group_by``);
``internal``
    any other internal topic: faust's leader topic, or the topic of an agent
    declared without an explicit channel.
"""

from __future__ import annotations

import json
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from faust.types import AgentT, ChannelT, TopicT
from mode.utils.objects import canonshortname

__all__ = [
    "FORMATS",
    "AgentInfo",
    "Dataflow",
    "SinkInfo",
    "TableInfo",
    "TopicInfo",
    "describe",
    "render",
    "render_dot",
    "render_json",
    "render_mermaid",
    "render_text",
]

TOPIC_KINDS = ("source", "changelog", "repartition", "internal")
SINK_KINDS = ("agent", "topic", "channel", "callable")


@dataclass(frozen=True)
class TopicInfo:
    """A topic name, its partition count and its role in the dataflow."""

    name: str
    partitions: int
    internal: bool
    kind: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "partitions": self.partitions,
            "internal": self.internal,
            "kind": self.kind,
        }


@dataclass(frozen=True)
class AgentInfo:
    """An agent, the topics it consumes and where its results go.

    ``tables`` names the tables the agent's code refers to (best effort, see
    :func:`_agents_using`).
    """

    name: str
    source_topics: tuple[str, ...]
    sink_names: tuple[str, ...]
    concurrency: int
    tables: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source_topics": list(self.source_topics),
            "sink_names": list(self.sink_names),
            "concurrency": self.concurrency,
            "tables": list(self.tables),
        }


@dataclass(frozen=True)
class TableInfo:
    """A table and the changelog topic that backs it.

    ``source_topics`` are the source topics of the agents whose code refers to
    the table (their ``AgentInfo.tables``); see :func:`_agents_using` for how,
    and how far, that is derived.
    """

    name: str
    kind: str
    changelog_topic: str
    partitions: int
    store: str
    source_topics: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "changelog_topic": self.changelog_topic,
            "partitions": self.partitions,
            "store": self.store,
            "source_topics": list(self.source_topics),
        }


@dataclass(frozen=True)
class SinkInfo:
    """Something an agent forwards its results to."""

    name: str
    kind: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind}


@dataclass(frozen=True)
class Dataflow:
    """Everything :func:`describe` found on one app, each part sorted by name."""

    app_id: str
    default_partitions: int
    topics: tuple[TopicInfo, ...]
    agents: tuple[AgentInfo, ...]
    tables: tuple[TableInfo, ...]
    sinks: tuple[SinkInfo, ...]

    def to_dict(self) -> dict[str, Any]:
        # Lists rather than tuples so the result equals what json.loads gives
        # back for render_json's output.
        return {
            "app_id": self.app_id,
            "default_partitions": self.default_partitions,
            "topics": [t.to_dict() for t in self.topics],
            "agents": [a.to_dict() for a in self.agents],
            "tables": [t.to_dict() for t in self.tables],
            "sinks": [s.to_dict() for s in self.sinks],
        }


# ---------------------------------------------------------------------------
# describe


def _topic_names(channel: Any) -> tuple[str, ...]:
    """Names a channel stands for: its topic names, its pattern, or nothing."""
    if not isinstance(channel, TopicT):
        # An in-memory Channel lives only inside one worker; it has no name
        # on the broker and no partitions.
        return ()
    pattern = channel.pattern
    if pattern is not None:
        return (pattern.pattern,)
    return tuple(channel.topics)


def _leader_topic(app: Any) -> Any | None:
    if app.conf.topic_disable_leader:
        return None
    assignor = vars(app).get("_leader_assignor")
    if assignor is None:
        # ``app._leader_assignor`` is built with ``loop=app.loop``, which would
        # pin the app to an event loop that nobody runs.  A bare instance is
        # enough to evaluate faust's own definition of the leader topic.
        cls = app.conf.LeaderAssignor
        assignor = cls.__new__(cls)
        assignor.app = app
    return assignor._leader_topic


def _declared_topics(app: Any) -> Iterator[Any]:
    """Every topic object the app knows about, duplicates included."""
    # The conductor only fills up once a worker starts iterating streams, so
    # on a freshly declared app it is usually empty; still read it so that a
    # running app's dynamic topics (group_by, replies) are shown too.
    yield from list(app.topics)
    for agent in app.agents.values():
        yield agent.channel
        for sink in agent._sinks:
            if isinstance(sink, TopicT):
                yield sink
    for table in app.tables.values():
        yield table.changelog_topic
    leader = _leader_topic(app)
    if leader is not None:
        yield leader


def _sink_info(agent: Any, index: int, sink: Any) -> list[SinkInfo]:
    if isinstance(sink, AgentT):
        return [SinkInfo(name=sink.name, kind="agent")]
    if isinstance(sink, TopicT):
        return [SinkInfo(name=n, kind="topic") for n in _topic_names(sink)]
    if isinstance(sink, ChannelT):
        # Anonymous in-memory channels have no name; the owning agent and the
        # sink's position make a name that is stable between runs.
        return [SinkInfo(name=f"{agent.name}:sink{index}", kind="channel")]
    return [SinkInfo(name=canonshortname(sink), kind="callable")]


def _referenced_objects(fun: Any, depth: int = 0) -> list[Any]:
    """Globals and closure values that an agent function's code refers to."""
    code = getattr(fun, "__code__", None)
    if not isinstance(code, types.CodeType):
        return []
    names: set[str] = set()
    pending = [code]
    while pending:
        current = pending.pop()
        names.update(current.co_names)
        # Nested functions and comprehensions have their own code objects.
        pending.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
    namespace: dict[str, Any] = getattr(fun, "__globals__", {})
    found = [namespace[n] for n in sorted(names) if n in namespace]
    for cell in getattr(fun, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:
            # The variable is referenced but was never assigned.
            continue
        found.append(value)
        if isinstance(value, dict):  # e.g. a name -> table mapping
            found.extend(value.values())
        elif isinstance(value, types.FunctionType) and depth < 2:
            # A helper defined next to the agent (``dead_letter(...)``) that sends for it.
            found.extend(_referenced_objects(value, depth + 1))
    return found


def _agents_using(table: Any, agents: Iterable[Any]) -> list[Any]:
    """Agents whose function refers to ``table`` by a global or closure name.

    faust records no link from a table to the streams that update it, so this
    reads the agent code instead.  It is best effort: a table reached through
    an attribute (``self.table``) or ``app.tables[...]`` is not found.
    """
    return [
        agent
        for agent in agents
        if any(obj is table for obj in _referenced_objects(getattr(agent, "fun", None)))
    ]


def _store_url(url: Any) -> str:
    text = str(url)
    scheme = getattr(url, "scheme", "")
    # yarl drops an empty authority ("memory://" -> "memory:", "rocksdb:///x"
    # -> "rocksdb:/x"); put it back so the output matches the way stores are
    # written in configuration.
    if scheme and not getattr(url, "host", None) and text.startswith(f"{scheme}:"):
        rest = text[len(scheme) + 1 :]
        if not rest.startswith("//"):
            text = f"{scheme}://{rest}"
    return text


def _topic_kind(name: str, internal: bool, changelogs: set[str]) -> str:
    if name in changelogs:
        return "changelog"
    if not internal:
        return "source"
    if name.endswith("-repartition"):
        return "repartition"
    return "internal"


def describe(app: Any) -> Dataflow:
    """Describe the topics, agents, tables and sinks declared on ``app``.

    ``app`` is a ``faust.App``; it is typed ``Any`` because faust's own
    annotations do not cover the private attributes read here.
    """
    conf = app.conf
    default_partitions = int(conf.topic_partitions)

    table_objs = sorted(app.tables.values(), key=lambda t: str(t.name))
    changelogs = {t.changelog_topic.get_topic_name() for t in table_objs}

    # name -> (partitions or None, internal); the same name can turn up several
    # times (clones in the conductor, a topic both consumed and used as sink).
    seen: dict[str, tuple[int | None, bool]] = {}
    written = [
        obj
        for agent in app.agents.values()
        for obj in _referenced_objects(getattr(agent, "fun", None))
        if isinstance(obj, TopicT)
    ]
    for topic in [*_declared_topics(app), *written]:
        for name in _topic_names(topic):
            partitions, internal = seen.get(name, (None, False))
            seen[name] = (
                partitions if partitions is not None else topic.partitions,
                internal or bool(topic.internal),
            )
    topics = tuple(
        TopicInfo(
            name=name,
            partitions=partitions if partitions is not None else default_partitions,
            internal=internal,
            kind=_topic_kind(name, internal, changelogs),
        )
        for name, (partitions, internal) in sorted(seen.items())
    )

    agent_objs = sorted(app.agents.values(), key=lambda a: str(a.name))
    users = {str(table.name): _agents_using(table, agent_objs) for table in table_objs}
    agents: list[AgentInfo] = []
    sinks: set[SinkInfo] = set()
    for agent in agent_objs:
        agent_sinks = [
            info
            for index, sink in enumerate(agent._sinks)
            for info in _sink_info(agent, index, sink)
        ]
        # Topics the agent's code sends to (``topic.send`` rather than a declared sink),
        # its own source included: a loop back into it is part of the dataflow.
        agent_sinks += [
            SinkInfo(name=name, kind="topic")
            for obj in _referenced_objects(getattr(agent, "fun", None))
            if isinstance(obj, TopicT)
            for name in _topic_names(obj)
        ]
        sinks.update(agent_sinks)
        agents.append(
            AgentInfo(
                name=agent.name,
                source_topics=tuple(sorted(_topic_names(agent.channel))),
                sink_names=tuple(sorted({s.name for s in agent_sinks})),
                concurrency=int(agent.concurrency),
                tables=tuple(name for name, using in users.items() if agent in using),
            )
        )

    tables = tuple(
        TableInfo(
            name=str(table.name),
            kind=type(table).__name__,
            changelog_topic=table.changelog_topic.get_topic_name(),
            partitions=(
                int(table.partitions) if table.partitions is not None else default_partitions
            ),
            # The same expression faust's Table._new_store uses, so a table
            # whose own URL is falsy (yarl: "rocksdb://" has no host or path)
            # is reported with the app store it will really get.
            store=_store_url(table._store or conf.store),
            source_topics=tuple(
                sorted(
                    {
                        name
                        for agent in users[str(table.name)]
                        for name in _topic_names(agent.channel)
                    }
                )
            ),
        )
        for table in table_objs
    )

    return Dataflow(
        app_id=str(conf.id),
        default_partitions=default_partitions,
        topics=topics,
        agents=tuple(agents),
        tables=tables,
        sinks=tuple(sorted(sinks, key=lambda s: (s.name, s.kind))),
    )


# ---------------------------------------------------------------------------
# renderers


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _sink_kinds(df: Dataflow) -> dict[str, list[str]]:
    kinds: dict[str, list[str]] = {}
    for sink in df.sinks:
        kinds.setdefault(sink.name, []).append(sink.kind)
    return kinds


def render_text(df: Dataflow) -> str:
    """Plain-text listing, one section per kind of declaration."""
    kinds = _sink_kinds(df)
    lines = [f"app {df.app_id} (default partitions: {df.default_partitions})", ""]

    lines.append(f"topics ({len(df.topics)}):")
    width = max((len(t.name) for t in df.topics), default=0)
    for topic in df.topics:
        lines.append(
            f"  {topic.name:<{width}}  {_plural(topic.partitions, 'partition')}  {topic.kind}"
        )

    lines += ["", f"agents ({len(df.agents)}):"]
    for agent in df.agents:
        lines.append(f"  {agent.name}  concurrency {agent.concurrency}")
        lines.append(f"    from: {', '.join(agent.source_topics) or '(in-memory channel)'}")
        targets = [f"{name} ({'/'.join(kinds.get(name, ['?']))})" for name in agent.sink_names]
        lines.append(f"    to:   {', '.join(targets) or '(none)'}")
        if agent.tables:
            lines.append(f"    tables: {', '.join(agent.tables)}")

    lines += ["", f"tables ({len(df.tables)}):"]
    for table in df.tables:
        lines.append(
            f"  {table.name}  {table.kind}  {_plural(table.partitions, 'partition')}"
            f"  store {table.store}"
        )
        lines.append(f"    changelog: {table.changelog_topic}")
        if table.source_topics:
            lines.append(f"    updated from: {', '.join(table.source_topics)}")
    return "\n".join(lines)


def _mermaid_label(*parts: str) -> str:
    # Mermaid reads labels as HTML-ish markdown; entity codes keep names like
    # "<stdin>.agent" or quotes from breaking the syntax.
    escaped = [
        p.replace("#", "#35;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
        for p in parts
    ]
    return '"' + "<br/>".join(escaped) + '"'


def _node_ids(df: Dataflow) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    # Synthetic ids: topic and agent names contain characters that neither
    # Mermaid nor DOT accept in bare identifiers.
    topic_ids = {t.name: f"topic{i}" for i, t in enumerate(df.topics)}
    agent_ids = {a.name: f"agent{i}" for i, a in enumerate(df.agents)}
    table_ids = {t.name: f"table{i}" for i, t in enumerate(df.tables)}
    return topic_ids, agent_ids, table_ids


def _edges(
    df: Dataflow,
    topic_ids: dict[str, str],
    agent_ids: dict[str, str],
    table_ids: dict[str, str],
    sink_ids: dict[tuple[str, str], str],
) -> list[tuple[str, str]]:
    edges: list[tuple[str, str]] = []
    kinds = _sink_kinds(df)
    for agent in df.agents:
        node = agent_ids[agent.name]
        edges += [(topic_ids[t], node) for t in agent.source_topics if t in topic_ids]
        for name in agent.sink_names:
            for kind in kinds.get(name, []):
                edges.append((node, _sink_target(name, kind, topic_ids, agent_ids, sink_ids)))
        edges += [(node, table_ids[t]) for t in agent.tables if t in table_ids]
    for table in df.tables:
        if table.changelog_topic in topic_ids:
            edges.append((table_ids[table.name], topic_ids[table.changelog_topic]))
    return edges


def _sink_target(
    name: str,
    kind: str,
    topic_ids: dict[str, str],
    agent_ids: dict[str, str],
    sink_ids: dict[tuple[str, str], str],
) -> str:
    if kind == "agent" and name in agent_ids:
        return agent_ids[name]
    if kind == "topic" and name in topic_ids:
        return topic_ids[name]
    return sink_ids[(name, kind)]


def _standalone_sinks(
    df: Dataflow, topic_ids: dict[str, str], agent_ids: dict[str, str]
) -> dict[tuple[str, str], str]:
    """Sinks that are not already drawn as a topic or agent node."""
    standalone: dict[tuple[str, str], str] = {}
    for sink in df.sinks:
        if sink.kind == "agent" and sink.name in agent_ids:
            continue
        if sink.kind == "topic" and sink.name in topic_ids:
            continue
        standalone[(sink.name, sink.kind)] = f"sink{len(standalone)}"
    return standalone


def render_mermaid(df: Dataflow) -> str:
    """Mermaid ``flowchart LR`` of topics, agents, tables and sinks."""
    topic_ids, agent_ids, table_ids = _node_ids(df)
    sink_ids = _standalone_sinks(df, topic_ids, agent_ids)
    lines = ["flowchart LR", f"  %% app {df.app_id}, default partitions {df.default_partitions}"]
    for topic in df.topics:
        label = _mermaid_label(topic.name, _plural(topic.partitions, "partition"), topic.kind)
        lines.append(f"  {topic_ids[topic.name]}[({label})]")
    for agent in df.agents:
        label = _mermaid_label(agent.name, f"agent, concurrency {agent.concurrency}")
        lines.append(f"  {agent_ids[agent.name]}({label})")
    for table in df.tables:
        label = _mermaid_label(
            table.name, f"{table.kind}, {_plural(table.partitions, 'partition')}", table.store
        )
        lines.append(f"  {table_ids[table.name]}[[{label}]]")
    for (name, kind), node in sink_ids.items():
        lines.append(f"  {node}>{_mermaid_label(name, kind)}]")
    for src, dst in _edges(df, topic_ids, agent_ids, table_ids, sink_ids):
        lines.append(f"  {src} --> {dst}")
    return "\n".join(lines)


def _dot_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dot_label(*parts: str) -> str:
    # "\n" must reach Graphviz as the two characters backslash-n, so join
    # after escaping the parts rather than escaping the joined string.
    return '"' + "\\n".join(p.replace("\\", "\\\\").replace('"', '\\"') for p in parts) + '"'


def render_dot(df: Dataflow) -> str:
    """Graphviz ``digraph`` of topics, agents, tables and sinks."""
    topic_ids, agent_ids, table_ids = _node_ids(df)
    sink_ids = _standalone_sinks(df, topic_ids, agent_ids)
    lines = [
        f"digraph {_dot_str(df.app_id)} {{",
        "  rankdir=LR;",
        f"  label={_dot_label(f'{df.app_id} (default partitions: {df.default_partitions})')};",
    ]
    for topic in df.topics:
        label = _dot_label(topic.name, _plural(topic.partitions, "partition"), topic.kind)
        lines.append(f"  {topic_ids[topic.name]} [shape=cylinder, label={label}];")
    for agent in df.agents:
        label = _dot_label(agent.name, f"agent, concurrency {agent.concurrency}")
        lines.append(f"  {agent_ids[agent.name]} [shape=box, style=rounded, label={label}];")
    for table in df.tables:
        label = _dot_label(
            table.name, f"{table.kind}, {_plural(table.partitions, 'partition')}", table.store
        )
        lines.append(f"  {table_ids[table.name]} [shape=box3d, label={label}];")
    for (name, kind), node in sink_ids.items():
        lines.append(f"  {node} [shape=cds, label={_dot_label(name, kind)}];")
    for src, dst in _edges(df, topic_ids, agent_ids, table_ids, sink_ids):
        lines.append(f"  {src} -> {dst};")
    lines.append("}")
    return "\n".join(lines)


def render_json(df: Dataflow) -> str:
    """``Dataflow.to_dict()`` as JSON with sorted keys, so diffs stay small."""
    return json.dumps(df.to_dict(), sort_keys=True, indent=2)


_RENDERERS: dict[str, Callable[[Dataflow], str]] = {
    "text": render_text,
    "mermaid": render_mermaid,
    "dot": render_dot,
    "json": render_json,
}

FORMATS: tuple[str, ...] = tuple(_RENDERERS)


def render(df: Dataflow, fmt: str) -> str:
    """Render ``df`` in ``fmt``, one of :data:`FORMATS`."""
    try:
        renderer = _RENDERERS[fmt]
    except KeyError:
        raise ValueError(
            f"unknown topology format {fmt!r}; expected one of: {', '.join(FORMATS)}"
        ) from None
    return renderer(df)
