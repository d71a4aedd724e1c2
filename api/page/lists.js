// The runs list (#/runs, with each run's verdict) and the alert queue (#/alerts?run=&status=&type=).

import { api } from "./api.js";
import { ALERT_STATUSES, ALERT_TYPES, ago, h, pill, setTitle, state, typeLabel, typePill, view } from "./util.js";

const POLL_MS = 5000;

// The reviewers' verdict on a run in words (RunOut.verdict, precedence confirmed > open > dismissed > none).
export function verdictLabel(run) {
  const counts = run.alert_counts || {};
  const undecided = (counts.open || 0) + (counts.acknowledged || 0);
  if (run.verdict === "confirmed") return ["confirmed reward hacking", "confirmed"];
  if (run.verdict === "open") {
    const ack = counts.acknowledged ? ` (${counts.acknowledged} acknowledged)` : "";
    return [`${undecided} open alert${undecided === 1 ? "" : "s"}${ack}`, "open"];
  }
  if (run.verdict === "dismissed") return ["dismissed", "dismissed"];
  return ["no alert", "none"];
}

function runsTable(runs) {
  const rows = runs.map((run) => {
    const [label, kind] = verdictLabel(run);
    return h(
      "tr",
      { dataset: { runId: run.run_id } },
      h("td", {}, h("a", { href: `#/runs/${run.run_id}`, class: "strong" }, run.name)),
      h("td", { class: "num" }, `${run.steps_processed}`, h("span", { class: "muted" }, ` / ${run.steps_received}`)),
      h("td", { title: run.last_step_at || "" }, ago(run.last_step_at)),
      h(
        "td",
        { class: "num" },
        run.open_alerts > 0
          ? h("a", { href: `#/alerts?run=${run.run_id}&status=open`, class: "badge badge-alert" }, `${run.open_alerts}`)
          : h("span", { class: "muted" }, "0"),
      ),
      h("td", { class: "verdict", dataset: { verdict: run.verdict } }, pill(label, `verdict-${kind}`)),
      h("td", {}, pill(run.status, run.status === "live" ? "live" : "idle")),
    );
  });
  return h(
    "table",
    { class: "table", id: "runs-table" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", {}, "Run"),
        h("th", { class: "num" }, "Steps processed"),
        h("th", {}, "Last step"),
        h("th", { class: "num" }, "Open alerts"),
        h("th", { title: "confirmed (any alert confirmed) > open alerts > dismissed (all dismissed)" }, "Verdict"),
        h("th", {}, "Status"),
      ),
    ),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No run yet."))),
  );
}

export async function renderRuns() {
  setTitle("Runs");
  const { runs } = await api("v1/runs?limit=1000");
  const holder = h("div", {}, runsTable(runs));
  view.replaceChildren(
    h("section", { class: "page-head" }, h("h1", {}, "Runs"), h("p", { class: "muted" }, "Live runs refresh every 5 s.")),
    h("section", { class: "card" }, holder),
  );
  state.timers.push(
    setInterval(async () => {
      const fresh = await api("v1/runs?limit=1000").catch(() => null);
      if (fresh) holder.replaceChildren(runsTable(fresh.runs));
    }, POLL_MS),
  );
}

export function alertsTable(alerts, runNames) {
  return h(
    "table",
    { class: "table", id: "alerts-table" },
    h("thead", {}, h("tr", {}, ["Alert", "Run", "Step", "Type", "Status", "Raised", "Why"].map((t) => h("th", {}, t)))),
    h(
      "tbody",
      {},
      alerts.length
        ? alerts.map((a) =>
            h(
              "tr",
              { dataset: { alertId: a.alert_id } },
              h("td", {}, h("a", { href: `#/alerts/${a.alert_id}`, class: "strong" }, `#${a.alert_id}`)),
              h("td", {}, h("a", { href: `#/runs/${a.run_id}` }, runNames[a.run_id] ?? `run ${a.run_id}`)),
              h("td", { class: "num" }, h("a", { href: `#/runs/${a.run_id}/steps/${a.step}` }, a.step)),
              h("td", {}, typePill(a.type)),
              h("td", {}, pill(a.status, a.status)),
              h("td", { title: a.created_at }, ago(a.created_at)),
              h("td", { class: "why" }, a.reasons[0] ?? ""),
            ),
          )
        : h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No alert matches.")),
    ),
  );
}

export async function renderQueue(params) {
  setTitle("Alert queue");
  const run = params.get("run") || "";
  const status = params.get("status") || "";
  const type = params.get("type") || "";
  const query = new URLSearchParams({ limit: "500" });
  if (run) query.set("run_id", run);
  if (status) query.set("status", status);
  if (type) query.set("type", type);
  const [{ runs }, { alerts }] = await Promise.all([api("v1/runs?limit=1000"), api(`v1/alerts?${query}`)]);
  const runNames = Object.fromEntries(runs.map((r) => [r.run_id, r.name]));
  const select = (id, label, value, options) =>
    h(
      "label",
      { class: "filter" },
      label,
      h("select", { id, name: id }, options.map(([v, text]) => h("option", { value: v, selected: v === value }, text))),
    );
  const form = h(
    "form",
    {
      class: "filters",
      id: "alert-filters",
      onchange: () => {
        const next = new URLSearchParams();
        for (const key of ["run", "status", "type"]) {
          const v = form.elements[key].value;
          if (v) next.set(key, v);
        }
        location.hash = `#/alerts?${next}`;
      },
      onsubmit: (event) => event.preventDefault(),
    },
    select("run", "Run", run, [["", "all runs"], ...runs.map((r) => [String(r.run_id), r.name])]),
    select("status", "Status", status, [["", "any status"], ...ALERT_STATUSES.map((s) => [s, s])]),
    select("type", "Type", type, [["", "any type"], ...ALERT_TYPES.map((t) => [t, typeLabel(t)])]),
  );
  view.replaceChildren(
    h("section", { class: "page-head" }, h("h1", {}, "Alert queue"), h("p", { class: "muted" }, `${alerts.length} alert(s)`)),
    h("section", { class: "card" }, form, alertsTable(alerts, runNames)),
  );
}
