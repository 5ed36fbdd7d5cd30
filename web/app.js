// The dashboard: active calls with live transcripts (WS /events), call history, outbound calls.
// Plain script, no build step. Talks only to this server's own API (see dashboard.py).
"use strict";

const state = { key: sessionStorage.getItem("apiKey") || "", calls: new Map(), presets: [] };
const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new Error(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return response;
}

const fmtDuration = (ms) => {
  const s = Math.max(0, Math.floor(ms / 1000));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
};
const fmtTime = (iso) => (iso ? new Date(iso).toLocaleString() : "–");

// ---------------------------------------------------------------- active calls

function callCard(sid, info = {}) {
  let call = state.calls.get(sid);
  if (call) return call;
  const node = $("#call-template").content.firstElementChild.cloneNode(true);
  node.dataset.callSid = sid;
  node.setAttribute("aria-labelledby", `call-${sid}`);
  $(".call-title", node).id = `call-${sid}`;
  $(".call-title", node).textContent = `Call ${sid}`;
  $(".transcript", node).setAttribute("aria-label", `Transcript of call ${sid}`);
  call = { sid, node, startedAt: info.started_at ? Date.parse(info.started_at) : Date.now(), latencies: [] };
  state.calls.set(sid, call);
  setMeta(call, info);
  $("#active-calls").append(node);
  updateActiveCount();
  drawLatency(call);
  tick();
  return call;
}

function setMeta(call, info) {
  const parts = [];
  if (info.direction) parts.push(info.direction);
  if (info.from) parts.push(`from ${info.from}`);
  if (info.to) parts.push(`to ${info.to}`);
  if (info.provider) parts.push(`provider ${info.provider}`);
  if (parts.length) $(".call-meta", call.node).textContent = parts.join(" · ");
}

function updateActiveCount() {
  $("#active-count").textContent = `(${state.calls.size})`;
  $("#no-active").hidden = state.calls.size > 0;
}

function tick() {
  const now = Date.now();
  for (const call of state.calls.values()) {
    $(".timer", call.node).textContent = fmtDuration(now - call.startedAt);
  }
}
setInterval(tick, 1000);

function turnItem(turn) {
  const who = turn.role === "user" ? "Caller" : "Agent";
  const li = el("li", { class: turn.role });
  li.append(el("span", { class: "who", text: `${who}: ` }), el("span", { class: "text", text: turn.text }));
  if (turn.interrupted) {
    li.classList.add("interrupted");
    li.append(" ", el("span", { class: "interrupted-mark",
      text: `[interrupted after ${turn.audio_played_ms ?? 0} ms]` }));
  }
  if (turn.latency_ms != null) li.append(" ", el("span", { class: "latency-note", text: `(${turn.latency_ms} ms)` }));
  return li;
}

// A tool call: its name, arguments and time in the line; the result folded away.
function toolItem(tool) {
  const failed = tool.error != null;
  const summary = el("summary", {
    text: `Tool ${tool.name}(${JSON.stringify(tool.arguments || {})}) · ${tool.duration_ms} ms${failed ? " · failed" : ""}` });
  const body = el("pre", { text: JSON.stringify(failed ? { error: tool.error } : tool.result, null, 2) });
  return el("li", { class: failed ? "tool failed" : "tool" }, el("details", {}, summary, body));
}

function addTurn(call, turn) {
  $(".transcript", call.node).append(turnItem(turn));
  if (turn.role === "assistant" && turn.latency_ms != null) {
    call.latencies.push(turn.latency_ms);
    drawLatency(call);
  }
  scrollDown(call);
}

function scrollDown(call) {
  const list = $(".transcript", call.node);
  list.scrollTop = list.scrollHeight;
}

