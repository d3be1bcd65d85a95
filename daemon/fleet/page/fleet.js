// The fleet page: polls /api/fleet and redraws the table. Text only (textContent), never
// HTML from the data: gateway and pump ids come from the network.
"use strict";

const POLL_MS = 5000;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function ranges(list) {
  if (!list.length) return "—";
  return list.map(([a, b]) => (a === b ? `${a}` : `${a}–${b}`)).join(", ");
}

function missingCell(gw) {
  const td = el("td");
  if (!gw.missing.length) {
    td.textContent = "none";
    return td;
  }
  const ul = el("ul");
  for (const gap of gw.missing) {
    const span = gap.from === gap.to ? `${gap.from}` : `${gap.from}–${gap.to}`;
    ul.appendChild(el("li", `${span} (${gap.status})`, `gap-${gap.status}`));
  }
  td.appendChild(ul);
  return td;
}

function alarmsCell(gw) {
  const td = el("td");
  const withAlarms = gw.pumps.filter((p) => p.alarms.length);
  if (!withAlarms.length) {
    td.textContent = "none";
    return td;
  }
  const ul = el("ul");
  for (const pump of withAlarms) {
    const codes = pump.alarms.map((a) => `${a.code} (${a.priority})`).join(", ");
    const high = pump.alarms.some((a) => a.priority === "high");
    ul.appendChild(el("li", `${pump.pump_id}: ${codes}`, high ? "alarm-high" : ""));
  }
  td.appendChild(ul);
  return td;
}

function row(gw) {
  const tr = el("tr");
  tr.dataset.gateway = gw.gateway;
  tr.appendChild(el("td", gw.gateway));
  const state = el("td");
  state.appendChild(el("span", gw.state, `state state-${gw.state}`));
  tr.appendChild(state);
  tr.appendChild(el("td", gw.session || "—"));
  tr.appendChild(el("td", gw.last_seq, "num"));
  tr.appendChild(el("td", ranges(gw.held)));
  tr.appendChild(missingCell(gw));
  tr.appendChild(alarmsCell(gw));
  tr.appendChild(el("td", gw.last_seen || "—"));
  return tr;
}

function render(doc) {
  const t = doc.totals;
  document.getElementById("totals").textContent =
    `${t.gateways} gateways: ${t.online} online, ${t.offline} offline; ` +
    `${t.missing_seqs} events missing; ${t.active_alarms} active alarms ` +
    `(as of ${doc.generated_at})`;
  const body = document.querySelector("#fleet tbody");
  body.replaceChildren(...doc.gateways.map(row));
  document.body.dataset.loaded = doc.generated_at;
}

function problem(text) {
  const p = document.getElementById("problem");
  p.hidden = !text;
  p.textContent = text || "";
}

async function refresh() {
  try {
    const response = await fetch("api/fleet", { cache: "no-store" });
    const doc = await response.json();
    if (!response.ok) {
      problem(`The fleet store cannot be read: ${doc.error}`);
      return;
    }
    problem("");
    render(doc);
  } catch (err) {
    problem(`The fleet page server does not answer (${err}).`);
  }
}

refresh();
setInterval(refresh, POLL_MS);
