// Subscriptions ("alert me"), in-page toasts and desktop notifications,
// and the alerts view (outbox, resend, test mail, the demo's mail catcher).

import { el, clear, api, optional, notice, timeEl, me, SUB_STATUSES, HEALTH_TEXT, RUN_STATUS } from "./lib.js";
import { store, onChange, subscriptionFor, setSubscription, subscriptionStatus, subscribedTo } from "./store.js";

export const DEFAULT_STATUSES = ["failed", "aborted", "stuck", "overdue", "agent_down"];
const STATUS_WORDS = { ...HEALTH_TEXT, failed: "failed", succeeded: "succeeded", aborted: "aborted", started: "started" };

// --- The toggle -----------------------------------------------------------------

export function alertToggle(sid, jobId, what) {
  if (!store.subs) return null;
  const sub = subscriptionFor(sid, jobId);
  const on = Boolean(sub);
  const button = el("button", {
    type: "button", class: "alert-toggle" + (on ? " on" : ""), "aria-pressed": String(on),
    title: on ? `alerts on for ${what}: ${sub.statuses.join(", ")}` : `alert me about ${what}`,
    "data-sid": String(sid), "data-job-id": jobId === null ? "" : String(jobId),
  }, on ? "🔔 on" : "🔕 alert me");
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await setSubscription(sid, jobId, on ? [] : DEFAULT_STATUSES);
      notice(on ? `No more alerts for ${what}` : `You will be alerted when ${what} ${DEFAULT_STATUSES.map((s) => STATUS_WORDS[s]).join(", ")}`, "ok");
    } catch (e) {
      notice(`Could not change the subscription: ${e.message}`, "bad");
      button.disabled = false;
    }
  });
  return button;
}

// Checkboxes for every status, for a job's page and the alerts view.
export function statusEditor(sid, jobId, what) {
  const box = el("fieldset", { class: "statuses" }, el("legend", {}, `Alert me about ${what} when it…`));
  if (!store.subs) { box.hidden = true; return box; }
  const sub = subscriptionFor(sid, jobId);
  const chosen = new Set(sub ? sub.statuses : []);
  for (const s of SUB_STATUSES) {
    const input = el("input", { type: "checkbox", name: "status", value: s, checked: chosen.has(s) });
    box.append(el("label", {}, input, " ", STATUS_WORDS[s] || s));
  }
  const save = el("button", { type: "button", class: "save" }, "Save alerts");
  save.addEventListener("click", async () => {
    const statuses = [...box.querySelectorAll("input:checked")].map((i) => i.value);
    try {
      await setSubscription(sid, jobId, statuses);
      notice(statuses.length ? `Alerts for ${what}: ${statuses.join(", ")}` : `No more alerts for ${what}`, "ok");
    } catch (e) { notice(`Could not save: ${e.message}`, "bad"); }
  });
  box.append(save);
  return box;
}

// --- Toasts for subscribed changes ----------------------------------------------------

let queue = [];
let timer = null;

function runLink(u) {
  return u.run_id ? `#/servers/${u.sid}/jobs/${u.job_id}/runs/${u.run_id}` : u.job_id ? `#/servers/${u.sid}/jobs/${u.job_id}` : "#/";
}

function describeChange(u, status) {
  const server = store.servers.get(u.sid);
  const name = u.job_name || (u.job_id ? (store.jobs.get(`${u.sid}:${u.job_id}`) || {}).job_name : null) || (server ? server.name : "a server");
  let text = `${name}: ${STATUS_WORDS[status] || status}`;
  const step = store.failingStep.get(u.run_id);
  if (status === "failed" && step) text += ` at step "${step}"`;
  return text;
}

