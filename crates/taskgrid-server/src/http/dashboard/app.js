// The taskgrid web dashboard: plain JavaScript, no build step.
//
// Everything comes from the coordinator's JSON API under /api/v1. Live
// updates come from its SSE streams, read with fetch() so the client token
// goes in the Authorization header (EventSource cannot send headers).
// The page follows /events/summary, not every event: at most two small
// messages a second whatever the load — counters, gauges, and the state of
// the tasks the current view shows (its "watch" list) when they change.
// The cluster views (workers, queues, metrics) are re-read only when a
// summary says something changed, at most every REFRESH_MS.
"use strict";

const API = "/api/v1";
const TOKEN_KEY = "taskgrid.token";
/** Workers, queues and metrics are re-read at most this often (ms). */
const REFRESH_MS = 2000;
/** Without any event, workers and queues are re-read this often (ms). */
const IDLE_REFRESH_MS = 15000;
/** One chart sample covers this long (ms); charts show CHART_SAMPLES. */
const SAMPLE_MS = 5000;
const CHART_SAMPLES = 120;
/** Tasks on one page of the task list. */
const TASKS_PAGE = 50;
/** Output kept on a task page (characters); older text is dropped. */
const OUTPUT_KEEP = 1 << 20;
const STATES = ["pending", "queued", "assigned", "running", "retrying", "succeeded",
  "failed", "timed_out", "cancelled", "expired"];
const TERMINAL = new Set(["succeeded", "failed", "timed_out", "cancelled", "expired"]);

// ---------------------------------------------------------------- helpers

/** Builds an element: h("td", {class: "num"}, "3", child…). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "style") el.style.cssText = v; // CSSOM: allowed by the CSP
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const $ = (sel) => document.querySelector(sel);
const shortId = (id) => (id ? id.slice(-12) : "");
const pct = (x) => `${(100 * (x || 0)).toFixed(1)}%`;
const stateBadge = (s) => h("span", { class: `state ${s}`, "data-state": s }, s);
const taskLink = (id) => h("a", { href: `#/task/${id}`, class: "mono", title: id }, shortId(id));

/** A timestamp (µs since the epoch) as local date and time. */
function fmtTime(us) {
  if (us === null || us === undefined) return "—";
  return new Date(us / 1000).toLocaleString();
}

/** The span between two timestamps (µs), e.g. "1.2 s". */
function fmtSpan(fromUs, toUs) {
  if (fromUs === null || fromUs === undefined) return "—";
  const ms = ((toUs ?? Date.now() * 1000) - fromUs) / 1000;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 120000) return `${(ms / 1000).toFixed(1)} s`;
  return `${(ms / 60000).toFixed(1)} min`;
}

/** What a task runs, in one line. */
function kindText(kind) {
  if (!kind) return "";
  if (kind.type === "handler") return `handler ${kind.name}`;
  if (kind.type === "container") return `container ${kind.image}`;
  const c = kind.command || {};
  return c.argv ? c.argv.join(" ") : `sh: ${String(c.script || "").split("\n")[0]}`;
}

// ------------------------------------------------------------------ auth

let tokenWaiters = null;

/** Shows the token dialog; resolves once the user has entered one. */
function askToken(message) {
  $("#token-error").textContent = message || "";
  if (!tokenWaiters) {
    tokenWaiters = [];
    const dialog = $("#token-dialog");
    if (!dialog.open) dialog.showModal();
  }
  return new Promise((resolve) => tokenWaiters.push(resolve));
}

function setupToken() {
  $("#token-form").addEventListener("submit", () => {
    const token = $("#token-input").value.trim();
    if (!token) return;
    localStorage.setItem(TOKEN_KEY, token);
    $("#token-input").value = "";
    $("#forget-token").hidden = false;
    const waiters = tokenWaiters || [];
    tokenWaiters = null;
    waiters.forEach((w) => w());
  });
  $("#forget-token").hidden = !localStorage.getItem(TOKEN_KEY);
  $("#forget-token").addEventListener("click", () => {
    localStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
}

function authHeaders() {
  const token = localStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** fetch() with the token; on 401 asks for a token and tries again. */
async function authedFetch(path, init = {}) {
  for (;;) {
    const resp = await fetch(path, { ...init, headers: { ...(init.headers || {}), ...authHeaders() } });
    if (resp.status !== 401) return resp;
    const had = localStorage.getItem(TOKEN_KEY);
    localStorage.removeItem(TOKEN_KEY);
    await askToken(had ? "That token was refused." : "");
  }
}

/** A JSON API call; throws an Error with the API's message on failure. */
async function api(path, { method = "GET", body } = {}) {
  const init = { method };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { "Content-Type": "application/json" };
  }
  const resp = await authedFetch(API + path, init);
  const data = await resp.json().catch(() => null);
  if (!resp.ok) {
    const err = new Error(data?.error?.message || `${resp.status} ${resp.statusText}`);
    err.status = resp.status;
    throw err;
  }
  return data;
}

// ------------------------------------------------------------------- SSE

/** Reads an SSE body, calling onMessage({id, event, data}) per message. */
async function readSse(resp, onMessage, signal) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  let msg = { id: null, event: "message", data: [] };
  while (!signal.aborted) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buf.search(/\r?\n/)) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(buf[nl] === "\r" ? nl + 2 : nl + 1);
      if (line === "") {
        if (msg.data.length) {
          if (onMessage({ id: msg.id, event: msg.event, data: msg.data.join("\n") }) === false) return;
        }
        msg = { id: msg.id, event: "message", data: [] };
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "data") msg.data.push(val);
      else if (field === "event") msg.event = val;
      else if (field === "id") msg.id = val;
    }
  }
}

/**
 * Follows an SSE route, reconnecting with Last-Event-ID after a break.
 * onMessage returns false to stop for good. With `optional`, a route the
 * coordinator does not have (404, or an answer that is not a stream) is
 * given up for good: onStatus(null). Returns { close() }.
 */
function follow(path, onMessage, onStatus = () => {}, { optional = false } = {}) {
  const ctl = new AbortController();
  let lastId = null;
  let stopped = false;
  (async () => {
    let backoff = 500;
    while (!ctl.signal.aborted && !stopped) {
      try {
        const headers = { Accept: "text/event-stream" };
        if (lastId !== null) headers["Last-Event-ID"] = lastId;
        const resp = await authedFetch(path, { headers, signal: ctl.signal });
        const sse = (resp.headers.get("Content-Type") || "").startsWith("text/event-stream");
        if (optional && (resp.status === 404 || (resp.ok && !sse))) {
          resp.body?.cancel().catch(() => {});
          onStatus(null);
          return;
        }
        if (!resp.ok) throw new Error(`${resp.status}`);
        onStatus(true);
        backoff = 500;
        await readSse(resp, (m) => {
          if (m.id !== null) lastId = m.id;
          if (onMessage(m) === false) {
            stopped = true;
            return false;
          }
          return true;
        }, ctl.signal);
      } catch (e) {
        if (ctl.signal.aborted) return;
      }
      onStatus(false);
      if (stopped || ctl.signal.aborted) return;
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, 10000);
    }
  })();
  return { close: () => ctl.abort() };
}

// ----------------------------------------------------------- live model

/** What the views draw from: the last cluster read and the chart series. */
const model = {
  workers: [], queues: [], metrics: null, coordinators: null,
  // One sample per SAMPLE_MS: tasks finished, and of those failed.
  samples: [],
  current: { finished: 0, failed: 0, submitted: 0 },
  // The last summary (counters and gauges), and how many have come.
  glance: null, summaries: 0,
  sampleStart: Date.now(),
};

