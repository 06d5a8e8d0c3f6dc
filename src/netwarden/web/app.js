// netwarden's dashboard: the live connection table (rendering only the rows in view),
// bytes per second of the busiest programs, history search, the policy, ask prompts.
"use strict";

const ROW_HEIGHT = 22;
const NEW_MS = 2000;       // a new row stays highlighted this long
const CHART_SECONDS = 120;
const CHART_PROGRAMS = 5;
const COLORS = ["#1f6feb", "#d9480f", "#2b8a3e", "#862e9c", "#e67700"];

const flows = new Map();   // id -> flow (with .text for the filter, .seen for highlighting)
const samples = [];        // {time, totals: Map(program -> bytes)}
let sortKey = "first_seen", sortUp = false, filterText = "", showClosed = true;
let ordered = [], dirty = true;
// For tests and benchmarks: when each flow was first received, and how long the last
// filter took to apply (ms).
window.nwSeen = new Map();
window.nwStats = { lastFilterMs: 0, updates: 0 };

const $ = (selector) => document.querySelector(selector);

function api(path, options = {}) {
  const headers = { "X-Netwarden-CSRF": "1", "Content-Type": "application/json" };
  return fetch(path, { credentials: "same-origin", ...options, headers }).then(async (r) => {
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.detail || body.problems || r.statusText);
    return body;
  });
}

function bytes(n) {
  if (n === null || n === undefined) return "?";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function endpoint(address, port) {
  return (address.includes(":") ? "[" + address + "]" : address) + ":" + port;
}

function prepare(flow) {
  const p = flow.process || {};
  flow.program = p.name || "";
  flow.pid = p.pid || "";
  flow.user = p.user || (flow.uid ?? "");
  flow.local = endpoint(flow.local_address, flow.local_port);
  flow.remote = endpoint(flow.remote_address, flow.remote_port);
  flow.rate = (flow.send_rate || 0) + (flow.receive_rate || 0);
  flow.text = [flow.program, flow.pid, flow.user, flow.transport, flow.local, flow.remote,
    flow.app, flow.state, p.exe || ""].join(" ").toLowerCase();
  return flow;
}

function receive(list, now) {
  for (const flow of list) {
    const known = flows.get(flow.id);
    flow.seen = known ? known.seen : now;
    if (!window.nwSeen.has(flow.id)) window.nwSeen.set(flow.id, Date.now());
    flows.set(flow.id, prepare(flow));
  }
  dirty = true;
}

function forgetClosed(now) {
  for (const [id, flow] of flows) {
    if (flow.closed && now - flow.last_seen * 1000 > 6000) flows.delete(id);
  }
}

function order() {
  const words = filterText.split(/\s+/).filter(Boolean);
  const rows = [];
  for (const flow of flows.values()) {
    if (!showClosed && flow.closed) continue;
    if (words.every((w) => flow.text.includes(w))) rows.push(flow);
  }
  const key = sortKey, sign = sortUp ? 1 : -1;
  rows.sort((a, b) => {
    const x = a[key], y = b[key];
    if (x === y) return 0;
    return (x > y ? 1 : -1) * sign;
  });
  ordered = rows;
  dirty = false;
}

function render() {
  if (dirty) order();
  const wrap = $("#table-wrap");
  const first = Math.max(0, Math.floor(wrap.scrollTop / ROW_HEIGHT) - 5);
  const count = Math.ceil(wrap.clientHeight / ROW_HEIGHT) + 10;
  $("#table-spacer").style.height = (ordered.length + 1) * ROW_HEIGHT + "px";
  $("#flows").style.top = first * ROW_HEIGHT + "px";
  const body = $("#flows tbody");
  const now = Date.now();
  const rows = [];
  for (const flow of ordered.slice(first, first + count)) {
    const tr = document.createElement("tr");
    tr.dataset.id = flow.id;
    if (now - flow.seen < NEW_MS) tr.className = "new";
    if (flow.closed) tr.className = "closed";
    const cells = [flow.program, flow.pid, flow.user, flow.transport, flow.local, flow.remote,
      flow.app, flow.state, bytes(flow.bytes_sent), bytes(flow.bytes_received),
      flow.rate ? bytes(flow.rate) + "/s" : "", flow.attribution];
    cells.forEach((value, i) => {
      const td = document.createElement("td");
      td.textContent = value === undefined || value === null ? "" : String(value);
      if (i >= 8 && i <= 10) td.className = "num";
      if (i === 8 || i === 9) td.title = String(i === 8 ? flow.bytes_sent : flow.bytes_received);
      tr.appendChild(td);
    });
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  let open = 0;
  for (const flow of flows.values()) if (!flow.closed) open++;
  $("#counts").textContent = `${ordered.length} shown, ${open} open`;
}

function scheduleRender() {
  if (scheduleRender.pending) return;
  scheduleRender.pending = true;
  requestAnimationFrame(() => { scheduleRender.pending = false; render(); });
}

// --- bandwidth chart -----------------------------------------------------------------

function sample(processes, time) {
  const totals = new Map();
  for (const p of processes) {
    const name = p.program || "unknown";
    totals.set(name, (totals.get(name) || 0) + p.bytes_sent + p.bytes_received);
  }
  samples.push({ time, totals });
  while (samples.length && time - samples[0].time > CHART_SECONDS) samples.shift();
}

function drawChart() {
  const canvas = $("#chart");
  const width = canvas.clientWidth, height = canvas.clientHeight;
  canvas.width = width; canvas.height = height;
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, width, height);
  if (samples.length < 2) return;
  const rates = new Map();  // program -> [[time, bytes/s]]
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i], dt = Math.max(0.001, b.time - a.time);
    for (const [name, total] of b.totals) {
      const rate = Math.max(0, (total - (a.totals.get(name) || 0)) / dt);
      if (!rates.has(name)) rates.set(name, []);
      rates.get(name).push([b.time, rate]);
    }
  }
  const busiest = [...rates.entries()]
    .map(([name, points]) => [name, points, points.reduce((s, p) => s + p[1], 0)])
    .sort((x, y) => y[2] - x[2]).slice(0, CHART_PROGRAMS).filter((x) => x[2] > 0);
  const top = Math.max(1, ...busiest.flatMap(([, points]) => points.map((p) => p[1])));
  const end = samples[samples.length - 1].time;
  const x = (t) => width - ((end - t) / CHART_SECONDS) * width;
  const y = (v) => height - 14 - (v / top) * (height - 24);
  g.font = "11px system-ui"; g.fillStyle = "#6b6f73";
  g.fillText(bytes(Math.round(top)) + "/s", 4, 12);
  const legend = [];
  busiest.forEach(([name, points], i) => {
    g.strokeStyle = COLORS[i]; g.lineWidth = 1.5; g.beginPath();
    points.forEach(([t, v], j) => (j ? g.lineTo(x(t), y(v)) : g.moveTo(x(t), y(v))));
    g.stroke();
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = COLORS[i];
    item.append(swatch, `${name} ${bytes(Math.round(points[points.length - 1][1]))}/s`);
    legend.push(item);
  });
  $("#legend").replaceChildren(...legend);
}