function flush() {
  timer = null;
  const items = queue;
  queue = [];
  if (!items.length) return;
  if (items.length <= 3) {
    for (const { u, status } of items) notice(describeChange(u, status), status === "succeeded" || status === "started" ? "ok" : "bad", { href: runLink(u), text: "see the run" });
  } else {
    const by = {};
    for (const { status } of items) by[status] = (by[status] || 0) + 1;
    const parts = Object.entries(by).map(([s, n]) => `${n} ${STATUS_WORDS[s] || s}`);
    notice(`${items.length} changes of jobs you follow: ${parts.join(", ")}`, "bad", { href: "#/", text: "see the overview" });
  }
  if (document.hidden && "Notification" in window && Notification.permission === "granted") {
    const body = items.length === 1 ? describeChange(items[0].u, items[0].status) : `${items.length} changes of jobs you follow`;
    try { new Notification("pgagent-watch", { body, tag: "pgagent-watch" }); } catch { /* not allowed here */ }
  }
}

onChange((what, u) => {
  if (what !== "update") return;
  const status = subscriptionStatus(u);
  if (!status || !subscribedTo(u.sid, u.job_id ?? null, status)) return;
  queue.push({ u, status });
  if (!timer) timer = setTimeout(flush, 700);
});

// --- The alerts view ---------------------------------------------------------------

const STATES = ["", "pending", "sending", "sent", "failed", "dead"];

async function alertsTable(state) {
  const rows = await optional("/api/alerts" + (state ? `?state=${encodeURIComponent(state)}` : ""));
  if (rows === null) return null;
  const list = Array.isArray(rows) ? rows : rows.alerts || [];
  const table = el("table", { class: "alerts" });
  const head = el("tr");
  for (const t of ["When", "To", "Channel", "Job", "Status", "State", "Attempts", "Error", ""]) head.append(el("th", { scope: "col" }, t));
  table.append(el("thead", {}, head));
  const body = el("tbody");
  for (const a of list) {
    const tr = el("tr", { class: "alert-row " + (a.state || "") });
    const job = a.job_id && a.server_id ? el("a", { href: runLink({ sid: a.server_id, job_id: a.job_id, run_id: a.run_id }) }, a.job_name || `job ${a.job_id}`) : (a.server_name || "");
    const resend = el("button", { type: "button" }, "Resend");
    resend.addEventListener("click", async () => {
      try { await api("POST", `/api/alerts/${a.id}/resend`); notice("Queued again", "ok"); } catch (e) { notice(`Resend refused: ${e.message}`, "bad"); }
    });
    tr.append(
      el("td", {}, timeEl(a.sent_at || a.created_at || a.event_at)),
      el("td", {}, a.recipient || a.to || ""), el("td", {}, a.channel || ""), el("td", {}, job),
      el("td", {}, a.status || ""), el("td", {}, el("span", { class: "state-" + (a.state || "") }, a.state || "")),
      el("td", {}, a.attempts ?? ""), el("td", { class: "error" }, a.last_error || ""),
      el("td", {}, a.state === "sent" || a.state === "failed" || a.state === "dead" ? resend : ""),
    );
    body.append(tr);
  }
  if (!list.length) body.append(el("tr", {}, el("td", { colspan: "9", class: "empty" }, "nothing here")));
  table.append(body);
  return table;
}

function mailView(mail) {
  const art = el("article", { class: "mail" });
  art.append(el("header", {},
    el("div", { class: "subject" }, mail.subject || "(no subject)"),
    el("div", {}, "From ", mail.mail_from || "", " to ", Array.isArray(mail.to) ? mail.to.join(", ") : mail.to || ""),
    el("div", {}, "Received ", timeEl(mail.received_at, null, true))));
  if (mail.html || mail.html_url) {
    // The mail's own HTML, with no script and no way out of its frame. A
    // srcdoc frame inherits this page's CSP, which drops the mail's inline
    // styles; a same-origin html_url served with its own CSP keeps them.
    const frame = el("iframe", { sandbox: "", title: `mail: ${mail.subject || ""}`, class: "mail-html", referrerpolicy: "no-referrer" });
    if (mail.html_url && String(mail.html_url).startsWith("/")) frame.src = mail.html_url;
    else if (Number.isInteger(mail.id)) frame.src = `/api/mailcatcher/${mail.id}/html`;
    else frame.srcdoc = mail.html;
    art.append(frame);
  }
  if (mail.text) {
    const d = el("details", { open: !mail.html }, el("summary", {}, "Plain text"), el("pre", { class: "output" }, mail.text));
    art.append(d);
  }
  return art;
}

let generation = 0;

