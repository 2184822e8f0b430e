// What the page knows: servers, jobs with their live state, subscriptions,
// and the socket that keeps them current. Views subscribe with onChange().

import { api, optional, me, HEALTH_KINDS } from "./lib.js";

export const store = {
  servers: new Map(),   // sid -> {id, name, state, reason, timezone, usual}
  jobs: new Map(),      // "sid:job_id" -> job (JobState + health Set + last_result)
  subs: null,           // list of subscriptions, or null when the API is absent
  serverHealth: new Map(), // sid -> Set of health kinds without a job
  failingStep: new Map(),  // run_id -> name of its failed step
  connected: false,
  socket: null,
};

const handlers = new Set();
export function onChange(fn) { handlers.add(fn); return () => handlers.delete(fn); }
function emit(what, data) { for (const fn of handlers) { try { fn(what, data); } catch (e) { console.error(e); } } }

export const key = (sid, jobId) => `${sid}:${jobId}`;

function setJob(sid, job) {
  const k = key(sid, job.job_id);
  const old = store.jobs.get(k);
  const health = new Set(Array.isArray(job.health) ? job.health.map((h) => (typeof h === "string" ? h : h.kind)) : old ? old.health : []);
  const merged = { ...old, ...job, sid, health };
  if (Array.isArray(job.health)) merged.healthInfo = Object.fromEntries(job.health.filter((h) => h && h.kind).map((h) => [h.kind, h]));
  if (!old || old.status !== "r" || job.status !== "r") merged.last_result = job.status !== "r" ? job.status : old?.last_result ?? null;
  store.jobs.set(k, merged);
  return merged;
}

export async function loadServers() {
  const list = await api("GET", "/api/servers");
  for (const s of list) {
    store.servers.set(s.id, { ...(store.servers.get(s.id) || {}), ...s });
    // An agent down is a condition of the server, not of one job.
    if (s.health && s.health.agent_down) store.serverHealth.set(s.id, new Set(["agent_down"]));
  }
  await Promise.all(list.map(async (s) => {
    const [jobs, summary] = await Promise.all([
      api("GET", `/api/servers/${s.id}/jobs`).catch(() => []),
      optional(`/api/servers/${s.id}/jobs-summary`).catch(() => null),
    ]);
    const server = store.servers.get(s.id);
    if (summary) { server.timezone = summary.server_timezone; server.usual = summary.usual_duration; }
    for (const j of jobs) setJob(s.id, j);
  }));
  emit("reset");
}

export async function loadSubscriptions() {
  // Subscriptions belong to a user: the anonymous administrator has none.
  if (me.anonymous) { store.subs = null; emit("subs"); return; }
  try { store.subs = await optional("/api/subscriptions"); } catch { store.subs = null; }
  emit("subs");
}

export function subscriptionFor(sid, jobId) {
  if (!store.subs) return null;
  return store.subs.find((s) => s.server_id === sid && (s.job_id ?? null) === (jobId ?? null)) || null;
}

export async function setSubscription(sid, jobId, statuses) {
  const existing = subscriptionFor(sid, jobId);
  if (!statuses || statuses.length === 0) {
    if (existing) await api("DELETE", `/api/subscriptions/${existing.id}`);
  } else {
    await api("PUT", "/api/subscriptions", { server_id: sid, job_id: jobId ?? null, statuses });
  }
  await loadSubscriptions();
}

// The statuses a change means for subscriptions, or null.
export function subscriptionStatus(u) {
  if (u.kind === "run") return { r: "started", s: "succeeded", f: "failed", i: "failed", d: "aborted" }[u.status] || null;
  if (HEALTH_KINDS.includes(u.kind) && u.status === "start") return u.kind;
  return null;
}

export function subscribedTo(sid, jobId, status) {
  if (!store.subs) return false;
  return store.subs.some((s) =>
    s.server_id === sid && (s.job_id === null || s.job_id === undefined || s.job_id === jobId) &&
    (!s.statuses || s.statuses.includes(status)));
}

function applyUpdate(u) {
  const sid = u.sid;
  if (HEALTH_KINDS.includes(u.kind)) {
    const on = u.status === "start";
    if (u.job_id) {
      const job = store.jobs.get(key(sid, u.job_id));
      if (job) {
        if (on) job.health.add(u.kind); else job.health.delete(u.kind);
        // The start's details (since when, why) for the badge's title.
        job.healthInfo = { ...job.healthInfo, [u.kind]: on ? { kind: u.kind, since: (u.extra || {}).since, opened_at: u.timestamp, extra: u.extra } : undefined };
      }
    } else {
      const set = store.serverHealth.get(sid) || new Set();
      if (on) set.add(u.kind); else set.delete(u.kind);
      store.serverHealth.set(sid, set);
    }
    emit("update", u);
    return;
  }
  if (u.kind === "job") { requestStates(sid); return; }
  const job = store.jobs.get(key(sid, u.job_id));
  if (!job) { requestStates(sid); return; }
  if (u.kind === "run") {
    if (u.run_id && job.run_id && u.run_id < job.run_id) { emit("update", u); return; }
    if (u.status === "r") {
      if (job.status && job.status !== "r") job.last_result = job.status;
      Object.assign(job, { run_id: u.run_id, status: "r", run_start: u.timestamp, run_duration: null, current_step: null, failed_step: null });
    } else {
      Object.assign(job, { run_id: u.run_id, status: u.status, run_duration: u.duration, current_step: null, last_result: u.status, last_finished: u.timestamp,
        failed_step: store.failingStep.get(u.run_id) || null });
    }
  } else if (u.kind === "step") {
    if (u.status === "r" && job.status === "r" && u.run_id === job.run_id) job.current_step = u.step_name;
    if (u.status === "f" || u.status === "d") store.failingStep.set(u.run_id, u.step_name);
  }
  emit("update", u);
}

export function requestStates(sid) {
  if (store.socket && store.connected) store.socket.emit("get_job_states", { sid });
}

export function connect() {
  const socket = io("/pgagent", { transports: ["websocket"], reconnectionDelayMax: 5000, randomizationFactor: 0.5 });
  store.socket = socket;
  let wasLost = false;
  socket.on("connect", () => {
    store.connected = true;
    for (const sid of store.servers.keys()) {
      socket.emit("start_job_status_listener", { sid });
      socket.emit("get_job_states", { sid });
    }
    emit("live", { up: true, back: wasLost });
  });
  socket.on("disconnect", (reason) => {
    store.connected = false; wasLost = true; emit("live", { up: false });
    // A disconnect the server asked for is not retried by the client itself.
    if (reason === "io server disconnect") setTimeout(() => socket.connect(), 500 + Math.random() * 1500);
  });
  socket.on("connect_error", () => { if (!store.connected) { wasLost = true; emit("live", { up: false }); } });
  socket.on("job_states", (msg) => {
    const seen = new Set();
    for (const j of msg.jobs) { setJob(msg.sid, j); seen.add(key(msg.sid, j.job_id)); }
    for (const k of [...store.jobs.keys()]) if (k.startsWith(`${msg.sid}:`) && !seen.has(k)) store.jobs.delete(k);
    emit("states", msg.sid);
  });
  socket.on("job_status_update", applyUpdate);
  socket.on("job_status_batch", (msg) => { for (const u of msg.events) applyUpdate(u); });
  socket.on("server_status", (msg) => {
    const s = store.servers.get(msg.sid);
    if (s) { s.state = msg.state; s.reason = msg.reason; emit("server", msg.sid); }
  });
  return socket;
}