// --- ask prompts ---------------------------------------------------------------------

const prompts = new Map();

function promptText(p) {
  const left = Math.max(0, Math.round(p.opened + p.timeout - Date.now() / 1000));
  const who = p.program ? `${p.program} (pid ${p.pid}, ${p.exe || "exe unknown"})` : "an unknown program";
  const towards = p.direction === "out" ? `to ${p.destination}` : `from ${p.remote} to port ${p.port}`;
  const waiting = p.connections > 1 ? `${p.connections} connections waiting; ` : "";
  return `${who}${p.user ? " as " + p.user : ""} wants ${p.transport} ${towards} (${waiting}${left}s left)`;
}

function promptNode(p) {
  const div = document.createElement("div");
  div.className = "prompt";
  div.dataset.id = p.id;
  const what = document.createElement("span");
  what.className = "what";
  what.textContent = promptText(p);
  const any = document.createElement("label");
  const anyBox = document.createElement("input");
  anyBox.type = "checkbox"; anyBox.className = "any";
  any.append(anyBox, " any destination");
  div.append(what, any);
  for (const [label, action, duration] of [["Allow once", "allow", "once"],
    ["Allow always", "allow", "always"], ["Deny once", "deny", "once"],
    ["Deny always", "deny", "always"]]) {
    const button = document.createElement("button");
    button.textContent = label;
    button.className = action;
    button.dataset.action = action;
    button.dataset.duration = duration;
    button.addEventListener("click", () => answer(p.id, action, duration, anyBox.checked));
    div.appendChild(button);
  }
  return div;
}

// The prompts' nodes are made once each (a click is never lost to a redraw); only
// their countdowns change.
function showPrompts() {
  const box = $("#prompts");
  for (const node of [...box.children]) {
    if (!prompts.has(Number(node.dataset.id))) node.remove();
  }
  for (const p of prompts.values()) {
    const node = box.querySelector(`.prompt[data-id="${p.id}"]`);
    if (node) node.querySelector(".what").textContent = promptText(p);
    else box.appendChild(promptNode(p));
  }
}

function answer(id, action, duration, anyDestination) {
  const body = { action, duration, scope: anyDestination ? "any" : "destination", by: "dashboard" };
  api(`/api/prompts/${id}`, { method: "POST", body: JSON.stringify(body) })
    .catch((error) => { $("#status").textContent = "answer: " + error.message; })
    .finally(() => { prompts.delete(id); showPrompts(); });
}

