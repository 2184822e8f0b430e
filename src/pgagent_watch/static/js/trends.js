// Trends of a server or a job: charts (uPlot, vendored), a table and CSV.

import { el, clear, api, fmtDuration } from "./lib.js";
import { store } from "./store.js";

const viewerZone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
const COLORS = { runs: "#1a7f37", failed: "#cf222e", aborted: "#9a6700", rate: "#6e40c9", p50: "#0969da", p95: "#bc4c00" };

function query(range) {
  const p = new URLSearchParams({ tz: viewerZone });
  if (range.from && range.to) { p.set("from", range.from); p.set("to", range.to); } else p.set("days", String(range.days || 7));
  return p;
}

function chartWidth(holder) {
  return Math.max(280, Math.min(900, (holder.clientWidth || document.body.clientWidth - 40)));
}

function dayAxis() {
  return { incrs: [86400, 2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400], values: (u, vals) => vals.map((v) => new Date(v * 1000).toISOString().slice(5, 10)) };
}

const orNull = (n) => (n ? n : null);

function dayTs(day) { return Date.parse(day + "T12:00:00Z") / 1000; }

function runsChart(holder, data) {
  const xs = data.days.map((d) => dayTs(d.day));
  const bars = uPlot.paths.bars({ size: [0.7, 60] });
  const opts = {
    title: "Runs per day", width: chartWidth(holder), height: 220,
    scales: { x: { time: true }, rate: { range: [0, 100] } },
    series: [
      { value: (u, v) => (v ? new Date(v * 1000).toISOString().slice(0, 10) : "") },
      { label: "runs", stroke: COLORS.runs, fill: COLORS.runs + "cc", paths: bars, points: { show: false } },
      { label: "failed", stroke: COLORS.failed, fill: COLORS.failed + "ee", paths: bars, points: { show: false } },
      { label: "aborted", stroke: COLORS.aborted, fill: COLORS.aborted + "ee", paths: bars, points: { show: false } },
      { label: "failure rate %", stroke: COLORS.rate, width: 2, scale: "rate", value: (u, v) => (v === null || v === undefined ? "" : v.toFixed(1) + " %") },
    ],
    axes: [dayAxis(), { label: "runs" }, { side: 1, scale: "rate", label: "failure %", grid: { show: false } }],
  };
  const rows = [xs, data.days.map((d) => orNull(d.runs)), data.days.map((d) => orNull(d.failed + d.aborted)), data.days.map((d) => orNull(d.aborted)),
    data.days.map((d) => (d.failure_rate === null ? null : d.failure_rate * 100))];
  return new uPlot(opts, rows, holder);
}

function durationChart(holder, data) {
  const xs = data.days.map((d) => dayTs(d.day));
  const opts = {
    title: "Duration (seconds)", width: chartWidth(holder), height: 200,
    scales: { x: { time: true } },
    series: [
      { value: (u, v) => (v ? new Date(v * 1000).toISOString().slice(0, 10) : "") },
      { label: "p50", stroke: COLORS.p50, width: 2, spanGaps: true, value: (u, v) => fmtDuration(v) },
      { label: "p95", stroke: COLORS.p95, width: 2, spanGaps: true, value: (u, v) => fmtDuration(v) },
    ],
    axes: [dayAxis(), { label: "s" }],
  };
  return new uPlot(opts, [xs, data.days.map((d) => d.p50), data.days.map((d) => d.p95)], holder);
}

function numbersTable(data) {
  const table = el("table", { class: "numbers" });
  const head = el("tr");
  for (const t of ["Day", "Runs", "Succeeded", "Failed", "Aborted", "Failure rate", "p50", "p95"]) head.append(el("th", { scope: "col" }, t));
  table.append(el("thead", {}, head));
  const body = el("tbody");
  for (const d of data.days) {
    body.append(el("tr", {}, el("td", {}, d.day), el("td", {}, d.runs), el("td", {}, d.succeeded), el("td", {}, d.failed), el("td", {}, d.aborted),
      el("td", {}, d.failure_rate === null ? "" : (d.failure_rate * 100).toFixed(1) + " %"), el("td", {}, fmtDuration(d.p50)), el("td", {}, fmtDuration(d.p95))));
  }
  table.append(body);
  return table;
}

