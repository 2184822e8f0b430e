// Small helpers shared by every view. Untrusted text (job, step and server
// names, output, mail) only ever goes through textContent or an attribute.

export const RUN_STATUS = { r: "running", s: "succeeded", f: "failed", i: "internal error", d: "aborted" };
export const STEP_STATUS = { r: "running", s: "succeeded", f: "failed", i: "ignored", d: "aborted" };
export const SUB_STATUSES = ["failed", "succeeded", "aborted", "started", "stuck", "overdue", "agent_down", "flapping"];
export const HEALTH_KINDS = ["agent_down", "overdue", "stuck", "flapping"];
export const HEALTH_TEXT = { agent_down: "agent down", overdue: "overdue", stuck: "stuck", flapping: "flapping" };

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export function clear(node) {
  while (node.firstChild) node.firstChild.remove();
  return node;
}

// --- Identity and the API ------------------------------------------------------

export const me = { user_id: null, name: "anonymous", role: "admin", email: null, csrf_token: null, servers: null, anonymous: true };

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

export async function api(method, url, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET" && me.csrf_token) headers["X-CSRF-Token"] = me.csrf_token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(url, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const type = res.headers.get("content-type") || "";
  const data = type.includes("json") ? await res.json().catch(() => null) : await res.text();
  if (res.status === 401 && !url.startsWith("/api/me")) {
    // Signed out (or the session ended): the sign-in page brings us back.
    location.assign("/login?next=" + encodeURIComponent(location.pathname + location.hash));
  }
  if (!res.ok) {
    let detail = data && typeof data === "object" ? data.detail : data;
    if (Array.isArray(detail)) detail = detail.map((d) => d.msg).join("; ");
    else if (detail && typeof detail === "object") detail = detail.error || JSON.stringify(detail);
    throw new ApiError(res.status, detail || `${res.status} ${res.statusText}`);
  }
  return data;
}

// An endpoint that another part of the service may not provide yet: null on 404.
export async function optional(url) {
  try { return await api("GET", url); } catch (e) {
    if (e instanceof ApiError && (e.status === 404 || e.status === 405)) return null;
    throw e;
  }
}

export async function loadMe() {
  const got = await optional("/api/me").catch(() => null);
  if (got) Object.assign(me, got, { anonymous: got.user_id === null || got.user_id === undefined });
  return me;
}

export function canOperate(sid) {
  if (me.role === "admin") return true;
  if (me.role !== "operator") return false;
  return !Array.isArray(me.servers) || me.servers.some((s) => s === sid || s?.id === sid || s?.name === sid);
}

// --- Times: the viewer's zone, the server's on hover ------------------------------

const local = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const localSec = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

export function fmtTime(iso, seconds = false) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "" : (seconds ? localSec : local).format(d);
}

export function serverTime(iso, zone) {
  if (!iso || !zone) return null;
  try {
    const f = new Intl.DateTimeFormat(undefined, {
      year: "numeric", month: "short", day: "numeric", hour: "numeric", minute: "2-digit",
      second: "2-digit", timeZone: zone, timeZoneName: "short" });
    return `server time: ${f.format(new Date(iso))} (${zone})`;
  } catch { return null; }
}

// A <time> element: viewer's zone in the text, the server's in the tooltip.
export function timeEl(iso, zone, seconds = false) {
  const t = el("time", { datetime: iso || "" }, fmtTime(iso, seconds));
  const hover = serverTime(iso, zone);
  if (hover) t.title = hover;
  return t;
}

export function fmtDuration(sec) {
  if (sec === null || sec === undefined || Number.isNaN(sec)) return "";
  if (sec < 1) return `${Math.round(sec * 1000)} ms`;
  if (sec < 60) return `${sec < 10 ? sec.toFixed(1) : Math.round(sec)} s`;
  const s = Math.round(sec);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h ? `${h} h ${m} min` : `${m} min ${r} s`;
}

export function fmtElapsed(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const mm = String(m).padStart(2, "0"), ss = String(r).padStart(2, "0");
  return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

export function badge(status, text) {
  return el("span", { class: "badge " + (status || "none") }, text);
}

export function runBadge(status) {
  return badge(status, status ? RUN_STATUS[status] || status : "never ran");
}

// --- The confirmation dialog and short notices --------------------------------------

export function confirmDialog(question, action) {
  const dialog = document.getElementById("confirm");
  dialog.querySelector(".question").textContent = question;
  const ok = dialog.querySelector(".ok");
  ok.textContent = action;
  return new Promise((resolve) => {
    const done = (value) => {
      dialog.removeEventListener("close", onClose);
      ok.removeEventListener("click", onOk);
      resolve(value);
    };
    const onOk = () => { dialog.close("ok"); };
    const onClose = () => done(dialog.returnValue === "ok");
    dialog.returnValue = "";
    ok.addEventListener("click", onOk);
    dialog.addEventListener("close", onClose);
    dialog.showModal();
    dialog.querySelector(".cancel").focus();
  });
}

export function notice(text, kind = "info", link = null) {
  const box = document.getElementById("toasts");
  const t = el("div", { class: "toast " + kind, role: kind === "bad" ? "alert" : "status" });
  t.append(el("span", { class: "msg" }, text));
  if (link) t.append(" ", el("a", { href: link.href }, link.text));
  const close = el("button", { type: "button", class: "close", "aria-label": "dismiss" }, "×");
  close.addEventListener("click", () => t.remove());
  t.append(close);
  box.append(t);
  setTimeout(() => t.remove(), kind === "bad" ? 15000 : 8000);
  return t;
}