function promptEvent(event) {
  if (event.state === "open") prompts.set(event.id, event);
  else prompts.delete(event.id);
  showPrompts();
}

// --- the event stream ----------------------------------------------------------------

function connect() {
  const source = new EventSource("/api/events");
  source.addEventListener("snapshot", (e) => {
    const data = JSON.parse(e.data);
    flows.clear();
    receive(data.flows, Date.now());
    for (const f of flows.values()) f.seen = 0;  // not new: they were there before
    sample(data.processes, Date.now() / 1000);
    prompts.clear();
    for (const p of data.prompts) prompts.set(p.id, p);
    showPrompts();
    $("#status").textContent = "live";
    $("#status").className = "status";
    scheduleRender();
  });
  source.addEventListener("update", (e) => {
    const data = JSON.parse(e.data);
    receive(data.flows, Date.now());
    for (const event of data.events) if (event.type === "prompt") promptEvent(event);
    sample(data.processes, data.time);
    window.nwStats.updates++;
    scheduleRender();
  });
  source.onerror = () => {
    $("#status").textContent = "reconnecting…";
    $("#status").className = "status down";
  };
}

// --- history and policy --------------------------------------------------------------

function fillTable(body, rows) {
  body.replaceChildren(...rows.map((cells) => {
    const tr = document.createElement("tr");
    for (const [value, numeric] of cells) {
      const td = document.createElement("td");
      td.textContent = value === null || value === undefined ? "" : String(value);
      if (numeric) td.className = "num";
      tr.appendChild(td);
    }
    return tr;
  }));
}

function searchHistory(event) {
  event.preventDefault();
  const form = new FormData($("#history-form"));
  const query = new URLSearchParams();
  for (const key of ["process", "host", "port"]) if (form.get(key)) query.set(key, form.get(key));
  if (form.get("since")) query.set("since", String(Date.now() / 1000 - Number(form.get("since"))));
  api("/api/history?" + query).then((rows) => {
    $("#history-count").textContent = `${rows.length} flows`;
    fillTable($("#history tbody"), rows.map((f) => [
      [new Date(f.last_seen * 1000).toLocaleString()], [f.process ? f.process.name : ""],
      [f.process ? f.process.pid : ""], [f.transport], [endpoint(f.local_address, f.local_port)],
      [endpoint(f.remote_address, f.remote_port)], [f.app], [bytes(f.bytes_sent), true],
      [bytes(f.bytes_received), true]]));
  }).catch((error) => { $("#history-count").textContent = error.message; });
}

function loadPolicy() {
  api("/api/policy").then((policy) => {
    $("#policy-source").textContent = `${policy.source}, table inet ${policy.table}`;
    fillTable($("#policy-rules tbody"), policy.rules.map((r) => [[r.rule], [r.action],
      [r.direction], [r.matches], [r.packets, true], [bytes(r.bytes), true]]));
    $("#connect-rules").replaceChildren(...policy.connect_rules.map((r) => {
      const li = document.createElement("li");
      li.textContent = `${r.rule}: ${r.action} (line ${r.line})`;
      return li;
    }));
    $("#policy-text").textContent = policy.text;
  }).catch((error) => { $("#policy-source").textContent = error.message; });
}

// --- wiring --------------------------------------------------------------------------

$("#filter").addEventListener("input", (e) => {
  const started = performance.now();
  filterText = e.target.value.trim().toLowerCase();
  $("#table-wrap").scrollTop = 0;
  dirty = true;
  render();
  window.nwStats.lastFilterMs = performance.now() - started;
});
$("#show-closed").addEventListener("change", (e) => { showClosed = e.target.checked; dirty = true; scheduleRender(); });
$("#table-wrap").addEventListener("scroll", scheduleRender);
for (const th of document.querySelectorAll("#flows th")) {
  th.addEventListener("click", () => {
    sortUp = sortKey === th.dataset.key ? !sortUp : true;
    sortKey = th.dataset.key;
    for (const other of document.querySelectorAll("#flows th")) other.classList.remove("sorted", "up");
    th.classList.add("sorted");
    if (sortUp) th.classList.add("up");
    dirty = true;
    scheduleRender();
  });
}
for (const button of document.querySelectorAll("nav button")) {
  button.addEventListener("click", () => {
    for (const b of document.querySelectorAll("nav button")) b.classList.toggle("active", b === button);
    for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.id === "tab-" + button.dataset.tab);
    if (button.dataset.tab === "policy") loadPolicy();
  });
}
$("#history-form").addEventListener("submit", searchHistory);
$("#policy-reload").addEventListener("click", loadPolicy);
setInterval(() => { forgetClosed(Date.now()); dirty = true; scheduleRender(); drawChart(); showPrompts(); }, 1000);
connect();
