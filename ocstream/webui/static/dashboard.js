/* ocstream dashboard: plain JavaScript, no build step, no dependencies.
 *
 * Reads the worker's endpoints with URLs relative to the page (/dashboard/ → ../networks), so the
 * page also works behind a proxy that mounts the worker under a path. Every value from the
 * server is put into the page as text (textContent), never as HTML.
 */
(function () {
  "use strict";

  const REFRESH_MS = 5000;
  const FEED_MAX = 200;
  const SVG_NS = "http://www.w3.org/2000/svg";

  // Names for the networks of config/polkadot.toml and the local network.
  const KNOWN_NETWORKS = {
    "urn:ocn:polkadot:0": "Polkadot",
    "urn:ocn:polkadot:1000": "Asset Hub",
    "urn:ocn:polkadot:1002": "Bridge Hub",
    "urn:ocn:polkadot:2000": "Acala",
    "urn:ocn:polkadot:2004": "Moonbeam",
    "urn:ocn:polkadot:2006": "Astar",
    "urn:ocn:polkadot:2030": "Bifrost",
    "urn:ocn:polkadot:2032": "Interlay",
    "urn:ocn:polkadot:2034": "Hydration",
    "urn:ocn:kusama:0": "Kusama",
    "urn:ocn:kusama:1000": "Kusama Asset Hub",
    "urn:ocn:local:0": "Local relay",
    "urn:ocn:local:1000": "Local Asset Hub",
  };

  const state = {
    networks: null,
    tips: {},
    feed: { socket: null, subscriptionId: null, wanted: false, retries: 0, timer: null },
    formReady: false,
    pollTimer: null,
  };

  // -- small DOM helpers ------------------------------------------------------------------------

  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children.flat(Infinity)) if (child) node.append(child);
    return node;
  }

  function replace(container, ...children) {
    container.replaceChildren(...children.flat(Infinity).filter(Boolean));
  }

  function notice(text, isError) {
    return el("p", { class: isError ? "notice error" : "notice", text });
  }

  function shortHash(hash) {
    if (typeof hash !== "string" || hash.length < 20) return hash || "—";
    return `${hash.slice(0, 10)}…${hash.slice(-6)}`;
  }

  function formatNumber(value) {
    if (value === null || value === undefined || value === "") return "—";
    const n = Number(value);
    return Number.isFinite(n) ? n.toLocaleString("en-US") : String(value);
  }

  function networkLabel(urn) {
    if (KNOWN_NETWORKS[urn]) return KNOWN_NETWORKS[urn];
    const parts = String(urn).split(":");
    if (parts.length === 4 && parts[0] === "urn" && parts[1] === "ocn") {
      const consensus = parts[2].charAt(0).toUpperCase() + parts[2].slice(1);
      return parts[3] === "0" ? `${consensus} relay` : `${consensus} ${parts[3]}`;
    }
    return String(urn);
  }

  function clock(date) {
    return (date || new Date()).toLocaleTimeString("en-GB", { hour12: false });
  }

  // -- fetching ---------------------------------------------------------------------------------

  class HttpError extends Error {
    constructor(path, status) {
      super(`${path} answered ${status}`);
      this.status = status;
    }
  }

  // A read token for workers that require one (docs/security.md): opened as
  // /dashboard/#token=<token>, kept for this tab's session, never sent in a URL but the
  // websocket's (browsers cannot set headers there).
  const TOKEN_KEY = "ocstream-read-token";
  const readToken = (function () {
    const match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
    try {
      if (match) {
        sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
        history.replaceState(null, "", window.location.pathname + window.location.search);
      }
      return sessionStorage.getItem(TOKEN_KEY);
    } catch (error) {
      return match ? decodeURIComponent(match[1]) : null;
    }
  })();

  async function getJson(path) {
    const url = new URL(`../${path}`, window.location.href);
    const headers = { Accept: "application/json" };
    if (readToken) headers.Authorization = `Bearer ${readToken}`;
    const response = await fetch(url, { headers, cache: "no-store" });
    if (!response.ok) throw new HttpError(`GET /${path}`, response.status);
    return response.json();
  }

  function failure(path, error, what) {
    if (error instanceof HttpError && error.status === 404) {
      return notice(`${what} not served by this worker (GET /${path} answered 404).`, false);
    }
    return notice(`Could not load /${path}: ${error.message || error}`, true);
  }

  // -- networks ---------------------------------------------------------------------------------

  function renderNetworks(networks) {
    const urns = Object.keys(networks).sort(compareUrns);
    $("networks-count").textContent = urns.length ? String(urns.length) : "";
    if (!urns.length) {
      replace($("networks"), notice("No network in the registry yet: start an ingress.", false));
      return;
    }
    const rows = urns.map((urn) => {
      const record = networks[urn] || {};
      const previous = state.tips[urn];
      const tip = record.tip_number;
      const moved = previous !== undefined && tip !== null && tip > previous;
      state.tips[urn] = tip;
      return el(
        "tr",
        { class: moved ? "flash" : null, "data-urn": urn },
        el("td", {}, el("span", { class: "net-name", text: networkLabel(urn) }),
          el("span", { class: "net-urn", text: urn })),
        el("td", {}, record.relay
          ? el("span", { class: "mono small", text: networkLabel(record.relay) })
          : el("span", { class: "badge relay", text: "relay chain" })),
        el("td", { class: "num", text: formatNumber(record.spec_version) }),
        el("td", { class: "num", text: record.ss58_prefix ?? "—" }),
        el("td", { class: "num" }, formatNumber(tip),
          moved ? el("span", { class: "delta", text: `+${tip - previous}` }) : null),
        el("td", { class: "mono", title: record.tip_hash || "", text: shortHash(record.tip_hash) }),
      );
    });
    replace(
      $("networks"),
      el("table", {},
        el("thead", {}, el("tr", {}, ["Network", "Relay", "Spec", "SS58", "Tip", "Tip hash"]
          .map((h) => el("th", { text: h })))),
        el("tbody", {}, rows)),
    );
  }

  function compareUrns(a, b) {
    const pa = String(a).split(":");
    const pb = String(b).split(":");
    if (pa[2] !== pb[2]) return pa[2] < pb[2] ? -1 : 1;
    return Number(pa[3]) - Number(pb[3]) || (a < b ? -1 : a > b ? 1 : 0);
  }

  // -- pending journeys -------------------------------------------------------------------------

  function keyValues(object) {
    const entries = Object.entries(object || {}).sort(([a], [b]) => (a < b ? -1 : 1));
    if (!entries.length) return el("p", { class: "muted small", text: "none" });
    return el("dl", { class: "kv" }, entries.map(([key, value]) => [
      el("dt", { title: key, text: key }),
      el("dd", { text: formatNumber(value) }),
    ]));
  }

  function renderPending(view) {
    replace(
      $("pending"),
      el("div", { class: "big-number", id: "pending-journeys", text: formatNumber(view.pending_journeys) }),
      el("div", { class: "big-label", text: "journeys waiting for their destination" }),
      el("div", { class: "columns" },
        el("div", {}, el("div", { class: "section-label", text: "Table entries" }), keyValues(view.tables)),
        el("div", {}, el("div", { class: "section-label", text: "Engine counters" }), keyValues(view.counters))),
    );
  }

  // -- subscriptions ----------------------------------------------------------------------------

  function listText(value, empty) {
    if (value === undefined || value === null) return empty;
    if (value === "*") return "all";
    if (Array.isArray(value)) return value.length ? value.join(", ") : "none";
    return String(value);
  }

  function renderSubscriptions(subs) {
    const list = Array.isArray(subs) ? subs : [];
    $("subs-count").textContent = list.length ? String(list.length) : "";
    if (!list.length) {
      replace($("subs"), notice("No persistent subscription. Create one with POST /subs.", false));
      return;
    }
    const shown = list.slice(0, 100);
    const rows = shown.map((sub) => {
      const destinations = Array.isArray(sub.destinations) ? sub.destinations : [];
      return el(
        "tr",
        { "data-subscription": sub.id },
        el("td", {},
          el("div", { class: "sub-id", text: sub.id }),
          el("div", { class: "sub-route" },
            `${networkLabel(sub.origin)} → ${destinations.map(networkLabel).join(", ") || "—"}`)),
        el("td", { class: "small" },
          el("div", { text: `events: ${listText(sub.events, "all")}` }),
          el("div", { class: "muted", text: `senders: ${listText(sub.senders, "any")}` })),
        el("td", {}, (sub.channels || []).map((channel) =>
          el("span", { class: `badge ${channel.type}`, title: channel.url || "", text: channel.type }))),
      );
    });
    replace(
      $("subs"),
      el("table", {},
        el("thead", {}, el("tr", {}, ["Subscription", "Filters", "Channels"].map((h) => el("th", { text: h })))),
        el("tbody", {}, rows)),
      list.length > shown.length
        ? el("p", { class: "muted small", text: `and ${list.length - shown.length} more` })
        : null,
    );
  }

  // -- topology ---------------------------------------------------------------------------------

  /** Columns for the dataflow graph: topics and agents, left to right along the data.
   * An agent that writes back into a topic upstream of it (the matcher re-emits legs into the
   * topic it reads) makes a cycle: such edges are found by a depth-first walk from the topics
   * nobody writes, drawn as loops, and left out of the layering (longest path from a root). */
  function layoutTopology(flow) {
    const agents = Array.isArray(flow.agents) ? flow.agents : [];
    const nodes = new Map();
    const edges = [];
    const node = (id, kind, name) => {
      if (!nodes.has(id)) nodes.set(id, { id, kind, name, order: nodes.size, tables: [] });
      return nodes.get(id);
    };
    for (const agent of agents) {
      const a = node(`a:${agent.name}`, "agent", agent.name);
      a.tables = agent.tables || [];
      for (const topic of agent.source_topics || []) {
        node(`t:${topic}`, "topic", topic);
        edges.push({ from: `t:${topic}`, to: a.id, back: false });
      }
      for (const sink of agent.sink_names || []) {
        node(`t:${sink}`, "topic", sink);
        edges.push({ from: a.id, to: `t:${sink}`, back: false });
      }
    }
    const outgoing = new Map([...nodes.keys()].map((id) => [id, []]));
    const incoming = new Map([...nodes.keys()].map((id) => [id, []]));
    for (const edge of edges) {
      outgoing.get(edge.from).push(edge);
      incoming.get(edge.to).push(edge);
    }
    const visit = new Map(); // 1: on the walk's stack, 2: done
    const walk = (id) => {
      visit.set(id, 1);
      for (const edge of outgoing.get(id)) {
        if (visit.get(edge.to) === 1) edge.back = true;
        else if (!visit.has(edge.to)) walk(edge.to);
      }
      visit.set(id, 2);
    };
    const ids = [...nodes.keys()];
    for (const id of ids) if (!incoming.get(id).length) walk(id);
    for (const id of ids) if (!visit.has(id)) walk(id);
    const layers = new Map();
    const layerOf = (id) => {
      if (!layers.has(id)) {
        const parents = incoming.get(id).filter((e) => !e.back).map((e) => e.from);
        layers.set(id, parents.length ? Math.max(...parents.map(layerOf)) + 1 : 0);
      }
      return layers.get(id);
    };
    for (const id of ids) layerOf(id);
    return { nodes: [...nodes.values()], edges, layers };
  }

  function renderTopology(flow) {
    const topics = Array.isArray(flow.topics) ? flow.topics : [];
    const byName = new Map(topics.map((t) => [t.name, t]));
    const { nodes, edges, layers } = layoutTopology(flow);
    const children = [];
    if (!nodes.length) {
      children.push(notice("No agent declared.", false));
    } else {
      const boxWidth = 168;
      const columnWidth = 204;
      const gap = 16;
      const head = 44; // the height of a box's title part, where edges attach
      const columns = [];
      for (const n of nodes) {
        const layer = layers.get(n.id);
        (columns[layer] = columns[layer] || []).push(n);
        n.height = n.kind === "agent" ? 40 + 17 * n.tables.length + (n.tables.length ? 6 : 0) : head;
      }
      // Order within a column: the first column by how much of the flow starts there (the XCM
      // chain above the demo), the others by the mean rank of their upstream nodes.
      const position = new Map(nodes.map((n) => [n.id, n]));
      const forward = edges.filter((e) => !e.back);
      const reach = (id, seen = new Set()) => {
        for (const e of forward) if (e.from === id && !seen.has(e.to)) { seen.add(e.to); reach(e.to, seen); }
        return seen.size;
      };
      const rank = new Map();
      columns.forEach((column, index) => {
        const score = (n) => {
          if (index === 0) return -reach(n.id);
          const parents = forward.filter((e) => e.to === n.id && rank.has(e.from)).map((e) => rank.get(e.from));
          return parents.length ? parents.reduce((x, y) => x + y, 0) / parents.length : Infinity;
        };
        (column || []).sort((a, b) => score(a) - score(b) || a.order - b.order)
          .forEach((n, i) => rank.set(n.id, i));
      });
      let height = 0;
      const bottoms = [];
      columns.forEach((column, index) => {
        let y = 8;
        for (const n of (column || []).sort((a, b) => rank.get(a.id) - rank.get(b.id))) {
          n.x = 8 + index * columnWidth;
          n.y = y;
          y += n.height + gap;
        }
        bottoms[index] = y - gap;
        height = Math.max(height, y);
      });
      const width = 8 + (columns.length - 1) * columnWidth + boxWidth + 8;
      const clip = (text, max) => (text.length > max ? `${text.slice(0, max - 1)}…` : text);

      // Edges between neighbouring columns are S-curves. An edge that skips columns, or goes
      // back upstream, runs in its own lane under the boxes it would cross.
      let lanes = 0;
      const lane = (fromColumn, toColumn) => {
        const lo = Math.min(fromColumn, toColumn);
        const hi = Math.max(fromColumn, toColumn);
        const base = Math.max(...bottoms.slice(lo, hi + 1).map((b) => b || 0));
        lanes += 1;
        return base + 6 + 12 * lanes;
      };
      const paths = edges.map((edge) => {
        const a = position.get(edge.from);
        const b = position.get(edge.to);
        const ca = layers.get(a.id);
        const cb = layers.get(b.id);
        if (edge.back) {
          const x1 = a.x + boxWidth / 2;
          const x2 = b.x + boxWidth / 2;
          const y = lane(cb, ca);
          return svg("path", {
            class: "edge back",
            d: `M${x1},${a.y + a.height} L${x1},${y - 8} Q${x1},${y} ${x1 - 8},${y} ` +
              `L${x2 + 8},${y} Q${x2},${y} ${x2},${y - 8} L${x2},${b.y + b.height + 2}`,
            "marker-end": "url(#arrow)",
          });
        }
        const x1 = a.x + boxWidth;
        const y1 = a.y + Math.min(a.height, head) / 2;
        const x2 = b.x - 2;
        const y2 = b.y + Math.min(b.height, head) / 2;
        if (cb - ca > 1) {
          const y = lane(ca + 1, cb - 1);
          const r = 10;
          return svg("path", {
            class: "edge",
            d: `M${x1},${y1} L${x1 + 8},${y1} Q${x1 + 18},${y1} ${x1 + 18},${y1 + r} L${x1 + 18},${y - r} ` +
              `Q${x1 + 18},${y} ${x1 + 18 + r},${y} L${x2 - 18 - r},${y} Q${x2 - 18},${y} ${x2 - 18},${y - r} ` +
              `L${x2 - 18},${y2 + r} Q${x2 - 18},${y2} ${x2 - 8},${y2} L${x2},${y2}`,
            "marker-end": "url(#arrow)",
          });
        }
        const mid = (x1 + x2) / 2;
        return svg("path", {
          class: "edge",
          d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`,
          "marker-end": "url(#arrow)",
        });
      });
      height = Math.max(height, Math.max(0, ...bottoms.map((b) => b || 0)) + 12 + 12 * lanes);
      const boxes = nodes.map((n) => {
        const lines = [];
        if (n.kind === "topic") {
          const topic = byName.get(n.name) || {};
          const parts = [topic.kind || "topic"];
          if (topic.partitions) parts.push(`${topic.partitions} partitions`);
          lines.push(svg("text", { x: n.x + 12, y: n.y + 18, class: "title", text: clip(n.name, 22) }));
          lines.push(svg("text", { x: n.x + 12, y: n.y + 34, class: "meta", text: parts.join(" · ") }));
        } else {
          const count = n.tables.length;
          lines.push(svg("text", { x: n.x + 12, y: n.y + 18, class: "title", text: `⚙ ${clip(n.name, 20)}` }));
          lines.push(svg("text", { x: n.x + 12, y: n.y + 33, class: "meta",
            text: count ? `agent · ${count} table${count > 1 ? "s" : ""}` : "agent" }));
          n.tables.forEach((table, i) => {
            lines.push(svg("text", { x: n.x + 16, y: n.y + 52 + 17 * i, class: "table-row", text: `▤ ${clip(table, 20)}` }));
          });
        }
        return svg("g", { class: `node ${n.kind}`, "data-name": n.name },
          svg("title", { text: n.name }),
          svg("rect", { x: n.x, y: n.y, width: boxWidth, height: n.height, rx: 7 }),
          lines);
      });
      children.push(svg(
        "svg",
        { class: "topology-svg", viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
          "aria-label": "dataflow topology" },
        svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5,
          markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
        svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }))),
        paths,
        boxes,
      ));
    }
    const tables = Array.isArray(flow.tables) ? flow.tables : [];
    children.push(el("details", { class: "topology-details" },
      el("summary", { text: `All topics (${topics.length}) and tables (${tables.length})` }),
      el("table", {},
        el("thead", {}, el("tr", {}, ["Topic", "Kind", "Partitions"].map((h) => el("th", { text: h })))),
        el("tbody", {}, topics.map((t) => el("tr", {},
          el("td", { class: "mono", text: t.name }),
          el("td", { text: t.kind || "" }),
          el("td", { class: "num", text: t.partitions ?? "" }))))),
      el("table", {},
        el("thead", {}, el("tr", {}, ["Table", "Changelog topic"].map((h) => el("th", { text: h })))),
        el("tbody", {}, tables.map((t) => el("tr", {},
          el("td", { class: "mono", text: t.name }),
          el("td", { class: "mono", text: t.changelog_topic || "" })))))));
    replace($("topology"), children);
  }

  // -- live feed --------------------------------------------------------------------------------

  /** The log line of a notification, as ocstream.sinks.log.format_line writes it. */
  function formatLine(n, subscriptionId) {
    const kind = String(n.type || "unknown");
    const origin = n.origin && typeof n.origin === "object" ? n.origin : {};
    const destination = n.destination && typeof n.destination === "object" ? n.destination : {};
    const waypoint = n.waypoint && typeof n.waypoint === "object" ? n.waypoint : {};
    const legs = Array.isArray(n.legs) ? n.legs : [];
    const source = origin.chainId || (legs[0] && legs[0].from) || "?";
    const target = destination.chainId || (legs.length && legs[legs.length - 1].to) || "?";
    const arrow = { "xcm.relayed": "↠", "xcm.hop": "↷" }[kind] || "➜";
    const fields = [["subscription", subscriptionId]];
    const blocks = [["o", origin.blockNumber]];
    if (kind === "xcm.hop") {
      fields.push(["direction", n.direction], ["stop", waypoint.chainId]);
      blocks.push(["h", waypoint.blockNumber]);
    } else if (kind === "xcm.relayed") {
      fields.push(["relay", waypoint.chainId]);
      blocks.push(["r", waypoint.blockNumber]);
    } else if (kind === "xcm.received") {
      blocks.push(["d", destination.blockNumber || waypoint.blockNumber]);
    }
    fields.push(["messageHash", waypoint.messageHash || origin.messageHash], ["messageId", n.messageId]);
    if (kind !== "xcm.timeout") {
      fields.push(["outcome", waypoint.outcome]);
      if (waypoint.error !== null && waypoint.error !== undefined) {
        fields.push(["error", typeof waypoint.error === "string" ? waypoint.error : JSON.stringify(waypoint.error)]);
      }
    }
    if (waypoint.assetsTrapped) fields.push(["assetsTrapped", "yes"]);
    const present = (pairs) => pairs.filter(([, v]) => v !== null && v !== undefined);
    const text = present(fields).map(([k, v]) => `${k}=${v}`).join(", ");
    const numbers = present(blocks).map(([k, v]) => `${k}: #${v}`).join(", ");
    return `[${source} ${arrow} ${target}] NOTIFICATION ${kind} ${text}${numbers ? ` (${numbers})` : ""}`;
  }

  function feedStatus(text, kind) {
    const pill = $("feed-status");
    pill.textContent = text;
    pill.className = `pill ${kind || ""}`;
  }

  function addFeedEntry(className, label, line, payload) {
    const list = $("feed");
    const summary = el("summary", { title: line },
      el("span", { class: "time", text: clock() }),
      el("span", { class: "type", text: label }),
      el("span", { class: "line", text: line }));
    const entry = el("li", { class: className },
      payload === undefined ? el("details", {}, summary)
        : el("details", {}, summary, el("pre", { text: JSON.stringify(payload, null, 2) })));
    list.prepend(entry);
    while (list.children.length > FEED_MAX) list.lastElementChild.remove();
    $("feed-empty").hidden = true;
  }

  function addNotification(payload) {
    const kind = String(payload.type || "unknown");
    const waypoint = payload.waypoint || {};
    let className = `t-${kind.replace(/^xcm\./, "")}`;
    if (waypoint.outcome === "Fail") className += " t-fail";
    const label = kind.replace(/^xcm\./, "") + (payload.direction ? `-${payload.direction}` : "");
    addFeedEntry(`notification ${className}`, label,
      formatLine(payload, payload.subscriptionId || state.feed.subscriptionId), payload);
  }

  function selectedDestinations() {
    return [...document.querySelectorAll("#feed-destinations input:checked")].map((i) => i.value);
  }

  function buildFeedForm(networks) {
    const urns = Object.keys(networks).sort(compareUrns);
    const select = $("feed-origin");
    const current = select.value;
    const known = new Set([...select.options].map((o) => o.value));
    if (urns.length === known.size && urns.every((u) => known.has(u))) return false;
    replace(select, urns.map((urn) => el("option", { value: urn, text: `${networkLabel(urn)} — ${urn}` })));
    if (current && urns.includes(current)) select.value = current;
    buildDestinations(urns, select.value, true);
    return true;
  }

  function buildDestinations(urns, origin, keepChecks) {
    const before = new Map([...document.querySelectorAll("#feed-destinations input")]
      .map((i) => [i.value, i.checked]));
    replace($("feed-destinations"), urns.filter((u) => u !== origin).map((urn) => {
      const checked = keepChecks && before.has(urn) ? before.get(urn) : true;
      return el("label", { class: "chip", title: urn },
        el("input", { type: "checkbox", value: urn, checked }),
        networkLabel(urn));
    }));
  }

  function closeFeed() {
    const feed = state.feed;
    clearTimeout(feed.timer);
    if (feed.socket) {
      feed.socket.onclose = null;
      feed.socket.close(1000, "dashboard resubscribes");
    }
    feed.socket = null;
    feed.subscriptionId = null;
  }

  function openFeed() {
    closeFeed();
    const feed = state.feed;
    const origin = $("feed-origin").value;
    if (!origin) {
      feedStatus("no network", "");
      return;
    }
    const destinations = selectedDestinations();
    const url = new URL("../ws/subs", window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    if (readToken) url.searchParams.set("access_token", readToken);
    feed.wanted = true;
    feedStatus("connecting…", "pending");
    let socket;
    try {
      socket = new WebSocket(url);
    } catch (error) {
      feedStatus("unavailable", "error");
      return;
    }
    feed.socket = socket;
    socket.onopen = () => {
      socket.send(JSON.stringify({ origin, destinations }));
    };
    socket.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (error) {
        return;
      }
      if (message && message.error) {
        feedStatus(`rejected: ${message.reason}`, "error");
        addFeedEntry("t-system", "error", `${message.statusCode} ${message.reason}`, message);
      } else if (message && message.type) {
        addNotification(message);
      } else if (message && message.ephemeral && message.id) {
        feed.subscriptionId = message.id;
        feed.retries = 0;
        feedStatus(`live · ${message.id}`, "live");
        addFeedEntry("t-system", "subscribed",
          `ephemeral subscription ${message.id}: ${networkLabel(origin)} → ` +
          `${destinations.length ? destinations.map(networkLabel).join(", ") : "no destination"}`,
          message);
      }
    };
    socket.onclose = (event) => {
      feed.socket = null;
      feed.subscriptionId = null;
      const reason = event.reason ? ` ${event.reason}` : "";
      if (!feed.wanted) {
        feedStatus("closed", "");
        return;
      }
      // Shutdown, busy or a dropped connection: try again, more slowly each time.
      const delay = Math.min(30000, 2000 * 2 ** feed.retries);
      feed.retries += 1;
      feedStatus(`closed (${event.code}${reason}); retrying in ${Math.round(delay / 1000)}s`, "error");
      feed.timer = setTimeout(openFeed, delay);
    };
  }

  // -- refresh loop -----------------------------------------------------------------------------

  async function refreshNetworks() {
    try {
      const networks = await getJson("networks");
      state.networks = networks;
      renderNetworks(networks);
      const changed = buildFeedForm(networks);
      if (changed && !state.formReady && Object.keys(networks).length) {
        state.formReady = true;
        openFeed(); // default: the first network, all destinations
      }
    } catch (error) {
      replace($("networks"), failure("networks", error, "The network registry is"));
    }
  }

  async function refreshPending() {
    try {
      renderPending(await getJson("xcm/pending/"));
    } catch (error) {
      replace($("pending"), failure("xcm/pending/", error, "The pending view is"));
    }
  }

  async function refreshSubscriptions() {
    try {
      renderSubscriptions(await getJson("subs"));
    } catch (error) {
      $("subs-count").textContent = "";
      replace($("subs"), failure("subs", error, "The subscription API is"));
    }
  }

  async function refreshTopology() {
    try {
      renderTopology(await getJson("topology.json"));
    } catch (error) {
      replace($("topology"), failure("topology.json", error, "The topology is"));
    }
  }

  async function refreshAll(withTopology) {
    const jobs = [refreshNetworks(), refreshPending(), refreshSubscriptions()];
    if (withTopology) jobs.push(refreshTopology());
    await Promise.allSettled(jobs);
    $("refreshed").textContent = `updated ${clock()}`;
  }

  function schedule() {
    clearInterval(state.pollTimer);
    state.pollTimer = null;
    if ($("auto-refresh").checked) state.pollTimer = setInterval(() => refreshAll(false), REFRESH_MS);
  }

  function init() {
    $("worker").textContent = window.location.host;
    $("auto-refresh").addEventListener("change", schedule);
    $("refresh-now").addEventListener("click", () => refreshAll(true));
    $("feed-form").addEventListener("submit", (event) => {
      event.preventDefault();
      openFeed();
    });
    $("feed-origin").addEventListener("change", () => {
      const urns = state.networks ? Object.keys(state.networks).sort(compareUrns) : [];
      buildDestinations(urns, $("feed-origin").value, false);
      openFeed();
    });
    $("feed-clear").addEventListener("click", () => {
      replace($("feed"));
      $("feed-empty").hidden = false;
    });
    window.addEventListener("beforeunload", () => {
      state.feed.wanted = false;
      closeFeed();
    });
    refreshAll(true);
    schedule();
  }

  window.ocstreamDashboard = { formatLine, layoutTopology };
  document.addEventListener("DOMContentLoaded", init);
})();
