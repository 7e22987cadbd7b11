// The machines page of `imprint serve`. It polls /machines every two seconds
// and draws every value with textContent, never as markup: names, phases and
// errors come from the machines themselves. Actions appear only when the page
// was opened with ?token=TOKEN (the server's status token).
"use strict";

const token = new URLSearchParams(location.search).get("token");
const seen = new Map(); // name -> { done, at } of the previous poll, for rates

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
  if (seconds < 60) return seconds + " s ago";
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
  const before = seen.get(name);
  if (before && done > before.done && now > before.at) {
    line += ", " + bytes((done - before.done) / (now - before.at)) + "/s";
  }
  seen.set(name, { done, at: now });
  td.append(text("span", line, "bytes"));
  return td;
}

function row(m, now) {
  const tr = document.createElement("tr");
  const event = m.event || null;
  const state = m.state || {};
  const phase = (event && event.phase) || state.phase || "";
  tr.append(text("td", m.mac || m.name, "mac"));
  tr.append(text("td", m.hostname || (event && event.hostname) || ""));
  tr.append(text("td", m.image || (event && event.image) || state.completed || "", "image"));
  const phaseCell = document.createElement("td");
  let shown = phase;
  if (state.committed) shown = "committed";
  if (m.next === "hold") shown = "hold";
  if (shown) phaseCell.append(text("span", shown, "phase " + shown.replace(/[^a-z-]/g, "")));
  tr.append(phaseCell);
  tr.append(progressCell(m.mac || m.name, event, now));
  const heard = event && event.received ? now - event.received
    : state.last_seen ? now - state.last_seen : null;
  tr.append(text("td", age(heard)));
  tr.append(text("td", m.next || ""));
  const error = (event && event.phase === "failed" && event.error) || state.last_error || "";
  tr.append(text("td", error, "error"));
  if (token) {
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

async function reprovision(mac, button) {
  button.disabled = true;
  try {
    const r = await fetch("/machines/" + encodeURIComponent(mac.replaceAll(":", "-")) + "/reprovision", {
      method: "POST",
      headers: { Authorization: "Bearer " + token },
    });
    button.textContent = r.ok ? "asked" : "refused (" + r.status + ")";
  } catch (e) {
    button.textContent = "failed";
  }
  refresh();
}

async function refresh() {
  let doc;
  try {
    const r = await fetch("/machines", { cache: "no-store" });
    doc = await r.json();
  } catch (e) {
    document.getElementById("updated").textContent = "server unreachable";
    return;
  }
  const now = Number(doc.now) || Math.floor(Date.now() / 1000);
  const rows = [];
  for (const m of doc.machines || []) rows.push(row(m, now));
  for (const [name, event] of Object.entries(doc.others || {})) {
    rows.push(row({ name, event }, now));
  }
  document.querySelector("#machines tbody").replaceChildren(...rows);
  document.getElementById("empty").hidden = rows.length > 0;
  document.getElementById("actions-head").hidden = !token;
  const counts = {};
  for (const m of doc.machines || []) {
    const k = m.state && m.state.committed ? "committed" : (m.next || "unknown").split(" ")[0];
    counts[k] = (counts[k] || 0) + 1;
  }
  const parts = Object.entries(counts).map(([k, n]) => n + " " + k);
  const others = Object.keys(doc.others || {}).length;
  if (others) parts.push(others + " reporting without an inventory entry");
  document.getElementById("summary").textContent =
    rows.length + " machines" + (parts.length ? ": " + parts.join(", ") : "");
  document.getElementById("updated").textContent =
    "updated " + new Date(now * 1000).toLocaleTimeString();
}

refresh();
setInterval(refresh, 2000);
