// The Crabnet dashboard: plain JavaScript, no build step. Reads the monitoring API of the node
// that serves it and follows its events live over server-sent events (EventSource).
// Data is only ever inserted as text, never as HTML.
"use strict";

const EVENT_TYPES = [
  "node_started", "node_stopped", "seed_published", "bid_placed", "bidding_closed",
  "seed_claimed", "task_started", "result_recorded", "seed_settled", "seed_cancelled",
  "status_changed", "peer_discovered", "message_accepted", "message_deferred",
  "message_rejected", "transport_status", "send_failed", "alert_firing", "alert_resolved", "events_dropped",
];
const LIFECYCLE = new Set([
  "seed_published", "bid_placed", "bidding_closed", "seed_claimed", "task_started",
  "result_recorded", "seed_settled", "seed_cancelled",
]);
const MAX_FEED = 300;

const state = {
  selfId: null,
  names: new Map(), // node id -> name
  lastSeq: 0, // latest event shown
  selectedSeed: null,
  source: null,
  refreshTimer: null,
  topologyTimer: null,
  knownSeeds: new Set(),
};

// ---------------------------------------------------------------------------------------------
// Helpers

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

const short = (id) => (id ? String(id).slice(0, 8) : "–");
const who = (id) => (id ? state.names.get(id) || short(id) : "–");
const time = (ms) => (ms ? new Date(ms).toLocaleTimeString() : "–");
const ago = (ms) => {
  if (!ms) return "–";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
};

async function api(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    // not JSON
  }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : `${response.status} ${response.statusText}`;
    const error = new Error(`${path}: ${message}`);
    error.status = response.status;
    error.body = body;
    throw error;
  }
  return body;
}

function showError(error) {
  const p = $("error");
  if (error) {
    p.textContent = String(error.message || error);
    p.hidden = false;
  } else {
    p.hidden = true;
  }
}

function badge(text, cls, title) {
  return el("span", { class: `badge ${cls}`, title }, text);
}

// ---------------------------------------------------------------------------------------------
// Overview: identity, counts, rejections

function rememberNames(self, peers) {
  if (self) {
    state.selfId = self.node_id;
    state.names.set(self.node_id, `${self.name} (this node)`);
  }
  for (const p of peers || []) state.names.set(p.node_id, p.name);
}

function renderCounts(list, entries, total, totalLabel, nonzeroIsBad) {
  list.replaceChildren();
  for (const [name, n] of entries) {
    const li = el("li", { class: nonzeroIsBad && n > 0 ? "nonzero" : null, dataset: { key: name } },
      el("span", {}, name.replaceAll("_", " ")), el("span", { class: "n" }, n));
    list.append(li);
  }
  list.append(el("li", { class: "total" }, `${totalLabel}: ${total}`));
}

async function loadOverview() {
  const o = await api("/api/overview");
  rememberNames(o.node, o.peers);
  $("node-name").textContent = o.node.name;
  $("node-id").textContent = short(o.node.node_id) + "…";
  $("node-id").title = o.node.node_id;
  $("node-fingerprint").textContent = o.node.fingerprint;
  $("node-transport").textContent = o.node.transport || "none (offline)";
  document.title = `Crabnet · ${o.node.name}`;

  renderCounts($("status-counts"), Object.entries(o.seeds_by_status), o.seeds_total, "total", false);
  renderCounts($("rejections"), Object.entries(o.rejections), o.rejected_total, "total rejected", true);

  const stats = $("node-stats");
  stats.replaceChildren();
  const row = (k, v, title) => stats.append(el("dt", {}, k), el("dd", { title }, v));
  row("peers", o.peers.length);
  row("outbox", `${o.outbox_pending} pending`);
  row("accepted", o.counters["messages.accepted"] || 0);
  row("sent", o.counters["messages.sent"] || 0);
  row("events", o.last_event_seq);
  row("addresses", o.node.addresses.join(", ") || "–");
  row("state digest", o.state_digest.slice(0, 16) + "…", o.state_digest);
  row("version", o.node.version);
  renderSandbox(o.sandbox);
  return o;
}

const SANDBOX_CLASS = { full: "ok", partial: "warn", none: "bad" };

function sandboxBadge(level, title) {
  return el("span", { class: `badge ${SANDBOX_CLASS[level] || "neutral"}`, title, dataset: { level } }, level);
}

