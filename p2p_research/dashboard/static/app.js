// The dashboard page: renders the node's state from Server-Sent Events (no reloads), no dependencies.
// Everything a peer controls (descriptions, names, posts) goes through esc() or textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const fmt = (v, d = 6) => (v === null || v === undefined || Number.isNaN(v) ? "-" : Number(v).toFixed(d));
const short = (s, n = 10) => esc(String(s ?? "").slice(0, n));
const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";
let state = null;
let selected = null;
let swarm = null;       // /api/swarm: the whole swarm at a glance (research/swarm_view.py)
let swarmAt = 0;        // when it was last asked for (ms): at most once per SWARM_EVERY_MS
const SWARM_EVERY_MS = 5000;

function ago(t) {
  if (!t) return "-";
  const s = Math.max(0, Date.now() / 1000 - t);
  if (s < 60) return `${s.toFixed(0)} s ago`;
  if (s < 3600) return `${(s / 60).toFixed(0)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

function duration(s) {
  if (s === null || s === undefined) return "-";
  return s < 60 ? `${s.toFixed(0)} s` : `${(s / 60).toFixed(1)} min`;
}

function renderHeader(st, id) {
  $("node-name").textContent = st.name || "p2p-research";
  $("node-id").textContent = st.peer_id || "";
  const reach = st.reachability || {};
  const parts = st.role === "relay"
    ? [`relay: serves every swarm its peers use`]
    : [`swarm ${st.swarm}`, `protocol ${String(st.protocol_id || "").slice(0, 12)}`, `budget ${st.budget}`,
       `baseline <b id="baseline-val">${fmt(st.baseline && st.baseline.val_bpb)}</b>`, `research: ${st.research}`];
  const seen = new Set((Array.isArray(state.experiments) ? state.experiments : []).filter((e) => e.origin === "peer").map((e) => e.peer));
  parts.push(`peers ${st.peers_connected} connected, swarm ${seen.size + 1} node(s) seen`, `reach ${reach.status || "?"}${reach.relayed ? " (relayed)" : ""}`,
             `up ${duration(st.uptime_s)}`);
  $("summary").innerHTML = parts.map((p) => (p.includes("<b") ? p : esc(p))).join(" · ");
}

function renderChart(st, exps) {
  const svg = $("chart");
  const W = Math.max(300, svg.clientWidth || 900), H = 280, L = 56, R = 10, T = 10, B = 24;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);  // one user unit per pixel: round dots, crisp text
  const pts = exps.filter((e) => e.val_bpb !== null && e.val_bpb !== undefined && e.finished_at);
  const lineage = ((st.baseline || {}).lineage || []).filter((b) => b.val_bpb !== null && b.adopted_at);
  const now = Date.now() / 1000;
  const xs = pts.map((e) => e.finished_at).concat(lineage.map((b) => b.adopted_at), [now]);
  const ys = pts.map((e) => e.val_bpb).concat(lineage.map((b) => b.val_bpb));
  if (!ys.length) {
    svg.innerHTML = `<text x="${W / 2}" y="${H / 2}" fill="#8a96a3" text-anchor="middle">no results yet</text>`;
    return;
  }
  const x0 = Math.min(...xs), x1 = Math.max(...xs) + 1e-9;
  const sorted = ys.slice().sort((a, b) => a - b);
  const y0 = sorted[0], y1 = sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.95))] + 1e-9;
  const X = (t) => L + ((t - x0) / (x1 - x0 || 1)) * (W - L - R);
  const Y = (v) => T + (1 - (Math.min(v, y1) - y0) / (y1 - y0 || 1)) * (H - T - B);
  let out = "";
  for (let i = 0; i <= 4; i++) {
    const v = y0 + ((y1 - y0) * i) / 4;
    out += `<line x1="${L}" x2="${W - R}" y1="${Y(v)}" y2="${Y(v)}" stroke="#1e2630"/>`;
    out += `<text x="${L - 4}" y="${Y(v) + 4}" fill="#8a96a3" font-size="11" text-anchor="end">${v.toFixed(4)}</text>`;
  }
  for (const e of pts) {
    const peer = e.origin === "peer";
    if (peer && e.status !== "kept") continue;
    const c = peer ? "#c792ea" : e.status === "kept" ? "#5bd17a" : "#8a96a3";
    out += `<circle cx="${X(e.finished_at)}" cy="${Y(e.val_bpb)}" r="${e.status === "kept" ? 3.5 : 2}" fill="${c}" opacity="0.85"><title>${esc(e.id.slice(0, 10))} ${esc(e.status)} ${fmt(e.val_bpb)} ${esc(e.description)}</title></circle>`;
  }
  const steps = lineage.slice().sort((a, b) => a.adopted_at - b.adopted_at);
  if (steps.length) {
    let d = `M ${X(steps[0].adopted_at)} ${Y(steps[0].val_bpb)}`;
    for (const s of steps.slice(1)) d += ` H ${X(s.adopted_at)} V ${Y(s.val_bpb)}`;
    d += ` H ${X(now)}`;
    out += `<path d="${d}" fill="none" stroke="#4fb3ff" stroke-width="2"/>`;
    for (const s of steps) {
      const adopted = s.found_by && s.found_by !== st.peer_id && s.found_by !== "local";
      if (adopted) out += `<rect x="${X(s.adopted_at) - 4}" y="${Y(s.val_bpb) - 4}" width="8" height="8" fill="#f5c04f" transform="rotate(45 ${X(s.adopted_at)} ${Y(s.val_bpb)})"><title>adopted ${fmt(s.val_bpb)}: ${esc(s.reason)}</title></rect>`;
    }
  }
  out += `<text x="${L}" y="${H - 6}" fill="#8a96a3" font-size="11">${esc(new Date(x0 * 1000).toLocaleTimeString())}</text>`;
  out += `<text x="${W - R}" y="${H - 6}" fill="#8a96a3" font-size="11" text-anchor="end">now</text>`;
  svg.innerHTML = out;
}

function renderCurrent(st) {
  const workers = st.workers && st.workers.length ? st.workers : [];
  const budget = st.budget || "";
  if (!workers.length && !st.current) {
    $("current").innerHTML = `<div class="muted">${esc(st.research)}</div>`;
    return;
  }
  const rows = (workers.length ? workers : [{ worker: 0, ...st.current }]).map((w) => {
    const cur = st.current && w.worker === 0 ? st.current : w;
    const frac = cur.progress !== undefined && cur.progress !== null ? cur.progress : null;
    const dev = Object.entries(w.device || {}).map(([k, v]) => `${k}=${v}`).join(", ") || "default device";
    return `<div><b>worker ${esc(w.worker)}</b> <span class="muted">${esc(dev)}</span> — ${esc(w.phase || cur.phase || "idle")}
      <span class="mono">${short(w.exp_id || cur.exp_id)}</span> ${esc((w.description || cur.description || "").slice(0, 120))}
      ${(w.waiting_for || cur.waiting_for) ? `<div class="muted small">waiting for ${esc(w.waiting_for || cur.waiting_for)}</div>` : ""}
      <div class="muted small">elapsed ${duration(w.elapsed_s ?? cur.elapsed_s)} of budget ${esc(budget)}${frac !== null ? ` · ${(100 * frac).toFixed(0)}%` : ""}
      · ${esc(w.experiments_done ?? "-")} done, ${esc(w.kept ?? "-")} kept</div>
      <div class="bar"><div style="width:${frac !== null ? (100 * frac).toFixed(1) : 0}%"></div></div></div>`;
  });
  $("current").innerHTML = rows.join("");
}

function renderHealth(st) {
  const net = st.net || {}, intake = st.intake || {}, reach = st.reachability || {};
  const rejected = Object.entries(net.rejected || {}).map(([k, v]) => `${k} ${v}`).join(", ") || "none";
  const rows = [
    ["gossip out", net.published ?? 0], ["gossip in", `${net.received ?? 0} accepted, ${net.duplicate ?? 0} duplicate`],
    ["rejected", rejected], ["intake refused", Object.entries(intake.rejected_by || {}).map(([k, v]) => `${k} ${v}`).join(", ") || "none"],
    ["libp2p drops", `${net.libp2p_dropped_rpcs ?? 0} RPCs, ${net.libp2p_dropped_messages ?? 0} messages`],
    ["banned peers", net.banned_peers ?? 0], ["sandbox", `${st.sandbox || "-"} (trust ${st.trust_policy || "-"})`],
    ["reachability", `${reach.status || "?"}${reach.relayed ? `, relayed: ${(reach.relayed_addrs || []).join(", ")}` : ""}`],
    ["experiments", `${(st.experiments || {}).local ?? 0} local, ${(st.experiments || {}).from_peers ?? 0} from peers`],
  ];
  $("health").innerHTML = `<div class="kv">${rows.map(([k, v]) => `<div>${esc(k)}</div><div>${esc(v)}</div>`).join("")}</div>`;
}

function renderLineage(st) {
  const body = $("lineage").querySelector("tbody");
  const steps = ((st.baseline || {}).lineage || []).slice().reverse();
  body.innerHTML = steps.map((s) => `<tr class="click" data-exp="${esc(s.commit)}"><td class="mono">${short(s.commit, 7)}</td>
    <td>${fmt(s.val_bpb)}</td><td class="mono">${short(s.found_by, 16)}</td><td>${esc(s.reason)}</td><td>${ago(s.adopted_at)}</td></tr>`).join("");
}

function filtered(exps) {
  const status = $("f-status").value, origin = $("f-origin").value, peer = $("f-peer").value.trim();
  return exps.filter((e) => (!status || e.status === status) && (!origin || e.origin === origin)
    && (!peer || String(e.peer || "").startsWith(peer)));
}

function renderExperiments(exps) {
  const list = filtered(exps).slice().reverse();
  $("exp-count").textContent = `${list.length} shown of ${exps.length}`;
  $("experiments").querySelector("tbody").innerHTML = list.slice(0, 200).map((e) => `<tr class="click" data-exp="${esc(e.id)}">
    <td>${ago(e.finished_at || e.started_at)}</td><td class="mono">${short(e.id)}</td><td class="${esc(e.status)}">${esc(e.status)}</td>
    <td>${fmt(e.val_bpb)}</td><td class="mono">${e.origin === "local" ? "this node" : short(e.peer, 16)}</td>
    <td>${esc((e.description || "").slice(0, 140))}</td></tr>`).join("");
}

function reputation(r) {
  if (r === undefined || r === null) return "-";
  if (typeof r !== "object") return String(r);
  const parts = [`${r.confirmed ?? 0} confirmed`, `${r.refuted ?? 0} refuted`];
  if (r.vouches) parts.push("vouches");
  if (r.ignored) parts.push("ignored");
  return parts.join(", ");
}

function renderPeers(peers) {
  $("peer-count").textContent = `${peers.length} connected`;
  $("peers").querySelector("tbody").innerHTML = peers.map((p) => {
    const proto = p.role === "relay" ? "relay (any swarm)" : p.same_protocol === null || p.same_protocol === undefined ? "?"
      : p.same_protocol ? "same" : `other (${p.budget || "?"})`;
    const a = p.announced || {};
    return `<tr><td>${esc(p.name)}</td><td class="mono">${short(p.peer_id, 20)}</td><td>${esc(proto)}</td>
      <td>${esc(p.direction)}${p.connection === "relayed" ? " (relayed)" : ""}</td>
      <td>${p.latency_ms === null || p.latency_ms === undefined ? "-" : `${Number(p.latency_ms).toFixed(1)} ms`}</td>
      <td>${esc(reputation(p.reputation))}</td>
      <td>${esc(a.results ?? 0)} results, best ${fmt(a.best_val_bpb)}</td></tr>`;
  }).join("");
}

// A small Markdown subset, on escaped text: **bold**, *italic*, `code`, [text](http...), line breaks.
function markdown(text) {
  let h = esc(text);
  h = h.replace(/`([^`]+)`/g, "<code>$1</code>").replace(/\*\*([^*]+)\*\*/g, "<b>$1</b>")
    .replace(/\*([^*]+)\*/g, "<i>$1</i>")
    .replace(/\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g, '<a href="$2" rel="noopener noreferrer" target="_blank">$1</a>');
  return h.replace(/\n/g, "<br>");
}

function renderBoard(posts) {
  $("board").innerHTML = (posts || []).slice().reverse().map((p) => `<div class="post"><div class="who">${esc(p.name || "")}
    <span class="mono">${short(p.author, 16)}</span> · ${ago(p.ts)}</div><div class="body">${markdown(p.text)}</div></div>`).join("")
    || '<div class="muted">no posts yet</div>';
}

// The whole swarm at a glance: the same data as `p2p-research swarm` (computed by the node, drawn here).
async function loadSwarm() {
  swarmAt = Date.now();
  try {
    const r = await fetch("/api/swarm");
    swarm = await r.json();
  } catch (e) {
    return;
  }
  renderSwarm();
}

const nodeName = (n) => (n.self ? "this node" : short(n.peer, 16));

function stepPath(points, X, Y, until) {
  let d = `M ${X(points[0][0])} ${Y(points[0][1])}`;
  for (const [t, v] of points.slice(1)) d += ` H ${X(t)} V ${Y(v)}`;
  return `${d} H ${X(until)}`;
}

function renderSwarmChart(sw) {
  const svg = $("swarm-chart");
  const W = Math.max(300, svg.clientWidth || 900), H = 200, L = 56, R = 10, T = 10, B = 24;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const best = sw.swarm_best_over_time || [];
  const nodes = (sw.nodes || []).filter((n) => (n.best_over_time || []).length).slice(0, 12);
  if (!best.length) {
    svg.innerHTML = `<text x="${W / 2}" y="${H / 2}" fill="#8a96a3" text-anchor="middle">no kept results in the swarm yet</text>`;
    return;
  }
  const pts = nodes.flatMap((n) => n.best_over_time).concat(best);
  const now = Math.max(Date.now() / 1000, ...pts.map((p) => p[0]));
  const x0 = Math.min(...pts.map((p) => p[0])), x1 = now + 1e-9;
  const y0 = Math.min(...pts.map((p) => p[1])), y1 = Math.max(...pts.map((p) => p[1])) + 1e-9;
  const X = (t) => L + ((t - x0) / (x1 - x0 || 1)) * (W - L - R);
  const Y = (v) => T + (1 - (v - y0) / (y1 - y0 || 1)) * (H - T - B);
  let out = "";
  for (let i = 0; i <= 3; i++) {
    const v = y0 + ((y1 - y0) * i) / 3;
    out += `<line x1="${L}" x2="${W - R}" y1="${Y(v)}" y2="${Y(v)}" stroke="#1e2630"/>`;
    out += `<text x="${L - 4}" y="${Y(v) + 4}" fill="#8a96a3" font-size="11" text-anchor="end">${v.toFixed(4)}</text>`;
  }
  for (const n of nodes) {
    out += `<path class="node-best" d="${stepPath(n.best_over_time, X, Y, now)}" fill="none" stroke="#8a96a3" stroke-width="1" opacity="0.6"><title>${nodeName(n)} best ${fmt(n.best)}</title></path>`;
  }
  out += `<path id="swarm-best-line" d="${stepPath(best, X, Y, now)}" fill="none" stroke="#4fb3ff" stroke-width="2.5"/>`;
  for (const [t, v] of best) out += `<circle cx="${X(t)}" cy="${Y(v)}" r="3" fill="#4fb3ff"><title>${fmt(v)} at ${esc(new Date(t * 1000).toLocaleTimeString())}</title></circle>`;
  out += `<text x="${L}" y="${H - 6}" fill="#8a96a3" font-size="11">${esc(new Date(x0 * 1000).toLocaleTimeString())}</text>`;
  out += `<text x="${W - R}" y="${H - 6}" fill="#8a96a3" font-size="11" text-anchor="end">now</text>`;
  svg.innerHTML = out;
}

function renderSwarm() {
  if (!swarm) return;
  if (swarm.error) {
    $("swarm-summary").textContent = swarm.error;
    return;
  }
  const nodes = swarm.nodes || [];
  const best = (swarm.swarm_best_over_time || []).slice(-1)[0];
  $("swarm-summary").textContent = `${nodes.length} node(s), ${swarm.runs} results, ${swarm.kept} kept`
    + (best ? `, best ${fmt(best[1])}` : "");
  renderSwarmChart(swarm);
  $("swarm-nodes").querySelector("tbody").innerHTML = nodes.slice(0, 50).map((n) => `<tr><td class="mono">${nodeName(n)}</td>
    <td>${esc(n.runs)}</td><td>${fmt(n.best)}</td><td>${esc((n.best_over_time || []).length)} time(s)</td></tr>`).join("");
  const finders = nodes.filter((n) => n.kept > 0).sort((a, b) => b.kept - a.kept);
  const kept = finders.reduce((s, n) => s + n.kept, 0) || 1;
  $("swarm-finders").querySelector("tbody").innerHTML = finders.slice(0, 50).map((n) => `<tr><td class="mono">${nodeName(n)}</td>
    <td>${esc(n.kept)}</td><td>${((100 * n.kept) / kept).toFixed(0)}%</td></tr>`).join("")
    || '<tr><td colspan="3" class="muted">no kept results yet</td></tr>';
  $("swarm-knobs").querySelector("tbody").innerHTML = (swarm.knobs || []).slice(0, 20).map((k) => `<tr><td class="mono">${esc(k.knob)}</td>
    <td>${esc(k.tried)}</td><td>${esc(k.kept)}</td><td>${fmt(k.gain)}</td></tr>`).join("")
    || '<tr><td colspan="4" class="muted">no named changes yet</td></tr>';
  const ideas = ((swarm.across_hardware || {}).ideas || []).slice(-30).reverse();
  const gain = (v) => (v === null || v === undefined ? "?" : (v >= 0 ? "+" : "") + fmt(v));
  $("swarm-ideas").querySelector("tbody").innerHTML = ideas.map((i) => `<tr><td class="mono">${short(i.from_protocol, 12)}</td>
    <td>${esc(i.from_budget)}</td><td>${gain(i.gain_there)}</td><td>${esc(i.status_here)}</td><td>${gain(i.gain_here)}</td>
    <td>${esc(String(i.description || "").slice(0, 90))}</td></tr>`).join("")
    || '<tr><td colspan="6" class="muted">no ideas from sibling protocols tried yet</td></tr>';
}

function render() {
  if (!state) return;
  const st = state.status || {};
  const exps = Array.isArray(state.experiments) ? state.experiments : [];
  renderHeader(st, state.id || {});
  renderChart(st, exps);
  renderCurrent(st);
  renderHealth(st);
  renderLineage(st);
  renderExperiments(exps);
  renderPeers(Array.isArray(state.peers) ? state.peers : []);
  renderBoard(Array.isArray(state.board) ? state.board : []);
  if (Date.now() - swarmAt >= SWARM_EVERY_MS) loadSwarm();  // the state changed: results may have come in
}

async function showExperiment(id) {
  selected = id;
  const r = await fetch(`/api/experiment/${encodeURIComponent(id.slice(0, 40))}`);
  const d = await r.json();
  $("detail-section").classList.remove("hidden");
  $("detail-id").textContent = id.slice(0, 12);
  if (d.error) {
    $("detail-meta").textContent = d.error;
    $("detail-diff").textContent = "";
    $("detail-receipts").textContent = "";
    return;
  }
  const e = d.experiment;
  $("detail-meta").innerHTML = `<div class="kv"><div>commit</div><div class="mono">${esc(e.commit)}</div><div>parent</div>
    <div class="mono">${esc(e.parent)}</div><div>proposed by</div><div class="mono">${esc(e.origin === "local" ? "this node" : e.proposer || "a peer")}</div>
    <div>runs</div><div>${(d.runs || []).map((r) => `${esc(r.kind)} ${esc(r.status)} ${fmt(r.val_bpb)} by ${r.origin === "local" ? "this node" : short(r.peer, 16)}`
      + (r.log ? ` <span class="muted small mono">log ${esc(r.log)}${r.agent_log ? ` · agent ${esc(r.agent_log)}` : ""} (p2p-research logs ${short(e.id, 10)} -f)</span>` : "")).join("<br>")}</div>
    <div>change</div><div>${esc(e.description)}</div></div>`;
  $("detail-diff").innerHTML = (d.diff || "(objects not here)").split("\n").map((l) => {
    const cls = l.startsWith("+") ? "add" : l.startsWith("-") ? "del" : l.startsWith("@@") ? "hunk" : "";
    return `<span class="${cls}">${esc(l)}</span>`;
  }).join("\n");
  $("detail-receipts").textContent = d.receipts && d.receipts.length
    ? JSON.stringify(d.receipts, null, 2) : "no signed receipt yet (the run has not finished)";
  $("detail-section").scrollIntoView({ behavior: "smooth" });
}

document.addEventListener("click", (ev) => {
  const tr = ev.target.closest("tr.click");
  if (tr && tr.dataset.exp) showExperiment(tr.dataset.exp);
});
$("detail-close").addEventListener("click", () => { $("detail-section").classList.add("hidden"); selected = null; });
for (const id of ["f-status", "f-origin", "f-peer"]) $(id).addEventListener("input", render);

$("post-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const text = $("post-text").value;
  if (!text.trim()) return;
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const r = await fetch("/api/board", { method: "POST", headers, body: JSON.stringify({ text }) });
  const d = await r.json();
  $("post-status").textContent = r.ok ? "posted" : d.error;
  if (r.ok) $("post-text").value = "";
});

function connect() {
  const es = new EventSource("/api/events");
  es.addEventListener("state", (ev) => {
    state = JSON.parse(ev.data);
    $("live").textContent = "live";
    $("live").className = "badge ok";
    render();
  });
  es.onerror = () => { $("live").textContent = "reconnecting…"; $("live").className = "badge bad"; };
}

fetch("/api/state").then((r) => r.json()).then((d) => { state = d; render(); }).catch(() => {});
connect();