function jobList(title, jobs, sid, value) {
  const sec = el("div", { class: "toplist" }, el("h4", {}, title));
  if (!jobs.length) { sec.append(el("p", { class: "empty" }, "none")); return sec; }
  const ol = el("ol");
  for (const j of jobs) ol.append(el("li", {}, el("a", { href: `#/servers/${sid}/jobs/${j.job_id}` }, j.job_name), " ", el("span", { class: "muted" }, value(j))));
  sec.append(ol);
  return sec;
}

export function trendsPanel(sid, jobId = null) {
  const panel = el("section", { class: "trends" });
  const range = { days: 7 };
  const controls = el("div", { class: "range", role: "group", "aria-label": "range" });
  const body = el("div", { class: "trend-body" });
  const csv = el("a", { class: "csv", download: "" }, "Download CSV");
  const from = el("input", { type: "date", "aria-label": "from" });
  const to = el("input", { type: "date", "aria-label": "to" });
  const base = jobId ? `/api/servers/${sid}/jobs/${jobId}/trends` : `/api/servers/${sid}/trends`;
  const charts = [];
  const load = async () => {
    for (const b of controls.querySelectorAll("button[data-days]")) b.setAttribute("aria-pressed", String(!range.from && Number(b.dataset.days) === range.days));
    const p = query(range);
    let data;
    try { data = await api("GET", `${base}?${p}`); } catch (e) { clear(body).append(el("p", { class: "error" }, e.message)); return; }
    p.set("format", "csv");
    csv.href = `${base}?${p}`;
    while (charts.length) charts.pop().destroy();
    clear(body);
    const t = data.total;
    body.append(el("p", { class: "totals" }, `${t.runs} runs from ${data.from} to ${data.to} (${data.time_zone}), ${t.failed} failed`,
      t.failure_rate === null ? "" : ` (${(t.failure_rate * 100).toFixed(1)} %)`, t.p50 === null ? "" : `, p50 ${fmtDuration(t.p50)}, p95 ${fmtDuration(t.p95)}`));
    const c1 = el("div", { class: "chart" }), c2 = el("div", { class: "chart" });
    body.append(c1, c2);
    if (typeof uPlot !== "undefined") { charts.push(runsChart(c1, data), durationChart(c2, data)); }
    if (!jobId) body.append(el("div", { class: "toplists" },
      jobList("Slowest jobs (p95)", data.slowest, sid, (j) => `p95 ${fmtDuration(j.p95)}, p50 ${fmtDuration(j.p50)}`),
      jobList("Most failing jobs", data.most_failing, sid, (j) => `${j.failed} of ${j.runs} failed`)));
    body.append(el("details", { class: "numbers" }, el("summary", {}, "The numbers"), numbersTable(data)));
  };
  for (const d of [7, 14, 30, 90]) {
    const b = el("button", { type: "button", "data-days": String(d) }, `${d} days`);
    b.addEventListener("click", () => { range.days = d; delete range.from; delete range.to; load(); });
    controls.append(b);
  }
  const apply = el("button", { type: "button" }, "Apply range");
  apply.addEventListener("click", () => { if (from.value && to.value) { range.from = from.value; range.to = to.value; load(); } });
  controls.append(" ", el("label", {}, "from ", from), " ", el("label", {}, "to ", to), " ", apply, " ", csv);
  panel.append(controls, body);
  load();
  return panel;
}

export function showTrends(view, sid) {
  clear(view);
  const servers = [...store.servers.values()];
  const chosen = sid && store.servers.has(sid) ? sid : servers[0]?.id;
  const pick = el("select", { "aria-label": "server" });
  for (const s of servers) pick.append(el("option", { value: String(s.id), selected: s.id === chosen }, s.name));
  pick.addEventListener("change", () => { location.hash = `#/trends/${pick.value}`; });
  view.append(el("h2", {}, "Trends of ", pick));
  if (chosen) view.append(trendsPanel(chosen));
}
