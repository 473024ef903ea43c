// The monitor page: plain ES module, no build step. Payloads are shown as text
// (textContent), never parsed as HTML.
import { sparkline, Buckets } from "./charts.js";

/** Rows kept in the stream table (the DOM stays bounded). */
export const MAX_ROWS = 500;
/** Events buffered while paused (the newest kept). */
const MAX_PAUSED = 5000;

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const token = params.get("token") || sessionStorage.getItem("mpm-monitor-token") || "";
if (params.get("token")) {
  // NOTE: the token leaves the address bar (and so screenshots and history).
  sessionStorage.setItem("mpm-monitor-token", token);
  params.delete("token");
  history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : ""));
}

const state = {
  lastSeq: 0,       // the last seq received (resume point)
  source: null,
  paused: false,
  pausedBuf: [],
  pending: [],      // received, not yet drawn
  events: new Map(),// seq -> event, for rows on screen
  filter: { pattern: "", exclude: "", rule: "" },
  busRate: new Buckets(),
  topicRates: new Map(),
  consumerRates: new Map(),
  lastProcessed: new Map(),
  reconnectDelay: 250,
};
window.__monitor = state;

/** A number for a cell ("-" when the source does not know it). */
function num(v, digits) {
  if (v === null || v === undefined) return "-";
  return digits === undefined ? String(v) : Number(v).toFixed(digits);
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json", "Authorization": "Bearer " + token },
    body: JSON.stringify(body),
  };
  const r = await fetch("/api/" + path, opts);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error || r.status + " " + r.statusText);
  return data;
}

// ----- stream -----

function streamUrl() {
  const q = new URLSearchParams();
  const f = state.filter;
  if (f.pattern) q.set("pattern", f.pattern);
  if (f.exclude) q.set("exclude", f.exclude);
  if (f.rule) q.set("rule", f.rule);
  if (state.lastSeq > 0) q.set("after", String(state.lastSeq));
  return "/api/stream?" + q;
}

function setConn(text, cls) {
  const c = $("conn");
  c.textContent = text;
  c.className = "badge " + (cls || "");
}

async function connect() {
  if (state.source) state.source.close();
  const src = new EventSource(streamUrl());
  state.source = src;
  src.onopen = () => { setConn(state.paused ? "paused" : "live", state.paused ? "paused" : "live"); state.reconnectDelay = 250; };
  src.onmessage = (m) => onEvent(JSON.parse(m.data));
  src.addEventListener("gap", (m) => {
    const g = JSON.parse(m.data);
    addNotice(`events ${g.from}..${g.to} are no longer kept by the server`);
  });
  src.addEventListener("dropped", (m) => {
    const r = JSON.parse(m.data);
    addNotice("stream dropped by the server: " + r.reason + "; resuming");
    reconnectSoon();
  });
  src.onerror = () => { if (state.source === src) reconnectSoon(); };
}

function reconnectSoon() {
  if (state.source) { state.source.close(); state.source = null; }
  setConn("reconnecting");
  const d = state.reconnectDelay;
  state.reconnectDelay = Math.min(5000, d * 2);
  setTimeout(connect, d);
}

function onEvent(ev) {
  state.lastSeq = ev.seq;
  $("last-seq").textContent = ev.seq;
  state.busRate.add(1);
  let t = state.topicRates.get(ev.topic);
  if (!t) { t = { buckets: new Buckets(), seen: 0 }; state.topicRates.set(ev.topic, t); }
  t.buckets.add(1); t.seen++;
  if (state.paused) {
    state.pausedBuf.push(ev);
    if (state.pausedBuf.length > MAX_PAUSED) state.pausedBuf.splice(0, state.pausedBuf.length - MAX_PAUSED);
    return;
  }
  state.pending.push(ev);
  if (state.pending.length === 1) requestAnimationFrame(flush);
}

function flush() {
  const batch = state.pending.splice(0, state.pending.length).slice(-MAX_ROWS);
  const body = $("event-rows");
  const frag = document.createDocumentFragment();
  for (let i = batch.length - 1; i >= 0; i--) frag.appendChild(eventRow(batch[i]));
  body.insertBefore(frag, body.firstChild);
  while (body.rows.length > MAX_ROWS) {
    const last = body.lastElementChild;
    if (last.dataset.seq) state.events.delete(Number(last.dataset.seq));
    last.remove();
  }
  $("row-count").textContent = body.rows.length;
}

