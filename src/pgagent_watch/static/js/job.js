// A job's page: steps, schedules in words, runs newest first, a run's step
// runs with their output (folded when long, downloadable whole), actions.

import { el, clear, api, notice, confirmDialog, timeEl, fmtDuration, fmtElapsed, runBadge, badge, canOperate, me, STEP_STATUS, HEALTH_TEXT } from "./lib.js";
import { store, onChange, key } from "./store.js";
import { alertToggle, statusEditor } from "./alerts.js";
import { trendsPanel } from "./trends.js";

const FOLD_LINES = 12;
const FOLD_CHARS = 2000;
const KIND = { s: "SQL", b: "batch" };
const ON_ERROR = { f: "fail the run", s: "count as success", i: "ignore" };

function outputBlock(base, sr) {
  const wrap = el("div", { class: "output-wrap" });
  const text = sr.output || "";
  const download = el("a", { class: "download", href: `${base}/step-runs/${sr.step_run_id}/output`, download: "" }, `Download whole output (${sr.output_bytes.toLocaleString()} bytes)`);
  if (!text) { wrap.append(el("p", { class: "muted" }, "no output")); return wrap; }
  const lines = text.split("\n");
  const long = lines.length > FOLD_LINES || text.length > FOLD_CHARS || sr.output_truncated;
  const pre = el("pre", { class: "output" + (long ? " folded" : ""), tabindex: "0" });
  if (long) {
    const head = lines.slice(0, FOLD_LINES).join("\n").slice(0, FOLD_CHARS);
    pre.textContent = head;
    const more = el("button", { type: "button", class: "unfold", "aria-expanded": "false" }, `Show all ${lines.length.toLocaleString()} lines`);
    more.addEventListener("click", () => {
      const open = more.getAttribute("aria-expanded") === "true";
      pre.textContent = open ? head : text;
      pre.classList.toggle("folded", open);
      more.setAttribute("aria-expanded", String(!open));
      more.textContent = open ? `Show all ${lines.length.toLocaleString()} lines` : "Fold";
    });
    wrap.append(pre, more, " ", download);
    if (sr.output_truncated) wrap.append(el("p", { class: "muted" }, "The page shows the first 64 kB; the download holds all of it."));
  } else {
    pre.textContent = text;
    wrap.append(pre, download);
  }
  return wrap;
}

async function runSection(sid, jobId, runId, tz) {
  const base = `/api/servers/${sid}/jobs/${jobId}/runs/${runId}`;
  const sec = el("section", { class: "run", id: "run", "data-run-id": String(runId) });
  let run;
  try { run = await api("GET", base); } catch (e) { sec.append(el("p", { class: "error" }, e.message)); return sec; }
  const h = el("h3", {}, `Run ${run.run_id} `, runBadge(run.status), " ");
  h.append(timeEl(run.start, tz, true));
  if (run.duration !== null) h.append(` · ${fmtDuration(run.duration)}`);
  else if (run.status === "r" && run.start) h.append(" · ", el("span", { class: "elapsed", "data-since": run.start }, fmtElapsed(Date.now() - new Date(run.start).getTime())));
  sec.append(h);
  if (["f", "i", "d"].includes(run.status) && canOperate(sid)) {
    const retry = el("button", { type: "button", class: "retry" }, "Retry: run the job again");
    retry.addEventListener("click", async () => {
      if (!(await confirmDialog("Run this job again now? pgAgent runs all of its steps anew.", "Run again"))) return;
      try { const r = await api("POST", `${base}/retry`); notice(r.message, "ok"); } catch (e) { notice(e.message, "bad"); }
    });
    sec.append(retry);
  }
  if (!run.step_runs.length) sec.append(el("p", { class: "muted" }, "No step has run yet."));
  for (const sr of run.step_runs) {
    const art = el("article", { class: "step-run " + (sr.status || ""), "data-step-run-id": String(sr.step_run_id) });
    const head = el("header", {}, el("strong", {}, sr.step_name || `step ${sr.step_id}`), " ",
      badge(sr.status, STEP_STATUS[sr.status] || sr.status || ""), " ");
    if (sr.result !== null && sr.result !== undefined) head.append(el("span", { class: "result-code" }, `result ${sr.result}`), " ");
    head.append(timeEl(sr.start, tz, true));
    if (sr.duration !== null) head.append(` · ${fmtDuration(sr.duration)}`);
    art.append(head, outputBlock(base, sr));
    sec.append(art);
  }
  return sec;
}

