// The inspector's page: the rows arrive as server-sent events; everything is
// written with textContent, never as HTML, since bodies come from the network.
"use strict";

const byId = (id) => document.getElementById(id);
const rows = byId("rows");
const seenModels = new Set();
let paused = false;
let held = [];
let selected = null; // the id of the row whose detail is open
let shown = null; // the detail shown
let state = null;
let clockSkew = 0; // the server's clock minus ours, for "next attempt in"

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

async function api(path, options) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  let payload = null;
  try {
    payload = await response.json();
  } catch (error) {
    payload = null;
  }
  return { status: response.status, payload };
}

function clock(seconds) {
  const date = new Date(seconds * 1000);
  const pad = (n, width) => String(n).padStart(width || 2, "0");
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
}

// ------------------------------------------------------------------ state

function describeState() {
  if (!state) return ["starting", ""];
  const word = {
    ready: "ready", backoff: "reconnecting", connecting: "connecting", stood_down: "superseded",
    standby: "standby", draining: "draining", stopped: "stopped", starting: "starting",
    source_down: "source down", handlers_stuck: "handlers stuck",
  }[state.state] || state.state;
  const parts = [];
  if (state.state === "ready" && state.sourceId) parts.push(`source ${state.sourceId}`);
  if (state.state === "standby") parts.push("another replica holds the lock");
  if (state.state === "backoff" || state.state === "stood_down") {
    if (state.nextAttemptAt) {
      const left = Math.max(0, state.nextAttemptAt - (Date.now() / 1000 + clockSkew));
      parts.push(`next attempt in ${left.toFixed(left < 10 ? 1 : 0)} s`);
    } else if (state.state === "stood_down") {
      parts.push("until restarted");
    }
  }
  if (state.state !== "ready" && state.lastError) parts.push(state.lastError);
  if (state.inFlight) parts.push(`${state.inFlight} in flight`);
  return [word, parts.join(" · ")];
}

function renderState() {
  const box = byId("connection");
  const [word, detail] = describeState();
  box.dataset.state = state ? state.state : "starting";
  byId("state-word").textContent = word;
  byId("state-detail").textContent = detail;
  box.title = state && state.lastErrorMessage ? state.lastErrorMessage : "";
}

function setState(next) {
  state = next;
  if (typeof next.now === "number") clockSkew = next.now - Date.now() / 1000;
  renderState();
}

setInterval(() => {
  if (state && state.nextAttemptAt) renderState();
}, 500);

// ------------------------------------------------------------------ rows

function statusClass(status) {
  return `status-${String(status)[0]}`;
}

function matches(row) {
  const operation = byId("filter-operation").value;
  const model = byId("filter-model").value;
  const status = byId("filter-status").value;
  if (operation && row.operation !== operation) return false;
  if (model && row.model !== model) return false;
  if (status === "error") return row.status >= 400;
  if (status) return String(row.status)[0] === status[0];
  return true;
}

function noteModel(model) {
  if (!model || seenModels.has(model)) return;
  seenModels.add(model);
  const select = byId("filter-model");
  select.appendChild(element("option", model));
}

function rowFor(row) {
  const tr = document.createElement("tr");
  tr.dataset.id = row.id;
  tr.dataset.seq = row.seq;
  tr.row = row;
  tr.appendChild(element("td", clock(row.time)));
  tr.appendChild(element("td", row.operation || "–"));
  tr.appendChild(element("td", row.model || "–"));
  const what = element("td", row.summary || "", "what");
  what.title = row.summary || "";
  tr.appendChild(what);
  const status = element("td", row.status, statusClass(row.status));
  if (row.error) status.title = row.error;
  tr.appendChild(status);
  tr.appendChild(element("td", row.durationMs.toFixed(1), "num"));
  let signature;
  if (row.verified === true) signature = element("td", "verified", "verified");
  else if (row.verified === false) signature = element("td", row.signatureError, "unverified");
  else signature = element("td", "not checked");
  tr.appendChild(signature);
  const notes = element("td");
  if (row.deadlineHit) notes.appendChild(element("span", "deadline", "tag deadline"));
  if (row.replayed) notes.appendChild(element("span", "replay cache", "tag cache"));
  if (row.replayOf) notes.appendChild(element("span", `replay of ${row.replayOf}`, "tag replay"));
  if (row.error && !row.signatureError && !row.deadlineHit) notes.appendChild(element("span", row.error, "tag"));
  tr.appendChild(notes);
  tr.hidden = !matches(row);
  if (row.id === selected) tr.classList.add("selected");
  tr.addEventListener("click", () => openDetail(row.id));
  return tr;
}