let clusterDirty = true;
let lastRefresh = 0;
let refreshTimer = null;

const FINISHED = ["succeeded", "failed", "timed_out", "cancelled", "expired"];

/** Applies a summary: counter differences to the chart sample, then the view. */
function applySummary(sum) {
  model.summaries++;
  const was = model.glance;
  // The first summary, or one from a restarted coordinator, is a baseline.
  const base = was && sum.totals.submitted >= was.totals.submitted ? was.totals : null;
  if (base) {
    const t = sum.totals;
    const finished = FINISHED.reduce((n, k) => n + t[k] - base[k], 0);
    model.current.finished += finished;
    model.current.failed += t.failed + t.timed_out - base.failed - base.timed_out;
    model.current.submitted += t.submitted - base.submitted;
  }
  if (!was || sum.seq !== was.seq) clusterDirty = true;
  model.glance = sum;
  if (view.onSummary) view.onSummary(sum, base);
  scheduleRefresh();
}

/** Re-reads workers, queues and metrics when something changed, rate-limited. */
function scheduleRefresh(force) {
  if (force) clusterDirty = true;
  if (!clusterDirty || refreshTimer) return;
  const wait = Math.max(0, lastRefresh + REFRESH_MS - Date.now());
  refreshTimer = setTimeout(refreshCluster, wait);
}

async function refreshCluster() {
  refreshTimer = null;
  clusterDirty = false;
  lastRefresh = Date.now();
  try {
    const [workers, queues, metrics, coordinators] = await Promise.all([
      api("/workers"), api("/queues"), api("/metrics"), api("/coordinators"),
    ]);
    Object.assign(model, { workers, queues, metrics, coordinators });
    $("#banner").hidden = true;
    if (view.onCluster) view.onCluster();
  } catch (e) {
    showBanner(`Could not read the coordinator: ${e.message}`);
  }
}

function showBanner(text) {
  $("#banner").textContent = text;
  $("#banner").hidden = false;
}

/** Closes the current chart sample and starts the next. */
function takeSample() {
  model.samples.push(sampleNow());
  if (model.samples.length > CHART_SAMPLES) model.samples.shift();
  model.current = { finished: 0, failed: 0, submitted: 0 };
  model.sampleStart = Date.now();
  if (view.onSample) view.onSample();
}

/** The sample being gathered, as it stands: rates over the time so far. */
function sampleNow() {
  const secs = Math.max((Date.now() - model.sampleStart) / 1000, 0.25);
  const c = model.current;
  const g = model.glance || { waiting: 0, running: 0 };
  return {
    rate: c.finished / secs,
    failure: c.finished ? c.failed / c.finished : 0,
    finished: c.finished,
    waiting: g.waiting,
    running: g.running,
  };
}

/** The summary stream, and the task ids it watches. */
let summaryStream = null;
let watching = "";
let watchCalls = 0;

/** (Re)connects the summary stream watching `ids` (the tasks a view shows). */
function watch(ids) {
  watchCalls++;
  const list = [...new Set(ids)].slice(0, 200).join(",");
  if (summaryStream && list === watching) return;
  if (summaryStream) summaryStream.close();
  watching = list;
  const live = $("#live");
  const q = list ? `?watch=${list}` : "";
  summaryStream = follow(`${API}/events/summary${q}`, (m) => {
    if (m.event !== "summary") return true;
    try {
      applySummary(JSON.parse(m.data));
    } catch (e) {
      // A malformed message is skipped; the stream goes on.
    }
    return true;
  }, (on) => {
    live.className = `live ${on ? "on" : "off"}`;
    live.textContent = on ? "live" : "reconnecting";
  });
}

// ----------------------------------------------------------------- charts

/**
 * The ticks of an axis from 0 to at least `max`: 0, s, 2s… for a step s of
 * 1, 2 or 5 × 10^k, at most `most` of them, whole numbers when `whole`, and
 * the decimals their labels need to differ. An empty or all-zero series
 * gets 0 and 1.
 */
function niceTicks(max, { whole = false, most = 5 } = {}) {
  if (!(max > 0)) return { ticks: [0, 1], decimals: 0 };
  const rough = max / (most - 1);
  const mag = 10 ** Math.floor(Math.log10(rough));
  let step = [1, 2, 5, 10].map((m) => m * mag).find((x) => x >= rough * (1 - 1e-9));
  if (whole) step = Math.max(1, Math.round(step));
  const n = Math.max(1, Math.ceil(max / step - 1e-9));
  const ticks = Array.from({ length: n + 1 }, (_, i) => i * step);
  return { ticks, decimals: Math.max(0, -Math.floor(Math.log10(step) + 1e-9)) };
}

/** A tick label: a number, or a percentage when `percent` (0–1 → 0–100%). */
function tickLabel(v, { percent, decimals }) {
  if (!percent) return v.toFixed(decimals);
  return `${(100 * v).toFixed(Math.max(0, decimals - 2))}%`;
}

/**
 * Draws a line chart on a canvas: series = [{ label, values, color }], one
 * value per sample, the newest at the right edge. The axis runs from 0 to
 * the first nice tick at or above `max` and every value; the tick labels
 * are also put in the canvas's `data-ticks` (a JSON array) and its
 * `aria-label`, for readers that cannot see the drawing.
 */
function drawChart(canvas, series, { max = 0, whole = false, percent = false }) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const hgt = canvas.clientHeight;
  canvas.width = w * dpr;
  canvas.height = hgt * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  const css = getComputedStyle(document.documentElement);
  const pad = { l: 48, r: 8, t: 8, b: 18 };
  const { ticks, decimals } = niceTicks(Math.max(max, ...series.flatMap((s) => s.values)), { whole });
  const top = ticks[ticks.length - 1];
  const labels = ticks.map((v) => tickLabel(v, { percent, decimals }));
  canvas.dataset.ticks = JSON.stringify(labels);
  const latest = series.map((s) => (s.values.length ? `${s.label} ${tickLabel(s.values[s.values.length - 1], { percent, decimals: decimals + 1 })}` : null));
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `axis ${labels[0]} to ${labels[labels.length - 1]}; now: ${latest.filter(Boolean).join(", ") || "no data"}`);
  const x = (i) => pad.l + (w - pad.l - pad.r) * (i / Math.max(CHART_SAMPLES - 1, 1));
  const y = (v) => hgt - pad.b - (hgt - pad.t - pad.b) * (v / top);
  g.strokeStyle = css.getPropertyValue("--line");
  g.fillStyle = css.getPropertyValue("--muted");
  g.font = "11px system-ui";
  g.lineWidth = 1;
  ticks.forEach((v, i) => {
    g.beginPath();
    g.moveTo(pad.l, y(v));
    g.lineTo(w - pad.r, y(v));
    g.stroke();
    g.fillText(labels[i], 2, y(v) + 4);
  });
  g.fillText(`last ${Math.round((CHART_SAMPLES * SAMPLE_MS) / 60000)} min`, pad.l, hgt - 4);
  let legendX = w - pad.r;
  for (const s of [...series].reverse()) {
    const color = css.getPropertyValue(s.color);
    const tw = g.measureText(s.label).width;
    legendX -= tw + 18;
    g.fillStyle = color;
    g.fillRect(legendX, hgt - 12, 10, 3);
    g.fillStyle = css.getPropertyValue("--muted");
    g.fillText(s.label, legendX + 13, hgt - 4);
    const offset = CHART_SAMPLES - s.values.length;
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.beginPath();
    s.values.forEach((v, i) => (i ? g.lineTo(x(i + offset), y(v)) : g.moveTo(x(i + offset), y(v))));
    if (s.values.length === 1) g.lineTo(x(CHART_SAMPLES - 1) - 2, y(s.values[0]));
    g.stroke();
  }
}

