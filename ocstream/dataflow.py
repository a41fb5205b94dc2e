"""Describe the dataflow declared on a faust ``App`` without running it.

This backs ``ocstream topology``: it walks the declarations that faust keeps
on the app object -- agents, their channels and sinks, tables and their
changelog topics, the leader topic and whatever is already registered with
the topic conductor -- and renders them as text, Mermaid, Graphviz DOT or JSON.

Nothing here starts the app, binds an event loop or contacts a broker, so it
is safe to call at import time or from a CLI that never runs a worker.

Besides faust's own declarations, a dataflow can declare what faust does not
know about (see :func:`declare_producer` and :func:`declare_outputs`): a
process outside the app that writes a topic (the ingress writing ``blocks``),
and what an agent hands its results to that is not a topic (webhooks,
websockets, the log). Timers and tasks are found on the app, with the topics
their code sends to; the HTTP routes of the app's web server too, with the
tables a page reads.

Topic kinds:

``source``
    a topic the application did not declare as internal and that none of its
    agents, timers or tasks writes (it is written by someone else: a declared
    producer, or a process outside the dataflow);
``stream``
    a topic that the app's agents, timers or tasks write and its agents read;
``output``
    a topic that the app writes and none of its agents reads;
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
import shutil
import subprocess
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from faust.types import AgentT, ChannelT, TopicT
from mode.utils.objects import canonshortname

from .errors import OcstreamError

__all__ = [
    "FORMATS",
    "IMAGE_FORMATS",
    "AgentInfo",
    "Dataflow",
    "Graph",
    "GraphvizMissing",
    "PageInfo",
    "ProducerInfo",
    "SinkInfo",
    "TableInfo",
    "TopicInfo",
    "declare_outputs",
    "declare_producer",
    "describe",
    "graph",
    "render",
    "render_dot",
    "render_json",
    "render_mermaid",
    "render_image",
    "render_text",
]

TOPIC_KINDS = ("source", "stream", "output", "changelog", "repartition", "internal")
SINK_KINDS = ("agent", "topic", "channel", "callable", "output")
PRODUCER_KINDS = ("process", "timer", "task")


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
    #: What the sink is, for a declared output (``kind == "output"``).
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "detail": self.detail}


@dataclass(frozen=True)
class ProducerInfo:
    """Something that writes topics without reading one: a process declared with
    :func:`declare_producer` (``kind`` ``process``), or a timer or task of the app."""

    name: str
    kind: str
    sink_names: tuple[str, ...]
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "sink_names": list(self.sink_names),
            "detail": self.detail,
        }


@dataclass(frozen=True)
class PageInfo:
    """An HTTP route of the app's web server (paths differing by a trailing ``/`` are one).

    ``tables`` are the tables the page's code refers to (as for agents); ``fed_by`` the
    declared outputs that reach clients through it (:func:`declare_outputs`).
    """

    path: str
    methods: tuple[str, ...]
    tables: tuple[str, ...] = ()
    fed_by: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "methods": list(self.methods),
            "tables": list(self.tables),
            "fed_by": list(self.fed_by),
        }


@dataclass(frozen=True)
class Dataflow:
    """Everything :func:`describe` found on one app, each part sorted by name."""

    app_id: str
    default_partitions: int
    topics: tuple[TopicInfo, ...]
    agents: tuple[AgentInfo, ...]
    tables: tuple[TableInfo, ...]
    sinks: tuple[SinkInfo, ...]
    producers: tuple[ProducerInfo, ...] = ()
    pages: tuple[PageInfo, ...] = ()

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
            "producers": [p.to_dict() for p in self.producers],
            "pages": [p.to_dict() for p in self.pages],
            # The nodes and edges every picture draws (DOT, Mermaid, the dashboard).
            "graph": graph(self).to_dict(),
        }


# ---------------------------------------------------------------------------
# declarations faust does not keep

_EXTRA = "_ocstream_dataflow"


def _extra(app: Any) -> dict[str, Any]:
    extra: dict[str, Any] = vars(app).setdefault(_EXTRA, {"producers": {}, "outputs": {}})
    return extra


def declare_producer(app: Any, name: str, *, writes: Iterable[str], detail: str = "") -> None:
    """Record that ``name``, a process outside the app, writes the topics ``writes``.

    faust only knows what the app itself writes; the ingress, for one, publishes ``blocks``
    from its own process (or from a service inside the worker), not from an agent.
    """
    _extra(app)["producers"][name] = (tuple(writes), detail)


def declare_outputs(
    app: Any,
    agent: str,
    outputs: Mapping[str, str],
    *,
    pages: Mapping[str, Iterable[str]] | None = None,
) -> None:
    """Record where agent ``agent`` hands its results besides topics: output name -> what it is
    (``{"webhooks": "HTTP POST, retried from Redis"}``). ``pages`` names, per output, the
    route paths through which it reaches its clients (``{"websockets": ["/ws/subs"]}``); a
    route is drawn fed by the output when its path starts with one of them."""
    _extra(app)["outputs"][agent] = (dict(outputs), {k: tuple(v) for k, v in (pages or {}).items()})


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


def _topic_kind(
    name: str, internal: bool, changelogs: set[str], written: set[str], read: set[str]
) -> str:
    if name in changelogs:
        return "changelog"
    if not internal:
        if name not in written:
            return "source"
        return "stream" if name in read else "output"
    if name.endswith("-repartition"):
        return "repartition"
    return "internal"


def _timers(app: Any) -> Iterator[tuple[str, str, Any]]:
    """``(name, "timer" | "task", function)`` of each timer and task of the app."""
    for wrapped in getattr(app, "_app_tasks", ()):
        inner = getattr(wrapped, "__wrapped__", wrapped)
        freevars = getattr(getattr(inner, "__code__", None), "co_freevars", ())
        if "interval_s" in freevars and hasattr(inner, "__wrapped__"):
            # faust's timer: a task running ``around_timer``, which wraps the function.
            yield inner.__name__, "timer", inner.__wrapped__
        else:
            yield getattr(inner, "__name__", repr(inner)), "task", inner


_METHODS = ("get", "post", "put", "patch", "delete")


def _pages(app: Any, tables: dict[str, Any], feeds: dict[str, list[str]]) -> tuple[PageInfo, ...]:
    """The app's HTTP routes, if it has a web server (read only when the app already built
    one: creating it here would add faust's web service to an app that has none)."""
    web = vars(app).get("web")
    if web is None:
        return ()
    from faust.web import View

    found: dict[str, tuple[set[str], set[str]]] = {}
    shown: dict[str, str] = {}  # the path as listed: "/subs" rather than "/subs/"

    def add(path: str, methods: Iterable[str], functions: Iterable[Any]) -> None:
        key = path.rstrip("/") or "/"
        if key not in shown or len(path) < len(shown[key]):
            shown[key] = path
        entry = found.setdefault(key, (set(), set()))
        entry[0].update(methods)
        for function in functions:
            for obj in _referenced_objects(function):
                for name, table in tables.items():
                    if obj is table:
                        entry[1].add(name)

    for path, view in getattr(web, "views", {}).items():
        cls = type(view)
        own = [m for m in _METHODS if getattr(cls, m, None) is not getattr(View, m, None)]
        # A view that answers 405 itself for some methods says which it serves.
        allowed = getattr(cls, "allowed_methods", None) or [m.upper() for m in own]
        add(path, allowed, [getattr(cls, m) for m in own])
    web_app = getattr(web, "web_app", None)
    if web_app is not None:
        for route in web_app.router.routes():
            handler = route.handler
            if getattr(handler, "__qualname__", "").startswith("Web._wrap_into_asyncdef"):
                continue  # a faust view, listed above
            if route.method == "HEAD" or route.resource is None:
                continue
            add(route.resource.canonical, [route.method], [handler])
    pages = []
    for key, (methods, used) in sorted(found.items()):
        path = shown[key]
        fed = sorted(
            output
            for output, prefixes in feeds.items()
            if any(path.startswith(prefix.rstrip("/") or "/") for prefix in prefixes)
        )
        order: list[str] = [m for m in ("GET", "POST", "PUT", "PATCH", "DELETE") if m in methods]
        order += sorted(methods - set(order))
        pages.append(
            PageInfo(path=path, methods=tuple(order), tables=tuple(sorted(used)), fed_by=tuple(fed))
        )
    return tuple(pages)


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
    timers = list(_timers(app))
    written = [
        obj
        for fun in [getattr(agent, "fun", None) for agent in app.agents.values()]
        + [fun for _, _, fun in timers]
        for obj in _referenced_objects(fun)
        if isinstance(obj, TopicT)
    ]
    written_names = {name for topic in written for name in _topic_names(topic)}
    written_names.update(
        name
        for agent in app.agents.values()
        for sink in agent._sinks
        if isinstance(sink, TopicT)
        for name in _topic_names(sink)
    )
    read_names = {name for agent in app.agents.values() for name in _topic_names(agent.channel)}
    extra = _extra(app)
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
            kind=_topic_kind(name, internal, changelogs, written_names, read_names),
        )
        for name, (partitions, internal) in sorted(seen.items())
    )
    # Declared producers may name topics nobody else mentions: list them too.
    known = {t.name for t in topics}
    extra_topics = sorted({n for writes, _ in extra["producers"].values() for n in writes} - known)
    topics = tuple(
        sorted(
            [
                *topics,
                *(
                    TopicInfo(name=n, partitions=default_partitions, internal=False, kind="source")
                    for n in extra_topics
                ),
            ],
            key=lambda t: t.name,
        )
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
        outputs, _ = extra["outputs"].get(agent.name, ({}, {}))
        agent_sinks += [
            SinkInfo(name=name, kind="output", detail=detail) for name, detail in outputs.items()
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

    producers = [
        ProducerInfo(name=name, kind="process", sink_names=tuple(sorted(writes)), detail=detail)
        for name, (writes, detail) in extra["producers"].items()
    ]
    for name, kind, fun in timers:
        sends = {
            n
            for obj in _referenced_objects(fun)
            if isinstance(obj, TopicT)
            for n in _topic_names(obj)
        }
        producers.append(ProducerInfo(name=name, kind=kind, sink_names=tuple(sorted(sends))))
    feeds: dict[str, list[str]] = {}
    for _, served in extra["outputs"].values():
        for name, prefixes in served.items():
            feeds.setdefault(name, []).extend(prefixes)

    return Dataflow(
        app_id=str(conf.id),
        default_partitions=default_partitions,
        topics=topics,
        agents=tuple(agents),
        tables=tables,
        sinks=tuple(sorted(sinks, key=lambda s: (s.name, s.kind))),
        producers=tuple(sorted(producers, key=lambda p: (p.name, p.kind))),
        pages=_pages(app, {str(t.name): t for t in table_objs}, feeds),
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
    details = {s.name: s.detail for s in df.sinks if s.detail}
    lines = [f"app {df.app_id} (default partitions: {df.default_partitions})", ""]

    if df.producers:
        lines.append(f"producers ({len(df.producers)}):")
        for producer in df.producers:
            detail = f"  ({producer.detail})" if producer.detail else ""
            lines.append(f"  {producer.name}  {producer.kind}{detail}")
            lines.append(f"    to:   {', '.join(producer.sink_names) or '(none)'}")
        lines.append("")

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
        targets = [
            f"{name} ({'/'.join(kinds.get(name, ['?']))}"
            + (f": {details[name]}" if name in details else "")
            + ")"
            for name in agent.sink_names
        ]
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

    if df.pages:
        lines += ["", f"pages ({len(df.pages)}):"]
        width = max(len(p.path) for p in df.pages)
        for page in df.pages:
            reads = [*page.tables, *page.fed_by]
            via = f"  reads {', '.join(reads)}" if reads else ""
            lines.append(f"  {page.path:<{width}}  {' '.join(page.methods)}{via}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# the graph every picture draws


@dataclass(frozen=True)
class Node:
    """A box of the picture: ``kind`` is producer, topic, agent, table, sink or page; ``lines``
    its label, the name first."""

    id: str
    kind: str
    name: str
    lines: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "name": self.name, "lines": list(self.lines)}


@dataclass(frozen=True)
class Graph:
    """The nodes and the edges (``(from id, to id)``) of a dataflow's picture."""

    nodes: tuple[Node, ...]
    edges: tuple[tuple[str, str], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": [n.to_dict() for n in self.nodes],
            "edges": [{"from": a, "to": b} for a, b in self.edges],
        }


def _node_ids(df: Dataflow) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    # Synthetic ids: topic and agent names contain characters that neither
    # Mermaid nor DOT accept in bare identifiers.
    topic_ids = {t.name: f"topic{i}" for i, t in enumerate(df.topics)}
    agent_ids = {a.name: f"agent{i}" for i, a in enumerate(df.agents)}
    table_ids = {t.name: f"table{i}" for i, t in enumerate(df.tables)}
    return topic_ids, agent_ids, table_ids


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


def graph(df: Dataflow) -> Graph:
    """The picture of ``df``: producers -> topics -> agents -> topics, tables and outputs;
    tables -> their changelogs; tables and outputs -> the pages that serve them."""
    topic_ids, agent_ids, table_ids = _node_ids(df)
    sink_ids = _standalone_sinks(df, topic_ids, agent_ids)
    producer_ids = {p.name: f"producer{i}" for i, p in enumerate(df.producers)}
    page_ids = {p.path: f"page{i}" for i, p in enumerate(df.pages)}
    details = {(s.name, s.kind): s.detail for s in df.sinks}
    nodes: list[Node] = []
    for producer in df.producers:
        lines = (producer.name, producer.kind) + ((producer.detail,) if producer.detail else ())
        nodes.append(Node(producer_ids[producer.name], "producer", producer.name, lines))
    label: tuple[str, ...]
    for topic in df.topics:
        label = (topic.name, _plural(topic.partitions, "partition"), topic.kind)
        nodes.append(Node(topic_ids[topic.name], "topic", topic.name, label))
    for agent in df.agents:
        label = (agent.name, f"agent, concurrency {agent.concurrency}")
        nodes.append(Node(agent_ids[agent.name], "agent", agent.name, label))
    for table in df.tables:
        label = (table.name, f"{table.kind}, {_plural(table.partitions, 'partition')}", table.store)
        nodes.append(Node(table_ids[table.name], "table", table.name, label))
    for (name, kind), node in sink_ids.items():
        detail = details.get((name, kind), "")
        nodes.append(Node(node, "sink", name, (name, kind) + ((detail,) if detail else ())))
    for page in df.pages:
        nodes.append(
            Node(page_ids[page.path], "page", page.path, (page.path, " ".join(page.methods)))
        )

    edges: list[tuple[str, str]] = []
    for producer in df.producers:
        node = producer_ids[producer.name]
        edges += [(node, topic_ids[t]) for t in producer.sink_names if t in topic_ids]
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
    for page in df.pages:
        node = page_ids[page.path]
        edges += [(table_ids[t], node) for t in page.tables if t in table_ids]
        edges += [(sink_ids[(o, "output")], node) for o in page.fed_by if (o, "output") in sink_ids]
    return Graph(tuple(nodes), tuple(edges))


# ---------------------------------------------------------------------------
# renderers


def _mermaid_label(*parts: str) -> str:
    # Mermaid reads labels as HTML-ish markdown; entity codes keep names like
    # "<stdin>.agent" or quotes from breaking the syntax.
    escaped = [
        p.replace("#", "#35;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
        for p in parts
    ]
    return '"' + "<br/>".join(escaped) + '"'


_MERMAID_SHAPES = {
    "producer": ("[/", "/]"),
    "topic": ("[(", ")]"),
    "agent": ("(", ")"),
    "table": ("[[", "]]"),
    "sink": (">", "]"),
    "page": ("{{", "}}"),
}


def render_mermaid(df: Dataflow) -> str:
    """Mermaid ``flowchart LR`` of producers, topics, agents, tables, sinks and pages."""
    picture = graph(df)
    lines = ["flowchart LR", f"  %% app {df.app_id}, default partitions {df.default_partitions}"]
    for node in picture.nodes:
        opening, closing = _MERMAID_SHAPES[node.kind]
        lines.append(f"  {node.id}{opening}{_mermaid_label(*node.lines)}{closing}")
    for src, dst in picture.edges:
        lines.append(f"  {src} --> {dst}")
    return "\n".join(lines)


def _dot_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dot_label(*parts: str) -> str:
    # "\n" must reach Graphviz as the two characters backslash-n, so join
    # after escaping the parts rather than escaping the joined string.
    return '"' + "\\n".join(p.replace("\\", "\\\\").replace('"', '\\"') for p in parts) + '"'


_DOT_SHAPES = {
    "producer": "shape=invhouse",
    "topic": "shape=cylinder",
    "agent": "shape=box, style=rounded",
    "table": "shape=box3d",
    "sink": "shape=cds",
    "page": "shape=note",
}


def render_dot(df: Dataflow) -> str:
    """Graphviz ``digraph`` of producers, topics, agents, tables, sinks and pages (the pages in
    a cluster of their own)."""
    picture = graph(df)
    lines = [
        f"digraph {_dot_str(df.app_id)} {{",
        "  rankdir=LR;",
        f"  label={_dot_label(f'{df.app_id} (default partitions: {df.default_partitions})')};",
    ]
    pages = []
    for node in picture.nodes:
        line = f"{node.id} [{_DOT_SHAPES[node.kind]}, label={_dot_label(*node.lines)}];"
        if node.kind == "page":
            pages.append(line)
        else:
            lines.append(f"  {line}")
    if pages:
        lines.append("  subgraph cluster_web {")
        lines.append(f"    label={_dot_label('HTTP routes')};")
        lines += [f"    {line}" for line in pages]
        lines.append("  }")
    for src, dst in picture.edges:
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

#: The text formats of :func:`render`.
FORMATS: tuple[str, ...] = tuple(_RENDERERS)

#: The picture formats of :func:`render_image` (Graphviz's ``dot`` draws them).
IMAGE_FORMATS: tuple[str, ...] = ("svg", "png")


def render(df: Dataflow, fmt: str) -> str:
    """Render ``df`` in ``fmt``, one of :data:`FORMATS`."""
    try:
        renderer = _RENDERERS[fmt]
    except KeyError:
        raise ValueError(
            f"unknown topology format {fmt!r}; expected one of: {', '.join(FORMATS)}"
        ) from None
    return renderer(df)


class GraphvizMissing(OcstreamError):
    """Graphviz's ``dot`` is not installed (or not on ``PATH``)."""


def render_image(df: Dataflow, fmt: str, *, dot: str | None = None) -> bytes:
    """``df`` drawn by Graphviz as ``fmt`` (one of :data:`IMAGE_FORMATS`).

    ``dot`` is the program to run (default: ``dot`` on ``PATH``). Raises
    :class:`GraphvizMissing` when there is none, :class:`ValueError` for another format.
    """
    if fmt not in IMAGE_FORMATS:
        raise ValueError(
            f"unknown picture format {fmt!r}; expected one of: {', '.join(IMAGE_FORMATS)}"
        )
    program = dot or shutil.which("dot")
    if program is None:
        raise GraphvizMissing(
            f"--format {fmt} needs Graphviz's dot, which is not installed: install graphviz "
            "(Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz), or use "
            "--format dot and render the output elsewhere"
        )
    try:
        done = subprocess.run(
            [program, f"-T{fmt}"],
            input=render_dot(df).encode(),
            capture_output=True,
            timeout=60,
            check=False,
        )
    except FileNotFoundError as exc:
        raise GraphvizMissing(f"Graphviz's dot could not run ({program}): {exc}") from exc
    if done.returncode != 0:
        raise OcstreamError(
            f"dot -T{fmt} failed ({done.returncode}): {done.stderr.decode(errors='replace')}"
        )
    return done.stdout