function addRow(row, fresh) {
  if (rows.querySelector(`tr[data-seq="${row.seq}"]`)) return;
  noteModel(row.model);
  const tr = rowFor(row);
  if (fresh) tr.classList.add("fresh");
  // Newest first, by the inspector's own sequence (a reload and the stream may interleave).
  let before = rows.firstChild;
  while (before && Number(before.dataset.seq) > row.seq) before = before.nextSibling;
  rows.insertBefore(tr, before);
  byId("empty").hidden = true;
  while (state && rows.children.length > state.maxRequests) rows.lastChild.remove();
}

function applyFilters() {
  for (const tr of rows.children) tr.hidden = !matches(tr.row);
}

async function reload() {
  const { status, payload } = await api("/api/requests");
  if (status !== 200 || !Array.isArray(payload)) return;
  for (const row of payload) addRow(row, false);
  byId("empty").hidden = rows.children.length > 0;
}

function showHeld() {
  const note = byId("held");
  note.hidden = !paused;
  note.textContent = held.length ? `${held.length} new while paused` : "paused";
}

byId("pause").addEventListener("click", () => {
  paused = !paused;
  byId("pause").setAttribute("aria-pressed", String(paused));
  byId("pause").textContent = paused ? "Resume" : "Pause";
  if (!paused) {
    for (const row of held) addRow(row, true);
    held = [];
  }
  showHeld();
});

for (const id of ["filter-operation", "filter-model", "filter-status"]) {
  byId(id).addEventListener("change", applyFilters);
}

// ------------------------------------------------------------------ detail

function pretty(text, truncated) {
  if (truncated) return text;
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch (error) {
    return text;
  }
}

function sizeNote(part) {
  if (!part.truncated) return "";
  return `${part.size.toLocaleString()} bytes; only the first ${part.body.length.toLocaleString()} characters were kept`;
}

function showBody(prefix, part) {
  byId(`${prefix}-body`).textContent = pretty(part.body, part.truncated);
  byId(`${prefix}-size`).textContent = sizeNote(part);
}

function verdictText(entry) {
  if (entry.verified === true) return "signature verified";
  if (entry.verified === false) return `signature refused: ${entry.signatureError}`;
  return "signature not checked";
}

function renderDetail(entry) {
  shown = entry;
  byId("detail").hidden = false;
  byId("detail-title").textContent = `${entry.operation || "request"} ${entry.model || ""} · ${entry.id}`;
  const meta = [clock(entry.time), `${entry.durationMs.toFixed(1)} ms`, verdictText(entry)];
  if (entry.replayed) meta.push("answered from the replay cache");
  if (entry.deadlineHit) meta.push("missed its deadline");
  if (entry.replayOf) meta.push(`replay of ${entry.replayOf}`);
  byId("detail-meta").textContent = meta.join(" · ");
  const headers = byId("request-headers");
  headers.textContent = "";
  for (const [name, value] of Object.entries(entry.request.headers)) {
    const tr = document.createElement("tr");
    tr.appendChild(element("td", name));
    tr.appendChild(element("td", value));
    headers.appendChild(tr);
  }
  showBody("request", entry.request);
  const answerStatus = byId("answer-status");
  answerStatus.textContent = entry.answer.status;
  answerStatus.className = statusClass(entry.answer.status);
  showBody("answer", entry.answer);
  byId("logs").textContent = entry.logs.length ? entry.logs.join("\n") : "(no log line for this request)";
  byId("command").textContent = entry.command || "(no command: the body is not a whole JSON object)";
  byId("copy-command").disabled = !entry.command;
  const canReplay = Boolean(state && state.replay);
  byId("replay").disabled = !canReplay;
  byId("edit").disabled = !canReplay;
  const writes = entry.operation === "commit";
  byId("replay").textContent = writes ? "Replay (writes)" : "Replay";
  byId("replay-note").textContent = canReplay ? "" : "replay is off (--inspect-replay)";
  byId("write-warning").hidden = true;
  byId("editor").hidden = true;
  byId("replay-pane").hidden = true;
  for (const tr of rows.children) tr.classList.toggle("selected", tr.dataset.id === entry.id);
}