// ------------------------------------------------------------------ views

/** The view being shown: { onSummary, onCluster, onSample, close }. */
let view = {};

const overview = (root) => {
  const cards = h("div", { class: "cards" });
  const thr = h("canvas", { id: "chart-throughput" });
  const fail = h("canvas", { id: "chart-failures" });
  const depth = h("canvas", { id: "chart-depth" });
  const queues = h("div");
  root.append(
    cards,
    h("div", { class: "charts" },
      h("div", { class: "card" }, h("div", { class: "l" }, "Tasks finished per second"), thr),
      h("div", { class: "card" }, h("div", { class: "l" }, "Failure rate of finished tasks"), fail),
      h("div", { class: "card" }, h("div", { class: "l" }, "Tasks waiting and running"), depth)),
    h("h2", {}, "Queues"), queues);
  const card = (n, l) => h("div", { class: "card", "data-card": l }, h("div", { class: "n" }, n), h("div", { class: "l" }, l));
  const draw = () => {
    const m = model.metrics || {};
    const g = model.glance;
    const t = g ? g.totals : m;
    cards.replaceChildren(
      card(g ? g.workers : model.workers.length, "workers online"),
      card(g ? `${g.used}/${g.slots}` : "—", "slots in use"),
      card(g ? g.waiting : "—", "waiting"),
      card(g ? g.running : "—", "running"),
      card(t.submitted ?? "—", "submitted"),
      card(t.succeeded ?? "—", "succeeded"),
      card((t.failed ?? 0) + (t.timed_out ?? 0), "failed or timed out"),
      card(m.throughput ? `${m.throughput.last_1m.toFixed(2)}/s` : "—", "throughput, 1 min"));
    queues.replaceChildren(queueTable(false));
  };
  const charts = () => {
    // The sample being gathered shows once it spans a second.
    const partial = Date.now() - model.sampleStart >= 1000 ? [sampleNow()] : [];
    const s = [...model.samples, ...partial];
    drawChart(thr, [{ label: "per second", values: s.map((x) => x.rate), color: "--accent" }], {});
    drawChart(fail, [{ label: "failed", values: s.map((x) => x.failure), color: "--bad" }], { max: 1, percent: true });
    drawChart(depth, [
      { label: "waiting", values: s.map((x) => x.waiting), color: "--warn" },
      { label: "running", values: s.map((x) => x.running), color: "--accent" },
    ], { whole: true });
  };
  draw();
  charts();
  return {
    onCluster: () => { draw(); charts(); },
    onSample: charts,
    onSummary: () => { draw(); charts(); },
  };
};

/** The queues as a table, with pause/resume buttons when `actions`. */
function queueTable(actions) {
  if (!model.queues.length) return h("p", { class: "muted" }, "No queues yet.");
  const rows = model.queues.map((q) => h("tr", { "data-queue": q.name },
    h("td", {}, h("a", { href: `#/tasks?queue=${encodeURIComponent(q.name)}` }, q.name)),
    h("td", {}, q.waiting.length ? q.waiting.map(([p, n]) => `${p}: ${n}`).join(" · ") : "0"),
    h("td", { class: "num" }, q.ready),
    h("td", { class: "num" }, q.concurrency != null ? `${q.running}/${q.concurrency}` : q.running),
    h("td", { class: "num" }, q.limit ?? "—"),
    h("td", {}, q.paused ? h("span", { class: "state failed" }, "paused") : "active"),
    actions ? h("td", {}, h("button", {
      class: "secondary",
      onclick: (e) => pauseQueue(q, e.target),
    }, q.paused ? "Resume" : "Pause")) : null));
  return h("table", {},
    h("tr", {}, ["queue", "waiting by priority"].map((t) => h("th", {}, t)),
      ["ready", "running", "limit"].map((t) => h("th", { class: "num" }, t)),
      h("th", {}, "dispatch"), actions ? h("th", {}) : null),
    rows);
}

async function pauseQueue(q, button) {
  button.disabled = true;
  try {
    await api(`/queues/${encodeURIComponent(q.name)}/${q.paused ? "resume" : "pause"}`, { method: "POST" });
    await refreshCluster();
  } catch (e) {
    showBanner(`Could not ${q.paused ? "resume" : "pause"} ${q.name}: ${e.message}`);
    button.disabled = false;
  }
}

const queuesView = (root) => {
  const box = h("div");
  root.append(h("h2", {}, "Queues"), box);
  const draw = () => box.replaceChildren(queueTable(true));
  draw();
  return { onCluster: draw };
};

/** Which coordinator leads, its term and the standbys (a shared store). */
function coordinatorLine() {
  const c = model.coordinators;
  if (!c) return "";
  const who = (m) => `${m.address || "(no address)"} (${m.name})`;
  if (!c.shared) return `One coordinator${c.leader ? `: ${who(c.leader)}` : ""}; its store is not shared.`;
  const standbys = c.standbys.length ? c.standbys.map(who).join(", ") : "none";
  return `Leader ${c.leader ? who(c.leader) : "none right now"}, term ${c.term}; standbys: ${standbys}.`;
}

/** A worker's host load per CPU, and its threshold when it is over it. */
function hostLoad(w) {
  const load = w.health?.load;
  if (load == null) return "—";
  return w.max_load != null && load > w.max_load ? `${load.toFixed(2)} > ${w.max_load} (paused)` : load.toFixed(2);
}

/** Bytes as a person reads them (1.5 GiB), or a dash when unknown. */
function bytesText(b) {
  if (b == null) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = b, u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return `${v >= 10 || u === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[u]}`;
}

const workersView = (root) => {
  const box = h("div");
  const coordinators = h("p", { id: "coordinators", class: "muted" });
  root.append(h("h2", {}, "Coordinators"), coordinators, h("h2", {}, "Workers online"), box);
  const draw = () => {
    coordinators.textContent = coordinatorLine();
    if (!model.workers.length) return box.replaceChildren(h("p", { class: "muted" }, "No worker is connected."));
    const per = model.metrics?.workers || {};
    box.replaceChildren(h("table", {},
      h("tr", {}, ["worker", "labels", "runs"].map((t) => h("th", {}, t)), h("th", {}, "load"),
        ["succeeded", "failed", "success rate", "trust", "host load/cpu", "mem free", "disk free"].map((t) => h("th", { class: "num" }, t)),
        h("th", {}, "current tasks")),
      model.workers.map((w) => {
        const m = per[w.id] || {};
        const runs = [w.shell && "shell", w.container && "container", ...w.handlers.map((x) => `handler:${x}`)];
        return h("tr", { "data-worker": w.id },
          h("td", {}, h("a", { href: `#/tasks?worker=${encodeURIComponent(w.id)}` }, w.id)),
          h("td", {}, w.labels.map(([k, v]) => (v ? `${k}=${v}` : k)).join(", ") || "—"),
          h("td", {}, runs.filter(Boolean).join(", ")),
          h("td", {}, `${w.used}/${w.slots}${w.prefetch ? ` (+${w.prefetch} prefetch)` : ""}`,
            h("div", { class: "bar" }, h("div", { style: `width:${(100 * Math.min(w.used, w.slots)) / Math.max(w.slots, 1)}%` }))),
          h("td", { class: "num" }, m.succeeded ?? 0),
          h("td", { class: "num" }, (m.failed ?? 0) + (m.timed_out ?? 0)),
          h("td", { class: "num" }, m.succeeded || m.failed ? pct(m.success_rate) : "—"),
          h("td", { class: "num" }, w.trust.toFixed(2)),
          h("td", { class: "num", "data-load": "" }, hostLoad(w)),
          h("td", { class: "num" }, bytesText(w.health?.memory_available_bytes)),
          h("td", { class: "num" }, bytesText(w.health?.disk_free_bytes)),
          h("td", {}, w.running.map(([id, a]) => h("div", {}, taskLink(id), a > 1 ? ` (attempt ${a})` : ""))));
      })));
  };
  draw();
  return { onCluster: draw };
};

