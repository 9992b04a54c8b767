// p2pswarm dashboard: polls the dashboard server's JSON and redraws the panels in place.
// Every value from the cluster goes into the page as a text node (el() below), never as markup.
"use strict";

const STATE_EVERY_MS = 1500;
const CHAOS_EVERY_MS = 10000;
const EVENTS_KEPT = 200;

// el("td", {className: "ok"}, "text", child, ...): an element; strings become text nodes.
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function replace(id, ...children) {
  document.getElementById(id).replaceChildren(...children);
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString();
}

function cssClass(word) {
  return String(word || "").replace(/[^a-z_]/g, "");
}

async function getJson(path) {
  const response = await fetch(path, {cache: "no-store"});
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

// ------------------------------------------------------------ the cluster

let lastState = null;

function renderHeader(state) {
  const c = state.cluster;
  const me = state.node || {};
  const text = c ? `cluster ${c.cluster_id || "-"} · leader ${c.leader_name || "none"} · term ${c.term}` +
                   ` · commit ${c.commit_index} · voters ${c.voters_alive}/${c.voters} alive`
                 : "no Raft group on this node yet";
  replace("cluster", `${text} · seen from ${me.name || "?"}`);
}

function renderZones(zones) {
  const parts = [];
  for (const zone of zones) {
    const rows = zone.nodes.map((n) => {
      let status = n.status || "unknown";
      if (n.availability && n.availability !== "active") status += ` (${n.availability})`;
      const labels = Object.entries(n.labels || {}).map(([k, v]) => el("span", {className: "chip"}, `${k}=${v}`));
      const running = n.tasks_running || 0, total = n.tasks_total || 0;
      return el("tr", {},
        el("td", {}, n.name + (n.self ? " ★" : "")),
        el("td", {className: cssClass(n.status)}, status),
        el("td", {className: n.role === "leader" ? "leader" : ""}, n.role || "-"),
        el("td", {}, n.self ? "-" : n.rtt_ms === null || n.rtt_ms === undefined ? "?" : `${n.rtt_ms.toFixed(1)} ms`),
        el("td", {className: running === total ? "" : "warn"}, `${running}/${total}`),
        el("td", {className: "labels"}, ...labels));
    });
    const head = el("tr", {}, ...["node", "state", "raft role", "rtt", "tasks", "labels"].map((h) => el("th", {}, h)));
    parts.push(el("h3", {}, zone.zone ? `zone ${zone.zone}` : "no zone label"),
               el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)));
  }
  replace("zones", ...(parts.length ? parts : [el("p", {className: "muted"}, "no nodes")]));
}

function renderServices(services) {
  const rows = services.map((s) => {
    const running = s.running || 0, desired = s.desired || 0;
    const health = running >= desired ? "ok" : running === 0 ? "bad" : "warn";
    const row = el("tr", {},
      el("td", {}, s.name),
      el("td", {}, s.mode || "-"),
      el("td", {className: `replicas ${health}`}, `${running}/${desired}`),
      el("td", {}, (s.ports || []).join(", ") || "-"),
      el("td", {}, s.update_state ? s.update_state + (s.update_message ? `: ${s.update_message}` : "") : "-"));
    row.dataset.service = s.name;
    return row;
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", {colSpan: 5, className: "muted"}, "no services")));
  document.querySelector("#services tbody").replaceChildren(...rows);
}

function renderTasks(groups) {
  const rows = groups.map((g) => el("tr", {},
    el("td", {}, g.node === null ? "(not placed)" : g.node),
    el("td", {}, ...(g.tasks.length ? g.tasks.map((t) => el("span", {className: `chip ${cssClass(t.state)}`},
      `${t.name} ${t.state}` + (t.port ? ` :${t.port}` : "") + (t.health ? ` (${t.health})` : "")))
      : [el("span", {className: "muted"}, "-")]))));
  replace("tasks", el("table", {}, el("tbody", {}, ...rows)));
}

function renderRoutes(mesh) {
  if (!mesh) {
    replace("routes", el("p", {className: "muted"}, "this node has no routing mesh"));
    return;
  }
  const parts = [];
  for (const port of mesh.ports) {
    const rows = port.routes.map((r) => el("tr", {},
      el("td", {}, r.service), el("td", {}, r.task), el("td", {}, r.node_name), el("td", {}, r.addr),
      el("td", {className: r.route === "excluded" ? "bad" : "ok"}, r.route), el("td", {className: "muted"}, r.why)));
    const head = el("tr", {}, ...["service", "task", "node", "backend", "route", "why"].map((h) => el("th", {}, h)));
    const path = port.path === "kernel" ? "kernel (nftables)" : `user space${port.path_why ? ": " + port.path_why : ""}`;
    parts.push(el("h3", {}, `port ${port.port}/${port.protocol}`, el("span", {className: "muted"}, ` · ${path}`)),
               el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)));
  }
  for (const [port, message] of Object.entries(mesh.bind_errors || {})) {
    parts.push(el("p", {className: "banner bad"}, `port ${port}: not served on this node: ${message}`));
  }
  replace("routes", ...(parts.length ? parts : [el("p", {className: "muted"}, "no published ports")]));
}

