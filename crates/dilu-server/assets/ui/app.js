// Dilu's live dashboard: functions, each device's division among its instances, and the event timeline.
// Hand-written, no dependencies; it reads only GET endpoints of the server that serves it.
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const HISTORY_MS = 180000; // the device charts' span
  const DEVICE_POLL_MS = 400;
  const FUNCTION_POLL_MS = 1000;
  const WINDOW_MS = 30000; // latency percentiles and the SLO violation rate
  const MAX_EVENTS = 500;
  const COLORS = ["#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4", "#ec4899", "#84cc16",
    "#f97316", "#64748b"];

  const colors = new Map(); // instance id -> colour
  const devices = new Map(); // uuid -> { card, svg, legend, samples: [{ t, values: Map(id -> inst) }] }
  const snapshots = []; // [{ t, fns: Map(function -> { count, violations, buckets: [[le, cumulative]] }) }]
  let lastFunctions = [];
  let rendered = { functions: false, devices: false };
  let lastSeq = 0;

  const $ = (sel) => document.querySelector(sel);

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, String(v));
      else node.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === undefined || c === null) continue;
      node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }

  function colorFor(id) {
    if (!colors.has(id)) colors.set(id, COLORS[colors.size % COLORS.length]);
    return colors.get(id);
  }

  async function getJSON(path) {
    const response = await fetch(path, { cache: "no-store" });
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return response.json();
  }

  function fixed(x, digits) {
    return typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "—";
  }

  function markFirstRender() {
    const root = document.documentElement;
    if (rendered.functions && rendered.devices && !root.dataset.firstRenderMs) {
      root.dataset.firstRenderMs = String(Math.round(performance.now()));
    }
  }

  function setConn(state, text) {
    const conn = $("#conn");
    conn.dataset.state = state;
    conn.textContent = text;
  }

  // ---- /metrics: the gateway's counters and latency histograms per function ----

  function parseLabels(text) {
    const labels = {};
    const re = /(\w+)="((?:[^"\\]|\\.)*)"/g;
    let m;
    while ((m = re.exec(text)) !== null) labels[m[1]] = m[2].replace(/\\(.)/g, "$1");
    return labels;
  }

  function parseMetrics(text) {
    const fns = new Map();
    const get = (name) => {
      if (!fns.has(name)) fns.set(name, { count: 0, violations: 0, buckets: [] });
      return fns.get(name);
    };
    for (const line of text.split("\n")) {
      if (!line.startsWith("dilu_gateway_")) continue;
      const m = /^(\w+)\{([^}]*)\}\s+(\S+)/.exec(line);
      if (!m) continue;
      const labels = parseLabels(m[2]);
      if (!labels.function) continue;
      const value = Number(m[3]);
      if (m[1] === "dilu_gateway_requests_total") get(labels.function).count += value;
      else if (m[1] === "dilu_gateway_slo_violations_total") get(labels.function).violations += value;
      else if (m[1] === "dilu_gateway_request_duration_seconds_bucket") {
        const le = labels.le === "+Inf" ? Infinity : Number(labels.le);
        get(labels.function).buckets.push([le, value]);
      }
    }
    for (const f of fns.values()) f.buckets.sort((a, b) => a[0] - b[0]);
    return fns;
  }

  // Prometheus' histogram_quantile: linear within the bucket; the highest finite bound for +Inf.
  function quantile(q, buckets) {
    if (buckets.length === 0) return NaN;
    const total = buckets[buckets.length - 1][1];
    if (!(total > 0)) return NaN;
    const rank = q * total;
    let lowerBound = 0;
    let lowerCount = 0;
    for (const [le, count] of buckets) {
      if (count >= rank) {
        if (le === Infinity) return lowerBound;
        return lowerBound + (le - lowerBound) * ((rank - lowerCount) / Math.max(count - lowerCount, 1e-12));
      }
      lowerBound = le;
      lowerCount = count;
    }
    return lowerBound;
  }

  // The window's growth of a function's counters: the latest snapshot less the oldest within WINDOW_MS
  // (everything since the server started while there is only one snapshot, or when `sinceStart`).
  function windowed(name, sinceStart) {
    const latest = snapshots[snapshots.length - 1];
    const now = latest && latest.fns.get(name);
    if (!now) return null;
    const base = !sinceStart && snapshots.length > 1 ? snapshots[0].fns.get(name) : null;
    const minus = (a, b) => Math.max(0, a - (b || 0));
    const buckets = now.buckets.map(([le, c], i) => [le, minus(c, base && base.buckets[i] && base.buckets[i][1])]);
    return {
      count: minus(now.count, base && base.count),
      violations: minus(now.violations, base && base.violations),
      buckets,
    };
  }

  // ---- Functions ----

  function renderFunctions(list) {
    const body = $("#functions tbody");
    body.replaceChildren();
    for (const f of list) {
      const phase = (f.status && f.status.phase) || "unknown";
      const instances = f.instances || [];
      const ready = instances.filter((i) => i.ready).length;
      const quota = f.profile || (f.spec && f.spec.quota) || null;
      // The last 30 s; with no request in them, everything since the server started (shown muted).
      let w = windowed(f.name, false);
      const recent = !!(w && w.count > 0);
      if (!recent) w = windowed(f.name, true);
      const span = recent ? "last 30 s" : "no requests in the last 30 s: since the server started";
      const ms = (s) => (isFinite(s) ? `${(s * 1000).toFixed(s < 0.01 ? 1 : 0)} ms` : "—");
      const latency = w && w.count > 0 ? `${ms(quantile(0.5, w.buckets))} / ${ms(quantile(0.99, w.buckets))}` : "—";
      const slo = w && w.count > 0 ? `${((100 * w.violations) / w.count).toFixed(1)}% (${w.violations})` : "—";
      const cls = recent ? "num" : "num muted";
      const error = f.last_error ? (typeof f.last_error === "string" ? f.last_error : JSON.stringify(f.last_error)) : "";
      const capacity = f.kind === "training" ? "—" : quota && quota.capacity_rps ? `${fixed(quota.capacity_rps, 1)} req/s` : "—";
      body.append(h("tr", { "data-function": f.name, "data-status": phase, "data-ready": ready },
        h("td", {}, h("strong", {}, f.name)),
        h("td", {}, f.kind || ""),
        h("td", { class: `status status-${phase}`, title: JSON.stringify(f.status || {}) }, phase),
        h("td", { class: "num" }, `${ready} / ${instances.length}` + (f.desired !== undefined ? ` (want ${f.desired})` : "")),
        h("td", { class: "num" }, quota ? `${fixed(quota.request, 2)} / ${fixed(quota.limit, 2)}` : "—"),
        h("td", { class: "num" }, capacity),
        h("td", { class: "num" }, f.kind === "training" ? "—" : fixed(f.rps, 1)),
        h("td", { class: cls, title: span }, latency),
        h("td", { class: cls, title: span }, slo),
        h("td", { class: "error" }, error)));
    }
    if (list.length === 0) body.append(h("tr", {}, h("td", { colspan: 10, class: "muted" }, "no functions deployed")));
  }

  function renderSummary() {
    const instances = lastFunctions.reduce((n, f) => n + (f.instances || []).length, 0);
    $("#summary").textContent =
      `${lastFunctions.length} functions · ${instances} instances · ${devices.size} devices`;
  }

  async function pollFunctions() {
    try {
      const [fns, metrics] = await Promise.all([
        getJSON("/v1/functions"),
        fetch("/metrics", { cache: "no-store" }).then((r) => (r.ok ? r.text() : "")),
      ]);
      const t = Date.now();
      snapshots.push({ t, fns: parseMetrics(metrics) });
      while (snapshots.length > 2 && snapshots[1].t <= t - WINDOW_MS) snapshots.shift();
      lastFunctions = fns.functions || [];
      renderFunctions(lastFunctions);
      renderSummary();
      rendered.functions = true;
      markFirstRender();
    } catch (e) {
      setConn("error", String(e.message || e));
    }
    setTimeout(pollFunctions, FUNCTION_POLL_MS);
  }

  // ---- Devices: a stacked area of each instance's measured usage; dashed, its allocated share ----

  function deviceCard(d) {
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("class", "chart");
    svg.setAttribute("data-device", d.uuid);
    const legend = h("table", { class: "legend" },
      h("thead", {}, h("tr", {}, h("th", {}, "instance"), h("th", {}, "function"), h("th", {}, "kind"),
        h("th", {}, "request / limit"), h("th", { title: "the token manager's allocation now" }, "share"),
        h("th", { title: "measured use of the device" }, "usage"))),
      h("tbody"));
    const title = h("h3");
    const card = h("div", { class: "device", "data-device": d.uuid }, title, svg, legend);
    $("#devices").append(card);
    return { card, title, svg, legend: legend.tBodies[0], samples: [] };
  }

  function renderChart(dev, now) {
    const svg = dev.svg;
    const width = Math.max(svg.clientWidth || 0, 300);
    const height = Math.max(svg.clientHeight || 0, 120);
    const pad = { l: 34, r: 8, t: 8, b: 18 };
    const ids = [];
    for (const s of dev.samples) for (const id of s.values.keys()) if (!ids.includes(id)) ids.push(id);
    let ymax = 1;
    for (const s of dev.samples) {
      let sum = 0;
      for (const v of s.values.values()) {
        sum += v.usage || 0;
        ymax = Math.max(ymax, v.share || 0);
      }
      ymax = Math.max(ymax, sum);
    }
    // The span grows with the history, from 30 s to HISTORY_MS.
    const first = dev.samples.length ? dev.samples[0].t : now;
    const span = Math.min(HISTORY_MS, Math.max(30000, now - first));
    const x = (t) => pad.l + ((t - (now - span)) / span) * (width - pad.l - pad.r);
    const y = (v) => height - pad.b - (v / ymax) * (height - pad.t - pad.b);
    const parts = [];
    for (let g = 0; g <= ymax + 1e-9; g += 0.25) {
      parts.push(`<line class="grid" x1="${pad.l}" x2="${width - pad.r}" y1="${y(g)}" y2="${y(g)}"/>`);
      if (Math.abs(g * 2 - Math.round(g * 2)) < 1e-9) {
        parts.push(`<text class="axis" x="${pad.l - 4}" y="${y(g) + 3}" text-anchor="end">${g.toFixed(1)}</text>`);
      }
    }
    const step = [10000, 30000, 60000].find((s) => span / s <= 6) || 60000;
    for (let ago = 0; ago <= span; ago += step) {
      const label = ago === 0 ? "now" : ago % 60000 === 0 ? `−${ago / 60000} min` : `−${ago / 1000} s`;
      const anchor = ago === 0 ? "end" : ago + step > span ? "start" : "middle";
      parts.push(`<text class="axis" x="${x(now - ago)}" y="${height - 4}" text-anchor="${anchor}">${label}</text>`);
    }
    if (dev.samples.length > 1) {
      const below = dev.samples.map(() => 0);
      for (const id of ids) {
        const top = dev.samples.map((s, i) => below[i] + ((s.values.get(id) || {}).usage || 0));
        let d = "";
        dev.samples.forEach((s, i) => { d += `${i ? "L" : "M"}${x(s.t).toFixed(1)},${y(top[i]).toFixed(1)}`; });
        for (let i = dev.samples.length - 1; i >= 0; i--) d += `L${x(dev.samples[i].t).toFixed(1)},${y(below[i]).toFixed(1)}`;
        const c = colorFor(id);
        parts.push(`<path d="${d}Z" fill="${c}" fill-opacity="0.55" stroke="${c}" stroke-width="1"/>`);
        top.forEach((v, i) => { below[i] = v; });
      }
      for (const id of ids) {
        let d = "";
        let drawing = false;
        for (const s of dev.samples) {
          const v = s.values.get(id);
          if (!v || typeof v.share !== "number") { drawing = false; continue; }
          d += `${drawing ? "L" : "M"}${x(s.t).toFixed(1)},${y(v.share).toFixed(1)}`;
          drawing = true;
        }
        if (d) parts.push(`<path class="limit" d="${d}" stroke="${colorFor(id)}"/>`);
      }
    }
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.innerHTML = parts.join("");
  }

  function renderDevice(d, now) {
    let dev = devices.get(d.uuid);
    if (!dev) {
      dev = deviceCard(d);
      devices.set(d.uuid, dev);
    }
    const values = new Map();
    for (const i of d.instances || []) values.set(i.id, i);
    dev.samples.push({ t: now, values });
    while (dev.samples.length && dev.samples[0].t < now - HISTORY_MS) dev.samples.shift();
    dev.title.replaceChildren(`${d.name || d.uuid} `,
      h("span", { class: "muted" },
        `${d.kind || ""} · ${d.node || ""} · ${d.uuid} · requests booked ${fixed(d.requested, 2)} · controller ${d.controller || "—"}`));
    dev.legend.replaceChildren();
    for (const i of d.instances || []) {
      const q = i.quota || {};
      dev.legend.append(h("tr", {
        "data-instance": i.id, "data-function": i.function || "", "data-kind": i.kind || "",
        "data-usage": fixed(i.usage, 4), "data-share": fixed(i.share, 4),
        "data-request": q.request, "data-limit": q.limit,
      },
      h("td", {}, h("span", { class: "swatch" }), i.id),
      h("td", {}, i.function || "—"),
      h("td", {}, i.kind || ""),
      h("td", { class: "num" }, `${fixed(q.request, 2)} / ${fixed(q.limit, 2)}`),
      h("td", { class: "num" }, fixed(i.share, 2)),
      h("td", { class: "num" }, fixed(i.usage, 2))));
    }
    // Swatch colours through the CSSOM (the policy admits no inline style attributes).
    for (const row of dev.legend.rows) row.querySelector(".swatch").style.background = colorFor(row.dataset.instance);
    if (!(d.instances || []).length) dev.legend.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "no instances")));
    renderChart(dev, now);
  }

  async function pollDevices() {
    try {
      const body = await getJSON("/v1/devices");
      const now = Date.now();
      const seen = new Set();
      for (const d of body.devices || []) {
        seen.add(d.uuid);
        renderDevice(d, now);
      }
      for (const [uuid, dev] of devices) {
        if (!seen.has(uuid)) {
          dev.card.remove();
          devices.delete(uuid);
        }
      }
      if (devices.size === 0 && !$("#devices .muted")) $("#devices").append(h("p", { class: "muted" }, "no devices"));
      rendered.devices = true;
      renderSummary();
      markFirstRender();
    } catch (e) {
      setConn("error", String(e.message || e));
    }
    setTimeout(pollDevices, DEVICE_POLL_MS);
  }

  // ---- Events: the server-sent-events stream, parsed from a fetch so every kind arrives ----

  function two(n) { return String(n).padStart(2, "0"); }

  function addEvent(e) {
    if (typeof e.seq === "number") {
      if (e.seq <= lastSeq) return;
      lastSeq = e.seq;
    }
    const when = new Date(e.at_ms || Date.now());
    const who = [e.function, e.instance].filter(Boolean).join(" / ");
    const item = h("li", { "data-seq": e.seq, "data-kind": e.kind, "data-function": e.function || "" },
      h("time", { datetime: when.toISOString(), title: when.toISOString() },
        `${two(when.getHours())}:${two(when.getMinutes())}:${two(when.getSeconds())}`),
      h("span", {}, h("span", { class: `badge badge-${e.kind}` }, e.kind)),
      h("span", { class: "msg", title: e.data ? JSON.stringify(e.data) : null },
        who ? h("span", { class: "who" }, who) : null, e.message || ""));
    const list = $("#timeline");
    list.prepend(item);
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
  }

  function handleBlock(block) {
    let kind = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") kind = value;
      else if (field === "data") data.push(value);
    }
    if (!data.length) return;
    if (kind === "lagged") {
      addEvent({ kind: "lagged", message: `the stream skipped events: ${data.join("\n")}`, at_ms: Date.now() });
      return;
    }
    try {
      addEvent(JSON.parse(data.join("\n")));
    } catch (_) {
      // Not an event: ignored.
    }
  }

  async function streamEvents() {
    try {
      const query = lastSeq ? `since=${lastSeq}` : "limit=300";
      const response = await fetch(`/v1/events/stream?${query}`, { cache: "no-store" });
      if (!response.ok || !response.body) throw new Error(`events: HTTP ${response.status}`);
      setConn("live", "live");
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          handleBlock(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
      setConn("connecting", "reconnecting");
    } catch (e) {
      setConn("error", `events: ${e.message || e}`);
    }
    setTimeout(streamEvents, 1000);
  }

  pollFunctions();
  pollDevices();
  streamEvents();
})();