/** The hash of the task list with filters `f` (and the cursors `back`). */
function tasksHash(f, back) {
  const p = new URLSearchParams(Object.entries(f).filter(([, v]) => v));
  if (back && back.length) p.set("prev", back.join(","));
  return `#/tasks?${p}`;
}

const tasksView = (root, params) => {
  const filters = {};
  for (const k of ["state", "queue", "tag", "worker", "order", "cursor"]) if (params.get(k)) filters[k] = params.get(k);
  const order = filters.order === "oldest" ? "oldest" : "newest";
  const prev = (params.get("prev") || "").split(",").filter(Boolean);
  const go = (f, back) => { location.hash = tasksHash(f, back); };

  // Submit form.
  const script = h("textarea", { id: "submit-script", placeholder: "echo hello; sleep 1; echo done", required: true });
  const queue = h("input", { id: "submit-queue", placeholder: "default", size: 10 });
  const prio = h("select", { id: "submit-priority" }, ["normal", "critical", "high", "low"].map((p) => h("option", {}, p)));
  const tags = h("input", { id: "submit-tags", placeholder: "a, b", size: 10 });
  const submitErr = h("span", { class: "error" });
  const submit = h("form", {
    class: "submit",
    onsubmit: async (e) => {
      e.preventDefault();
      submitErr.textContent = "";
      const body = { kind: { type: "shell", command: { script: script.value } }, priority: prio.value };
      if (queue.value.trim()) body.queue = queue.value.trim();
      const t = tags.value.split(",").map((x) => x.trim()).filter(Boolean);
      if (t.length) body.tags = t;
      try {
        const r = await api("/tasks", { method: "POST", body });
        location.hash = `#/task/${r.id}`;
      } catch (err) {
        submitErr.textContent = err.message;
      }
    },
  }, h("label", {}, "shell script", script), h("label", {}, "queue", queue), h("label", {}, "priority", prio),
  h("label", {}, "tags", tags), h("button", { id: "submit-button", type: "submit" }, "Submit"), submitErr);

  // State filters with the grid's count in each state, as River UI and
  // Flower show them; a filter shows its state's first page.
  const tabs = h("div", { id: "state-filters", class: "tabs", title: "tasks in each state, in the whole grid" });
  const drawTabs = (counts) => {
    const total = counts ? STATES.reduce((n, st) => n + (counts[st] || 0), 0) : null;
    const tab = (st, n) => {
      const on = (filters.state || "") === st;
      return h("a", {
        href: tasksHash({ ...filters, state: st, cursor: "" }),
        class: `tab${on ? " active" : ""}${n === 0 ? " empty" : ""}`,
        "data-filter": st || "all",
        "aria-current": on ? "true" : null,
      }, st ? st.replace("_", " ") : "all", " ", h("span", { class: "count" }, n ?? "…"));
    };
    tabs.replaceChildren(tab("", total), ...STATES.map((st) => tab(st, counts ? counts[st] || 0 : null)));
  };
  drawTabs(null);

  // The other filters, the order, and search by id.
  const field = (name, el) => {
    el.value = filters[name] || "";
    el.name = name;
    return h("label", {}, name, el);
  };
  const orderSelect = h("select", { name: "order", id: "order" },
    h("option", { value: "newest" }, "newest first"), h("option", { value: "oldest" }, "oldest first"));
  orderSelect.value = order;
  const form = h("form", {
    class: "filters",
    onsubmit: (e) => {
      e.preventDefault();
      const f = { state: filters.state };
      for (const el of e.target.elements) if (el.name && el.value) f[el.name] = el.value.trim();
      if (f.order === "newest") delete f.order;
      go(f);
    },
  },
  field("queue", h("input", { size: 10 })), field("tag", h("input", { size: 10 })),
  field("worker", h("input", { size: 10 })), h("label", {}, "order", orderSelect),
  h("button", { type: "submit" }, "Filter"),
  h("button", { type: "button", class: "secondary", onclick: () => go({}) }, "Clear"));
  const search = h("form", {
    class: "filters",
    onsubmit: (e) => {
      e.preventDefault();
      const id = e.target.elements.id.value.trim();
      if (id) location.hash = `#/task/${encodeURIComponent(id)}`;
    },
  }, h("label", {}, "task id", h("input", { name: "id", size: 38, class: "mono" })), h("button", { type: "submit" }, "Open"));

  const table = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const pager = h("div", { class: "actions" });
  root.append(h("h2", {}, "Submit a shell task"), submit,
    h("h2", {}, `Tasks, ${order} first`), tabs, form, search, table, pager);

  // The page is read again (with the counts) when a summary says something
  // happened, at most every REFRESH_MS; row states change at once.
  const rows = new Map();
  let closed = false;
  let reads = 0;
  let lastRead = 0;
  let readTimer = null;
  let drawn = null;
  let seq = null;
  const load = async () => {
    const mine = ++reads;
    lastRead = Date.now();
    const q = new URLSearchParams({ ...filters, order, limit: String(TASKS_PAGE), counts: "true" });
    try {
      const page = await api(`/tasks?${q}`);
      // The page was left, or a later read overtook this one.
      if (closed || mine !== reads) return;
      drawTabs(page.counts);
      watch(page.tasks.map((t) => t.id));
      const looks = JSON.stringify(page.tasks.map((t) => [t.id, t.status.state, t.status.worker,
        t.status.attempt, t.status.started_at, t.status.finished_at]));
      if (looks !== drawn) {
        drawn = looks;
        drawRows(page.tasks);
      }
      const [back, on] = order === "newest" ? ["← Newer", "Older →"] : ["← Older", "Newer →"];
      pager.replaceChildren(
        h("button", { id: "page-back", class: "secondary", disabled: !prev.length && !filters.cursor, onclick: () => {
          go({ ...filters, cursor: prev[prev.length - 1] || "" }, prev.slice(0, -1));
        } }, back),
        h("button", { id: "page-on", class: "secondary", disabled: !page.next_cursor, onclick: () =>
          go({ ...filters, cursor: page.next_cursor }, [...prev, filters.cursor || ""]) }, on));
    } catch (e) {
      if (!closed && mine === reads) {
        drawn = null;
        table.replaceChildren(h("p", { class: "error" }, e.message));
      }
    }
  };
  const drawRows = (tasks) => {
    rows.clear();
    if (!tasks.length) return table.replaceChildren(h("p", { class: "muted" }, "No tasks match."));
    table.replaceChildren(h("table", { id: "tasks-table" },
      h("tr", {}, ["id", "state", "queue", "priority", "what", "worker", "attempt", "created", "ran"].map((t) => h("th", {}, t))),
      tasks.map((t) => {
        const st = h("td", {}, stateBadge(t.status.state));
        rows.set(t.id, st);
        return h("tr", { "data-task": t.id },
          h("td", {}, taskLink(t.id)), st, h("td", {}, t.spec.queue), h("td", {}, String(t.spec.priority)),
          h("td", { class: "mono" }, kindText(t.spec.kind)), h("td", {}, t.status.worker || "—"),
          h("td", { class: "num" }, t.status.attempt), h("td", {}, fmtTime(t.created_at)),
          h("td", {}, fmtSpan(t.status.started_at, t.status.finished_at)));
      })));
  };
  const loadSoon = () => {
    if (readTimer) return;
    readTimer = setTimeout(() => { readTimer = null; load(); }, Math.max(0, lastRead + REFRESH_MS - Date.now()));
  };
  load();
  return {
    onSummary(sum) {
      for (const [id, t] of Object.entries(sum.tasks)) {
        if (rows.has(id)) rows.get(id).replaceChildren(stateBadge(t.state));
      }
      if (seq !== null && sum.seq !== seq) loadSoon();
      seq = sum.seq;
    },
    close: () => {
      closed = true;
      clearTimeout(readTimer);
    },
  };
};

