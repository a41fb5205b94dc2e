"""``ocstream topology`` on the production dataflow: the whole of it, and nothing else.

The graph must show the ingress writing ``blocks``, the timers writing ``xcm-legs``, what
``xcm_deliver`` hands notifications to, and the worker's HTTP routes; a topic the app writes is
never labelled ``source``; the demo is an example that only ``OCSTREAM_DATAFLOW`` brings in.
Pictures are drawn by Graphviz's ``dot`` (installed on the test machine; ``.ci/run`` installs
it), and a machine without it gets a clear error.
"""

from __future__ import annotations

import html
import json
import shutil
import struct
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.types import StreamT

from ocstream.dataflow import (
    GraphvizMissing,
    declare_outputs,
    declare_producer,
    describe,
    render_dot,
    render_image,
    render_mermaid,
)
from tests.workers import ocstream_env

NO_REDIS = "redis://127.0.0.1:1/0"  # describing connects to nothing


def topology(*args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "ocstream", "topology", "--redis", NO_REDIS, *args],
        env=ocstream_env(**env),
        capture_output=True,
        timeout=60,
    )


def production() -> dict[str, Any]:
    result = topology("--format", "json")
    assert result.returncode == 0, result.stderr.decode()
    flow: dict[str, Any] = json.loads(result.stdout)
    return flow


def dot_or_fail() -> str:
    found = shutil.which("dot")
    if found is None:
        pytest.fail("Graphviz's dot is needed (apt-get install graphviz; .ci/run installs it)")
    return found


def test_the_production_graph_shows_the_whole_dataflow() -> None:
    flow = production()
    producers = {p["name"]: p for p in flow["producers"]}
    assert producers["ingress"]["kind"] == "process"
    assert producers["ingress"]["sink_names"] == ["blocks"]
    for timer in ("xcm_deadlines", "xcm_sweep"):
        assert producers[timer]["kind"] == "timer"
        assert producers[timer]["sink_names"] == ["xcm-legs"]
    agents = {a["name"]: a for a in flow["agents"]}
    assert agents["xcm_deliver"]["sink_names"] == ["log", "webhooks", "websockets"]
    outputs = {s["name"]: s for s in flow["sinks"] if s["kind"] == "output"}
    assert set(outputs) == {"log", "webhooks", "websockets"}
    assert "Redis" in outputs["webhooks"]["detail"]
    pages = {p["path"]: p for p in flow["pages"]}
    assert {"/health", "/metrics", "/subs", "/subs/{id}", "/dashboard", "/ws/subs"} <= set(pages)
    assert pages["/subs"]["methods"] == ["GET", "POST"]
    assert pages["/subs/{id}"]["methods"] == ["GET", "PATCH", "DELETE"]
    assert "xcm-journeys" in pages["/xcm/pending/"]["tables"]
    assert pages["/ws/subs"]["fed_by"] == ["websockets"]
    assert pages["/health"]["fed_by"] == [] and pages["/health"]["tables"] == []


def test_topics_written_by_the_app_are_not_sources() -> None:
    flow = production()
    kinds = {t["name"]: t["kind"] for t in flow["topics"]}
    assert kinds["blocks"] == "source"  # written by the ingress, outside the app
    assert kinds["xcm-legs"] == "stream"  # written by xcm_extract, the matcher and the timers
    assert kinds["xcm-notifications"] == "stream"
    assert kinds["xcm-dead-letters"] == "output"  # written, read by no agent
    written = {n for a in flow["agents"] for n in a["sink_names"]}
    written |= {n for p in flow["producers"] if p["kind"] != "process" for n in p["sink_names"]}
    assert [name for name, kind in kinds.items() if kind == "source" and name in written] == []


def test_the_demo_is_not_in_the_production_graph_but_stays_an_example() -> None:
    flow = production()
    names = json.dumps(flow)
    assert "demo" not in names and "count_events" not in names
    example = topology("--format", "json", OCSTREAM_DATAFLOW="demo")
    assert example.returncode == 0, example.stderr.decode()
    demo = json.loads(example.stdout)
    assert [a["name"] for a in demo["agents"]] == ["count_events"]
    assert {p["path"] for p in demo["pages"]} >= {"/demo/counts/"}
    unknown = topology("--format", "json", OCSTREAM_DATAFLOW="xcm,nope")
    assert unknown.returncode == 2
    assert b"OCSTREAM_DATAFLOW: unknown parts ['nope']" in unknown.stderr