// A bar per answered reply: caller stopped -> first agent audio, in ms.
function drawLatency(call, root = call.node) {
  const figure = $(".latency", root);
  const values = call.latencies;
  figure.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const width = 300, height = 80, top = Math.max(1000, ...values);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  const mean = values.length ? Math.round(values.reduce((a, b) => a + b, 0) / values.length) : null;
  const label = values.length
    ? `Reply latency per turn, in ms: ${values.join(", ")}. Mean ${mean} ms.`
    : "Reply latency: no answered turns yet.";
  svg.setAttribute("aria-label", label);
  const slot = width / Math.max(values.length, 10);
  values.forEach((v, i) => {
    const h = (v / top) * (height - 12);
    const bar = document.createElementNS(ns, "rect");
    bar.setAttribute("x", String(i * slot + 2));
    bar.setAttribute("y", String(height - h));
    bar.setAttribute("width", String(Math.max(2, slot - 4)));
    bar.setAttribute("height", String(h));
    bar.setAttribute("fill", v > 1000 ? "#a61c00" : "#1f5fbf");
    const title = document.createElementNS(ns, "title");
    title.textContent = `turn ${i + 1}: ${v} ms`;
    bar.append(title);
    svg.append(bar);
  });
  const line = document.createElementNS(ns, "line"); // the 1 s mark
  const y = height - (1000 / top) * (height - 12);
  for (const [k, v] of Object.entries({ x1: 0, x2: width, y1: y, y2: y, stroke: "#888", "stroke-dasharray": "4 3" })) {
    line.setAttribute(k, String(v));
  }
  svg.append(line);
  const caption = el("figcaption", { text: values.length
    ? `Reply latency: mean ${mean} ms, last ${values[values.length - 1]} ms (dashed line: 1 s)`
    : "Reply latency: no answered turns yet" });
  figure.append(svg, caption);
}

function renderRecord(call, record) {
  const list = $(".transcript", call.node);
  list.replaceChildren();
  call.latencies = [];
  const items = [...record.turns.map((t) => [t.started_at, 0, t]), ...record.tool_calls.map((t) => [t.started_at, 1, t])];
  items.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] - b[1]));
  for (const [, kind, item] of items) {
    if (kind === 1) list.append(toolItem(item));
    else {
      list.append(turnItem(item));
      if (item.role === "assistant" && item.latency_ms != null) call.latencies.push(item.latency_ms);
    }
  }
  drawLatency(call);
}

async function loadActive() {
  const { calls } = await (await api("/api/calls?active=true&limit=100")).json();
  for (const summary of calls) {
    const call = callCard(summary.call_sid, summary);
    const record = await (await api(`/api/calls/${encodeURIComponent(summary.call_sid)}`)).json();
    renderRecord(call, record);
  }
}

function endCall(sid) {
  const call = state.calls.get(sid);
  if (!call) return;
  state.calls.delete(sid);
  call.node.remove();
  updateActiveCount();
  loadHistory();
}

// ---------------------------------------------------------------- live events

function onEvent(event) {
  const sid = event.call_sid;
  if (!sid) return;
  switch (event.type) {
    case "call_started":
      setMeta(callCard(sid, { ...event, started_at: event.at }), event);
      break;
    case "turn":
      addTurn(callCard(sid), event); // a card for a call that started before this page loaded
      break;
    case "interruption": {
      const call = callCard(sid);
      $(".transcript", call.node).append(el("li", { class: "interruption",
        text: `⚡ Caller interrupted the agent (${event.audio_played_ms ?? 0} ms heard)` }));
      scrollDown(call);
      break;
    }
    case "tool_call": {
      const call = callCard(sid);
      $(".transcript", call.node).append(toolItem(event));
      scrollDown(call);
      break;
    }
    case "status":
      if (state.calls.has(sid)) {
        $(".transcript", state.calls.get(sid).node).append(el("li", { class: "status", text: `Status: ${event.status}` }));
      } else loadHistory();
      break;
    case "call_ended":
      endCall(sid);
      break;
  }
}

let retry = 1000;
function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = state.key
    ? new WebSocket(`${scheme}://${location.host}/events`, ["bearer", state.key])
    : new WebSocket(`${scheme}://${location.host}/events`);
  socket.onopen = () => {
    retry = 1000;
    $("#connection").textContent = "Live: receiving call events.";
    loadActive().catch(showError);
    loadHistory();
  };
  socket.onmessage = (message) => {
    try { onEvent(JSON.parse(message.data)); } catch (e) { console.error("bad event", e); }
  };
  socket.onclose = () => {
    $("#connection").textContent = `Live events disconnected; retrying in ${retry / 1000} s.`;
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 15000);
  };
}

function showError(e) {
  $("#connection").textContent = `Error: ${e.message}`;
}

// ---------------------------------------------------------------- history

async function loadHistory() {
  const q = $("#search").value.trim();
  const params = new URLSearchParams({ limit: "100" });
  if (q) params.set("q", q);
  let calls;
  try {
    ({ calls } = await (await api(`/api/calls?${params}`)).json());
  } catch (e) { showError(e); return; }
  const rows = calls.filter((c) => !state.calls.has(c.call_sid)).map(historyRow);
  $("#history tbody").replaceChildren(...rows);
  $("#history-empty").hidden = rows.length > 0;
}

