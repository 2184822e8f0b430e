// The page's entry: identity, servers, the live socket, the hash router.
// All script lives in files (the Content-Security-Policy forbids inline
// script); untrusted text is only ever inserted as text.

import { el, clear, loadMe, me } from "./js/lib.js";
import { store, onChange, loadServers, loadSubscriptions, connect } from "./js/store.js";
import { showOverview } from "./js/overview.js";
import { showJob } from "./js/job.js";
import { showAlerts } from "./js/alerts.js";
import { showTrends } from "./js/trends.js";

let leave = null;

function route() {
  const view = document.getElementById("view");
  if (leave) { leave(); leave = null; }
  const hash = location.hash || "#/";
  let m;
  for (const a of document.querySelectorAll("nav.main a")) a.toggleAttribute("aria-current", a.getAttribute("href") === (hash.split("/").slice(0, 2).join("/") || "#/"));
  if ((m = hash.match(/^#\/servers\/(\d+)\/jobs\/(\d+)(?:\/runs\/(\d+))?\/?$/))) {
    leave = showJob(view, Number(m[1]), Number(m[2]), m[3] ? Number(m[3]) : null);
    document.title = "job · pgagent-watch";
  } else if ((m = hash.match(/^#\/trends(?:\/(\d+))?\/?$/))) {
    showTrends(view, m[1] ? Number(m[1]) : null);
    document.title = "trends · pgagent-watch";
  } else if (hash.startsWith("#/alerts")) {
    showAlerts(view);
    document.title = "alerts · pgagent-watch";
  } else {
    leave = showOverview(view);
    document.title = "pgagent-watch";
  }
  window.scrollTo(0, 0);
}

function banner(up, back) {
  const b = document.getElementById("banner");
  const live = document.getElementById("live");
  live.textContent = up ? "live" : "offline";
  live.className = "live " + (up ? "up" : "down");
  if (!up) {
    b.textContent = "The live connection is lost: statuses may be out of date. Reconnecting…";
    b.className = "banner down";
    b.hidden = false;
  } else if (back) {
    b.textContent = "The live connection is back; the page has caught up.";
    b.className = "banner back";
    b.hidden = false;
    setTimeout(() => { if (b.classList.contains("back")) b.hidden = true; }, 6000);
  }
}

async function main() {
  await loadMe();
  const who = document.getElementById("who");
  who.textContent = me.anonymous ? "" : `${me.name} (${me.role}) `;
  if (me.method === "session") who.append(el("a", { href: "/logout" }, "sign out"));
  try { await loadServers(); } catch (e) {
    clear(document.getElementById("view")).append(el("p", { class: "error" }, `Cannot load the servers: ${e.message}`));
    return;
  }
  await loadSubscriptions();
  onChange((what, data) => { if (what === "live") banner(data.up, data.back); });
  connect();
  window.addEventListener("hashchange", route);
  route();
  document.body.dataset.ready = "true";
}

main();
export { store };