/**
 * The phases of each attempt of `task`: [{ attempt, phases: [{ name, from,
 * to }], end }], times in µs (`to` null while the phase lasts). An attempt
 * waits from the task's creation (the first) or the previous attempt's end
 * (the others: backoff, then the queue) until it is assigned; the store
 * keeps when a task last entered the queue, which splits the last wait.
 */
function attemptPhases(task, list) {
  const s = task.status;
  return list.map((a, i) => {
    const last = i === list.length - 1;
    const ready = i === 0 ? task.created_at : (list[i - 1].finished_at ?? list[i - 1].assigned_at);
    const phases = [];
    const queued = last && s.queued_at && s.queued_at > ready && s.queued_at <= a.assigned_at ? s.queued_at : null;
    if (queued) phases.push({ name: i === 0 ? "pending" : "backoff", from: ready, to: queued });
    // Before a retry, without that split: its backoff and its time queued.
    phases.push({ name: queued || i === 0 ? "queued" : "waiting", from: queued ?? ready, to: a.assigned_at });
    const end = a.started_at ?? a.finished_at;
    phases.push({ name: "assigned", from: a.assigned_at, to: end ?? null });
    if (a.started_at) phases.push({ name: "running", from: a.started_at, to: a.finished_at ?? null });
    return { attempt: a, phases };
  });
}

/** The phases of an attempt, in order, and what the legend says of each. */
const PHASES = ["pending", "backoff", "waiting", "queued", "assigned", "running"];
const PHASE_TEXT = {
  pending: "pending (run_at, dependencies)", backoff: "retry backoff", waiting: "backoff and queue",
  queued: "queued", assigned: "assigned, not started", running: "running",
};

/** What an attempt or phase took, e.g. "1.2 s" (to now while it lasts). */
const took = (from, to) => fmtSpan(from, to ?? undefined);

/** The task's attempts as a timeline: one row per attempt, on one scale. */
function timeline(task, list) {
  const s = task.status;
  if (!list.length) {
    return h("p", { class: "muted", id: "timeline" }, TERMINAL.has(s.state) ? "It never ran." : "None yet.");
  }
  const rows = attemptPhases(task, list);
  const now = Date.now() * 1000;
  const start = task.created_at;
  const lastEnd = list[list.length - 1].finished_at;
  const end = Math.max(TERMINAL.has(s.state) ? (s.finished_at ?? lastEnd ?? now) : now, start + 1);
  const at = (t) => (100 * ((t ?? now) - start)) / (end - start);
  const segment = (p) => h("span", {
    class: `tl-seg ${p.name}`,
    style: `left:${at(p.from).toFixed(2)}%;width:${Math.max(at(p.to) - at(p.from), 0).toFixed(2)}%`,
    title: `${p.name} ${took(p.from, p.to)}, from ${fmtTime(p.from)}`,
  });
  const row = ({ attempt: a, phases }) => {
    const outcome = a.outcome || (a.started_at ? "running" : "assigned");
    const exit = a.exit_code !== null && a.exit_code !== undefined ? `exit ${a.exit_code}` : null;
    return h("div", { class: "tl-row", "data-attempt": a.attempt, "data-worker": a.worker, "data-outcome": outcome },
      h("div", { class: "tl-who" }, `#${a.attempt} `, h("span", { class: "mono" }, a.worker)),
      h("div", { class: "tl-track" }, phases.map(segment)),
      h("div", { class: "tl-text" },
        phases.map((p) => h("span", { class: `tl-phase ${p.name}`, title: `from ${fmtTime(p.from)}` },
          `${p.name} ${took(p.from, p.to)}`)),
        h("span", {}, "→ ", stateBadge(outcome), exit ? ` ${exit}` : null),
        a.error ? h("span", { class: "error" }, a.error) : null));
  };
  // A task waiting for its next attempt says since when, or until when.
  let next = null;
  if (s.state === "retrying") next = `retrying: the next attempt may start at ${fmtTime(s.wake_at)}`;
  else if (s.state === "queued" || s.state === "pending") next = `${s.state} for attempt ${list.length + 1} since ${fmtTime(s.queued_at ?? lastEnd)}`;
  return h("div", { id: "timeline", class: "timeline" },
    h("div", { class: "tl-axis muted" }, h("span", {}, `created ${fmtTime(start)}`),
      h("span", {}, TERMINAL.has(s.state) ? `ended after ${took(start, end)}` : `${took(start, now)} so far`)),
    rows.map(row),
    next ? h("div", { class: "tl-next muted" }, next) : null,
    h("div", { class: "tl-legend muted" }, PHASES.filter((n) => rows.some((r) => r.phases.some((p) => p.name === n)))
      .map((n) => h("span", {}, h("span", { class: `tl-key ${n}` }), PHASE_TEXT[n]))));
}

