// The overview: every job of every server, grouped by server, live.

import { el, clear, timeEl, fmtTime, fmtDuration, fmtElapsed, runBadge, badge, RUN_STATUS, HEALTH_TEXT } from "./lib.js";
import { store, onChange, key, subscriptionFor } from "./store.js";
import { alertToggle } from "./alerts.js";

const rows = new Map(); // key -> tr
const filter = { server: "", status: "", name: "" };
let root = null;
let unsubscribe = null;

const DAY = 24 * 3600 * 1000;

function jobStatusClass(job) {
  if (job.health && job.health.size) return "health";
  return job.status || "none";
}

function matches(job) {
  if (filter.server && String(job.sid) !== filter.server) return false;
  if (filter.name && !job.job_name.toLowerCase().includes(filter.name.toLowerCase())) return false;
  switch (filter.status) {
    case "": return true;
    case "running": return job.status === "r";
    case "failed": return job.status === "f" || job.status === "i";
    case "failed24": return (job.status === "f" || job.status === "i") && recent(job);
    case "succeeded": return job.status === "s";
    case "disabled": return !job.enabled;
    case "health": return job.health && job.health.size > 0;
    default: return true;
  }
}

function recent(job) {
  const t = job.last_finished || job.run_start;
  return t && Date.now() - new Date(t).getTime() < DAY;
}

function counts() {
  const c = { running: 0, failed24: 0, succeeded: 0, disabled: 0, health: 0 };
  for (const job of store.jobs.values()) {
    if (job.status === "r") c.running++;
    if ((job.status === "f" || job.status === "i") && recent(job)) c.failed24++;
    if (job.status === "s") c.succeeded++;
    if (!job.enabled) c.disabled++;
    if (job.health && job.health.size) c.health++;
  }
  for (const set of store.serverHealth.values()) c.health += set.size;
  return c;
}

const COUNT_LABELS = [
  ["running", "running"], ["failed24", "failed in the last 24 h"], ["succeeded", "succeeded"],
  ["disabled", "disabled"], ["health", "health conditions"],
];

function renderCounts() {
  const box = document.getElementById("counts");
  if (!box) return;
  const c = counts();
  clear(box);
  for (const [k, label] of COUNT_LABELS) {
    const b = el("button", { type: "button", class: "count " + k, "data-count": k, "aria-pressed": String(filter.status === k) },
      el("strong", {}, String(c[k])), " ", label);
    b.addEventListener("click", () => { filter.status = filter.status === k ? "" : k; syncFilterInputs(); applyFilter(); renderCounts(); });
    box.append(b);
  }
}

function statusCell(job) {
  const td = el("td", { class: "status" });
  const b = runBadge(job.status);
  if (job.status === "r") {
    b.textContent = "running ";
    b.append(el("span", { class: "elapsed", "data-since": job.run_start || "" }, job.run_start ? fmtElapsed(Date.now() - new Date(job.run_start).getTime()) : ""));
  }
  td.append(b);
  if (job.status === "r" && job.current_step) td.append(" ", el("span", { class: "step" }, job.current_step));
  for (const h of job.health || []) {
    const b2 = badge("health " + h, HEALTH_TEXT[h] || h);
    const info = job.healthInfo && job.healthInfo[h];
    const since = info && (info.since || info.opened_at);
    if (since) b2.title = `${HEALTH_TEXT[h] || h} since ${fmtTime(since, true)}`;
    td.append(" ", b2);
  }
  return td;
}

function durationCell(job) {
  const server = store.servers.get(job.sid) || {};
  const usual = server.usual ? server.usual[String(job.job_id)] : null;
  const td = el("td", { class: "duration" });
  if (job.status !== "r" && job.run_duration !== null && job.run_duration !== undefined) {
    td.append(fmtDuration(job.run_duration));
    if (usual) {
      const ratio = job.run_duration / usual;
      const span = el("span", { class: "usual" + (ratio > 2 ? " slow" : "") }, ` (usual ${fmtDuration(usual)})`);
      td.append(span);
    }
  } else if (usual) {
    td.append(el("span", { class: "usual" }, `usual ${fmtDuration(usual)}`));
  }
  return td;
}

function jobLink(job) {
  return `#/servers/${job.sid}/jobs/${job.job_id}`;
}

function fillRow(tr, job) {
  const server = store.servers.get(job.sid) || {};
  const tz = server.timezone;
  tr.className = "job " + jobStatusClass(job) + (job.enabled ? "" : " disabled");
  tr.dataset.status = job.status || "";
  clear(tr);
  const name = el("td", { class: "name" }, el("a", { href: jobLink(job) }, job.job_name));
  if (!job.enabled) name.append(" ", badge("off", "disabled"));
  const last = el("td", { class: "last" });
  const lastResult = job.status === "r" ? job.last_result : job.status;
  if (lastResult && lastResult !== "r") {
    const link = el("a", { href: `${jobLink(job)}/runs/${job.run_id}`, class: "result " + lastResult }, RUN_STATUS[lastResult] || lastResult);
    last.append(link);
    if (job.status !== "r" && job.failed_step) last.append(" at ", el("span", { class: "failed-step" }, job.failed_step));
    if (job.status !== "r" && job.run_start) last.append(" ", timeEl(job.run_start, tz));
  } else if (job.status === "r" && job.run_start) {
    last.append("started ", timeEl(job.run_start, tz));
  }
  const next = el("td", { class: "next" });
  if (job.enabled && job.next_run) next.append(timeEl(job.next_run, tz));
  else if (!job.enabled) next.append("—");
  tr.append(name, statusCell(job), last, next, durationCell(job));
  const toggle = alertToggle(job.sid, job.job_id, job.job_name);
  if (toggle) tr.append(el("td", { class: "alert" }, toggle));
}