function eventRow(ev) {
  const tr = document.createElement("tr");
  tr.dataset.seq = ev.seq;
  tr.dataset.id = ev.id;
  const ts = typeof ev.timestamp === "string" ? ev.timestamp.replace("T", " ").slice(0, 23) : "";
  for (const v of [ev.seq, ts, ev.topic, ev.type, ev.source, ev.priority]) tr.appendChild(el("td", v));
  state.events.set(ev.seq, ev);
  return tr;
}

function addNotice(text) {
  const tr = el("tr", null, "notice");
  const td = el("td", text);
  td.colSpan = 6;
  tr.appendChild(td);
  $("event-rows").insertBefore(tr, $("event-rows").firstChild);
}

$("event-rows").addEventListener("click", (e) => {
  const tr = e.target.closest("tr");
  if (tr && tr.dataset.seq) showDetail(Number(tr.dataset.seq), tr.dataset.id);
});

async function showDetail(seq, id) {
  $("detail").hidden = false;
  $("detail-id").textContent = id;
  const local = state.events.get(seq);
  $("detail-payload").textContent = JSON.stringify(local, null, 2);
  const rows = $("detail-deliveries");
  rows.replaceChildren();
  try {
    const d = await api("events/" + encodeURIComponent(id));
    $("detail-payload").textContent = JSON.stringify(d.event, null, 2);
    for (const r of d.deliveries) {
      const tr = document.createElement("tr");
      for (const v of [r.consumer, r.attempt, r.outcome, r.queue_ms.toFixed(3), r.handler_ms.toFixed(3), r.error || ""]) tr.appendChild(el("td", v));
      rows.appendChild(tr);
    }
    if (!d.deliveries.length) rows.appendChild(el("tr")).appendChild(el("td", "no delivery finished yet"));
  } catch (err) {
    rows.appendChild(el("tr")).appendChild(el("td", err.message, "error"));
  }
}
$("detail-close").onclick = () => { $("detail").hidden = true; };

$("filter-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = { pattern: $("pattern").value.trim(), exclude: $("exclude").value.trim(), rule: $("rule").value.trim() };
  $("filter-error").textContent = "";
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(f)) if (v) q.set(k, v);
  // NOTE: the server checks the filter (the stream would answer 400) before the
  // page switches its stream.
  const check = await api("stream/check?" + q).catch((err) => ({ ok: false, error: err.message }));
  if (!check.ok) {
    $("filter-error").textContent = check.error;
    return;
  }
  state.filter = f;
  // NOTE: a new filter starts from now: the rows shown were chosen by the old one.
  state.lastSeq = 0;
  clearRows();
  connect();
});

function clearRows() {
  $("event-rows").replaceChildren();
  state.events.clear();
  $("row-count").textContent = 0;
}
$("clear").onclick = clearRows;
$("pause").onclick = () => {
  state.paused = !state.paused;
  $("pause").textContent = state.paused ? "resume" : "pause";
  setConn(state.paused ? "paused" : "live", state.paused ? "paused" : "live");
  if (!state.paused) {
    state.pending.push(...state.pausedBuf.splice(0));
    requestAnimationFrame(flush);
  }
};

// ----- counters, consumers, topics -----

async function refreshMetrics() {
  try {
    const m = await api("metrics");
    for (const dd of document.querySelectorAll("[data-metric]")) {
      const v = m[dd.dataset.metric];
      dd.textContent = v === undefined || v === null ? "-" : v;
    }
  } catch (err) { setConn("bus not answering", ""); }
  sparkline($("bus-rate"), state.busRate.series());
}

