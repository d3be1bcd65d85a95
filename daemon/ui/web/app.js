/*
 * infusiond reference dashboard (no build step, no framework).
 *
 * Subscribes to infusiond/<gateway>/# over MQTT WebSockets (MQTT.js, vendored as mqtt.min.js)
 * and renders the public MQTT API (docs/asyncapi.yaml): bridge state/info, pump/<id>/state,
 * pump/<id>/event, pump/<id>/command/result and vitals/<bed>/state. Sends set_dose titrations
 * (infusiond.pump.command/1) and follows their result phases, including the confirmation flow.
 *
 * Where to connect comes from /config.json ({broker_ws_url, gateway, api}); ?broker=ws://...&gateway=ID
 * in the page URL override it. When the gateway serves its history API (config "api"), the dose
 * charts and Recent events are filled with the journal's last 30 min before going live.
 * Payload text only ever reaches the DOM through textContent.
 */
"use strict";

(() => {
  const MAX_PAYLOAD = 64 * 1024;
  const MAX_EVENTS = 40;
  const TREND_WINDOW_MS = 30 * 60 * 1000;
  const MAX_POINTS = 2000;
  const MAP_TARGET = [65, 85];
  const SILENT_AFTER_MS = 15000; // vitals are republished at least every 5 s
  // A pump is polled every second or so, but its retained state is republished only when it
  // changes or every publish_every_s (10 s by default): a last_poll up to that old is normal.
  const LATE_POLL_MS = 15000;
  const SIGNIFICANT = 3; // digits shown (daemon/ui/display.py applies the same rule in watch)
  const HISTORY_WINDOW = "30m";
  const TTL_S = 30;
  const LOOPBACK = new Set(["127.0.0.1", "localhost", "::1", "[::1]"]);
  const TOPIC_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/; // gateway, pump and bed ids

  const $ = (id) => document.getElementById(id);

  const model = {
    gateway: null,
    broker: null,
    brokerState: "loading",
    disconnectedAt: null, // when the broker connection was lost (ms), null while connected
    bridge: "?",
    info: null,
    seq: null,
    session: null,
    lastEventSeq: null,
    pumps: new Map(), // pump id -> {data, ts}
    beds: new Map(), // bed id -> {data, received}
    mapHistory: new Map(), // bed id -> [{t, v, stale}]
    doseHistory: new Map(), // pump id -> [{t, value, unit, rate, why}]
    events: [], // newest first: {ts, who, kind, detail, cls}
    seenSeqs: new Set(), // event seqs listed this session (history and live overlap)
    rejectedShown: new Set(), // command ids whose rejection is listed (event + result: once)
    historyLoaded: false,
    problems: 0,
    lastProblem: "",
  };

  // ---- formatting --------------------------------------------------------------------------

  const UNIT_LABELS = { "[USP'U]": "U", "mm[Hg]": "mmHg" };

  function unitLabel(unit) {
    let text = String(unit ?? "");
    for (const [code, label] of Object.entries(UNIT_LABELS)) text = text.split(code).join(label);
    return text;
  }

  // SIGNIFICANT digits but never fewer than the whole part, no trailing zeros: 0.066667 ->
  // "0.0667", 52.5 -> "52.5", 1234.5 -> "1235" (daemon/ui/display.py human_number).
  function fmtNum(value) {
    if (typeof value !== "number" || !Number.isFinite(value)) return "—";
    if (value === 0) return "0";
    const clean = Number(value.toPrecision(15));
    const digits = Math.max(0, SIGNIFICANT - 1 - Math.floor(Math.log10(Math.abs(clean))));
    let text = clean.toFixed(Math.min(digits, 20));
    if (text.includes(".")) text = text.replace(/0+$/, "").replace(/\.$/, "");
    return text === "-0" ? "0" : text;
  }

  function isQuantity(q) {
    return q !== null && typeof q === "object" && typeof q.value === "number";
  }

  function fmtQty(q) {
    return isQuantity(q) ? `${fmtNum(q.value)} ${unitLabel(q.unit)}`.trim() : "—";
  }

  function fmtAny(value) {
    if (value === undefined || value === null) return "—";
    if (isQuantity(value)) return fmtQty(value);
    if (typeof value === "number") return fmtNum(value);
    if (typeof value === "string") return value;
    return JSON.stringify(value);
  }

  function parseTime(text) {
    if (typeof text !== "string") return null;
    const t = Date.parse(text);
    return Number.isFinite(t) ? t : null;
  }

  function fmtAge(ms) {
    if (ms === null || !Number.isFinite(ms)) return "—";
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 120) return `${m} min`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  function ageOf(text, now) {
    const t = parseTime(text);
    return t === null ? null : now - t;
  }

  function clockOf(text) {
    const t = parseTime(text);
    return t === null ? "--:--:--" : new Date(t).toISOString().slice(11, 19);
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function problem(text) {
    model.problems += 1;
    model.lastProblem = String(text).slice(0, 200);
    scheduleRender();
  }

  // ---- model: one MQTT message in ----------------------------------------------------------

  function apply(topic, bytes) {
    const parts = topic.split("/");
    if (parts.length < 4 || parts[0] !== "infusiond" || parts[1] !== model.gateway) return;
    const rest = parts.slice(2);
    if (rest[0] === "pump" && rest.length === 3 && rest[2] === "command") return; // inbound
    // plain-text availability and the health figures: the states say as much
    if (rest[0] === "pump" && rest.length === 3 && rest[2] === "availability") return;
    if (rest[0] === "bridge" && rest[1] === "health" && rest.length === 2) return;
    if (bytes.length > MAX_PAYLOAD) return problem(`${topic}: payload over ${MAX_PAYLOAD} bytes`);
    let body = null;
    if (bytes.length > 0) {
      try {
        body = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
      } catch (err) {
        return problem(`${topic}: bad JSON (${err.message})`);
      }
    }
    if (rest[0] === "bridge" && rest[1] === "state" && rest.length === 2) {
      model.bridge = body && typeof body.state === "string" ? body.state : "?";
      return scheduleRender();
    }
    if (body === null) {
      // a retained message was cleared: the pump or bed is gone
      if (rest[0] === "pump" && rest[2] === "state") model.pumps.delete(rest[1]);
      if (rest[0] === "vitals" && rest[2] === "state") model.beds.delete(rest[1]);
      return scheduleRender();
    }
    if (typeof body !== "object" || typeof body.data !== "object" || body.data === null) {
      return problem(`${topic}: no envelope with a data object`);
    }
    if (typeof body.session === "string" && body.session !== model.session) {
      model.session = body.session;
      model.lastEventSeq = null;
    }
    if (Number.isInteger(body.seq)) model.seq = Math.max(model.seq ?? 0, body.seq);
    const data = body.data;
    const id = rest[1];
    if (rest[0] === "bridge" && rest[1] === "info" && rest.length === 2) {
      model.info = data;
    } else if (rest[0] === "pump" && rest.length === 3 && rest[2] === "state") {
      applyPumpState(id, data, body.ts);
    } else if (rest[0] === "pump" && rest.length === 3 && rest[2] === "event") {
      applyEvent(id, data, body);
    } else if (rest[0] === "pump" && rest.length === 4 && rest[2] === "command" && rest[3] === "result") {
      applyResult(id, data, body.ts);
    } else if (rest[0] === "vitals" && rest.length === 3 && rest[2] === "state") {
      applyVitals(id, data);
    } else {
      return problem(`${topic}: unknown topic`);
    }
    scheduleRender();
  }

  function applyPumpState(id, data, ts) {
    model.pumps.set(id, { data, ts });
    const history = model.doseHistory.get(id) || [];
    const last = history[history.length - 1];
    const dose = isQuantity(data.dose) ? data.dose : null;
    const value = dose ? dose.value : null;
    if (!last || last.value !== value || (dose && last.unit !== dose.unit)) {
      const t = parseTime(data.last_poll) ?? parseTime(ts) ?? Date.now();
      history.push({ t, value, unit: dose ? dose.unit : null, rate: data.rate, why: last ? "state" : "first seen" });
      if (history.length > MAX_POINTS) history.shift();
    }
    model.doseHistory.set(id, history);
  }

  // fromHistory: an event read from /api/events (its dose is in the loaded series already).
  function applyEvent(pump, data, body, fromHistory = false) {
    const kind = String(data.type ?? "?");
    if (Number.isInteger(body.seq)) {
      if (model.seenSeqs.has(body.seq)) return; // listed from the history already
      model.seenSeqs.add(body.seq);
      if (model.seenSeqs.size > 4 * MAX_EVENTS) model.seenSeqs.delete(model.seenSeqs.values().next().value);
    }
    if (kind === "command_rejected" && !firstRejection(data.command_id)) return;
    if (Number.isInteger(body.seq) && !fromHistory) {
      if (model.lastEventSeq !== null && body.seq > model.lastEventSeq + 1) {
        addEvent(body.ts, "", "gap", `events ${model.lastEventSeq + 1}-${body.seq - 1} were not received`, "gap");
      }
      model.lastEventSeq = Math.max(model.lastEventSeq ?? 0, body.seq);
    }
    let detail = "";
    if (kind === "rate_changed") {
      const from = data.from || {};
      const to = data.to || {};
      const by = data.command_id ? `command ${data.command_id}` : data.source === "device" ? "at the pump" : "";
      detail = `${fmtQty(from.rate)} (${fmtQty(from.dose)}) → ${fmtQty(to.rate)} (${fmtQty(to.dose)}) ${by}`;
      if (isQuantity(to.dose) && !fromHistory) {
        const history = model.doseHistory.get(pump) || [];
        const last = history[history.length - 1];
        if (!last || last.value !== to.dose.value) {
          history.push({ t: parseTime(body.ts) ?? Date.now(), value: to.dose.value, unit: to.dose.unit, rate: to.rate, why: by });
          model.doseHistory.set(pump, history);
        } else if (by) {
          last.why = by;
        }
      }
    } else if (kind === "alarm_raised" || kind === "alarm_cleared") {
      const alarm = data.alarm || {};
      detail = `${String(alarm.priority ?? "").toUpperCase()} ${alarm.code ?? "?"} ${alarm.message ?? ""}`;
    } else if (kind === "connection_changed") {
      detail = String(data.connection ?? "");
    } else if (kind === "command_rejected") {
      detail = `${data.command_id ?? "(no id)"} ${(data.verdict?.findings || []).map((f) => f && f.rule).filter(Boolean).join(", ")}`;
    } else if (kind === "override_accepted") {
      detail = `by ${data.clinician ?? "?"}: “${data.reason ?? ""}” (command ${data.command_id ?? "?"})`;
    } else if (data.verdict && Array.isArray(data.verdict.findings)) {
      detail = data.verdict.findings.map((f) => f && f.rule).filter(Boolean).join(", ");
    }
    const cls = kind === "alarm_raised" ? "alarm" : "";
    addEvent(body.ts, pump, kind.replace(/_/g, " "), detail.trim(), cls);
  }

  // The gateway reports a rejection twice (a command_rejected event and the command's result):
  // Recent events lists it once.
  function firstRejection(commandId) {
    if (typeof commandId !== "string") return true;
    if (model.rejectedShown.has(commandId)) return false;
    model.rejectedShown.add(commandId);
    if (model.rejectedShown.size > 4 * MAX_EVENTS) model.rejectedShown.delete(model.rejectedShown.values().next().value);
    return true;
  }

  function applyResult(pump, data, ts) {
    const phase = String(data.phase ?? "?");
    if (phase === "rejected" && !firstRejection(data.id)) return titration.onResult(pump, data);
    let why = "";
    if (data.error && typeof data.error === "object") why = `${data.error.code}: ${data.error.message ?? ""}`;
    else if (data.verdict && Array.isArray(data.verdict.findings)) {
      why = data.verdict.findings.map((f) => f && f.rule).filter(Boolean).join(", ");
    }
    addEvent(ts, pump, `command ${phase.replace(/_/g, " ")}`, `${data.id ?? "(no id)"} ${why}`.trim(), "");
    titration.onResult(pump, data);
  }

  function applyVitals(bed, data) {
    model.beds.set(bed, { data, received: Date.now() });
    const map = data.map;
    if (isQuantity(map)) {
      const t = parseTime(map.at) ?? Date.now();
      const history = model.mapHistory.get(bed) || [];
      const same = history.find((p) => p.t === t); // republished every 5 s: one point each
      if (same) {
        same.stale = Boolean(map.stale);
      } else {
        history.push({ t, v: map.value, stale: Boolean(map.stale) });
        history.sort((a, b) => a.t - b.t);
        if (history.length > MAX_POINTS) history.shift();
      }
      model.mapHistory.set(bed, history);
    }
  }

  function addEvent(ts, who, kind, detail, cls) {
    model.events.unshift({ ts, who, kind, detail, cls });
    if (model.events.length > MAX_EVENTS) model.events.pop();
  }

  // ---- rendering -----------------------------------------------------------------------------

  let renderQueued = false;
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    const run = () => {
      renderQueued = false;
      render();
    };
    if (typeof requestAnimationFrame === "function" && document.visibilityState === "visible") {
      requestAnimationFrame(run);
    } else {
      setTimeout(run, 0);
    }
  }

  // Each cell gets its column's name, shown by the stacked (narrow-screen) table layout.
  function labelCells(table) {
    const names = [...table.tHead.rows[0].cells].map((th) => th.textContent);
    for (const row of table.tBodies[0].rows) {
      [...row.cells].forEach((td, i) => td.setAttribute("data-label", names[i] ?? ""));
    }
  }

  function badge(text, kind) {
    return el("span", { class: `badge badge-${kind}`, text });
  }

  function renderHeader(now) {
    $("gateway").textContent = model.gateway ?? "?";
    const bridge = $("bridge-state");
    bridge.textContent = `bridge ${model.bridge}`;
    bridge.className = `badge badge-${model.bridge === "online" ? "ok" : model.bridge === "?" ? "unknown" : "bad"}`;
    const broker = $("broker-state");
    broker.textContent = `broker: ${model.brokerState}`;
    broker.title = model.broker ?? "";
    broker.className = `badge badge-${model.brokerState === "connected" ? "ok" : model.brokerState === "loading" ? "unknown" : "bad"}`;
    const lib = model.info && model.info.library;
    $("library").textContent = lib ? `library ${lib.name} ${lib.version}` : "library ?";
    $("library").title = lib ? `sha256 ${lib.sha256}` : "drug library in use";
    $("seq").textContent = `seq ${model.seq ?? "?"}`;
    $("clock").textContent = `${new Date(now).toISOString().slice(11, 19)} UTC`;
    const banner = $("banner");
    if (model.disconnectedAt !== null) {
      banner.hidden = false;
      banner.textContent = `Not connected to the broker since ${new Date(model.disconnectedAt).toISOString().slice(11, 19)} UTC: everything below is the last known state.`;
    } else if (model.bridge === "offline") {
      banner.hidden = false;
      banner.textContent = `infusiond on gateway ${model.gateway} is offline: pump and bed values below are the last it published.`;
    } else {
      banner.hidden = true;
    }
    const problems = $("problems");
    problems.hidden = model.problems === 0;
    problems.textContent = `${model.problems} bad message(s); last: ${model.lastProblem}`;
  }

  function renderPumps(now) {
    const rows = [];
    for (const id of [...model.pumps.keys()].sort()) {
      const { data } = model.pumps.get(id);
      const conn = String(data.connection ?? "?");
      const status = data.status === null || data.status === undefined ? "unknown" : String(data.status);
      const alarms = Array.isArray(data.alarms) ? data.alarms.filter((a) => a && typeof a === "object") : [];
      const conc = [fmtQty(data.concentration), data.diluent, data.route].filter((x) => x && x !== "—");
      const pollAge = ageOf(data.last_poll, now);
      const alarmCell = el("td", { class: "alarms" });
      if (alarms.length === 0) alarmCell.append(el("span", { class: "sub", text: "none" }));
      for (const alarm of alarms) {
        const prio = String(alarm.priority ?? "?");
        alarmCell.append(
          el("span", { class: `alarm alarm-${prio}`, title: alarm.message ?? "" },
            `${prio.toUpperCase()} ${alarm.code ?? "?"} · ${fmtAge(ageOf(alarm.since, now))}`),
        );
      }
      const device = data.device || {};
      rows.push(
        el("tr", { "data-pump": id, class: [alarmClass(alarms), conn !== "online" ? "offline" : ""].join(" ").trim() || null },
          el("td", {}, el("b", { text: id }), el("span", { class: "sub", text: data.bed ? `bed ${data.bed}` : "" })),
          el("td", {}, badge(conn, conn === "online" ? "ok" : conn === "connecting" ? "warn" : "bad"),
            el("span", { class: "sub", text: [device.driver, device.model].filter(Boolean).join(" ") })),
          el("td", {}, badge(status, status === "infusing" ? "ok" : status === "alarm" ? "bad" : status === "unknown" ? "unknown" : "warn")),
          el("td", {}, el("b", { text: data.drug ?? "—" }), el("span", { class: "sub", text: conc.join(" · ") })),
          el("td", {}, el("span", { class: "num", text: fmtQty(data.dose) }),
            el("span", { class: "sub", text: typeof data.weight_kg === "number" ? `${fmtNum(data.weight_kg)} kg · ${data.profile ?? ""}` : data.profile ?? "" })),
          el("td", {}, el("span", { class: "num", text: fmtQty(data.rate) })),
          el("td", { text: fmtQty(data.vtbi) }),
          el("td", { text: fmtQty(data.volume_infused) }),
          alarmCell,
          pollCell(data, pollAge),
        ),
      );
    }
    $("pump-rows").replaceChildren(...rows);
    labelCells($("pumps"));
    $("no-pumps").hidden = rows.length > 0;
  }

  // "live" while the gateway reports fresh polls (its state refreshes at least every 10 s);
  // otherwise how old the last poll is, marked late, or "last known" when the gateway is gone.
  function pollCell(data, pollAge) {
    if (pollAge === null) return el("td", { class: "poll", text: "never" });
    const at = `${clockOf(data.last_poll)} UTC`;
    if (model.bridge !== "online" || model.disconnectedAt !== null) {
      return el("td", { class: "poll late" }, "last known", el("span", { class: "sub", text: at }));
    }
    if (pollAge > LATE_POLL_MS || data.connection !== "online") {
      return el("td", { class: "poll late" }, `${fmtAge(pollAge)} ago`, el("span", { class: "sub", text: at }));
    }
    return el("td", { class: "poll", title: `last reported poll ${at}; the state refreshes at least every 10 s` },
      badge("live", "ok"), el("span", { class: "sub", text: at }));
  }

  function alarmClass(alarms) {
    for (const prio of ["high", "medium", "low"]) {
      if (alarms.some((a) => a.priority === prio)) return `has-alarm has-alarm-${prio}`;
    }
    return alarms.length ? "has-alarm has-alarm-high" : "";
  }

  function vitalCell(data, key, now) {
    const reading = data[key];
    if (!isQuantity(reading)) return el("td", { class: "missing" }, el("span", { class: "num", text: "—" }));
    const stale = Boolean(reading.stale);
    const out = key === "map" && (reading.value < MAP_TARGET[0] || reading.value > MAP_TARGET[1]);
    return el("td", { class: [stale ? "stale" : "", out ? "out-of-range" : ""].join(" ").trim() || null, title: `${reading.unit} at ${reading.at}` },
      el("span", { class: "num", text: fmtQty(reading) }),
      stale ? el("span", { class: "stale-tag", text: "STALE" }) : null,
      el("span", { class: "sub", text: `${fmtAge(ageOf(reading.at, now))} ago` }),
    );
  }

  function renderBeds(now) {
    const rows = [];
    for (const id of [...model.beds.keys()].sort()) {
      const { data, received } = model.beds.get(id);
      const silent = now - received > SILENT_AFTER_MS;
      const source = typeof data.source === "string" ? data.source : "";
      rows.push(
        el("tr", { "data-bed": id, class: silent ? "silent" : null },
          el("td", {}, el("b", { text: id })),
          vitalCell(data, "map", now),
          vitalCell(data, "sbp", now),
          vitalCell(data, "dbp", now),
          vitalCell(data, "hr", now),
          vitalCell(data, "spo2", now),
          el("td", { class: silent ? "late" : null, text: silent ? `no update for ${fmtAge(now - received)}` : `${fmtAge(now - received)} ago` }),
          el("td", { text: source.replace(/^hl7:/, "") ? source.replace(/^hl7:/, "") + " · HL7" : "—" }),
        ),
      );
    }
    $("bed-rows").replaceChildren(...rows);
    labelCells($("beds"));
    $("no-beds").hidden = rows.length > 0;
  }

  // A small SVG line plot: points [{t, v}] over [t0, t1]; step=true draws a step function.
  function plot(points, opts) {
    const W = 600, H = 160, L = 44, R = 70, T = 20, B = 20;
    const { t0, t1, lo, hi, band, step, unit, stale, ticks } = opts;
    const x = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - R);
    const y = (v) => T + (1 - (v - lo) / Math.max(1e-9, hi - lo)) * (H - T - B);
    const root = svg("svg", { class: "plot", viewBox: `0 0 ${W} ${H}`, role: "img" });
    if (band) root.append(svg("rect", { class: "band", x: L, y: y(band[1]), width: W - L - R, height: y(band[0]) - y(band[1]) }));
    root.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
    root.append(svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
    for (const tick of ticks) {
      root.append(svg("text", { x: L - 4, y: y(tick) + 4, "text-anchor": "end" }, fmtNum(tick)));
    }
    root.append(svg("text", { x: L, y: H - 4 }, `−${Math.round((t1 - t0) / 60000)} min`));
    root.append(svg("text", { x: W - R, y: H - 4, "text-anchor": "end" }, "now"));
    root.append(svg("text", { x: L + 4, y: 11 }, unit));
    const shown = points.filter((p) => p.t >= t0 && typeof p.v === "number");
    const before = points.filter((p) => p.t < t0).pop();
    if (step && before && typeof before.v === "number") shown.unshift({ t: t0, v: before.v });
    if (shown.length > 0) {
      const coords = [];
      shown.forEach((p, i) => {
        if (step && i > 0) coords.push(`${x(p.t).toFixed(1)},${y(shown[i - 1].v).toFixed(1)}`);
        coords.push(`${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`);
      });
      const last = shown[shown.length - 1];
      if (step) coords.push(`${x(t1).toFixed(1)},${y(last.v).toFixed(1)}`);
      root.append(svg("polyline", { class: `line${stale ? " stale" : ""}`, points: coords.join(" ") }));
      const lx = step ? x(t1) : x(last.t);
      root.append(svg("circle", { class: "dot", cx: lx, cy: y(last.v), r: 3 }));
      root.append(svg("text", { class: "value", x: lx + 6, y: y(last.v) + 4 }, fmtNum(last.v)));
    }
    return root;
  }

  // The smallest 1/1.5/2/2.5/3/4/5/6/8 x 10^n at or above x (an axis top that reads well).
  function niceCeil(x) {
    if (!(x > 0)) return 1;
    const magnitude = 10 ** Math.floor(Math.log10(x));
    const step = [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10].find((m) => m * magnitude >= x * (1 - 1e-9));
    return Number((step * magnitude).toPrecision(3));
  }

  // Always the labelled window ("last 30 min"), so the axis matches the heading.
  function windowOf(now) {
    return [now - TREND_WINDOW_MS, now];
  }

  function renderTrends(now) {
    const charts = [];
    for (const bed of [...model.mapHistory.keys()].sort()) {
      const points = model.mapHistory.get(bed).map((p) => ({ t: p.t, v: p.v }));
      const recent = points.filter((p) => p.t >= now - TREND_WINDOW_MS);
      const values = recent.map((p) => p.v);
      const lo = Math.min(40, ...values.map((v) => Math.floor(v / 10) * 10));
      const hi = Math.max(110, ...values.map((v) => Math.ceil(v / 10) * 10));
      const [t0, t1] = windowOf(now);
      const history = model.mapHistory.get(bed);
      const last = history[history.length - 1];
      charts.push(
        el("div", { class: "chart", "data-bed": bed },
          el("h3", {}, `${bed} `, el("small", { text: last ? `MAP ${fmtNum(last.v)} mmHg${last.stale ? " (stale)" : ""}` : "" })),
          plot(points, { t0, t1, lo, hi, band: MAP_TARGET, step: false, unit: "mmHg", stale: last && last.stale, ticks: [lo, ...MAP_TARGET, hi] }),
        ),
      );
    }
    if (charts.length) $("map-trends").replaceChildren(...charts);
    else $("map-trends").replaceChildren(el("p", { class: "empty", text: "No MAP readings yet." }));
  }

  function renderDoses(now) {
    const charts = [];
    for (const pump of [...model.doseHistory.keys()].sort()) {
      const history = model.doseHistory.get(pump);
      const points = history.map((p) => ({ t: p.t, v: p.value }));
      const values = points.filter((p) => typeof p.v === "number").map((p) => p.v);
      const hi = niceCeil(values.length ? Math.max(...values) * 1.2 : 0);
      const [t0, t1] = windowOf(now);
      const unit = unitLabel([...history].reverse().find((p) => p.unit)?.unit ?? "");
      const state = model.pumps.get(pump);
      const drug = state ? state.data.drug : "";
      const changes = history.slice(-5).reverse().map((p) =>
        el("li", {}, `${new Date(p.t).toISOString().slice(11, 19)} ${p.value === null ? "no dose" : `${fmtNum(p.value)} ${unitLabel(p.unit)}`}`,
          isQuantity(p.rate) ? ` = ${fmtQty(p.rate)}` : "", p.why ? ` (${p.why})` : ""));
      charts.push(
        el("div", { class: "chart", "data-pump": pump },
          el("h3", {}, `${pump} `, el("small", { text: `${drug ?? ""} · ${unit}` })),
          plot(points, { t0, t1, lo: 0, hi, band: null, step: true, unit, stale: false, ticks: [0, hi] }),
          el("ol", { class: "changes", reversed: true }, ...changes),
        ),
      );
    }
    $("dose-window").textContent = model.historyLoaded ? "last 30 min, from the journal" : "since this page opened";
    if (charts.length) $("dose-histories").replaceChildren(...charts);
    else $("dose-histories").replaceChildren(el("p", { class: "empty", text: "No pumps yet." }));
  }

  function renderEvents() {
    const items = model.events.map((e) =>
      el("li", { class: e.cls || null },
        el("time", { text: clockOf(e.ts) }),
        " ",
        e.who ? el("b", { text: e.who }) : null,
        e.who ? " " : null,
        el("span", { class: "kind", text: e.kind }),
        " ",
        e.detail,
      ),
    );
    $("events").replaceChildren(...items);
    $("no-events").hidden = items.length > 0;
  }

  function render() {
    const now = Date.now();
    renderHeader(now);
    renderPumps(now);
    renderBeds(now);
    renderTrends(now);
    renderDoses(now);
    renderEvents();
    titration.renderForm();
  }

  // ---- titration ----------------------------------------------------------------------------

  function randomId() {
    // crypto.randomUUID needs a secure context; a tablet on http://gateway-ip is not one.
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  const PHASE_TEXT = {
    sent: "sent, waiting for the gateway",
    rejected: "rejected: nothing reached the pump",
    needs_confirmation: "needs confirmation",
    accepted: "accepted: passed the gate, sent to the pump",
    applied: "applied: the pump reads back the new rate",
    failed: "failed: the pump refused; verified unchanged",
    uncertain: "uncertain: no answer from the pump; it will be reconciled",
    duplicate: "duplicate: this id was already handled",
    timeout: "no answer from the gateway",
    not_sent: "not sent: the broker refused the publish",
  };

  const titration = {
    flow: null, // {pump, dose: {value, unit}, clinician, ids: Set, trail: [], phase, verdict, error, token, expires, timer}

    renderForm() {
      const select = $("t-pump");
      const chosen = select.value;
      const ids = [...model.pumps.keys()].sort();
      const current = [...select.options].map((o) => o.value);
      if (ids.join("\n") !== current.join("\n")) {
        select.replaceChildren(...ids.map((id) => el("option", { value: id, text: `${id} — ${model.pumps.get(id).data.drug ?? "?"}` })));
        if (ids.includes(chosen)) select.value = chosen;
      }
      const pump = model.pumps.get(select.value);
      const dose = pump && isQuantity(pump.data.dose) ? pump.data.dose : null;
      $("t-unit").textContent = dose ? unitLabel(dose.unit) : "—";
      $("t-unit").title = dose ? `UCUM ${dose.unit}` : "";
      $("t-current").textContent = pump
        ? dose ? `running ${fmtQty(dose)} = ${fmtQty(pump.data.rate)}` : "this pump reports no dose: it cannot be titrated by dose"
        : "no pump known yet";
      const connected = model.brokerState === "connected";
      const busy = this.flow && ["sent", "accepted", "needs_confirmation"].includes(this.flow.phase);
      $("t-send").disabled = !connected || !dose || Boolean(busy);
      const control = $("t-control");
      if (!connected) {
        control.hidden = false;
        control.textContent = "Not connected to the broker: commands cannot be sent.";
      } else if (model.info && model.info.control_enabled === false) {
        control.hidden = false;
        control.textContent = "Remote control is disabled on this gateway: commands will be rejected (control_disabled).";
      } else {
        control.hidden = true;
      }
    },

    error(text) {
      $("t-error").hidden = !text;
      $("t-error").textContent = text || "";
    },

    submit() {
      this.error("");
      const pumpId = $("t-pump").value;
      const pump = model.pumps.get(pumpId);
      if (!pump) return this.error("Pump: choose a pump.");
      if (!isQuantity(pump.data.dose)) return this.error(`Pump ${pumpId} reports no dose unit; cannot titrate by dose.`);
      const raw = $("t-dose").value.trim();
      const value = Number(raw);
      if (raw === "" || !Number.isFinite(value)) return this.error("New dose: enter a number.");
      if (value < 0 || value > 1e6) return this.error("New dose: must be between 0 and 1000000.");
      const clinician = $("t-clinician").value.trim();
      if (clinician.length < 1 || clinician.length > 64) return this.error("Clinician id: 1 to 64 characters required.");
      if (this.flow && this.flow.timer) clearTimeout(this.flow.timer);
      this.flow = {
        pump: pumpId, dose: { value, unit: pump.data.dose.unit }, clinician,
        ids: new Set(), trail: [], phase: "sent", verdict: null, error: null, token: null, expires: null, timer: null, readback: null,
      };
      this.send(null);
    },

    send(confirm) {
      const flow = this.flow;
      const command = {
        id: randomId(),
        issued_at: new Date().toISOString(),
        ttl_s: TTL_S,
        by: { clinician: flow.clinician },
        action: "set_dose",
        dose: flow.dose,
      };
      if (confirm) command.confirm = confirm;
      flow.ids.add(command.id);
      flow.current = command.id;
      flow.phase = "sent";
      flow.trail.push(`${command.id}: ${confirm ? "sent with confirmation" : "sent"} (set_dose ${fmtQty(flow.dose)})`);
      const topic = `infusiond/${model.gateway}/pump/${flow.pump}/command`;
      client.publish(topic, JSON.stringify(command), { qos: 1, retain: false }, (err) => {
        if (err) {
          if (flow.timer) clearTimeout(flow.timer);
          flow.phase = "not_sent";
          flow.error = { code: "publish", message: String(err.message || err) };
          flow.trail.push(`${command.id}: not sent: ${flow.error.message}`);
          this.renderStatus();
          scheduleRender();
        }
      });
      this.arm(flow, "sent", `no result within ${TTL_S} s: is infusiond running and remote control enabled?`);
      this.renderStatus();
      scheduleRender();
    },

    // If the flow still waits in ``phase`` after TTL_S, say so (and let the clinician go on).
    arm(flow, phase, text) {
      if (flow.timer) clearTimeout(flow.timer);
      flow.timer = setTimeout(() => {
        flow.timer = null;
        if (flow === this.flow && flow.phase === phase) {
          flow.phase = "timeout";
          flow.trail.push(text);
          this.renderStatus();
          scheduleRender();
        }
      }, TTL_S * 1000);
    },

    onResult(pump, data) {
      const flow = this.flow;
      if (!flow || pump !== flow.pump || !flow.ids.has(data.id)) return;
      const phase = String(data.phase);
      flow.phase = phase;
      if (data.verdict) flow.verdict = data.verdict;
      flow.error = data.error || null;
      if (data.readback) flow.readback = data.readback;
      let line = `${data.id}: ${PHASE_TEXT[phase] || phase}`;
      if (phase === "needs_confirmation") {
        flow.token = data.confirm_token;
        flow.expires = data.confirm_expires_at || null;
      }
      if (phase === "duplicate" && data.first) {
        line += ` (first outcome: ${data.first.phase})`;
        if (data.first.verdict) flow.verdict = data.first.verdict;
        if (data.first.error) flow.error = data.first.error;
      }
      if (data.error) line += ` — ${data.error.code}: ${data.error.message}`;
      if (phase === "applied" && data.readback) {
        line += ` — pump reads ${fmtQty(data.readback.rate)}${data.readback.status ? `, ${data.readback.status}` : ""}`;
      }
      flow.trail.push(line);
      if (phase === "accepted") {
        this.arm(flow, "accepted", `no outcome within ${TTL_S} s of acceptance: check the pump and the events below`);
      } else if (flow.timer) {
        clearTimeout(flow.timer);
        flow.timer = null;
      }
      this.renderStatus();
    },

    confirm() {
      const flow = this.flow;
      if (!flow || flow.phase !== "needs_confirmation" || !flow.token) return;
      const reason = $("t-reason").value.trim();
      if (!reason) return this.error("Reason: a reason is required to confirm.");
      if (reason.length > 500) return this.error("Reason: at most 500 characters.");
      this.error("");
      flow.verdict = null;
      this.send({ token: flow.token, reason });
      $("t-reason").value = "";
    },

    cancel() {
      const flow = this.flow;
      if (!flow) return;
      if (flow.timer) clearTimeout(flow.timer);
      flow.phase = "cancelled";
      flow.trail.push("cancelled: nothing was sent to the pump");
      this.renderStatus();
      scheduleRender();
    },

    renderStatus() {
      this.renderForm(); // the Send button follows the flow at once, not at the next frame
      const flow = this.flow;
      const box = $("command-status");
      box.hidden = !flow;
      if (!flow) return;
      const phaseEl = $("t-phase");
      phaseEl.dataset.phase = flow.phase;
      phaseEl.textContent = flow.phase.replace(/_/g, " ");
      $("t-summary").textContent = `set_dose ${fmtQty(flow.dose)} on ${flow.pump} by ${flow.clinician}`;
      $("t-trail").replaceChildren(...flow.trail.map((line) => el("li", { text: line })));
      const verdict = flow.verdict;
      $("t-verdict").hidden = !verdict;
      if (verdict) {
        const parts = [`verdict: ${verdict.verdict}`];
        if (isQuantity(verdict.dose)) parts.push(`dose ${fmtQty(verdict.dose)}`);
        if (isQuantity(verdict.rate)) parts.push(`rate ${fmtQty(verdict.rate)}`);
        if (verdict.library) parts.push(`library ${verdict.library.name} ${verdict.library.version}`);
        $("t-verdict").textContent = parts.join(" · ");
      }
      const findings = verdict && Array.isArray(verdict.findings) ? verdict.findings : [];
      const table = $("t-findings");
      table.hidden = findings.length === 0;
      table.tBodies[0].replaceChildren(
        ...findings.map((f) =>
          el("tr", { "data-rule": f.rule },
            el("td", {}, el("code", { text: f.rule ?? "?" })),
            el("td", {}, el("span", { class: `sev sev-${f.severity}`, text: f.severity ?? "?" })),
            el("td", { class: "message", text: unitLabel(f.message ?? "") }),
            el("td", { "data-label": "limit", text: fmtAny(f.limit) }),
            el("td", { "data-label": "observed", text: fmtAny(f.observed) }),
          ),
        ),
      );
      const asking = flow.phase === "needs_confirmation";
      $("t-confirm").hidden = !asking;
      if (asking) {
        const until = flow.expires ? ` (token valid until ${clockOf(flow.expires)} UTC)` : "";
        $("t-confirm-text").textContent = `The drug library asks for a confirmation${until}. Give a reason to override, or cancel.`;
      }
    },
  };

  // ---- MQTT ----------------------------------------------------------------------------------

  let client = null;

  function brokerUrl(configured) {
    // A page opened from another machine cannot reach the gateway's loopback broker address.
    try {
      const url = new URL(configured);
      if (LOOPBACK.has(url.hostname) && location.hostname && !LOOPBACK.has(location.hostname)) {
        url.hostname = location.hostname;
      }
      return url.toString();
    } catch (err) {
      return configured;
    }
  }

  // MQTT 3.1.1 CONNACK codes that no retry will cure: ask the user for credentials instead.
  const REFUSED_LOGIN = { 4: "bad username or password", 5: "not authorized" };

  function connect(url, gateway, credentials) {
    model.broker = url;
    model.gateway = gateway;
    model.brokerState = "connecting";
    $("login").hidden = true;
    const clientId = "infusiond-web-" + randomId().slice(4, 16);
    // MQTT 3.1.1: the demo's embedded amqtt broker speaks nothing newer, and the page needs no
    // v5 feature (results are matched by command id on .../command/result).
    client = mqtt.connect(url, {
      protocolVersion: 4,
      clientId,
      clean: true,
      keepalive: 30,
      reconnectPeriod: 2000,
      connectTimeout: 10000,
      ...(credentials || {}),
    });
    const current = client;
    const lost = () => {
      if (model.disconnectedAt === null && model.brokerState === "connected") model.disconnectedAt = Date.now();
    };
    client.on("connect", () => {
      model.brokerState = "connected";
      model.disconnectedAt = null;
      model.lastEventSeq = null;
      client.subscribe(`infusiond/${gateway}/#`, { qos: 1 }, (err) => {
        if (err) problem(`subscribe failed: ${err.message}`);
      });
      scheduleRender();
    });
    const refused = () => model.brokerState.startsWith("refused");
    client.on("reconnect", () => { lost(); if (!refused()) model.brokerState = "reconnecting"; scheduleRender(); });
    client.on("offline", () => { lost(); if (!refused()) model.brokerState = "offline"; scheduleRender(); });
    client.on("close", () => { lost(); if (model.brokerState === "connected") model.brokerState = "disconnected"; scheduleRender(); });
    client.on("error", (err) => {
      if (err && err.code in REFUSED_LOGIN) {
        current.end(true); // credentials are asked for once, not retried every 2 s
        model.brokerState = `refused: ${REFUSED_LOGIN[err.code]}`;
        $("login-text").textContent = credentials
          ? `The broker refused these credentials (${REFUSED_LOGIN[err.code]}).`
          : "The broker requires a username and password.";
        $("login").hidden = false;
      } else if (!model.brokerState.startsWith("refused")) {
        model.brokerState = `error (${err.message})`;
      }
      scheduleRender();
    });
    client.on("message", (topic, payload) => {
      try {
        apply(topic, payload instanceof Uint8Array ? payload : new TextEncoder().encode(String(payload)));
      } catch (err) {
        problem(`${topic}: ${err.message}`);
      }
    });
  }

  async function fetchJson(url) {
    const response = await fetch(url, { cache: "no-store" });
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    return response.json();
  }

  // The journal's last 30 min: each pump's dose series and the events, oldest first.
  async function loadHistory(api) {
    const [series, events] = await Promise.all([
      fetchJson(`${api.history}?since=${HISTORY_WINDOW}`),
      fetchJson(`${api.events}?since=${HISTORY_WINDOW}&limit=${MAX_EVENTS}`),
    ]);
    if (typeof events.session === "string") model.session = events.session;
    for (const [pump, entry] of Object.entries(series.data?.pumps ?? {})) {
      if (!TOPIC_ID.test(pump)) continue;
      const history = [];
      for (const p of entry.points ?? []) {
        const t = parseTime(p.ts);
        if (t === null) continue;
        const dose = isQuantity(p.dose) ? p.dose : null;
        if (!dose && p.rate) continue; // a rate whose dose is unknown: not drawn as "no dose"
        const why = p.why === "before" ? "at the window start" : String(p.why ?? "").replace(/_/g, " ");
        history.push({ t, value: dose ? dose.value : null, unit: dose ? dose.unit : null, rate: p.rate, why });
      }
      model.doseHistory.set(pump, history.slice(-MAX_POINTS));
    }
    for (const item of events.data?.events ?? []) {
      if (item && typeof item.data === "object" && item.data !== null && TOPIC_ID.test(String(item.pump_id))) {
        applyEvent(String(item.pump_id), item.data, { ts: item.ts, seq: item.seq }, true);
      }
    }
    model.historyLoaded = true;
  }

  async function start() {
    $("titrate-form").addEventListener("submit", (ev) => { ev.preventDefault(); titration.submit(); });
    $("t-pump").addEventListener("change", () => titration.renderForm());
    $("t-confirm-send").addEventListener("click", () => titration.confirm());
    $("t-cancel").addEventListener("click", () => titration.cancel());
    $("login").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const username = $("login-user").value;
      const password = $("login-password").value;
      $("login-password").value = ""; // kept by the MQTT client only, never stored
      connect(model.broker, model.gateway, { username, password });
      scheduleRender();
    });
    setInterval(scheduleRender, 1000); // ages tick even when nothing arrives
    const params = new URLSearchParams(location.search);
    let config = {};
    try {
      const response = await fetch("config.json", { cache: "no-store" });
      if (response.ok) config = await response.json();
    } catch (err) {
      problem(`config.json: ${err.message}`);
    }
    const url = params.get("broker") || config.broker_ws_url;
    const gateway = params.get("gateway") || config.gateway;
    if (!url && gateway && config.api) {
      model.gateway = gateway;
      model.brokerState = "no broker WebSocket configured: history only";
      try {
        await loadHistory(config.api);
      } catch (err) {
        problem(`history: ${err.message}`);
      }
      return scheduleRender();
    }
    if (!url || !gateway) {
      model.brokerState = "not configured (?broker=ws://host:port&gateway=ID)";
      return scheduleRender();
    }
    if (!TOPIC_ID.test(gateway)) {
      model.brokerState = `gateway id ${JSON.stringify(gateway)} is not a valid topic level`;
      return scheduleRender();
    }
    if (typeof mqtt === "undefined") {
      model.brokerState = "MQTT client script failed to load";
      return scheduleRender();
    }
    model.gateway = gateway;
    if (config.api && !params.get("broker")) {
      try {
        await loadHistory(config.api); // before going live: Recent events stay in order
      } catch (err) {
        problem(`history: ${err.message}`);
      }
    }
    connect(brokerUrl(url), gateway);
    scheduleRender();
  }

  start();
})();