function serverSection(server) {
  const section = el("section", { class: "server", "data-server-id": String(server.id) });
  const h2 = el("h2", {}, server.name, " ");
  h2.append(el("span", { class: "state " + server.state }, server.state + (server.reason ? `: ${server.reason}` : "")));
  const sh = store.serverHealth.get(server.id);
  if (sh) for (const h of sh) h2.append(" ", badge("health " + h, HEALTH_TEXT[h] || h));
  const toggle = alertToggle(server.id, null, `every job of ${server.name}`);
  if (toggle) h2.append(" ", toggle);
  const table = el("table", { class: "jobs" });
  const head = el("tr");
  const cols = [["Job", "name"], ["Status", "status"], ["Last result", "last"], ["Next run", "next"], ["Last duration", "duration"]];
  if (store.subs) cols.push(["Alert me", "alert"]);
  for (const [t, c] of cols) head.append(el("th", { scope: "col", class: c }, t));
  table.append(el("thead", {}, head), el("tbody"));
  section.append(h2, table);
  return section;
}

function renderAll() {
  if (!root) return;
  clear(root);
  rows.clear();
  const byServer = new Map();
  for (const job of store.jobs.values()) {
    if (!byServer.has(job.sid)) byServer.set(job.sid, []);
    byServer.get(job.sid).push(job);
  }
  const frag = document.createDocumentFragment();
  for (const server of store.servers.values()) {
    const section = serverSection(server);
    const tbody = section.querySelector("tbody");
    const jobs = (byServer.get(server.id) || []).sort((a, b) => a.job_name.localeCompare(b.job_name) || a.job_id - b.job_id);
    for (const job of jobs) {
      const tr = el("tr", { "data-job-id": String(job.job_id), "data-sid": String(job.sid) });
      fillRow(tr, job);
      rows.set(key(job.sid, job.job_id), tr);
      tbody.append(tr);
    }
    if (!jobs.length) tbody.append(el("tr", {}, el("td", { colspan: "6", class: "empty" }, "no jobs")));
    frag.append(section);
  }
  root.append(frag);
  applyFilter();
  renderCounts();
}

function applyFilter() {
  for (const [k, tr] of rows) {
    const job = store.jobs.get(k);
    tr.hidden = !job || !matches(job);
  }
  if (!root) return;
  for (const section of root.querySelectorAll("section.server")) {
    section.hidden = filter.server !== "" && section.dataset.serverId !== filter.server;
  }
}

let pending = new Set();
let scheduled = false;
function scheduleRow(k) {
  pending.add(k);
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => {
    scheduled = false;
    const todo = pending;
    pending = new Set();
    for (const k2 of todo) {
      const tr = rows.get(k2);
      const job = store.jobs.get(k2);
      if (!tr || !job) { renderAll(); return; }
      fillRow(tr, job);
      tr.hidden = !matches(job);
    }
    renderCounts();
  });
}

function syncFilterInputs() {
  const f = document.getElementById("filters");
  if (!f) return;
  f.querySelector("[name=server]").value = filter.server;
  f.querySelector("[name=status]").value = filter.status;
  f.querySelector("[name=name]").value = filter.name;
}

function filtersBar() {
  const form = el("form", { id: "filters", class: "filters", role: "search" });
  form.addEventListener("submit", (e) => e.preventDefault());
  const server = el("select", { name: "server", "aria-label": "server" }, el("option", { value: "" }, "all servers"));
  for (const s of store.servers.values()) server.append(el("option", { value: String(s.id) }, s.name));
  const status = el("select", { name: "status", "aria-label": "status" });
  for (const [v, t] of [["", "any status"], ["running", "running"], ["failed", "failed"], ["failed24", "failed in the last 24 h"], ["succeeded", "succeeded"], ["disabled", "disabled"], ["health", "health conditions"]]) status.append(el("option", { value: v }, t));
  const name = el("input", { name: "name", type: "search", placeholder: "job name", "aria-label": "job name" });
  const changed = () => { filter.server = server.value; filter.status = status.value; filter.name = name.value; applyFilter(); renderCounts(); };
  server.addEventListener("change", changed);
  status.addEventListener("change", changed);
  name.addEventListener("input", changed);
  form.append(el("label", {}, "Server ", server), el("label", {}, "Status ", status), el("label", {}, "Name ", name));
  return form;
}

export function showOverview(view) {
  clear(view);
  view.append(el("div", { id: "counts", class: "counts", "aria-label": "counts" }), filtersBar());
  syncFilterInputs();
  root = el("div", { id: "servers" });
  view.append(root);
  renderAll();
  unsubscribe = onChange((what, data) => {
    if (what === "update" && data.job_id) scheduleRow(key(data.sid, data.job_id));
    else if (what === "update" || what === "reset" || what === "states" || what === "server" || what === "subs") renderAll();
  });
  return () => { unsubscribe && unsubscribe(); unsubscribe = null; root = null; rows.clear(); };
}

// Elapsed time of running jobs, once a second, only where shown.
setInterval(() => {
  for (const span of document.querySelectorAll(".elapsed[data-since]")) {
    const since = span.dataset.since;
    if (since) span.textContent = fmtElapsed(Date.now() - new Date(since).getTime());
  }
}, 1000);

export function subscribedLabel(sid, jobId) { return subscriptionFor(sid, jobId) ? "on" : "off"; }