async function refreshConsumers() {
  let list;
  try { list = await api("consumers"); } catch { return; }
  const body = $("consumer-rows");
  const select = $("replay-to");
  const chosen = select.value;
  select.replaceChildren(...list.map((c) => { const o = el("option", c.name); o.value = c.name; return o; }));
  if (chosen) select.value = chosen;
  const rows = [];
  for (const c of list) {
    let r = state.consumerRates.get(c.name);
    if (!r) { r = new Buckets(); state.consumerRates.set(c.name, r); }
    const prev = state.lastProcessed.get(c.name);
    if (prev !== undefined && c.processed !== null) r.add(Math.max(0, c.processed - prev));
    state.lastProcessed.set(c.name, c.processed);
    const tr = document.createElement("tr");
    tr.dataset.consumer = c.name;
    tr.appendChild(el("td", c.name));
    tr.appendChild(el("td", r.rate()));
    const cv = document.createElement("canvas"); cv.width = 120; cv.height = 20;
    const td = document.createElement("td"); td.appendChild(cv); tr.appendChild(td);
    for (const k of ["processed", "failed", "retried", "dead_lettered", "in_flight"]) {
      const cell = el("td", num(c[k])); cell.dataset.field = k; tr.appendChild(cell);
    }
    tr.appendChild(el("td", `${num(c.queue_depth)} / ${num(c.capacity)}`));
    tr.appendChild(el("td", num(c.latency_p50_ms, 2)));
    tr.appendChild(el("td", num(c.latency_p99_ms, 2)));
    sparkline(cv, r.series());
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function refreshTopics() {
  const top = [...state.topicRates.entries()].sort((a, b) => b[1].seen - a[1].seen).slice(0, 12);
  const rows = top.map(([topic, t]) => {
    const tr = document.createElement("tr");
    tr.appendChild(el("td", topic));
    tr.appendChild(el("td", t.buckets.rate()));
    const cv = document.createElement("canvas"); cv.width = 120; cv.height = 20;
    const td = document.createElement("td"); td.appendChild(cv); tr.appendChild(td);
    tr.appendChild(el("td", t.seen));
    sparkline(cv, t.buckets.series());
    return tr;
  });
  $("topic-rows").replaceChildren(...rows);
}

// ----- dead letters -----

async function refreshDeadLetters() {
  let list;
  try { list = await api("dead-letters?limit=200"); } catch (err) { $("dl-status").textContent = err.message; return; }
  const rows = list.map((d) => {
    const tr = document.createElement("tr");
    tr.dataset.id = d.id;
    tr.dataset.consumer = d.consumer;
    for (const v of [d.id, d.consumer, d.topic, d.attempts, d.error || "", d.timestamp || ""]) tr.appendChild(el("td", v));
    const td = document.createElement("td");
    const b = el("button", "redrive", "dl-redrive");
    b.type = "button";
    b.onclick = async (e) => {
      e.stopPropagation();
      await action("dead-letters/redrive", { consumer: d.consumer, ids: [d.id] }, (r) => `redriven: ${r.redriven}`);
    };
    td.appendChild(b);
    tr.appendChild(td);
    tr.onclick = () => { $("dl-detail").hidden = false; $("dl-detail").textContent = JSON.stringify(d, null, 2); };
    return tr;
  });
  $("dl-rows").replaceChildren(...rows);
}

async function action(path, body, say) {
  try {
    const r = await api(path, body);
    $("dl-status").textContent = say(r);
  } catch (err) {
    $("dl-status").textContent = err.message;
  }
  refreshDeadLetters();
}
$("dl-refresh").onclick = refreshDeadLetters;
$("dl-redrive-all").onclick = () => action("dead-letters/redrive", {}, (r) => `redriven: ${r.redriven}`);
$("dl-purge-all").onclick = () => {
  if (confirm("Purge every dead letter?")) action("dead-letters/purge", {}, (r) => `purged: ${r.purged}`);
};

// ----- replay -----

$("replay-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = { since: $("replay-since").value.trim(), to: $("replay-to").value };
  if ($("replay-until").value.trim()) body.until = $("replay-until").value.trim();
  if ($("replay-pattern").value.trim()) body.pattern = $("replay-pattern").value.trim();
  const status = $("replay-status");
  try {
    const { job } = await api("replay", body);
    const bar = $("replay-progress");
    bar.hidden = false; bar.removeAttribute("value");
    for (;;) {
      const s = await api("replay/" + job);
      if (s.total) { bar.max = s.total; bar.value = s.replayed; }
      status.textContent = s.error ? s.error : `replayed ${s.replayed}${s.total !== null ? " of " + s.total : ""}${s.done ? " (done)" : ""}`;
      if (s.done) { bar.max = 1; bar.value = 1; break; }
      await new Promise((r) => setTimeout(r, 300));
    }
  } catch (err) {
    status.textContent = err.message;
  }
});

// ----- topic tester -----

$("tester-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const out = $("tester-result");
  try {
    const r = await api("routing?topic=" + encodeURIComponent($("tester-topic").value.trim()));
    out.replaceChildren(...(r.consumers.length ? r.consumers.map((c) => el("li", c)) : [el("li", "no consumer receives it")]));
  } catch (err) {
    out.replaceChildren(el("li", err.message, "error"));
  }
});

connect();
refreshMetrics();
refreshConsumers();
refreshDeadLetters();
setInterval(refreshMetrics, 1000);
setInterval(refreshConsumers, 1000);
setInterval(refreshTopics, 1000);
setInterval(refreshDeadLetters, 5000);