// What this node builds around the tasks it runs (runner.sandbox and the kernel's features).
function renderSandbox(sb) {
  const box = $("sandbox");
  box.replaceChildren();
  document.body.dataset.sandboxLevel = sb.level;
  const row = (k, key, ...v) => box.append(el("dt", {}, k), el("dd", { dataset: { key } }, ...v));
  row("level", "level", sandboxBadge(sb.level, "the isolation tasks run under"));
  row("policy", "policy", sb.policy.replaceAll("_", " "));
  row("runs tasks", "can_run", sb.can_run
    ? "yes"
    : badge("no: refuses to bid and to run", "bad", "runner.sandbox = \"required\" and a feature is missing"));
  row("network", "allow_network", sb.allow_network ? "allowed for seeds that ask for it" : "never (no bids on seeds that ask for it)");
  row("features", "features", sb.features.length ? sb.features.join(", ") : "none");
  if (sb.missing.length) {
    row("missing", "missing", el("ul", { class: "missing" }, ...sb.missing.map((m) => el("li", {}, m))));
  }
}

// Alerts firing now (GET /api/alerts).
async function loadAlerts() {
  const a = await api("/api/alerts");
  const list = $("alerts");
  list.replaceChildren();
  document.body.dataset.alerts = String(a.active.length);
  for (const alert of a.active) {
    list.append(el("li", { class: "nonzero", dataset: { key: alert.alert } },
      badge(alert.alert.replaceAll("_", " "), "bad", `since ${new Date(alert.since).toISOString()}`),
      el("span", { class: "text" }, ` ${alert.detail}`)));
  }
  $("alerts-empty").hidden = a.active.length > 0;
  $("alerts-empty").textContent = a.evaluated
    ? "No alert is firing."
    : "No alert is firing (rules run in the node on the network).";
  $("alerts-queue").textContent = a.webhook_queue ? `${a.webhook_queue} webhook deliveries queued` : "";
}

async function loadHealth() {
  const h = $("health");
  try {
    const response = await fetch("/health", { cache: "no-store" });
    const body = await response.json();
    const ok = response.ok && body.status === "ok";
    h.className = `badge ${ok ? "ok" : "bad"}`;
    h.textContent = ok ? "health: ok" : `health: ${body.status}`;
    h.title = `store ${body.store.ok ? "ok" : body.store.error} (${body.store.latency_ms.toFixed(1)} ms); ` +
      `transport ${body.transport.name || "none"}, ${body.transport.peers} peers`;
  } catch (e) {
    h.className = "badge bad";
    h.textContent = "health: unreachable";
    h.title = String(e);
  }
}

// ---------------------------------------------------------------------------------------------
// Seeds