const taskView = (root, id) => {
  const head = h("div", { class: "actions" });
  const info = h("dl");
  const progress = h("div", { id: "progress" });
  const spec = h("pre");
  const attempts = h("div");
  const output = h("pre", { id: "output" });
  const err = h("p", { class: "error" });
  root.append(head, err, h("div", { class: "grid2" },
    h("div", {}, h("h2", {}, "Status"), info, progress),
    h("div", {}, h("h2", {}, "Spec"), spec)),
  h("h2", {}, "Attempts"), attempts, h("h2", {}, "Output"), output);

  let task = null;
  const drawProgress = (p) => {
    if (!p) return progress.replaceChildren();
    progress.replaceChildren(h("div", { class: "bar", title: pct(p.fraction) },
      h("div", { style: `width:${100 * Math.min(Math.max(p.fraction, 0), 1)}%` })),
    h("span", { class: "muted" }, `${pct(p.fraction)} ${p.message || ""}`));
  };
  const draw = (d) => {
    task = d.task;
    const s = task.status;
    const terminal = TERMINAL.has(s.state);
    head.replaceChildren(h("h2", { class: "mono" }, id), h("span", { id: "task-state" }, stateBadge(s.state)),
      h("button", { id: "cancel", class: "danger", disabled: terminal || s.cancel_requested, onclick: cancel },
        s.cancel_requested && !terminal ? "Cancelling…" : "Cancel"),
      h("button", { id: "retry", class: "secondary", disabled: !terminal, onclick: retry }, "Retry"));
    const row = (k, v) => [h("dt", {}, k), h("dd", {}, v)];
    info.replaceChildren(...[
      row("what", h("span", { class: "mono" }, kindText(task.spec.kind))),
      row("queue", task.spec.queue), row("priority", String(task.spec.priority)),
      row("tags", (task.spec.tags || []).join(", ") || "—"),
      row("worker", s.worker || "—"), row("attempt", `${s.attempt} (retries ${s.retries})`),
      row("created", fmtTime(task.created_at)), row("queued", fmtTime(s.queued_at)),
      row("started", fmtTime(s.started_at)), row("finished", fmtTime(s.finished_at)),
      row("wait", fmtSpan(task.created_at, s.started_at ?? (terminal ? s.finished_at : null))),
      row("run time", fmtSpan(s.started_at, s.finished_at)),
      row("exit code", s.exit_code ?? "—"),
      s.error ? row("error", h("span", { class: "error" }, `${s.error.code}: ${s.error.message}`)) : [],
      s.result ? row("result", h("code", {}, s.result)) : [],
      s.usage ? row("usage", `${s.usage.cpu_seconds.toFixed(2)} CPU s` + (s.usage.peak_rss_bytes ? `, ${(s.usage.peak_rss_bytes / 1048576).toFixed(1)} MiB peak` : "")) : [],
    ].flat());
    drawProgress(task.progress);
    spec.textContent = JSON.stringify(task.spec, null, 2);
    attempts.replaceChildren(timeline(task, d.attempts));
  };
  const reload = async () => {
    try {
      draw(await api(`/tasks/${encodeURIComponent(id)}`));
      err.textContent = "";
    } catch (e) {
      err.textContent = e.message;
    }
  };
  let reloadTimer = null;
  const reloadSoon = () => { if (!reloadTimer) reloadTimer = setTimeout(() => { reloadTimer = null; reload(); }, 200); };

  async function cancel(e) {
    e.target.disabled = true;
    try {
      const r = await api(`/tasks/${encodeURIComponent(id)}/cancel`, { method: "POST" });
      $("#task-state").replaceChildren(stateBadge(r.state));
    } catch (x) {
      err.textContent = x.message;
    }
    reloadSoon();
  }
  async function retry(e) {
    e.target.disabled = true;
    try {
      const r = await api(`/tasks/${encodeURIComponent(id)}/retry`, { method: "POST" });
      location.hash = `#/task/${r.id}`;
    } catch (x) {
      err.textContent = x.message;
      e.target.disabled = false;
    }
  }

  // Output: chunks are gathered and appended once per animation frame.
  let queued = [];
  let frame = null;
  let kept = 0;
  let lastAttempt = null;
  const appendOutput = () => {
    frame = null;
    const stick = output.scrollTop + output.clientHeight >= output.scrollHeight - 4;
    const frag = document.createDocumentFragment();
    for (const c of queued) {
      if (lastAttempt !== null && c.attempt !== lastAttempt) {
        const sep = output.textContent.endsWith("\n") || !output.textContent ? "" : "\n";
        frag.append(h("span", { class: "log" }, `${sep}── attempt ${c.attempt} ──\n`));
      }
      lastAttempt = c.attempt;
      frag.append(c.stream === "stdout" ? document.createTextNode(c.data) : h("span", { class: c.stream }, c.data));
      kept += c.data.length;
    }
    queued = [];
    output.append(frag);
    while (kept > OUTPUT_KEEP && output.firstChild) {
      kept -= output.firstChild.textContent.length;
      output.firstChild.remove();
    }
    if (stick) output.scrollTop = output.scrollHeight;
  };
  const out = follow(`${API}/tasks/${encodeURIComponent(id)}/output?follow=true`, (m) => {
    if (m.event === "end") {
      reloadSoon();
      return false;
    }
    try {
      const c = JSON.parse(m.data);
      if (c && typeof c.data === "string") queued.push(c);
    } catch (e) {
      return true;
    }
    if (!frame) frame = requestAnimationFrame(appendOutput);
    return true;
  });

  reload();
  watch([id]);
  return {
    onSummary(sum) {
      const t = sum.tasks[id];
      if (!t) return;
      if (t.progress) drawProgress(t.progress);
      if (!task || t.state !== task.status.state) {
        $("#task-state")?.replaceChildren(stateBadge(t.state));
        reloadSoon();
      }
    },
    close: () => out.close(),
  };
};

// -------------------------------------------------------------- schedules

/** The schedule views are re-read at least this often (ms), stream or not. */
const SCHEDULE_REFRESH_MS = 5000;
/** Schedule events are gathered this long before a re-read (ms). */
const SCHEDULE_DEBOUNCE_MS = 250;
/** What an overlap policy does with a fire while the previous task is live. */
const OVERLAP_TEXT = {
  skip: "is skipped", "buffer-one": "waits (one at most)", "buffer-all": "waits",
  "cancel-previous": "cancels it", "allow-all": "runs alongside it",
};

/** A time from the API (µs since the epoch, or an RFC 3339 string) in µs. */
function toUs(t) {
  if (t === null || t === undefined) return null;
  if (typeof t === "number") return t;
  const ms = Date.parse(t);
  return Number.isNaN(ms) ? null : ms * 1000;
}

/** A span in ms as the CLI writes it: "500ms", "90s" → "1m30s", "1h", "2d". */
function fmtMs(ms) {
  if (ms === null || ms === undefined) return "—";
  if (ms < 1000) return `${ms}ms`;
  let rest = ms;
  let out = "";
  for (const [unit, n] of [["d", 86400000], ["h", 3600000], ["m", 60000], ["s", 1000]]) {
    if (rest >= n) {
      out += `${Math.floor(rest / n)}${unit}`;
      rest %= n;
    }
  }
  return rest ? `${out}${rest}ms` : out;
}

/** How far a time (µs) is from now: "in 3 min", "12 s ago". */
function fmtRelative(us) {
  const ms = us / 1000 - Date.now();
  const a = Math.abs(ms);
  if (a < 1000) return "now";
  let s;
  if (a < 90000) s = `${Math.round(a / 1000)} s`;
  else if (a < 90 * 60000) s = `${Math.round(a / 60000)} min`;
  else if (a < 48 * 3600000) s = `${(a / 3600000).toFixed(1)} h`;
  else s = `${Math.round(a / 86400000)} d`;
  return ms > 0 ? `in ${s}` : `${s} ago`;
}

/** A time from the API as local time and how far it is: a <time> element. */
function when(t) {
  const us = toUs(t);
  if (us === null) return "—";
  return h("time", { datetime: new Date(us / 1000).toISOString(), "data-us": us, title: new Date(us / 1000).toISOString() },
    `${fmtTime(us)} (${fmtRelative(us)})`);
}

/** When a schedule fires, in one line: "cron 0 3 * * * (Europe/Berlin)", "every 5m". */
function specText(d) {
  if (!d) return "";
  let s = d.cron !== null && d.cron !== undefined
    ? `cron ${d.cron} (${d.tz || "UTC"})`
    : `every ${fmtMs(d.every_ms)}${d.phase_ms ? ` + ${fmtMs(d.phase_ms)}` : ""}`;
  if (d.jitter_ms) s += `, jitter ${fmtMs(d.jitter_ms)}`;
  return s;
}

