// fpmon review page: a hash-routed single page over the sidecar's /v1 API (ES modules, no build step, no CDN).
//   #/runs                                         runs list, each run's verdict
//   #/runs/<id>?charts=&x=&log=&lin=&compare=      run view (runview.js): the view's state lives in the URL
//   #/runs/<id>/steps/<step>                       step view (stepview.js): any processed step, ←/→ to move
//   #/alerts?run=<id>&status=&type=                alert queue across runs
//   #/alerts/<id>                                  alert view (alertview.js): the step's context + the review
// Response texts are untrusted: every text goes through textContent (the h() helper), never innerHTML.

import { ApiError, initToken } from "./api.js";
import { renderAlert } from "./alertview.js";
import { renderQueue, renderRuns } from "./lists.js";
import { renderRun } from "./runview.js";
import { renderStep } from "./stepview.js";
import { h, state, view } from "./util.js";

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "") || "runs";
  const [path, query = ""] = raw.split("?");
  return { parts: path.split("/").filter(Boolean), params: new URLSearchParams(query) };
}

function teardown() {
  for (const timer of state.timers) clearInterval(timer);
  for (const chart of state.charts) chart.destroy();
  for (const cleanup of state.cleanups) cleanup();
  state.timers = [];
  state.charts = [];
  state.cleanups = [];
}

async function route() {
  teardown();
  const { parts, params } = parseHash();
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === parts[0]);
  }
  // An open sidecar (no tokens configured) answers without one: the token dialog appears only on a 401.
  document.getElementById("signout").hidden = !state.token;
  view.replaceChildren(h("p", { class: "muted loading" }, "Loading…"));
  try {
    if (parts[0] === "runs" && parts[1] && parts[2] === "steps" && parts[3] !== undefined) {
      await renderStep(Number(parts[1]), Number(parts[3]));
    } else if (parts[0] === "runs" && parts[1]) await renderRun(Number(parts[1]), params);
    else if (parts[0] === "alerts" && parts[1]) await renderAlert(Number(parts[1]));
    else if (parts[0] === "alerts") await renderQueue(params);
    else await renderRuns();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      view.replaceChildren(h("p", { class: "muted" }, "Waiting for a valid token."));
      return;
    }
    view.replaceChildren(
      h("section", { class: "card error-card" }, h("h2", {}, "Could not load this view"), h("p", {}, String(error.message))),
    );
  }
  view.focus({ preventScroll: true });
}

initToken(route);
window.addEventListener("hashchange", route);
route();
