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
    // One socket per origin when the feed follows all of them.
    feed: { sockets: [], wanted: false, retries: 0, timer: null, backfilled: false },
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

  /** What each counter of /xcm/pending/ counts (this worker's extractor and matcher, since it
   * started). Counters not listed here are shown without a meaning. */
  const COUNTER_HELP = {
    blocks: "blocks read from the blocks topic",
    blocks_vouched: "of those, read as the ingress vouched for their values (not checked one by one)",
    legs_sent: "legs extracted: messages sent",
    legs_received: "legs extracted: messages received (receipts)",
    legs_relayed: "legs extracted: messages seen on the relay chain",
    legs_hop: "legs extracted: messages executed at a hop",
    sent: "journeys started (xcm.sent)",
    received: "journeys completed at their destination (xcm.received)",
    relayed: "journeys seen on their relay chain (xcm.relayed)",
    timeout: "journeys with no receipt before their deadline (xcm.timeout)",
    hop_in: "hops executed (xcm.hop in)",
    hop_out: "hops re-sent onward (xcm.hop out)",
    hop_failed: "hops that failed, ending their journey",
    hop_out_by_content: "onward messages matched to their hop by their program",
    hop_out_parked: "onward messages seen before their hop (matched later)",
    terminal_hop_failed: "journeys ended by a failed hop",
    duplicate_legs: "legs seen twice (dropped)",
    untracked: "journeys to a network nobody monitors (no receipt expected)",
    inbound_pending: "receipts seen before their origin (kept until it comes)",
    inbound_expired: "receipts that expired without their origin",
    relay_pending: "relay-chain legs seen before their origin (kept until it comes)",
    relay_expired: "relay-chain legs that expired without their origin",
    batches: "batches of legs whose table writes were flushed together",
  };

  function counterHelp(name) {
    if (COUNTER_HELP[name]) return COUNTER_HELP[name];
    if (name.startsWith("dead_letters_")) return `dead letters: ${name.slice(13).replace(/_/g, " ")}`;
    if (name.startsWith("legs_")) return `legs extracted: ${name.slice(5)}`;
    const kept = /^(\w+)_pending$/.exec(name);
    if (kept) return `${kept[1]} legs kept until their journey is known`;
    const gone = /^(\w+)_expired$/.exec(name);
    if (gone) return `${gone[1]} legs dropped after waiting too long for their journey`;
    return "counted by this worker (no description)";
  }

  function renderCounters(counters) {
    const entries = Object.entries(counters || {}).sort(([a], [b]) => (a < b ? -1 : 1));
    if (!entries.length) return el("p", { class: "muted small", text: "none yet" });
    return el("table", { class: "counters" },
      el("tbody", {}, entries.map(([name, value]) => el("tr", { "data-counter": name },
        el("td", {},
          el("div", { class: "mono small", text: name }),
          el("div", { class: "legend muted small", text: counterHelp(name) })),
        el("td", { class: "num", text: formatNumber(value) })))));
  }

  function renderPending(view) {
    replace(
      $("pending"),
      el("div", { class: "big-number", id: "pending-journeys", text: formatNumber(view.pending_journeys) }),
      el("div", { class: "big-label", text: "journeys waiting for their destination" }),
      el("div", { class: "section-label", text: "Table entries" }), keyValues(view.tables),
      el("div", { class: "section-label", text: "Counters (this worker, since it started)" }),
      renderCounters(view.counters),
    );
  }

  // -- recent journeys --------------------------------------------------------------------------

  const STATUS_CLASS = { received: "ok", timeout: "bad", "in transit": "info", sent: "warn" };

  function ago(ms) {
    if (!ms) return "—";
    const seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (seconds < 60) return `${seconds}s ago`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
    return clock(new Date(ms));
  }

  function legsPath(legs) {
    if (!Array.isArray(legs) || !legs.length) return el("span", { class: "muted", text: "—" });
    const parts = [el("span", { class: "net-chip", title: legs[0].from, text: networkLabel(legs[0].from) })];
    for (const leg of legs) {
      parts.push(el("span", { class: "leg-type", text: ` ${leg.type || "?"} → ` }));
      parts.push(el("span", { class: "net-chip", title: leg.to, text: networkLabel(leg.to) }));
    }
    return el("span", { class: "legs" }, parts);
  }

  function renderJourneys(list) {
    const journeys = Array.isArray(list) ? list : [];
    $("journeys-count").textContent = journeys.length ? String(journeys.length) : "";
    if (!journeys.length) {
      replace($("journeys"), notice("No journey yet: notifications appear as blocks are matched.", false));
      return;
    }
    const rows = journeys.map((j) => {
      const link = new URL(`../xcm/journeys/${encodeURIComponent(j.journeyId)}`, window.location.href);
      const status = j.status + (j.outcome && j.outcome !== "Success" ? ` (${j.outcome})` : "");
      return el("tr", { "data-journey": j.journeyId },
        el("td", { class: "small" }, el("div", { text: ago(j.lastAt) }),
          el("div", { class: "mono muted", title: j.messageHash || "", text: shortHash(j.messageHash) })),
        el("td", {}, legsPath(j.legs),
          el("div", { class: "muted small", text: `${networkLabel(j.origin)} #${j.originBlock ?? "?"}` })),
        el("td", {}, el("span", { class: `badge status ${STATUS_CLASS[j.status] || ""}`, text: status })),
        el("td", { class: "small" },
          (j.notifications || []).map((n) => el("a", {
            class: "note-link", href: `${link.href}#${n.id || ""}`, title: n.id || "",
            text: String(n.type || "?").replace(/^xcm\./, ""),
          })),
          el("a", { class: "journey-link muted", href: link.href, text: " JSON" })),
      );
    });
    replace($("journeys"), el("table", {},
      el("thead", {}, el("tr", {}, ["When", "Legs", "Status", "Notifications"].map((h) => el("th", { text: h })))),
      el("tbody", {}, rows)));
  }

  // -- webhook delivery -------------------------------------------------------------------------

  function renderWebhooks(view) {
    const rows = Array.isArray(view.subscriptions) ? view.subscriptions : [];
    const totals = view.totals || {};
    const legend = el("p", { class: "legend muted small" },
      "delivered: 2xx answers · retrying: waiting for another attempt · dead: given up ",
      "(dead letters, see /admin/webhooks/dead-letters) · failed: attempts that did not deliver");
    if (!rows.length) {
      replace($("webhooks"), notice("No subscription with a webhook channel.", false), legend);
      return;
    }
    const cell = (value, kind) => el("td", { class: `num ${value > 0 ? kind : ""}`, text: formatNumber(value) });
    replace(
      $("webhooks"),
      el("table", { class: "webhooks" },
        el("thead", {}, el("tr", {}, ["Subscription", "Delivered", "Retrying", "Dead", "Failed"]
          .map((h) => el("th", { text: h })))),
        el("tbody", {}, rows.map((row) => el("tr", { "data-webhook": row.id },
          el("td", {}, el("div", { class: "sub-id", text: row.id }),
            el("div", { class: "muted small mono webhook-url", title: (row.urls || []).join(" "), text: (row.urls || [])[0] || "" }),
            (row.disabledChannels || []).length
              ? el("span", { class: "badge bad", text: "disabled (410)" }) : null),
          cell(row.delivered, "good"), cell(row.retrying, "warn"), cell(row.dead, "bad"),
          cell(row.failed, ""))))),
      el("p", { class: "muted small", text:
        `queue: ${formatNumber(totals.due)} due, ${formatNumber(totals.in_flight)} in flight, ` +
        `${formatNumber(totals.dead)} dead letters` }),
      legend,
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

  /** Columns for the dataflow graph of /topology.json (``graph``: the nodes and edges that
   * ``ocstream topology --format dot`` draws), left to right along the data. An edge back into
   * an upstream node (the matcher re-emits legs into the topic it reads) makes a cycle: such
   * edges are found by a depth-first walk from the nodes nothing feeds, drawn as loops, and left
   * out of the layering (longest path from a root). Nodes without any edge get a column of
   * their own, on the right. */
  function layoutTopology(flow) {
    const graph = flow.graph || { nodes: [], edges: [] };
    const nodes = new Map();
    for (const n of graph.nodes || []) {
      nodes.set(n.id, { id: n.id, kind: n.kind, name: n.name, lines: n.lines || [n.name], order: nodes.size });
    }
    const edges = (graph.edges || [])
      .filter((e) => nodes.has(e.from) && nodes.has(e.to))
      .map((e) => ({ from: e.from, to: e.to, back: false }));
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
    const connected = ids.filter((id) => outgoing.get(id).length || incoming.get(id).length);
    for (const id of connected) layerOf(id);
    const last = connected.length ? Math.max(...connected.map((id) => layers.get(id))) + 1 : 0;
    for (const id of ids) if (!layers.has(id)) layers.set(id, last);
    return { nodes: [...nodes.values()], edges, layers };
  }

  const KIND_LABEL = { producer: "▶", topic: "≡", agent: "⚙", table: "▤", sink: "➤", page: "⌂" };

  function renderTopology(flow) {
    const topics = Array.isArray(flow.topics) ? flow.topics : [];
    const { nodes, edges, layers } = layoutTopology(flow);
    const children = [];
    if (!nodes.length) {
      children.push(notice("Nothing declared.", false));
    } else {
      const boxWidth = 184;
      const columnWidth = 222;
      const gap = 12;
      const lineHeight = 15;
      const columns = [];
      for (const n of nodes) {
        const layer = layers.get(n.id);
        (columns[layer] = columns[layer] || []).push(n);
        n.height = 12 + lineHeight * Math.min(n.lines.length, 3);
      }
      // Order within a column: the first by how much of the flow starts there, the others by
      // the mean rank of their upstream nodes.
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

      // Forward edges are curves from a box's right side to the next one's left side; an edge
      // back upstream runs in a lane of its own under the boxes.
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
        const attrs = { "data-from": a.id, "data-to": b.id, "marker-end": "url(#arrow)" };
        if (edge.back) {
          const x1 = a.x + boxWidth / 2;
          const x2 = b.x + boxWidth / 2;
          const y = lane(layers.get(b.id), layers.get(a.id));
          return svg("path", { ...attrs, class: "edge back",
            d: `M${x1},${a.y + a.height} L${x1},${y - 8} Q${x1},${y} ${x1 - 8},${y} ` +
              `L${x2 + 8},${y} Q${x2},${y} ${x2},${y - 8} L${x2},${b.y + b.height + 2}` });
        }
        const x1 = a.x + boxWidth;
        const y1 = a.y + a.height / 2;
        const x2 = b.x - 2;
        const y2 = b.y + b.height / 2;
        const bend = Math.max(40, (x2 - x1) / 2);
        return svg("path", { ...attrs, class: "edge",
          d: `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}` });
      });
      height = Math.max(height, Math.max(0, ...bottoms.map((b) => b || 0)) + 12 + 12 * lanes);
      const boxes = nodes.map((n) => {
        const [title, ...rest] = n.lines;
        const lines = [svg("text", { x: n.x + 10, y: n.y + 17, class: "title",
          text: `${KIND_LABEL[n.kind] || ""} ${clip(String(title), 24)}` })];
        rest.slice(0, 2).forEach((line, i) => {
          lines.push(svg("text", { x: n.x + 10, y: n.y + 17 + lineHeight * (i + 1), class: "meta",
            text: clip(String(line), 30) }));
        });
        return svg("g", { class: `node ${n.kind}`, "data-name": n.name, "data-id": n.id },
          svg("title", { text: n.lines.join("\n") }),
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
      children.push(el("p", { class: "legend muted small" },
        "▶ producer (process, timer) · ≡ topic · ⚙ agent · ▤ table · ➤ output · ⌂ HTTP route. ",
        "The same graph as ", el("code", { text: "ocstream topology --format svg" }), "."));
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

  function addNotification(payload, subscriptionId, recent) {
    const kind = String(payload.type || "unknown");
    const waypoint = payload.waypoint || {};
    let className = `t-${kind.replace(/^xcm\./, "")}`;
    if (waypoint.outcome === "Fail") className += " t-fail";
    if (recent) className += " recent";
    const label = kind.replace(/^xcm\./, "") + (payload.direction ? `-${payload.direction}` : "");
    addFeedEntry(`notification ${className}`, label,
      formatLine(payload, payload.subscriptionId || subscriptionId), payload);
  }

  /** The feed starts with the last notifications of the whole group (GET /xcm/notifications),
   * so that it is not empty until the next match; live ones follow. */
  async function backfillFeed() {
    if (state.feed.backfilled) return;
    state.feed.backfilled = true;
    try {
      const recent = await getJson("xcm/notifications?limit=20");
      for (const item of [...recent].reverse()) {
        addNotification(item.notification, null, true);
      }
    } catch (error) {
      // Older workers do not serve it: the feed is live only.
    }
  }

  function selectedDestinations() {
    return [...document.querySelectorAll("#feed-destinations input:checked")].map((i) => i.value);
  }

  const ALL = "*";

  function buildFeedForm(networks) {
    const urns = Object.keys(networks).sort(compareUrns);
    const select = $("feed-origin");
    const current = select.value;
    const known = new Set([...select.options].map((o) => o.value).filter((v) => v !== ALL));
    if (urns.length === known.size && urns.every((u) => known.has(u))) return false;
    replace(select,
      el("option", { value: ALL, text: `All origins (${urns.length})` }),
      urns.map((urn) => el("option", { value: urn, text: `${networkLabel(urn)} — ${urn}` })));
    if (current && (current === ALL || urns.includes(current))) select.value = current;
    else select.value = ALL;
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
    for (const socket of feed.sockets) {
      socket.onclose = null;
      socket.close(1000, "dashboard resubscribes");
    }
    feed.sockets = [];
  }

  function feedOrigins() {
    const chosen = $("feed-origin").value;
    if (chosen !== ALL) return chosen ? [chosen] : [];
    return state.networks ? Object.keys(state.networks).sort(compareUrns) : [];
  }

  function openFeed() {
    closeFeed();
    const feed = state.feed;
    const origins = feedOrigins();
    if (!origins.length) {
      feedStatus("no network", "");
      return;
    }
    const wanted = selectedDestinations();
    feed.wanted = true;
    feedStatus("connecting…", "pending");
    const live = new Set();
    // One ephemeral subscription per origin: a subscription has one origin, and the feed
    // follows all of them by default.
    for (const origin of origins) {
      const destinations = wanted.filter((d) => d !== origin);
      if (!destinations.length) continue;
      const url = new URL("../ws/subs", window.location.href);
      url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
      if (readToken) url.searchParams.set("access_token", readToken);
      let socket;
      try {
        socket = new WebSocket(url);
      } catch (error) {
        feedStatus("unavailable", "error");
        return;
      }
      feed.sockets.push(socket);
      let subscriptionId = null;
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
          addNotification(message, subscriptionId, false);
        } else if (message && message.ephemeral && message.id) {
          subscriptionId = message.id;
          live.add(origin);
          feed.retries = 0;
          const scope = origins.length > 1 ? `${live.size}/${origins.length} origins` : message.id;
          feedStatus(`live · ${scope}`, "live");
          addFeedEntry("t-system", "subscribed",
            `ephemeral subscription ${message.id}: ${networkLabel(origin)} → ` +
            `${destinations.map(networkLabel).join(", ")}`,
            message);
        }
      };
      socket.onclose = (event) => {
        feed.sockets = feed.sockets.filter((s) => s !== socket);
        const reason = event.reason ? ` ${event.reason}` : "";
        if (!feed.wanted) {
          feedStatus("closed", "");
          return;
        }
        // Shutdown, busy or a dropped connection: all sockets again, more slowly each time.
        closeFeed();
        const delay = Math.min(30000, 2000 * 2 ** feed.retries);
        feed.retries += 1;
        feedStatus(`closed (${event.code}${reason}); retrying in ${Math.round(delay / 1000)}s`, "error");
        feed.timer = setTimeout(openFeed, delay);
      };
    }
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
        await backfillFeed();
        openFeed(); // default: all origins, all destinations
      }
    } catch (error) {
      replace($("networks"), failure("networks", error, "The network registry is"));
    }
  }

  // A panel that shows one GET: render the answer, or say in the panel why there is none.
  const PANELS = {
    pending: { path: "xcm/pending/", render: renderPending, what: "The pending view is" },
    subs: { path: "subs", render: renderSubscriptions, what: "The subscription API is", counted: true },
    journeys: {
      path: "xcm/journeys?limit=15",
      label: "xcm/journeys",
      render: renderJourneys,
      what: "The journey view is",
      counted: true,
    },
    webhooks: { path: "webhooks/status", render: renderWebhooks, what: "Webhook delivery is" },
    topology: { path: "topology.json", render: renderTopology, what: "The topology is" },
  };

  async function refreshPanel(id) {
    const panel = PANELS[id];
    try {
      panel.render(await getJson(panel.path));
    } catch (error) {
      if (panel.counted) $(`${id}-count`).textContent = "";
      replace($(id), failure(panel.label || panel.path, error, panel.what));
    }
  }

  async function refreshAll(withTopology) {
    const jobs = [refreshNetworks(), ...["pending", "subs", "journeys", "webhooks"].map(refreshPanel)];
    if (withTopology) jobs.push(refreshPanel("topology"));
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

  window.ocstreamDashboard = { formatLine, layoutTopology, counterHelp };
  document.addEventListener("DOMContentLoaded", init);
})();