async function loadSeeds() {
  const page = await api("/api/seeds?limit=200");
  const body = $("seeds").tBodies[0];
  const rows = [];
  for (const s of page.seeds) {
    const fresh = state.knownSeeds.size > 0 && !state.knownSeeds.has(s.id);
    const tr = el("tr", {
      class: [s.id === state.selectedSeed ? "selected" : "", fresh ? "fresh" : ""].join(" ").trim() || null,
      dataset: { seedId: s.id, status: s.status },
    },
      el("td", {}, el("code", { title: s.id }, short(s.id))),
      el("td", {}, badge(s.status, `status-${s.status}`)),
      el("td", { class: "command", title: s.command }, s.command, s.private ? " 🔒" : "",
        s.network ? el("span", { title: "needs network access" }, " 🌐") : null),
      el("td", { title: s.publisher }, who(s.publisher)),
      el("td", { class: "num" }, `${s.bids}/${s.max_bids}`),
      el("td", { title: s.winner_node || "" }, s.winner_node ? who(s.winner_node) : "–"),
      el("td", { class: "num" }, s.price ?? `${s.min_price}–${s.max_price}`),
      el("td", { class: "sandbox" }, s.sandbox_level ? sandboxBadge(s.sandbox_level, "the sandbox the task ran in") : "–"),
      el("td", { title: new Date(s.updated_at).toISOString() }, time(s.updated_at)));
    tr.addEventListener("click", () => selectSeed(s.id));
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  state.knownSeeds = new Set(page.seeds.map((s) => s.id));
  $("seeds-empty").hidden = page.seeds.length > 0;
}

async function selectSeed(id) {
  state.selectedSeed = id;
  for (const tr of $("seeds").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.seedId === id);
  await loadSeedDetail();
}

// A peer's reputation in one short line (absent from older nodes' answers).
function reputationText(r) {
  if (!r) return "–";
  return `${r.agreed}/${r.dissented}/${r.missed_deadlines}; ${r.settlements_accepted}/${r.settlements_rejected}`;
}

async function loadSeedDetail() {
  const box = $("seed-detail");
  if (!state.selectedSeed) return;
  let v;
  try {
    v = await api(`/api/seeds/${state.selectedSeed}`);
  } catch (e) {
    box.replaceChildren(el("p", { class: "error" }, e.message));
    box.hidden = false;
    return;
  }
  const s = v.seed;
  const dl = el("dl", { class: "stats" });
  const row = (k, ...v) => dl.append(el("dt", {}, k), el("dd", {}, ...v));
  row("status", badge(v.status, `status-${v.status}`));
  row("publisher", who(s.publisher));
  row("command", el("code", {}, s.command));
  if (s.description) row("description", s.description);
  row("terms", `price ${s.min_price}–${s.max_price}, at most ${s.max_bids} bids, window ${s.bid_window_secs} s, timeout ${s.timeout_secs} s`);
  if (s.audience && s.audience.length) row("private to", s.audience.map(who).join(", "));
  // Both are left out of the seed when they are at their defaults (no network, full sandbox).
  const needs = [];
  if (s.network) needs.push("network access");
  if (s.isolation && s.isolation !== "full") needs.push(`a sandbox no stronger than ${s.isolation}`);
  row("needs", needs.length ? needs.join("; ") : "no network; works in the full sandbox");
  // Replicated seeds (rules 3) carry `replication`; others run once.
  if (s.replication) {
    const r = s.replication;
    row("replication", `${r.replicas} runners, quorum ${r.quorum}, at most ${r.max_replicas}, hash ${r.hash || "combined"}`);
  }
  row("bids", v.bids.length ? v.bids.map((b) => `${who(b.bidder)}: ${b.price}`).join(" · ") : "none yet");
  if (v.award) {
    row("award", v.award.winner_node ? `${who(v.award.winner_node)} at ${v.award.price} (${time(v.award.closed_at)})` : `closed without bids (${time(v.award.closed_at)})`);
  }
  if (v.claim) row("claim", `${who(v.claim.claimer)} at ${time(v.claim.claimed_at)}`);
  for (const r of v.replicas || []) {
    const res = r.result ? `, exit ${r.result.exit_code ?? "none"}, sha256 ${r.result.output_sha256.slice(0, 16)}…` : "";
    row(`replica ${r.step ? `(step ${r.step})` : ""}`, who(r.runner), ` at ${r.price}: `,
      badge(r.standing, `standing-${r.standing}`), res);
  }
  if (v.inconclusive_at) row("inconclusive", time(v.inconclusive_at));
  if (v.result) {
    const r = v.result;
    row("result", `${r.success ? "success" : "failure"}, exit ${r.exit_code ?? "none"}${r.timed_out ? " (timed out)" : ""}, ${r.duration_ms} ms, ${r.output_bytes} bytes`);
    row("output sha256", el("code", {}, r.output_sha256));
    // Results of nodes that do not report their sandbox carry none: level none.
    const sb = r.sandbox || { level: "none", features: [], network: false };
    row("sandbox", sandboxBadge(sb.level, "the sandbox the task ran in"),
      ` ${sb.features.length ? sb.features.join(", ") : "no isolation features"}${sb.network ? "; with network" : ""}`);
  }
  if (v.settlement) row("settlement", `${v.settlement.outcome}, amount ${v.settlement.amount}${v.settlement.note ? ` (${v.settlement.note})` : ""}`);
  if (v.cancelled_at) row("cancelled", time(v.cancelled_at));
  const children = [el("h3", {}, "Seed ", el("code", {}, s.id)), dl];
  if (v.result && v.result.output_excerpt) {
    children.push(el("pre", {}, v.result.output_excerpt + (v.result.output_truncated ? "\n[truncated]" : "")));
  }
  box.replaceChildren(...children);
  box.hidden = false;
}

// ---------------------------------------------------------------------------------------------
// Topology

async function loadTopology() {
  const t = await api("/api/topology");
  rememberNames(t.node, t.peers);
  const g = $("topology");
  g.replaceChildren();
  const cx = 210, cy = 150, radius = 100;
  const n = t.peers.length;
  const positions = new Map();
  t.peers.forEach((p, i) => {
    const angle = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(n, 1);
    positions.set(p.node_id, [cx + radius * Math.cos(angle), cy + radius * Math.sin(angle)]);
  });
  for (const link of t.links) {
    const [x, y] = positions.get(link.to) || [cx, cy];
    const line = svg("line", { x1: cx, y1: cy, x2: x, y2: y, class: link.active ? "active" : "inactive" });
    line.append(svg("title", {}, `${t.node.name} ↔ ${who(link.to)} over ${link.transport || "?"}, last hello ${ago(link.last_seen)}`));
    g.append(line);
  }
  const node = (x, y, r, cls, name, fingerprint, title, id) => {
    const group = svg("g", { class: "node", "data-node-id": id });
    group.append(svg("circle", { cx: x, cy: y, r, class: cls }));
    // Labels go where no link runs: beside the centre node, outside the peers.
    if (cls === "self") {
      group.append(svg("text", { x: x + r + 8, y: y - 2, class: "side" }, name));
      group.append(svg("text", { x: x + r + 8, y: y + 12, class: "fp side" }, fingerprint));
    } else {
      const above = y < cy - 1;
      group.append(svg("text", { x, y: above ? y - r - 18 : y + r + 14 }, name));
      group.append(svg("text", { x, y: above ? y - r - 6 : y + r + 26, class: "fp" }, fingerprint));
    }
    group.append(svg("title", {}, title));
    g.append(group);
  };
  node(cx, cy, 24, "self", t.node.name, t.node.fingerprint,
    `${t.node.name} (this node)\n${t.node.node_id}\n${t.node.addresses.join("\n")}`, t.node.node_id);
  for (const p of t.peers) {
    const [x, y] = positions.get(p.node_id);
    node(x, y, 17, `peer ${p.active ? "active" : "inactive"}`, p.name, p.fingerprint,
      `${p.name}\n${p.node_id}\nlast hello ${ago(p.last_seen)}\n${p.addresses.join("\n")}`, p.node_id);
  }
  if (n === 0) g.append(svg("text", { x: cx, y: 40, class: "empty" }, "no peers yet"));

  const rows = t.peers.map((p) => el("tr", { dataset: { nodeId: p.node_id } },
    el("td", { title: p.node_id }, p.name),
    el("td", {}, el("code", {}, p.fingerprint)),
    el("td", { title: new Date(p.last_seen).toISOString() }, ago(p.last_seen)),
    el("td", { title: "agreed / dissented / missed deadlines; settlements accepted / rejected" },
      reputationText(p.reputation)),
    el("td", {}, p.addresses.join(", "))));
  $("peers").tBodies[0].replaceChildren(...rows);
}

// ---------------------------------------------------------------------------------------------
// Events

function describe(e) {
  switch (e.type) {
    case "node_started": return `${who(e.node_id)} started${e.transport ? ` on ${e.transport}` : ""}`;
    case "node_stopped": return `${who(e.node_id)} stopped`;
    case "seed_published": return `${short(e.seed_id)} by ${who(e.publisher)}: ${e.command}`;
    case "bid_placed": return `${who(e.bidder)} bid ${e.price} on ${short(e.seed_id)}`;
    case "bidding_closed": return e.winner_node ? `${short(e.seed_id)}: ${who(e.winner_node)} wins at ${e.price}` : `${short(e.seed_id)}: closed without bids`;
    case "seed_claimed": return `${who(e.claimer)} claimed ${short(e.seed_id)}`;
    case "task_started": return `running ${short(e.seed_id)}: ${e.command}`;
    case "result_recorded": return `${short(e.seed_id)} ran on ${who(e.runner)}: ${e.success ? "success" : "failure"}, ${e.duration_ms} ms`;
    case "seed_settled": return `${short(e.seed_id)} settled: ${e.outcome}, ${e.amount}`;
    case "seed_cancelled": return `${short(e.seed_id)} cancelled`;
    case "status_changed": return `${short(e.seed_id)}: ${e.from || "new"} → ${e.to}`;
    case "peer_discovered": return `${e.name} (${short(e.node_id)}) ${e.addresses.join(", ")}`;
    case "message_accepted": return `${e.message_kind} from ${who(e.sender)}`;
    case "message_deferred": return `${e.message_kind} from ${who(e.sender)} waits: ${e.reason && e.reason.rule}`;
    case "message_rejected": return `${e.reason}${e.sender ? ` from ${who(e.sender)}` : ""}: ${e.detail}`;
    case "transport_status": return `${e.transport}: ${e.detail}`;
    case "send_failed": return `${short(e.message_id)}: ${e.detail}`;
    case "alert_firing": return `${e.alert.replaceAll("_", " ")} firing: ${e.detail}`;
    case "alert_resolved": return `${e.alert.replaceAll("_", " ")} resolved (value ${e.value}, threshold ${e.threshold})`;
    case "events_dropped": return `${e.count} events missed`;
    default: {
      const rest = Object.assign({}, e);
      delete rest.seq; delete rest.at; delete rest.type;
      return JSON.stringify(rest);
    }
  }
}

function addEvent(e, source) {
  if (e.seq && e.seq <= state.lastSeq) return; // already shown
  if (e.seq) state.lastSeq = e.seq;
  const cls = e.type === "message_rejected" || e.type === "send_failed" || e.type === "alert_firing" ? "rejected" : LIFECYCLE.has(e.type) ? "lifecycle" : "";
  const li = el("li", { dataset: { seq: e.seq, type: e.type, source, seedId: e.seed_id } },
    el("span", { class: "seq" }, e.seq || ""),
    el("span", { class: "time", title: new Date(e.at).toISOString() }, time(e.at)),
    el("span", { class: `type ${cls}` }, e.type),
    el("span", { class: "text" }, describe(e)));
  const filter = $("event-filter").value;
  li.hidden = filter !== "" && filter !== e.type;
  const list = $("events");
  list.prepend(li);
  while (list.children.length > MAX_FEED) list.lastElementChild.remove();
}

function scheduleRefresh(e) {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(async () => {
    try {
      await Promise.all([loadOverview(), loadSeeds(), loadAlerts()]);
      if (state.selectedSeed) await loadSeedDetail();
      showError(null);
    } catch (err) {
      showError(err);
    }
  }, 250);
  if (e && (e.type === "peer_discovered" || e.type === "transport_status")) {
    clearTimeout(state.topologyTimer);
    state.topologyTimer = setTimeout(() => loadTopology().catch(showError), 250);
  }
}

function setLive(text, cls) {
  const live = $("live");
  live.textContent = `live: ${text}`;
  live.className = `badge ${cls}`;
  document.body.dataset.live = text;
}

function connect() {
  if (state.source) state.source.close();
  const source = new EventSource(`/api/events/stream?since=${state.lastSeq}`);
  state.source = source;
  source.onopen = () => setLive("connected", "ok");
  source.onmessage = (message) => {
    let e;
    try {
      e = JSON.parse(message.data);
    } catch (_) {
      return;
    }
    addEvent(e, "live");
    document.body.dataset.liveEvents = String(Number(document.body.dataset.liveEvents || 0) + 1);
    scheduleRefresh(e);
  };
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      // The server refused (stopped node, too many streams): try again later ourselves.
      setLive("disconnected", "bad");
      setTimeout(() => { if (state.source === source) connect(); }, 5000);
    } else {
      // The browser reconnects by itself and resumes after the last event id.
      setLive("reconnecting", "warn");
    }
  };
}

async function loadRecentEvents(lastSeq) {
  const since = Math.max(0, lastSeq - 100);
  const page = await api(`/api/events?since=${since}&limit=100`);
  for (const e of page.events) addEvent(e, "history");
}

// ---------------------------------------------------------------------------------------------
// Start

async function start() {
  const filter = $("event-filter");
  for (const t of EVENT_TYPES) filter.append(el("option", { value: t }, t));
  filter.addEventListener("change", () => {
    for (const li of $("events").children) li.hidden = filter.value !== "" && filter.value !== li.dataset.type;
  });
  loadHealth();
  try {
    const o = await loadOverview();
    await Promise.all([loadSeeds(), loadTopology(), loadAlerts(), loadRecentEvents(o.last_event_seq)]);
    showError(null);
  } catch (e) {
    showError(e);
  }
  connect();
  document.body.dataset.state = "ready";
  setInterval(loadHealth, 10000);
  setInterval(() => loadTopology().catch(showError), 10000);
  setInterval(() => scheduleRefresh(null), 30000);
}

document.addEventListener("DOMContentLoaded", start);