async function openDetail(id) {
  selected = id;
  const { status, payload } = await api(`/api/requests/${encodeURIComponent(id)}`);
  if (status === 200) renderDetail(payload);
  else byId("detail-meta").textContent = payload && payload.message ? payload.message : `HTTP ${status}`;
}

byId("close-detail").addEventListener("click", () => {
  byId("detail").hidden = true;
  selected = null;
  for (const tr of rows.children) tr.classList.remove("selected");
});

// ------------------------------------------------------------------ replay

let pending = null; // the replay waiting for "Write it for real"

async function replay(body, confirmWrite) {
  if (!shown) return;
  const request = {};
  if (body !== null) request.body = body;
  if (confirmWrite) request.confirmWrite = true;
  byId("replay-note").textContent = "replaying…";
  const { status, payload } = await api(`/api/requests/${encodeURIComponent(shown.id)}/replay`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(request),
  });
  if (status === 409 && payload && payload.error === "inspector_write_not_confirmed") {
    pending = body;
    byId("replay-note").textContent = "";
    byId("write-warning").hidden = false;
    return;
  }
  byId("write-warning").hidden = true;
  if (status !== 200) {
    byId("replay-note").textContent = payload && payload.message ? payload.message : `HTTP ${status}`;
    return;
  }
  byId("replay-note").textContent = `new request ${payload.id}`;
  byId("replay-pane").hidden = false;
  const replayStatus = byId("replay-status");
  replayStatus.textContent = payload.answer.status;
  replayStatus.className = statusClass(payload.answer.status);
  showBody("replay", payload.answer);
}

byId("replay").addEventListener("click", () => replay(null, false));
byId("confirm-write").addEventListener("click", () => replay(pending, true));
byId("cancel-write").addEventListener("click", () => {
  byId("write-warning").hidden = true;
  pending = null;
});
byId("edit").addEventListener("click", () => {
  if (!shown) return;
  byId("editor").hidden = false;
  byId("edit-body").value = pretty(shown.request.body, shown.request.truncated);
  byId("edit-body").focus();
});
byId("send-edited").addEventListener("click", () => replay(byId("edit-body").value, false));

byId("copy-command").addEventListener("click", async () => {
  const text = byId("command").textContent;
  try {
    await navigator.clipboard.writeText(text);
    byId("copy-command").textContent = "Copied";
  } catch (error) {
    const range = document.createRange();
    range.selectNodeContents(byId("command"));
    window.getSelection().removeAllRanges();
    window.getSelection().addRange(range);
    byId("copy-command").textContent = "Selected: press Ctrl+C";
  }
  setTimeout(() => { byId("copy-command").textContent = "Copy"; }, 2000);
});

// ------------------------------------------------------------------ live

function listen() {
  const events = new EventSource("/api/events");
  let behind = false;
  events.addEventListener("state", (event) => setState(JSON.parse(event.data)));
  events.addEventListener("request", (event) => {
    const row = JSON.parse(event.data);
    if (paused) {
      held.push(row);
      showHeld();
    } else {
      addRow(row, true);
    }
  });
  events.addEventListener("open", () => {
    if (behind) reload(); // rows sent while the stream was down
    behind = false;
  });
  events.addEventListener("error", () => {
    behind = true;
  });
}

async function start() {
  const { status, payload } = await api("/api/state");
  if (status === 200) setState(payload);
  listen();
  await reload();
  document.body.dataset.live = "true";
}

start();
