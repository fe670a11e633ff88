// The operator page. Plain JavaScript, no library. Every text that comes from the API (bodies,
// headers, account ids: untrusted) is inserted with textContent, never parsed as HTML.
"use strict";

const TOKEN_KEY = "projector-read-token";
const REFRESH_MS = 5000;
const RECENT_SEQS = 100;
const $ = (id) => document.getElementById(id);
let auditCursor = null;
let expiredCursor = null;
let runCursor = null;
// Once "More" was pressed, the refresh leaves that list as the operator paged it.
let auditPaged = false;
let expiredPaged = false;
let refreshing = false;

class ApiProblem extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = el("td", cell);
    tr.append(td);
  }
  return tr;
}

function environment() { return $("environment").value; }

async function api(path, params) {
  // Relative to the page (/ui), so the page works behind a proxy that adds a path prefix.
  const url = new URL(path, document.baseURI);
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== "" && value !== null && value !== undefined) url.searchParams.set(name, value);
  }
  const answer = await fetch(url, {
    headers: { Authorization: "Bearer " + sessionStorage.getItem(TOKEN_KEY) },
    cache: "no-store",
  });
  let body = null;
  try { body = await answer.json(); } catch (e) { body = null; }
  if (!answer.ok) {
    const message = body && body.error ? body.error.message : "HTTP " + answer.status;
    throw new ApiProblem(answer.status, message);
  }
  return body;
}

function showProblem(error) {
  if (error instanceof ApiProblem && error.status === 401) {
    logout("The token was refused: " + error.message);
    return;
  }
  $("problem").textContent = error.message || String(error);
}

// --- projections and the chart ----------------------------------------------------------

async function loadProjections() {
  const [state, stats] = await Promise.all([api("v1/projections"), api("v1/stats")]);
  $("log-head").textContent = state.log_head;
  $("log-head-hash").textContent = "hash " + state.log_head_hash.slice(0, 16) + "…";
  const now = Object.fromEntries(stats.projections.map((p) => [p.name, p]));
  const tbody = $("projections").tBodies[0];
  const rows = state.projections.map((p) => {
    const seconds = (now[p.name] && now[p.name].lag_seconds) || 0;
    const rebuilt = now[p.name] && now[p.name].last_rebuild_at;
    const tr = row([p.name, p.position, state.log_head - p.position, seconds.toFixed(1) + " s",
      p.errors, (rebuilt ? rebuilt.replace("T", " ").replace(/\.\d+Z$|Z$/, " UTC") : "unknown") +
      " (build " + p.generation + ")"]);
    tr.dataset.projection = p.name;
    if (seconds > 30) tr.cells[3].className = "lagging";
    return tr;
  });
  tbody.replaceChildren(...rows);
  drawChart(stats.deliveries_per_minute);
  await loadFoldErrors(state.projections.map((p) => p.name));
  return state;
}

const SVG = "http://www.w3.org/2000/svg";
const KINDS = ["new", "duplicate", "flagged", "refused"];

function svg(tag, attributes) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  return node;
}

function drawChart(minutes) {
  const width = 1000, height = 160, bottom = 18, left = 36;
  const totals = minutes.map((m) => KINDS.reduce((sum, k) => sum + m[k], 0));
  const top = Math.max(1, ...totals);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
  chart.append(svg("title", {}));
  chart.firstChild.textContent = "deliveries per minute";
  const slot = (width - left) / minutes.length;
  minutes.forEach((minute, i) => {
    let y = height - bottom;
    for (const kind of KINDS) {
      const h = (minute[kind] / top) * (height - bottom - 10);
      if (h > 0) {
        const bar = svg("rect", { x: left + i * slot + 1, y: y - h, width: Math.max(1, slot - 2),
          height: h, class: kind });
        const tip = svg("title", {});
        tip.textContent = `${minute.minute} ${kind}: ${minute[kind]}`;
        bar.append(tip);
        chart.append(bar);
        y -= h;
      }
    }
  });
  chart.append(svg("line", { x1: left, x2: width, y1: height - bottom, y2: height - bottom,
    stroke: "#99a" }));
  const maxLabel = svg("text", { x: 0, y: 14, "font-size": 11, fill: "#556" });
  maxLabel.textContent = String(top);
  const start = svg("text", { x: left, y: height - 4, "font-size": 11, fill: "#556" });
  start.textContent = minutes.length ? minutes[0].minute.slice(11, 16) : "";
  const end = svg("text", { x: width - 34, y: height - 4, "font-size": 11, fill: "#556" });
  end.textContent = minutes.length ? minutes[minutes.length - 1].minute.slice(11, 16) : "";
  chart.append(maxLabel, start, end);
  const legend = el("div", null, "legend");
  for (const kind of KINDS) legend.append(el("span", null, kind), document.createTextNode(kind));
  $("chart").replaceChildren(chart, legend);
  $("chart-totals").textContent = KINDS.map(
    (k) => `${k}: ${minutes.reduce((sum, m) => sum + m[k], 0)}`).join(" · ") + " (last hour)";
}

