// The first page: each server's jobs with their latest status, live.
// Untrusted text (job and step names) is only ever set with textContent.
"use strict";

const STATUS_TEXT = { r: "running", s: "succeeded", f: "failed", i: "internal error", d: "aborted" };
const servers = new Map(); // id -> { section, tbody, rows: Map(jobId -> tr) }

function el(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function setBadge(tr, status, step) {
  const badge = tr.querySelector(".badge");
  badge.className = "badge " + (status || "none");
  badge.textContent = status ? STATUS_TEXT[status] || status : "never ran";
  tr.dataset.status = status || "";
  tr.querySelector(".step").textContent = status === "r" && step ? step : "";
}

function jobRow(server, job) {
  let tr = server.rows.get(job.job_id);
  if (!tr) {
    tr = el("tr", { "data-job-id": String(job.job_id) });
    tr.append(el("td", { class: "name" }), el("td", {}, ""), el("td", { class: "step" }),
              el("td", { class: "last" }), el("td", { class: "next" }));
    tr.children[1].append(el("span", { class: "badge" }));
    server.rows.set(job.job_id, tr);
    server.tbody.append(tr);
  }
  tr.querySelector(".name").textContent = job.job_name;
  tr.querySelector(".last").textContent = when(job.run_start);
  tr.querySelector(".next").textContent = job.enabled ? when(job.next_run) : "disabled";
  setBadge(tr, job.status, job.current_step);
}

function serverSection(info) {
  let server = servers.get(info.id);
  if (server) return server;
  const section = el("section", { class: "server", "data-server-id": String(info.id) });
  const h2 = el("h2", {}, info.name + " ");
  h2.append(el("span", { class: "state" }, info.state));
  const table = el("table");
  const head = el("tr");
  for (const t of ["Job", "Status", "Current step", "Last run", "Next run"]) head.append(el("th", {}, t));
  table.append(el("thead"), el("tbody"));
  table.tHead.append(head);
  section.append(h2, table);
  document.getElementById("servers").append(section);
  server = { section, tbody: table.tBodies[0], rows: new Map() };
  servers.set(info.id, server);
  return server;
}

function applyUpdate(u) {
  const server = servers.get(u.sid);
  if (!server) return;
  if (u.kind === "run") {
    const tr = server.rows.get(u.job_id);
    if (!tr) { refreshJobs(u.sid); return; }
    setBadge(tr, u.status, null);
    if (u.status === "r") tr.querySelector(".last").textContent = when(u.timestamp);
  } else if (u.kind === "step") {
    const tr = server.rows.get(u.job_id);
    if (tr && u.status === "r" && tr.dataset.status === "r") tr.querySelector(".step").textContent = u.step_name || "";
  } else if (u.kind === "job") {
    refreshJobs(u.sid);
  }
}

let socket = null;

function refreshJobs(sid) {
  if (socket) socket.emit("get_job_states", { sid });
}

async function main() {
  const list = await (await fetch("/api/servers", { credentials: "same-origin" })).json();
  for (const info of list) serverSection(info);
  const live = document.getElementById("live");
  socket = io("/pgagent", { transports: ["websocket"] });
  socket.on("connect", () => {
    live.textContent = "live";
    live.classList.remove("down");
    for (const info of list) {
      socket.emit("start_job_status_listener", { sid: info.id });
      refreshJobs(info.id);
    }
  });
  socket.on("disconnect", () => {
    live.textContent = "live connection lost, reconnecting…";
    live.classList.add("down");
  });
  socket.on("job_states", (msg) => {
    const server = servers.get(msg.sid);
    if (server) for (const job of msg.jobs) jobRow(server, job);
  });
  socket.on("job_status_update", applyUpdate);
  socket.on("job_status_batch", (msg) => msg.events.forEach(applyUpdate));
  socket.on("server_status", (msg) => {
    const server = servers.get(msg.sid);
    if (server) server.section.querySelector(".state").textContent = msg.state + (msg.reason ? ": " + msg.reason : "");
  });
}

document.addEventListener("DOMContentLoaded", main);
