// The machines page of `imprint serve`. It polls /machines every two seconds
// and draws every value with textContent, never as markup: names, phases and
// errors come from the machines themselves.
//
// Without the operator's token it shows the public view. Signing in trades the
// token for a session cookie (HttpOnly, SameSite=Strict) once; the token is
// never kept by the page nor put in a URL. A link may carry it in its fragment
// (#token=...), which never reaches a server: the page signs in with it and
// drops it from the address at once.
"use strict";

const seen = new Map(); // name -> { done, at } of the previous poll, for rates
let operator = false;
const openDetails = new Set(); // hardware cells the operator opened

function text(tag, value, cls) {
  const el = document.createElement(tag);
  el.textContent = value == null ? "" : String(value);
  if (cls) el.className = cls;
  return el;
}

function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function age(seconds) {
  if (seconds == null) return "never";
  if (seconds < 60) return Math.max(0, seconds) + " s ago";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min ago";
  if (seconds < 86400) return Math.floor(seconds / 3600) + " h ago";
  return Math.floor(seconds / 86400) + " d ago";
}

function progressCell(name, event, now) {
  const td = document.createElement("td");
  if (!event) return td;
  const done = Number(event.done), total = Number(event.total);
  if (!(total > 0) || !(done >= 0)) {
    if (["boot-records", "handoff", "complete"].includes(event.phase)) {
      const bar = document.createElement("progress");
      bar.max = 1; bar.value = 1;
      td.append(bar);
    }
    return td;
  }
  const bar = document.createElement("progress");
  bar.max = total; bar.value = Math.min(done, total);
  td.append(bar);
  let line = bytes(done) + " of " + bytes(total);
  const before = name && seen.get(name);
  if (before && done > before.done && now > before.at) {
    line += ", " + bytes((done - before.done) / (now - before.at)) + "/s";
  }
  if (name) seen.set(name, { done, at: now });
  td.append(text("span", line, "bytes"));
  return td;
}

function phaseCell(shown) {
  const td = document.createElement("td");
  if (shown) td.append(text("span", shown, "phase " + shown.replace(/[^a-z-]/g, "")));
  return td;
}

// The hardware's summary line; its every fact on a click.
function hardwareCell(m) {
  const td = document.createElement("td");
  if (!m.hardware_summary) return td;
  const details = document.createElement("details");
  details.append(text("summary", m.hardware_summary));
  const list = document.createElement("ul");
  for (const line of m.hardware_details || []) list.append(text("li", line));
  details.append(list);
  // Kept open across the page's refreshes, which redraw the rows.
  const key = "hw:" + (m.mac || "");
  details.open = openDetails.has(key);
  details.addEventListener("toggle", () => {
    if (details.open) openDetails.add(key); else openDetails.delete(key);
  });
  td.append(details);
  return td;
}

function row(m, now) {
  const tr = document.createElement("tr");
  const event = m.event || null;
  const state = m.state || {};
  // Hardware facts are not a step of the deploy.
  const phase = (event && event.phase !== "hardware" && event.phase) || state.phase || "";
  tr.append(text("td", m.mac || m.name, "mac"));
  tr.append(text("td", m.hostname || (event && event.hostname) || ""));
  tr.append(text("td", m.image || (event && event.image) || state.completed || "", "image"));
  tr.append(hardwareCell(m));
  let shown = phase;
  if (state.committed) shown = "committed";
  if (m.next === "hold" && !state.in_progress) shown = "hold";
  tr.append(phaseCell(shown));
  tr.append(progressCell(m.mac || m.name, event, now));
  const heard = event && event.received ? now - event.received
    : state.last_seen ? now - state.last_seen : null;
  tr.append(text("td", age(heard)));
  tr.append(text("td", m.next || ""));
  const error = (m.next === "hold" && m.held) || (event && event.phase === "failed" && event.error)
    || state.last_error || "";
  tr.append(text("td", error, "error"));
  if (operator) {
    const td = document.createElement("td");
    if (m.mac) {
      const button = text("button", "reprovision");
      button.addEventListener("click", () => reprovision(m.mac, button));
      td.append(button);
    }
    tr.append(td);
  }
  return tr;
}