// --- the audit trail and one delivery ---------------------------------------------------

function deliveryRow(event) {
  const tr = row([event.seq, event.received_at.replace("T", " ").slice(0, 19), event.event || "—",
    event.linked_account_id || "—", event.duplicate ? "yes" : "", event.flags.join(", ")]);
  tr.cells[5].className = "flags";
  tr.className = "clickable";
  tr.dataset.seq = event.seq;
  tr.addEventListener("click", () => openDelivery(event.seq).catch(showProblem));
  return tr;
}

function auditParams() {
  return {
    environment: environment(),
    event: $("filter-event").value,
    linked_account_id: $("filter-account").value.trim(),
    flagged: $("filter-flagged").value,
  };
}

async function loadAudit(more) {
  const params = { ...auditParams(), limit: 50 };
  const recent = !more && $("filter-recent").checked;
  if (more) {
    params.cursor = auditCursor;
  } else if (recent) {
    // The log is read oldest first: the last RECENT_SEQS positions, shown newest first.
    const head = Number($("log-head").textContent || 0);
    params.after = Math.max(0, head - RECENT_SEQS);
    params.limit = RECENT_SEQS;
  }
  const answer = await api("v1/events", params);
  const rows = answer.events.map(deliveryRow);
  if (recent) rows.reverse();
  const tbody = $("audit").tBodies[0];
  if (more) tbody.append(...rows); else tbody.replaceChildren(...rows);
  if (!rows.length && !more) tbody.append(row(["no deliveries match", "", "", "", "", ""]));
  auditCursor = recent ? null : answer.next_cursor;
  auditPaged = more;
  $("audit-more").hidden = auditCursor === null;
}

function decodeBody(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return new TextDecoder("utf-8", { fatal: false }).decode(bytes);
}

async function openDelivery(seq) {
  const event = await api("v1/events/" + encodeURIComponent(seq), { environment: environment() });
  $("detail-seq").textContent = "#" + event.seq;
  const fields = [["received_at", event.received_at], ["environment", event.environment],
    ["event", event.event], ["account", event.linked_account_id],
    ["duplicate", event.duplicate], ["duplicate_of", event.duplicate_of],
    ["flags", event.flags.length ? event.flags.join(", ") : "none"],
    ["key_id", event.key_id], ["signed_as", event.signed_as]];
  $("detail-fields").replaceChildren(...fields.flatMap(([name, value]) =>
    [el("dt", name), el("dd", value === null ? "null" : value)]));
  $("detail-headers").tBodies[0].replaceChildren(
    ...Object.entries(event.headers).map(([name, value]) => row([name, value])));
  $("detail-body").textContent = decodeBody(event.body_base64);
  $("detail-section").hidden = false;
  $("detail-section").scrollIntoView({ block: "nearest" });
}

// --- dead letters ---------------------------------------------------------------------------

async function loadFlagged() {
  const answer = await api("v1/events", { environment: environment(), flagged: "true", limit: 50 });
  const tbody = $("flagged").tBodies[0];
  tbody.replaceChildren(...answer.events.map(deliveryRow));
  if (!answer.events.length) tbody.append(row(["none", "", "", "", "", ""]));
}

async function loadFoldErrors(names) {
  const lists = await Promise.all(names.map((name) =>
    api("v1/projections/" + encodeURIComponent(name) + "/errors", { limit: 50 })));
  const rows = lists.flatMap((list, i) => list.errors.map((error) =>
    row([names[i], error.seq, error.environment, error.event || "—", error.error])));
  const tbody = $("fold-errors").tBodies[0];
  tbody.replaceChildren(...rows);
  if (!rows.length) tbody.append(row(["none", "", "", "", ""]));
}

// --- who must reconnect -------------------------------------------------------------------