const scheduleHref = (name) => `#/schedule/${encodeURIComponent(name)}`;

/** "active", or "paused" and its note. */
function scheduleState(s) {
  if (!s.paused) return stateBadge("active");
  return [stateBadge("paused"), s.note ? h("span", { class: "note" }, ` ${s.note}`) : null];
}

/** What holds a schedule back (a gate of GET /schedules/{name}), in words. */
function gateText(g) {
  switch (g.reason) {
    case "paused": return [h("strong", {}, "paused"), g.note ? `: ${g.note}` : " (no note)"];
    case "ended": return [h("strong", {}, "ended"), ": past its end, or its recurrence has no further fire"];
    case "max_runs_reached": return [h("strong", {}, "max runs reached"), `: it has run its ${g.max_runs} task(s)`];
    case "not_started": return [h("strong", {}, "not started"), ": it may not fire before ", when(g.start)];
    case "overlap": return [h("strong", {}, "overlap"), ": its previous task ", taskLink(g.task),
      ` is live, so the next fire ${OVERLAP_TEXT[g.policy] || "is held"} (${g.policy})`];
    case "buffered": return [h("strong", {}, "buffered"), `: ${g.count} fire(s) waiting for the previous task to end`];
    default: return JSON.stringify(g);
  }
}

/** POST /schedules/{name}/{what}: pause (with an optional note), resume, trigger. */
function scheduleAction(name, what, note) {
  const body = what === "pause" ? (note ? { note } : {}) : undefined;
  return api(`/schedules/${encodeURIComponent(name)}/${what}`, { method: "POST", body });
}

/**
 * The routes that may stream schedule events, tried in turn: a coordinator
 * without one answers 404 and the next is tried.
 */
const SCHEDULE_STREAM = `${API}/events/schedules`;

/**
 * Calls `reload` when the schedule stream says something changed (events
 * `mine` accepts, gathered for SCHEDULE_DEBOUNCE_MS), on each (re)connect,
 * and every SCHEDULE_REFRESH_MS anyway: the views work on a coordinator
 * without a schedule stream. Returns { close() }.
 */
function scheduleFeed(reload, mine = () => true) {
  let timer = null;
  let closed = false;
  let stream = null;
  const soon = () => {
    if (!timer && !closed) timer = setTimeout(() => { timer = null; reload(); }, SCHEDULE_DEBOUNCE_MS);
  };
  const onMessage = (m) => {
    let ev = null;
    try {
      ev = JSON.parse(m.data);
    } catch (e) {
      // Not JSON: re-read to be safe.
    }
    if (m.event === "reset" || !ev || mine(ev)) soon();
    return true;
  };
  const open = () => {
    if (closed) return;
    // A coordinator without the stream (404): the timer below does.
    stream = follow(SCHEDULE_STREAM, onMessage, (on) => {
      if (on) soon();
    }, { optional: true });
  };
  open();
  const every = setInterval(() => { if (!document.hidden) reload(); }, SCHEDULE_REFRESH_MS);
  return {
    close() {
      closed = true;
      if (stream) stream.close();
      clearInterval(every);
      clearTimeout(timer);
    },
  };
}

const schedulesView = (root) => {
  const err = h("p", { class: "error", id: "schedules-error" });
  const box = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  root.append(h("h2", {}, "Schedules"), err, box);
  let closed = false;
  let reads = 0;
  let failed = "";
  let acted = "";
  const showErr = () => { err.textContent = [acted, failed].filter(Boolean).join(" · "); };
  const load = async () => {
    const mine = ++reads;
    try {
      const { schedules } = await api("/schedules");
      if (closed || mine !== reads) return;
      failed = "";
      draw(schedules);
    } catch (e) {
      if (closed || mine !== reads) return;
      failed = `Could not read the schedules: ${e.message}`;
    }
    showErr();
  };
  const act = async (s, what, button) => {
    button.disabled = true;
    acted = "";
    try {
      await scheduleAction(s.name, what);
    } catch (e) {
      acted = `Could not ${what} ${s.name}: ${e.message}`;
      button.disabled = false;
    }
    showErr();
    if (!closed) await load();
  };
  const draw = (list) => {
    if (!list.length) {
      return box.replaceChildren(h("p", { class: "muted" },
        "No schedules yet: add one with ", h("code", {}, "taskgrid schedule add"), " or ",
        h("code", {}, "PUT /api/v1/schedules/{name}"), "."));
    }
    box.replaceChildren(h("table", { id: "schedules-table" },
      h("tr", {}, ["schedule", "when", "state", "next fire"].map((t) => h("th", {}, t)),
        ["runs", "live tasks"].map((t) => h("th", { class: "num" }, t)), h("th", {}, "last task"), h("th", {})),
      list.map((s) => {
        const next = s.next_due ?? s.next;
        return h("tr", { "data-schedule": s.name, "data-paused": String(s.paused) },
          h("td", {}, h("a", { href: scheduleHref(s.name) }, s.name)),
          h("td", { class: "mono" }, specText(s.definition)),
          h("td", {}, scheduleState(s)),
          h("td", { class: "next", "data-next": s.next ?? null }, next !== null && next !== undefined
            ? when(next) : h("span", { class: "muted" }, s.paused ? "— (paused)" : "— (ended)")),
          h("td", { class: "num" }, s.runs),
          h("td", { class: "num" }, (s.live || []).length),
          h("td", {}, s.last_task ? taskLink(s.last_task) : "—"),
          h("td", { class: "row-actions" },
            h("button", { class: "secondary", "data-action": s.paused ? "resume" : "pause",
              onclick: (e) => act(s, s.paused ? "resume" : "pause", e.target) }, s.paused ? "Resume" : "Pause"),
            h("button", { class: "secondary", "data-action": "trigger", title: "submit its task now",
              onclick: (e) => act(s, "trigger", e.target) }, "Trigger")));
      })));
  };
  const feed = scheduleFeed(load);
  load();
  return {
    close: () => {
      closed = true;
      feed.close();
    },
  };
};

