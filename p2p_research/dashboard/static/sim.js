// The simulation's dashboard: every node's baseline curve, the swarm's best, the solo node, live counters.
// Live from /api/events while `simulate --dashboard` runs; from window.__SIM_STATE__ in the report's copy.
"use strict";

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const fmt = (v, d = 4) => (v === null || v === undefined || !Number.isFinite(Number(v)) ? "-" : Number(v).toFixed(d));

function renderSummary(s) {
  const parts = [`elapsed ${fmt(s.elapsed, 0)} / ${fmt(s.duration, 0)} s`, `nodes up ${s.up} / ${s.nodes}`,
    `experiments <b id="experiments">${esc(s.experiments)}</b>`, `verifications ${esc(s.verified)}`,
    `swarm best <b id="swarm-best">${fmt(s.best)}</b>`, `solo best ${fmt(s.solo_best)} (${esc(s.solo_exps ?? 0)} runs)`,
    `peers avg ${fmt(s.peers_avg, 1)}`];
  if (s.kills) parts.push(`churn kills ${esc(s.kills)}`);
  if (s.crashes) parts.push(`<span class="crash">crashed ${esc(s.crashes)}</span>`);
  $("summary").innerHTML = parts.join(" · ");
}

function renderChart(curves) {
  const svg = $("chart");
  const W = Math.max(300, svg.clientWidth || 900), H = 320, L = 56, R = 10, T = 10, B = 24;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const nodes = curves.nodes || {};
  const all = Object.values(nodes).flat().concat(curves.swarm || [], curves.solo || []);
  if (!all.length) {
    svg.innerHTML = `<text x="${W / 2}" y="${H / 2}" fill="#8a96a3" text-anchor="middle">no baselines yet</text>`;
    return;
  }
  const t1 = Math.max(curves.now || 0, ...all.map((p) => p[0])) + 1e-9;
  const vs = all.map((p) => p[1]).sort((a, b) => a - b);
  const y0 = vs[0], y1 = vs[Math.min(vs.length - 1, Math.floor(vs.length * 0.98))] + 1e-9;
  const X = (t) => L + (t / t1) * (W - L - R);
  const Y = (v) => T + (1 - (Math.min(v, y1) - y0) / (y1 - y0 || 1)) * (H - T - B);
  const path = (pts) => {
    if (!pts.length) return "";
    let d = `M ${X(pts[0][0])} ${Y(pts[0][1])}`;
    for (const [t, v] of pts.slice(1)) d += ` H ${X(t)} V ${Y(v)}`;
    return d + ` H ${X(t1)}`;
  };
  let out = "";
  for (let i = 0; i <= 4; i++) {
    const v = y0 + ((y1 - y0) * i) / 4;
    out += `<line x1="${L}" x2="${W - R}" y1="${Y(v)}" y2="${Y(v)}" stroke="#1e2630"/>`;
    out += `<text x="${L - 4}" y="${Y(v) + 4}" fill="#8a96a3" font-size="11" text-anchor="end">${v.toFixed(4)}</text>`;
  }
  for (const [name, pts] of Object.entries(nodes)) {
    out += `<path class="node-curve" d="${path(pts)}" fill="none" stroke="#8a96a3" stroke-width="1" opacity="0.45"><title>${esc(name)}</title></path>`;
  }
  if ((curves.solo || []).length) out += `<path id="solo-curve" d="${path(curves.solo)}" fill="none" stroke="#f5c04f" stroke-width="2" stroke-dasharray="6 4"/>`;
  if ((curves.swarm || []).length) out += `<path id="swarm-curve" d="${path(curves.swarm)}" fill="none" stroke="#4fb3ff" stroke-width="2.5"/>`;
  out += `<text x="${L}" y="${H - 6}" fill="#8a96a3" font-size="11">0 s</text>`;
  out += `<text x="${W - R}" y="${H - 6}" fill="#8a96a3" font-size="11" text-anchor="end">${t1.toFixed(0)} s</text>`;
  svg.innerHTML = out;
}

function renderNodes(nodes) {
  $("node-count").textContent = `${nodes.length}`;
  $("nodes").querySelector("tbody").innerHTML = nodes.map((n) => `<tr><td>${esc(n.name)}</td>
    <td>${esc(n.role)}${n.liar ? ' <span class="crash">liar</span>' : ""}</td><td>${n.up ? "up" : '<span class="crash">down</span>'}</td>
    <td>${esc(n.local ?? "-")}</td><td>${fmt(n.val, 6)}</td><td>${esc(n.peers ?? "-")}</td><td>${esc(n.verified ?? "-")}</td></tr>`).join("");
}

function render(state) {
  renderSummary(state.summary || {});
  renderChart(state.curves || {});
  renderNodes(state.nodes || []);
}

if (window.__SIM_STATE__) {
  render(window.__SIM_STATE__);
  $("live").textContent = "final state";
  $("live").className = "badge";
} else {
  const es = new EventSource("/api/events");
  es.addEventListener("state", (ev) => {
    render(JSON.parse(ev.data));
    $("live").textContent = "live";
    $("live").className = "badge ok";
  });
  es.onerror = () => { $("live").textContent = "ended or reconnecting…"; $("live").className = "badge bad"; };
}