function runsTable(sid, jobId, tz, selected) {
  const sec = el("section", { class: "runs" }, el("h3", {}, "Runs"));
  const table = el("table", { class: "runs" });
  const head = el("tr");
  for (const t of ["Run", "Status", "Started", "Duration", "Failed step"]) head.append(el("th", { scope: "col" }, t));
  const body = el("tbody");
  table.append(el("thead", {}, head), body);
  const more = el("button", { type: "button", class: "older" }, "Older runs");
  let before = null;
  let paged = false;
  const addRows = (runs) => {
    for (const r of runs) {
      const link = `#/servers/${sid}/jobs/${jobId}/runs/${r.run_id}`;
      const tr = el("tr", { class: r.run_id === selected ? "selected" : "", "data-run-id": String(r.run_id) },
        el("td", {}, el("a", { href: link }, `#${r.run_id}`)), el("td", {}, runBadge(r.status)), el("td", {}, timeEl(r.start, tz(), true)),
        el("td", {}, r.duration === null ? "" : fmtDuration(r.duration)), el("td", {}, r.failed_step || ""));
      body.append(tr);
    }
  };
  const load = async (reset) => {
    const p = new URLSearchParams({ limit: "25" });
    if (!reset && before) p.set("before", String(before));
    const page = await api("GET", `/api/servers/${sid}/jobs/${jobId}/runs?${p}`);
    if (reset) clear(body);
    addRows(page.runs);
    before = page.next_before;
    more.hidden = !before;
    if (reset && !page.runs.length) body.append(el("tr", {}, el("td", { colspan: "5", class: "empty" }, "never ran")));
  };
  more.addEventListener("click", () => { paged = true; load(false).catch((e) => notice(e.message, "bad")); });
  sec.append(table, more);
  // A live change reloads the newest page, unless the reader went back in time.
  return { sec, reload: () => load(true), refresh: () => (paged ? Promise.resolve() : load(true)) };
}

function actions(sid, job, refresh) {
  const box = el("div", { class: "actions" });
  const allowed = canOperate(sid);
  const act = async (path, question, label) => {
    if (!(await confirmDialog(question, label))) return;
    try { const r = await api("POST", `/api/servers/${sid}/jobs/${job.job_id}/${path}`); notice(r.message, "ok"); refresh(); } catch (e) { notice(e.message, "bad"); }
  };
  const runNow = el("button", { type: "button", class: "run-now", disabled: !allowed || !job.enabled || job.status === "r" }, "Run now");
  runNow.addEventListener("click", () => act("run-now", `Run ${job.job_name} now? pgAgent starts it at its next poll.`, "Run now"));
  const toggle = el("button", { type: "button", class: job.enabled ? "disable" : "enable", disabled: !allowed }, job.enabled ? "Disable" : "Enable");
  toggle.addEventListener("click", () => job.enabled
    ? act("disable", `Disable ${job.job_name}? pgAgent will not start it until it is enabled again.`, "Disable")
    : act("enable", `Enable ${job.job_name}? pgAgent runs it again on its schedules.`, "Enable"));
  box.append(runNow, " ", toggle);
  if (!allowed) box.append(" ", el("span", { class: "muted" }, `Signed in as ${me.name} (${me.role}): only operators and administrators can run, enable or disable jobs.`));
  return box;
}