// A row of the public view: no name, image, address or error.
function publicRow(m, i, now) {
  const tr = document.createElement("tr");
  tr.append(text("td", "#" + (i + 1), "mac"));
  tr.append(text("td", ""));
  tr.append(text("td", ""));
  tr.append(text("td", ""));
  tr.append(phaseCell(m.phase));
  tr.append(progressCell(null, m, now));
  tr.append(text("td", ""));
  tr.append(text("td", m.next || ""));
  tr.append(text("td", ""));
  return tr;
}

async function reprovision(mac, button) {
  button.disabled = true;
  try {
    // The session cookie goes with it (same origin); the server also checks
    // that the request comes from this page.
    const r = await fetch("/machines/" + encodeURIComponent(mac.replaceAll(":", "-")) + "/reprovision", {
      method: "POST",
    });
    button.textContent = r.ok ? "asked" : "refused (" + r.status + ")";
  } catch (e) {
    button.textContent = "failed";
  }
  refresh();
}

async function signIn(token) {
  const r = await fetch("/session", { method: "POST", body: token });
  return r.ok;
}

async function refresh() {
  let doc, view, now;
  try {
    const r = await fetch("/machines", { cache: "no-store" });
    view = r.headers.get("X-Imprint-View") || "";
    if (r.status === 401) {
      doc = { machines: [], signin: true, hidden: true };
    } else {
      doc = await r.json();
    }
    // The server's clock, for ages; a shared answer may be older than now.
    const date = Date.parse(r.headers.get("Date") || "");
    now = Number.isFinite(date) ? Math.floor(date / 1000) : Number(doc.now);
  } catch (e) {
    document.getElementById("updated").textContent = "server unreachable";
    return;
  }
  if (!(now > 0)) now = Math.floor(Date.now() / 1000);
  operator = view === "operator";
  const rows = [];
  if (doc.public) {
    (doc.machines || []).forEach((m, i) => rows.push(publicRow(m, i, now)));
  } else {
    for (const m of doc.machines || []) rows.push(row(m, now));
    for (const [name, event] of Object.entries(doc.others || {})) {
      rows.push(row({ name, event }, now));
    }
  }
  document.querySelector("#machines tbody").replaceChildren(...rows);
  document.getElementById("empty").hidden = rows.length > 0 || doc.hidden;
  document.getElementById("actions-head").hidden = !operator;
  document.getElementById("public").hidden = operator || view === "full";
  document.getElementById("signin").hidden = operator || !doc.signin;
  document.getElementById("signout").hidden = !operator;
  let counts = doc.counts;
  if (!counts) {
    counts = {};
    for (const m of doc.machines || []) {
      const k = m.state && m.state.committed ? "committed" : (m.next || "unknown").split(" ")[0];
      counts[k] = (counts[k] || 0) + 1;
    }
  }
  const parts = Object.entries(counts).map(([k, n]) => n + " " + k);
  const others = Object.keys(doc.others || {}).length;
  if (others) parts.push(others + " reporting without an inventory entry");
  document.getElementById("summary").textContent = doc.hidden
    ? "sign in to see the machines"
    : rows.length + " machines" + (parts.length ? ": " + parts.join(", ") : "");
  document.getElementById("updated").textContent =
    "updated " + new Date(now * 1000).toLocaleTimeString();
}

document.getElementById("signin").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = document.getElementById("token");
  const ok = await signIn(input.value);
  input.value = "";
  if (!ok) input.placeholder = "not the operator's token";
  refresh();
});

document.getElementById("signout").addEventListener("click", async () => {
  await fetch("/session/end", { method: "POST" });
  refresh();
});

async function start() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get("token");
  if (token) {
    history.replaceState(null, "", location.pathname + location.search);
    await signIn(token);
  }
  refresh();
  setInterval(refresh, 2000);
}

start();