async function pollState() {
  try {
    const state = await getJson("/api/state");
    lastState = state;
    renderHeader(state);
    renderZones(state.zones);
    renderServices(state.services);
    renderTasks(state.tasks);
    renderRoutes(state.mesh);
    replace("status", `updated ${clock(state.time)}`);
    document.getElementById("status").className = "muted";
  } catch (err) {
    const age = lastState ? ` (showing data from ${clock(lastState.time)})` : "";
    replace("status", `${err.message}${age}`);
    document.getElementById("status").className = "bad";
  }
  setTimeout(pollState, STATE_EVERY_MS);
}

// ------------------------------------------------------------ events

function eventLine(e) {
  const attrs = Object.entries(e.attrs || {}).sort().map(([k, v]) => `${k}=${v}`).join(", ");
  return el("li", {}, `${clock(e.at)} ${e.type} ${e.action} ${e.subject}` + (attrs ? ` (${attrs})` : "") +
                      (e.local ? " local" : ""));
}

function showEvents(got) {
  const list = document.getElementById("events");
  if (!got.available) {
    list.replaceChildren(el("li", {className: "banner"}, got.reason));
    return;
  }
  if (list.querySelector(".banner")) list.replaceChildren();
  for (const e of got.events) list.prepend(eventLine(e));
  while (list.children.length > EVENTS_KEPT) list.lastChild.remove();
  if (!list.children.length) list.append(el("li", {className: "muted empty"}, "no events in the last 10 minutes"));
  else if (got.events.length) list.querySelectorAll(".empty").forEach((n) => n.remove());
}

// The server follows the node's events and pushes them (Server-Sent Events); the browser reconnects by
// itself after a break, and the stream resumes at the last cursor it saw (Last-Event-ID).
function followEvents() {
  const stream = new EventSource("/api/events/stream");
  stream.onmessage = (message) => showEvents(JSON.parse(message.data));
}

// ------------------------------------------------------------ the last chaos run

let chaosShown = null;
const charts = [];

function markerHook(markers) {
  return (u) => {
    const ctx = u.ctx;
    for (const m of markers) {
      const x = u.valToPos(m.t, "x", true);
      ctx.save();
      ctx.strokeStyle = m.color;
      ctx.lineWidth = 2 * devicePixelRatio;
      ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
      ctx.beginPath();
      ctx.moveTo(x, u.bbox.top);
      ctx.lineTo(x, u.bbox.top + u.bbox.height);
      ctx.stroke();
      ctx.restore();
    }
  };
}

function chart(id, title, data, series, markers) {
  const box = document.getElementById(id);
  const width = Math.max(320, box.clientWidth || 480);
  const options = {
    title, width, height: 220, scales: {x: {time: false}, y: {range: (u, min, max) => [0, Math.max(1, max) * 1.1]}},
    axes: [{label: "seconds since the run started"}, {}],
    series: [{label: "t (s)"}, ...series],
    hooks: {draw: [markerHook(markers)]},
  };
  box.replaceChildren();
  charts.push(new uPlot(options, data, box));
}

function renderChaos(c) {
  while (charts.length) charts.pop().destroy();
  if (!c.available) {
    replace("chaos-summary", el("span", {className: "banner"}, c.reason));
    replace("chart-replicas");
    replace("chart-requests");
    return;
  }
  const s = c.summary;
  const kills = c.kills.map((k) => `kill ${k.node} at ${k.t.toFixed(1)} s: seen dead by every node after ` +
    `${k.detected_after_s ?? "?"} s, replicas back after ${k.recovered_after_s ?? "?"} s`);
  replace("chaos-summary",
    el("div", {}, `${c.scenario} (${c.mode}, ${c.nodes} nodes, started ${c.started_at}) · ${s.requests_sent} ` +
                  `requests, error rate ${s.request_error_rate === null ? "-" : (100 * s.request_error_rate).toFixed(1) + "%"}` +
                  ` · ${s.writes_acked} writes acknowledged, ${s.acknowledged_writes_lost} lost`),
    ...kills.map((k) => el("div", {}, k)),
    el("div", {className: "muted"}, "red: kill · orange: detected · green: replicas back · blue: other actions"));
  const markers = [];
  for (const a of c.actions) markers.push({t: a.t, color: "#2f5fb3"});
  for (const k of c.kills) {
    markers.push({t: k.t, color: "#c8372d"});
    if (k.detected_after_s !== null) markers.push({t: k.t + k.detected_after_s, color: "#e08a00"});
    if (k.recovered_after_s !== null) markers.push({t: k.t + k.recovered_after_s, color: "#2f8f46"});
  }
  chart("chart-replicas", "failover: replicas running on nodes that are up",
        [c.replicas.t, c.replicas.running, c.replicas.desired],
        [{label: "running", stroke: "#2f8f46", width: 2, fill: "rgba(47,143,70,0.12)"},
         {label: "desired", stroke: "#6b7380", dash: [5, 5]}], markers);
  chart("chart-requests", "client requests per second",
        [c.requests.t, c.requests.ok, c.requests.failed],
        [{label: "ok", stroke: "#2f8f46", width: 2, fill: "rgba(47,143,70,0.15)"},
         {label: "failed", stroke: "#c8372d", width: 2, fill: "rgba(200,55,45,0.2)"}], markers);
}

async function pollChaos() {
  try {
    const c = await getJson("/api/chaos");
    const key = JSON.stringify([c.available, c.file, c.started_at, c.reason]);
    if (key !== chaosShown) {
      chaosShown = key;
      renderChaos(c);
    }
  } catch (err) {
    // shown again on the next poll
  }
  setTimeout(pollChaos, CHAOS_EVERY_MS);
}

pollState();
followEvents();
pollChaos();