export async function showAlerts(target) {
  // Built in a box of its own: a second visit while this one still loads
  // replaces the box, and the late answers land in the discarded one.
  const gen = ++generation;
  const view = el("div", { class: "alerts-view" });
  clear(target).append(view);
  view.append(el("h2", {}, "Alerts"));
  const perm = el("p", { class: "perm" });
  if ("Notification" in window && Notification.permission === "default") {
    const b = el("button", { type: "button" }, "Allow desktop notifications");
    b.addEventListener("click", () => Notification.requestPermission().then(() => showAlerts(target)));
    perm.append("Desktop notifications show when this tab is in the background. ", b);
  } else if ("Notification" in window) {
    perm.append(`Desktop notifications: ${Notification.permission === "granted" ? "on (when this tab is in the background)" : "blocked in this browser"}.`);
  }
  view.append(perm);

  // Subscriptions.
  const subs = el("section", { class: "subs" }, el("h3", {}, "What you are alerted about"));
  if (!store.subs && me.anonymous && me.method) subs.append(el("p", {}, "Alerts are per user: ", el("a", { href: "/login?next=/%23/alerts" }, "sign in"), " to be alerted."));
  else if (!store.subs) subs.hidden = true;
  else if (!store.subs.length) subs.append(el("p", {}, "Nothing yet: use “alert me” on a job or a server."));
  else {
    const ul = el("ul");
    for (const s of store.subs) {
      const server = store.servers.get(s.server_id);
      const job = s.job_id ? store.jobs.get(`${s.server_id}:${s.job_id}`) : null;
      const what = s.job_id ? el("a", { href: `#/servers/${s.server_id}/jobs/${s.job_id}` }, job ? job.job_name : `job ${s.job_id}`) : `every job of ${server ? server.name : s.server_id}`;
      const del = el("button", { type: "button" }, "Stop");
      del.addEventListener("click", async () => { await setSubscription(s.server_id, s.job_id ?? null, []); showAlerts(target); });
      ul.append(el("li", {}, what, `: ${s.statuses.join(", ")} by ${s.channel || "email"} `, del));
    }
    subs.append(ul);
  }
  if (store.subs) {
    // Every job of a server at once, with the statuses to alert on.
    for (const server of store.servers.values()) subs.append(statusEditor(server.id, null, `every job of ${server.name}`));
  }
  view.append(subs);

  // The outbox.
  const outbox = el("section", { class: "outbox" }, el("h3", {}, "Sent and waiting"));
  const pick = el("select", { "aria-label": "alert state" });
  for (const s of STATES) pick.append(el("option", { value: s }, s || "all"));
  const holder = el("div");
  const load = async () => {
    try {
      const t = await alertsTable(pick.value);
      if (t === null) { outbox.hidden = true; return; }
      clear(holder).append(t);
    } catch (e) { clear(holder).append(el("p", { class: "error" }, e.message)); }
  };
  pick.addEventListener("change", load);
  outbox.append(el("label", {}, "State ", pick), holder);
  view.append(outbox);
  await load();

  // A test alert.
  const test = el("form", { class: "test-mail" });
  const to = el("input", { type: "email", name: "to", required: true, placeholder: "you@example.org", "aria-label": "address" });
  test.append(el("h3", {}, "Send a test alert"), to, " ", el("button", { type: "submit" }, "Send"));
  test.addEventListener("submit", async (e) => {
    e.preventDefault();
    try { await api("POST", "/api/alerts/test", { to: to.value }); notice(`Test alert sent to ${to.value}`, "ok"); } catch (err) { notice(`Not sent: ${err.message}`, "bad"); }
  });
  if (outbox.hidden) test.hidden = true;
  view.append(test);

  // The demo's mail catcher.
  const mails = await optional("/api/mailcatcher").catch(() => null);
  if (gen !== generation) return;
  if (mails !== null) {
    const sec = el("section", { class: "mailcatcher" }, el("h3", {}, "Mail catcher (demo): mails as they arrived"));
    if (!mails.length) sec.append(el("p", {}, "No mail caught yet."));
    for (const m of mails) sec.append(mailView(m));
    view.append(sec);
  }
}

export { RUN_STATUS };