function historyRow(c) {
  const duration = c.started_at && c.ended_at ? fmtDuration(Date.parse(c.ended_at) - Date.parse(c.started_at)) : "–";
  const row = el("tr", { "data-call-sid": c.call_sid });
  // Call SIDs are 34 characters: show the start and the end, name the whole SID.
  const short = c.call_sid.length > 16 ? `${c.call_sid.slice(0, 8)}…${c.call_sid.slice(-4)}` : c.call_sid;
  const view = el("button", { type: "button", class: "link", text: short, title: c.call_sid,
                              "aria-label": `Show call ${c.call_sid}` });
  view.addEventListener("click", () => showDetail(c.call_sid));
  const exports = el("td", { class: "exports" });
  for (const [fmt, label] of [["json", "JSON"], ["txt", "Text"]]) {
    const b = el("button", { type: "button", text: label, "aria-label": `Export call ${c.call_sid} as ${label}` });
    b.addEventListener("click", () => download(c.call_sid, fmt).catch(showError));
    exports.append(b, " ");
  }
  row.append(
    el("td", { text: fmtTime(c.started_at || (c.status_history[0] || {}).at) }),
    el("td", { class: "sid" }, view),
    el("td", { text: c.from || "–" }), el("td", { text: c.to || "–" }), el("td", { text: duration }),
    el("td", { text: [c.status, c.end_reason].filter(Boolean).join(" / ") || "–" }),
    el("td", { text: String(c.turn_count) }), el("td", { text: String(c.interruptions) }),
    el("td", { text: c.latency_ms_avg != null ? `${c.latency_ms_avg} ms` : "–" }),
    exports,
  );
  return row;
}

async function download(sid, fmt) {
  const response = await api(`/api/calls/${encodeURIComponent(sid)}/export.${fmt}`);
  const url = URL.createObjectURL(await response.blob());
  const a = el("a", { href: url, download: `call-${sid}.${fmt}` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function showDetail(sid) {
  const record = await (await api(`/api/calls/${encodeURIComponent(sid)}`)).json();
  const detail = $("#detail");
  $("#detail-title", detail).textContent = `Call ${sid}: ${record.end_reason || record.status || ""}`;
  const fake = { node: detail, latencies: [] };
  renderRecord(fake, record);
  detail.hidden = false;
  $("#detail-title", detail).setAttribute("tabindex", "-1");
  $("#detail-title", detail).focus();
}

// ---------------------------------------------------------------- outbound calls

async function loadPresets() {
  try {
    ({ presets: state.presets } = await (await api("/api/presets")).json());
  } catch (e) { showError(e); return; }
  const select = $("#preset");
  for (const p of state.presets) select.append(el("option", { value: p.name, text: p.name.replace(/_/g, " ") }));
  select.addEventListener("change", fillInstructions);
}

function fillInstructions() {
  const preset = state.presets.find((p) => p.name === $("#preset").value);
  $("#instructions").value = preset ? preset.instructions : "";
}

function parseContext(text) {
  const context = {};
  for (const line of text.split("\n")) {
    const i = line.indexOf(":");
    if (i > 0) context[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  return context;
}

async function placeCall(event) {
  event.preventDefault();
  const out = $("#outbound-result");
  const preset = state.presets.find((p) => p.name === $("#preset").value);
  const text = $("#instructions").value.trim();
  const body = { to: $("#to").value.trim(), task: { prompt: "", context: parseContext($("#context").value) } };
  if (preset && text === preset.instructions.trim()) {
    body.preset = preset.name; // unchanged: the preset runs the call
  } else {
    body.task.prompt = text; // edited (or no preset): these instructions replace the preset's
    if (preset) body.voicemail_message = preset.voicemail;
  }
  out.className = "";
  out.textContent = "Placing the call…";
  try {
    const result = await (await api("/twilio/outbound-call", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    })).json();
    out.textContent = `Call ${result.call_sid} to ${result.to}: ${result.status}.`;
    loadHistory();
  } catch (e) {
    out.className = "error";
    out.textContent = `Could not place the call: ${e.message}`;
  }
}

// ---------------------------------------------------------------- start

document.addEventListener("DOMContentLoaded", () => {
  $("#api-key").value = state.key;
  $("#key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.key = $("#api-key").value.trim();
    sessionStorage.setItem("apiKey", state.key);
    location.reload();
  });
  $("#search-form").addEventListener("submit", (e) => { e.preventDefault(); loadHistory(); });
  $("#detail-close").addEventListener("click", () => { $("#detail").hidden = true; });
  $("#outbound-form").addEventListener("submit", placeCall);
  updateActiveCount();
  loadPresets();
  connect();
});