export function showJob(view, sid, jobId, runId) {
  clear(view);
  const server = store.servers.get(sid);
  const zone = () => server?.timezone || detail?.server_timezone;
  const crumbs = el("nav", { class: "crumbs", "aria-label": "breadcrumb" }, el("a", { href: "#/" }, "Overview"), " › ", server ? server.name : `server ${sid}`, " › ");
  const title = el("h2", { class: "job-title" });
  const headBox = el("div", { class: "job-head" });
  const alertBox = el("div", { class: "job-alert" });
  const info = el("div", { class: "job-info" });
  const runBox = el("div", { class: "run-box" });
  const runs = runsTable(sid, jobId, zone, runId);
  view.append(crumbs, title, headBox, alertBox, runBox, runs.sec, info);
  let detail = null;

  const renderHead = () => {
    const live = store.jobs.get(key(sid, jobId)) || {};
    const job = { ...detail, ...live };
    clear(title).append(job.job_name || `job ${jobId}`, " ");
    title.append(runBadge(job.status));
    if (job.status === "r" && job.current_step) title.append(" ", el("span", { class: "step" }, job.current_step));
    for (const h of live.health || []) title.append(" ", badge("health " + h, HEALTH_TEXT[h] || h));
    if (!job.enabled) title.append(" ", badge("off", "disabled"));
    clear(headBox);
    if (job.description) headBox.append(el("p", { class: "description" }, job.description));
    const facts = el("p", { class: "facts" });
    if (job.enabled && job.next_run) facts.append("Next run ", timeEl(job.next_run, zone()), ". ");
    if (job.last_run) facts.append("Last run ", timeEl(job.last_run, zone()), ". ");
    if (zone()) facts.append(`Server time zone: ${zone()}.`);
    headBox.append(facts, actions(sid, job, reloadAll));
  };

  // Apart from the rest, so that a live update never resets boxes being ticked.
  const renderAlert = () => {
    clear(alertBox);
    const what = detail?.job_name || `job ${jobId}`;
    const t = alertToggle(sid, jobId, what);
    if (t) alertBox.append(el("div", { class: "alert-line" }, t), statusEditor(sid, jobId, what));
  };

  const renderInfo = () => {
    clear(info);
    const steps = el("section", { class: "steps" }, el("h3", {}, "Steps (pgAgent runs them in name order)"));
    const st = el("table");
    st.append(el("thead", {}, el("tr", {}, ...["Step", "Kind", "On error", "Enabled", "Code"].map((t) => el("th", { scope: "col" }, t)))));
    const sb = el("tbody");
    for (const s of detail.steps) {
      sb.append(el("tr", { class: s.enabled ? "" : "disabled" }, el("td", {}, s.step_name), el("td", {}, KIND[s.kind] || s.kind),
        el("td", {}, ON_ERROR[s.on_error] || s.on_error), el("td", {}, s.enabled ? "yes" : "no"),
        el("td", {}, el("details", {}, el("summary", {}, s.kind === "s" ? `in ${s.dbname || "?"}` : "script"), el("pre", { class: "code" }, s.code)))));
    }
    st.append(sb);
    steps.append(st);
    const sch = el("section", { class: "schedules" }, el("h3", {}, "Schedules"));
    if (!detail.schedules.length) sch.append(el("p", { class: "muted" }, "No schedule: this job runs only when asked (Run now)."));
    const ul = el("ul");
    for (const s of detail.schedules) {
      const li = el("li", { class: s.enabled ? "" : "disabled" }, el("strong", {}, s.name), ": ", el("span", { class: "words" }, s.words));
      if (s.next_run) li.append(" — next ", timeEl(s.next_run, zone()));
      else if (s.next_run_error) li.append(" — ", el("span", { class: "error" }, `pgAgent cannot compute its next run: ${s.next_run_error}`));
      if (!s.enabled) li.append(" (disabled)");
      if (s.end) li.append(", until ", timeEl(s.end, zone()));
      ul.append(li);
    }
    sch.append(ul);
    info.append(el("div", { class: "two" }, steps, sch), el("h3", {}, "Trends"), trendsPanel(sid, jobId));
  };

  const loadRun = async () => {
    if (!runId) return;
    const sec = await runSection(sid, jobId, runId, zone());
    clear(runBox).append(sec);
  };

  async function reloadAll() {
    try {
      detail = await api("GET", `/api/servers/${sid}/jobs/${jobId}`);
    } catch (e) {
      clear(view).append(crumbs, el("p", { class: "error" }, e.message)); return;
    }
    renderHead();
  }

  (async () => {
    await reloadAll();
    if (!detail) return;
    renderAlert();
    renderInfo();
    await Promise.all([runs.reload(), loadRun()]);
  })().catch((e) => notice(e.message, "bad"));

  let timer = null;
  const off = onChange((what, u) => {
    if (what === "subs") { if (detail) renderAlert(); return; }
    if (what === "states") { if (detail) renderHead(); return; }
    if (what !== "update" || u.sid !== sid || u.job_id !== jobId) return;
    if (detail) renderHead();
    if (u.kind === "job") { reloadAll(); return; }
    clearTimeout(timer);
    timer = setTimeout(() => {
      runs.refresh().catch(() => {});
      if (runId && u.run_id === runId) loadRun().catch(() => {});
    }, 300);
  });
  return () => { off(); clearTimeout(timer); };
}