async function loadExpired(more) {
  const params = { environment: environment(), status: "expired", limit: 100 };
  if (more) params.cursor = expiredCursor;
  const answer = await api("v1/connections", params);
  const rows = answer.connections.map((c) => {
    const tr = row([c.linked_account_id, c.slug, c.status_since]);
    tr.dataset.account = c.linked_account_id;
    return tr;
  });
  const tbody = $("expired").tBodies[0];
  if (more) tbody.append(...rows); else tbody.replaceChildren(...rows);
  expiredCursor = answer.next_cursor;
  expiredPaged = more;
  $("expired-more").hidden = expiredCursor === null;
}

async function searchAccount() {
  const id = $("account-id").value.trim();
  if (!id) { $("account-result").replaceChildren(); return; }
  const answer = await api("v1/accounts/" + encodeURIComponent(id) + "/connections",
    { environment: environment() });
  const verdict = el("p", `${answer.linked_account_id}: ` + (answer.needs_reconnect
    ? "must reconnect" : answer.connections.length ? "nothing to reconnect" : "no connections"),
    answer.needs_reconnect ? "lagging" : "");
  const table = el("table");
  table.id = "account-connections";
  const tbody = el("tbody");
  tbody.append(...answer.connections.map((c) => row([c.slug, c.status, c.status_since,
    c.needs_reconnect ? "reconnect" : ""])));
  table.append(tbody);
  $("account-result").replaceChildren(verdict, table);
}

// --- one workflow run ------------------------------------------------------------------------

async function loadRun(more) {
  const id = $("run-id").value.trim();
  if (!id) return;
  const params = { environment: environment(), limit: 100 };
  if (more) params.cursor = runCursor;
  const run = await api("v1/workflow-runs/" + encodeURIComponent(id), params);
  const fields = ["instance_id", "workflow_name", "workflow_id", "config_id", "linked_account_id",
    "environment", "status"];
  $("run-fields").replaceChildren(...fields.flatMap((name) =>
    [el("dt", name), el("dd", run[name] === null ? "null" : run[name])]));
  const rows = run.deliveries.map((d) => {
    const tr = row([d.seq, d.event, d.status, d.duplicate ? "yes" : ""]);
    tr.className = "clickable";
    tr.addEventListener("click", () => openDelivery(d.seq).catch(showProblem));
    return tr;
  });
  const tbody = $("run-deliveries").tBodies[0];
  if (more) tbody.append(...rows); else tbody.replaceChildren(...rows);
  runCursor = run.next_cursor;
  $("run-more").hidden = runCursor === null;
}

// --- the session and the refresh loop ---------------------------------------------------

async function refresh() {
  if (refreshing || !sessionStorage.getItem(TOKEN_KEY)) return;
  refreshing = true;
  try {
    await loadProjections();
    // Paged views keep what was opened; the first pages follow the log.
    await Promise.all([auditPaged ? null : loadAudit(false), loadFlagged(),
      expiredPaged ? null : loadExpired(false)]);
    $("problem").textContent = "";
    $("refreshed").textContent = "refreshed " + new Date().toLocaleTimeString();
    // The first full render after a page load, in ms since navigation started (load timing).
    if (window.firstRenderMs === undefined) window.firstRenderMs = performance.now();
    document.body.dataset.loaded = "true";
  } catch (error) {
    showProblem(error);
  } finally {
    refreshing = false;
  }
}

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  $("main").hidden = true;
  $("session").hidden = true;
  $("login").hidden = false;
  $("problem").textContent = message || "";
  delete document.body.dataset.loaded;
}

async function start() {
  $("login").hidden = true;
  $("main").hidden = false;
  $("session").hidden = false;
  await refresh();
}

function on(id, type, action) {
  $(id).addEventListener(type, (event) => {
    if (type === "submit") event.preventDefault();
    Promise.resolve(action()).catch(showProblem);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  on("login", "submit", () => {
    sessionStorage.setItem(TOKEN_KEY, $("token").value);
    $("token").value = "";
    return start();
  });
  on("logout", "click", () => logout("Token forgotten."));
  on("environment", "change", () => {
    auditPaged = false; expiredPaged = false;
    return refresh();
  });
  on("audit-filters", "submit", () => loadAudit(false));
  on("audit-more", "click", () => loadAudit(true));
  on("expired-more", "click", () => loadExpired(true));
  on("account-search", "submit", searchAccount);
  on("run-search", "submit", () => loadRun(false));
  on("run-more", "click", () => loadRun(true));
  on("detail-close", "click", () => { $("detail-section").hidden = true; });
  if (sessionStorage.getItem(TOKEN_KEY)) start(); else logout();
  setInterval(refresh, REFRESH_MS);
});