const scheduleView = (root, name) => {
  const head = h("div", { class: "actions" });
  const err = h("p", { class: "error", id: "schedule-error" });
  const said = h("p", { class: "muted", id: "schedule-said" });
  const note = h("input", { id: "schedule-note", placeholder: "why (optional)", size: 28, maxlength: 1024 });
  const pause = h("button", { id: "schedule-pause", type: "submit", disabled: true }, "Pause");
  const resume = h("button", { id: "schedule-resume", type: "button", class: "secondary", disabled: true,
    onclick: () => act("resume") }, "Resume");
  const trigger = h("button", { id: "schedule-trigger", type: "button", class: "secondary", disabled: true,
    title: "submit its task now, whatever the overlap policy, even while paused", onclick: () => act("trigger") }, "Trigger now");
  const controls = h("form", {
    class: "actions",
    onsubmit: (e) => {
      e.preventDefault();
      act("pause");
    },
  }, h("label", {}, "pause note", note), pause, resume, trigger);
  const info = h("dl", { id: "schedule-definition" });
  const upcoming = h("ol", { id: "schedule-upcoming", class: "plain" });
  const gates = h("ul", { id: "schedule-gates", class: "plain" });
  const fires = h("div", { id: "schedule-fires" });
  root.append(h("div", { id: "schedule-detail" },
    head, err, controls, said,
    h("div", { class: "grid2" },
      h("div", {}, h("h2", {}, "Definition"), info),
      h("div", {}, h("h2", {}, "Next fires"), upcoming, h("h2", {}, "Why it is not firing"), gates)),
    h("h2", {}, "Last fires"), fires));

  let closed = false;
  let reads = 0;
  let sched = null;
  let busy = false;
  const setButtons = () => {
    pause.disabled = busy || !sched || sched.paused;
    resume.disabled = busy || !sched || !sched.paused;
    trigger.disabled = busy || !sched;
  };
  const draw = (d) => {
    const s = d.schedule;
    sched = s;
    const def = s.definition || {};
    const t = def.task || {};
    head.replaceChildren(h("h2", { class: "mono" }, s.name),
      h("span", { id: "schedule-state" }, scheduleState(s)),
      h("a", { href: `#/tasks?tag=${encodeURIComponent(`schedule:${s.name}`)}` }, "its tasks"),
      h("a", { href: "#/schedules" }, "all schedules"));
    const row = (k, v) => [h("dt", {}, k), h("dd", {}, v)];
    const bounds = def.start || def.end ? [def.start ? when(def.start) : "any time", " → ", def.end ? when(def.end) : "no end"] : null;
    info.replaceChildren(...[
      row("when", h("span", { class: "mono" }, def.cron !== null && def.cron !== undefined ? `cron ${def.cron}` : `every ${fmtMs(def.every_ms)}`)),
      def.cron !== null && def.cron !== undefined ? row("time zone", def.tz || "UTC") : [],
      def.phase_ms ? row("phase", fmtMs(def.phase_ms)) : [],
      row("jitter", def.jitter_ms ? `up to ${fmtMs(def.jitter_ms)}` : "none"),
      bounds ? row("window", bounds) : [],
      row("runs", def.max_runs ? `${s.runs} of at most ${def.max_runs}` : String(s.runs)),
      row("overlap", def.overlap || "skip"),
      row("catch-up", def.catch_up_ms !== null && def.catch_up_ms !== undefined ? fmtMs(def.catch_up_ms) : "—"),
      row("command", h("span", { class: "mono" }, kindText(t.kind))),
      row("queue", t.queue || "default"),
      row("priority", t.priority || "normal"),
      t.tags && t.tags.length ? row("tags", t.tags.join(", ")) : [],
      t.timeout_ms ? row("timeout", fmtMs(t.timeout_ms)) : [],
      row("live tasks", s.live && s.live.length ? s.live.map((id) => h("div", {}, taskLink(id))) : "none"),
      row("last task", s.last_task ? taskLink(s.last_task) : "—"),
      s.buffered && s.buffered.length ? row("waiting fires", String(s.buffered.length)) : [],
      row("dealt with up to", when(s.cursor)),
      row("created", fmtTime(toUs(s.created_at))),
      row("changed", fmtTime(toUs(s.updated_at))),
    ].flat());
    const due = toUs(s.next_due);
    const next = s.upcoming || [];
    upcoming.replaceChildren(...(next.length
      ? next.map((at, i) => h("li", { "data-us": toUs(at) }, when(at),
        i === 0 && due !== null && due !== toUs(at) ? h("span", { class: "muted" }, " — fires at ", when(due), " with its jitter") : null))
      : [h("li", { class: "muted" }, s.paused ? "None while it is paused." : "None: it has ended.")]));
    gates.replaceChildren(...(d.gates.length
      ? d.gates.map((g) => h("li", { "data-reason": g.reason }, gateText(g)))
      : [h("li", { class: "muted" }, "Nothing holds it back: it fires as planned.")]));
    if (!d.fires.length) {
      fires.replaceChildren(h("p", { class: "muted" }, "No fires yet."));
    } else {
      fires.replaceChildren(h("table", { id: "fires-table" },
        h("tr", {}, ["scheduled", "fired", "outcome", "task", "reason", ""].map((x) => h("th", {}, x))),
        d.fires.map((f) => h("tr", { "data-outcome": f.outcome, "data-task": f.task ?? null, "data-manual": f.manual ? "true" : "false" },
          h("td", {}, fmtTime(toUs(f.at)),
            f.until !== null && f.until !== undefined ? ` → ${fmtTime(toUs(f.until))}` : null,
            f.count && f.count !== 1 ? ` (${f.count} fires)` : null),
          h("td", {}, fmtTime(toUs(f.fired_at))),
          h("td", {}, stateBadge(f.outcome)),
          h("td", {}, f.task ? taskLink(f.task) : "—"),
          h("td", {}, f.reason || ""),
          h("td", {}, f.manual ? h("span", { class: "tag" }, "manual") : "")))));
    }
    setButtons();
  };
  const load = async () => {
    const mine = ++reads;
    try {
      const d = await api(`/schedules/${encodeURIComponent(name)}`);
      if (closed || mine !== reads) return;
      draw(d);
      if (err.dataset.from === "load") err.textContent = "";
    } catch (e) {
      if (closed || mine !== reads) return;
      if (e.status === 404) {
        sched = null;
        setButtons();
      }
      err.textContent = `Could not read ${name}: ${e.message}`;
      err.dataset.from = "load";
    }
  };
  async function act(what) {
    busy = true;
    setButtons();
    err.textContent = "";
    try {
      const r = await scheduleAction(name, what, note.value.trim());
      if (what === "pause") note.value = "";
      if (what === "trigger") {
        const f = r.fires[0];
        said.replaceChildren(h("span", {}, `Triggered at ${fmtTime(toUs(f.fired_at))}: `, stateBadge(f.outcome),
          f.task ? [" task ", taskLink(f.task)] : null, f.reason ? ` (${f.reason})` : null));
      }
    } catch (e) {
      err.textContent = `Could not ${what} ${name}: ${e.message}`;
      err.dataset.from = "action";
    }
    busy = false;
    if (!closed) await load();
    setButtons();
  }
  const feed = scheduleFeed(load, (ev) => ev.schedule === name);
  load();
  return {
    close: () => {
      closed = true;
      feed.close();
    },
  };
};

// ----------------------------------------------------------------- router

/** Shows the view the location hash names. */
function route() {
  if (view.close) view.close();
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(query || "");
  const root = $("#view");
  root.replaceChildren();
  const parts = (path || "/").split("/").filter(Boolean);
  let name = parts[0] || "overview";
  const watches = watchCalls;
  if (name === "task" && parts[1]) {
    view = taskView(root, decodeURIComponent(parts[1]));
    name = "tasks";
  } else if (name === "schedule" && parts[1]) {
    view = scheduleView(root, decodeURIComponent(parts[1]));
    name = "schedules";
  } else if (name === "schedules") view = schedulesView(root);
  else if (name === "workers") view = workersView(root);
  else if (name === "queues") view = queuesView(root);
  else if (name === "tasks") view = tasksView(root, params);
  else {
    name = "overview";
    view = overview(root);
  }
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === name);
  // Views that show tasks watch them; the others watch none.
  if (watchCalls === watches) watch([]);
}

function main() {
  setupToken();
  window.addEventListener("hashchange", route);
  route();
  refreshCluster();
  setInterval(takeSample, SAMPLE_MS);
  // Workers connecting or leaving send no task event: look now and then.
  setInterval(() => { if (!document.hidden) scheduleRefresh(true); }, IDLE_REFRESH_MS);
}

main();