def test_graph_edges_cover_producers_outputs_and_pages() -> None:
    flow = production()
    graph = flow["graph"]
    by_id = {n["id"]: n for n in graph["nodes"]}
    edges = {(by_id[e["from"]]["name"], by_id[e["to"]]["name"]) for e in graph["edges"]}
    assert ("ingress", "blocks") in edges
    assert ("xcm_deadlines", "xcm-legs") in edges and ("xcm_sweep", "xcm-legs") in edges
    assert ("blocks", "xcm_extract") in edges and ("xcm_match", "xcm-legs") in edges
    assert {("xcm_deliver", o) for o in ("webhooks", "websockets", "log")} <= edges
    assert ("websockets", "/ws/subs") in edges
    assert ("xcm-journeys", "/xcm/pending/") in edges
    # DOT and Mermaid draw the same nodes and edges.
    dot = topology("--format", "dot")
    assert dot.returncode == 0
    text = dot.stdout.decode()
    for edge in graph["edges"]:
        assert f"  {edge['from']} -> {edge['to']};" in text
    assert "subgraph cluster_web {" in text and 'label="/ws/subs\\nGET"' in text
    assert 'shape=invhouse, label="ingress\\nprocess' in text


def test_svg_and_png_are_drawn_by_graphviz(tmp_path: Path) -> None:
    dot_or_fail()
    svg = topology("--format", "svg")
    assert svg.returncode == 0, svg.stderr.decode()
    text = html.unescape(svg.stdout.decode())  # dot writes "-" as &#45;
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    for label in ("ingress", "xcm_deadlines", "webhooks", "/xcm/pending/", "xcm-notifications"):
        assert f">{label}</text>" in text, label
    out = tmp_path / "flow.png"
    png = topology("--format", "png", "-o", str(out))
    assert png.returncode == 0, png.stderr.decode()
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 1000 and height > 500, (width, height)


def test_without_graphviz_the_error_says_what_to_install(tmp_path: Path) -> None:
    env = ocstream_env(PATH=str(tmp_path))  # no dot on this PATH
    result = subprocess.run(
        [sys.executable, "-m", "ocstream", "topology", "--format", "svg", "--redis", NO_REDIS],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "needs Graphviz's dot, which is not installed" in result.stderr
    assert "apt-get install graphviz" in result.stderr and "--format dot" in result.stderr
    app = faust.App(f"t-{uuid.uuid4().hex[:8]}", broker="kafka://localhost:1", store="memory://")
    with pytest.raises(GraphvizMissing):
        render_image(describe(app), "svg", dot=str(tmp_path / "dot"))
    with pytest.raises(ValueError, match="jpeg"):
        render_image(describe(app), "jpeg")


def test_declared_producers_and_outputs_on_any_app() -> None:
    app = faust.App(f"t-{uuid.uuid4().hex[:8]}", broker="kafka://localhost:1", store="memory://")
    events = app.topic("events")
    declare_producer(app, "sensor", writes=["events", "raw"], detail="a device")

    @app.agent(events, name="notify")
    async def notify(stream: StreamT[Any]) -> None:
        async for _ in stream:
            pass

    declare_outputs(app, "notify", {"email": "SMTP"})
    flow = describe(app)
    kinds = {t.name: t.kind for t in flow.topics}
    leader = next(n for n in kinds if n.endswith("__leader"))
    assert kinds == {"events": "source", "raw": "source", leader: "internal"}
    (sensor,) = flow.producers
    assert (sensor.name, sensor.sink_names, sensor.detail) == (
        "sensor",
        ("events", "raw"),
        "a device",
    )
    assert flow.agents[0].sink_names == ("email",)
    mermaid = render_mermaid(flow)
    assert '[/"sensor<br/>process<br/>a device"/]' in mermaid
    assert '>"email<br/>output<br/>SMTP"]' in mermaid
    assert "shape=cds" in render_dot(flow)
    assert flow.pages == ()  # the app has no web server: none is created to describe it
    assert "web" not in vars(app)
