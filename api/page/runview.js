// The run view (#/runs/<id>): the run's story in charts. Each chart has a plain title, a value axis with its
// units and a line on what a rise means; alert markers are coloured by review status, transition marks and any
// point open the step view. The view's state lives in the hash query, so a link reproduces it:
//   charts=<key,key…>  the charts shown, in order (observable names, "rewards", "extra:<name>")
//   x=<lo>..<hi>       the zoomed step range        log=<keys> / lin=<keys>  scale overrides (else automatic)
//   compare=<run id>   a second run's series, dashed, on every chart

import { api, download } from "./api.js";
import { CHART_HEIGHT, EVIDENCE_HEIGHT, canLog, chartColumns, evidenceFigure, makeChart, markerLegend, wantsLog } from "./charts.js";
import { alertsTable } from "./lists.js";
import { chartChoices, chartSpec, defaultCharts, namesOf } from "./series.js";
import { stepHref } from "./stepview.js";
import { ago, fmt, h, pill, setTitle, state, view } from "./util.js";

const POLL_MS = 5000;
const EXPORT_FORMATS = ["csv", "jsonl"];

const listParam = (params, key) => (params.get(key) || "").split(",").filter(Boolean);

function parseZoom(text) {
  const m = /^(-?\d+(?:\.\d+)?)\.\.(-?\d+(?:\.\d+)?)$/.exec(text || "");
  return m && Number(m[1]) < Number(m[2]) ? { min: Number(m[1]), max: Number(m[2]) } : null;
}

function exportLinks(runId, runName) {
  const message = h("span", { class: "export-message muted", id: "export-message", role: "status" });
  const link = (format) =>
    h(
      "a",
      {
        class: "button-link",
        id: `export-${format}`,
        href: `v1/runs/${runId}/export?format=${format}`,
        download: `${runName}.${format}`,
        onclick: async (event) => {
          event.preventDefault(); // fetched with the token (a plain link would not send it)
          message.textContent = `Preparing ${format.toUpperCase()}…`;
          try {
            await download(`v1/runs/${runId}/export?format=${format}`, `${runName}.${format}`);
            message.textContent = `Downloaded ${runName}.${format}.`;
          } catch (error) {
            message.textContent =
              error.status === 404 || error.status === 405
                ? "This sidecar has no export endpoint (GET /v1/runs/{id}/export): upgrade fpmon."
                : `Export failed: ${error.message}`;
          }
        },
      },
      `Download ${format.toUpperCase()}`,
    );
  return h("span", { class: "export", id: "export" }, ...EXPORT_FORMATS.map(link), message);
}

export async function renderRun(runId, params) {
  const compareId = Number(params.get("compare")) || null;
  const [run, metrics, alertList, runList, compared] = await Promise.all([
    api(`v1/runs/${runId}`),
    api(`v1/runs/${runId}/metrics?max_points=5000&evidence=all`),
    api(`v1/alerts?run_id=${runId}&limit=1000`),
    api("v1/runs?limit=1000"),
    compareId && compareId !== runId
      ? Promise.all([api(`v1/runs/${compareId}`), api(`v1/runs/${compareId}/metrics?max_points=5000`)]).catch(() => null)
      : Promise.resolve(null),
  ]);
  setTitle(run.name);
  let rows = metrics.rows;
  const compareRows = compared ? compared[1].rows : null;
  const compareName = compared ? compared[0].name : null;
  const names = namesOf(compareRows ? [...rows, ...compareRows] : rows);
  const marks = {
    alerts: alertList.alerts,
    transitions: rows.filter((r) => r.transition).map((r) => r.step),
    current: null,
    stepHref: (step) => stepHref(runId, step),
  };
  const choices = chartChoices(names);
  const known = new Set(choices.map(([k]) => k));
  const ui = {
    keys: params.has("charts") ? listParam(params, "charts").filter((k) => known.has(k)) : defaultCharts(names, marks.alerts),
    zoom: parseZoom(params.get("x")),
    log: new Set(listParam(params, "log")),
    lin: new Set(listParam(params, "lin")),
  };
  const zoomText = () => (ui.zoom ? `${Math.round(ui.zoom.min)}..${Math.round(ui.zoom.max)}` : "");
  const writeHash = () => {
    // the view's state into the URL, without re-rendering (replaceState fires no hashchange)
    grid.dataset.zoom = zoomText();
    const q = new URLSearchParams();
    q.set("charts", ui.keys.join(","));
    if (ui.zoom) q.set("x", zoomText());
    if (ui.log.size) q.set("log", [...ui.log].join(","));
    if (ui.lin.size) q.set("lin", [...ui.lin].join(","));
    if (compareId && compareRows) q.set("compare", String(compareId));
    history.replaceState(null, "", `#/runs/${runId}?${q.toString().replace(/%2C/g, ",").replace(/%3A/g, ":")}`);
  };
  const syncKey = `run-${runId}`;
  const grid = h("div", { class: "charts", id: "charts", dataset: { zoom: "" } });
  const charts = new Map(); // key -> { chart, spec, box, plot }
  let evidenceChart = null;
  let ready = false;
  let zooming = false;
  const allCharts = () => [evidenceChart, ...[...charts.values()].map((c) => c.chart)].filter(Boolean);
  const sameZoom = (a, b) =>
    (!a && !b) || (a && b && Math.round(a.min) === Math.round(b.min) && Math.round(a.max) === Math.round(b.max));
  const onZoom = (source) => {
    // A chart's x range changed. uPlot may report it after the change (its hooks run on commit), so the range
    // itself says whether this is news: the range the page asked for (ui.zoom) or the full run is not. A new
    // range is a reviewer's drag (or a double-click back to all): every chart follows and the URL keeps it.
    if (zooming || !ready) return;
    const { min, max } = source.scales.x;
    const xs = source.data[0];
    const full = !xs.length || (min <= xs[0] + 1e-9 && max >= xs[xs.length - 1] - 1e-9);
    const next = full ? null : { min, max };
    if (sameZoom(next, ui.zoom)) return;
    ui.zoom = next;
    zooming = true;
    for (const chart of allCharts()) if (chart !== source) chart.setScale("x", { min, max });
    zooming = false;
    writeHash();
  };
  const onPick = (step) => {
    location.hash = stepHref(runId, step);
  };
  const applyZoom = (chart) => {
    if (!ui.zoom) return;
    zooming = true;
    chart.setScale("x", ui.zoom);
    zooming = false;
  };
  const isLog = (key, columns) => (ui.log.has(key) ? canLog(columns) : ui.lin.has(key) ? false : wantsLog(columns));

  const evidence = evidenceFigure(rows, metrics.evidence_threshold, { id: "evidence", syncKey, marks, onZoom, onPick });
  state.cleanups.push(() => evidence.chart && evidence.chart.destroy());
  state.cleanups.push(() => {
    for (const c of charts.values()) c.chart.destroy();
  });

  const build = (entry) => {
    const columns = chartColumns(entry.spec, rows, compareRows);
    const log = isLog(entry.spec.key, columns);
    entry.box.dataset.scale = log ? "log" : "linear";
    entry.logButton.textContent = log ? "log scale ✓" : "log scale";
    entry.logButton.setAttribute("aria-pressed", String(log));
    entry.logButton.disabled = !canLog(columns);
    entry.logButton.title = canLog(columns) ? "Toggle a logarithmic value axis" : "Values ≤ 0: no log scale";
    if (entry.chart) entry.chart.destroy();
    entry.plot.replaceChildren();
    const width = Math.max(320, entry.box.clientWidth - 8);
    entry.chart = makeChart(entry.plot, entry.spec, rows, { syncKey, marks, width, log, onZoom, onPick, compareRows, compareName });
    entry.box.dataset.lastStep = rows.length ? rows[rows.length - 1].step : "";
    applyZoom(entry.chart);
  };

  const addChart = (key, { write = true } = {}) => {
    if (charts.has(key) || !known.has(key)) return;
    const spec = chartSpec(key, names);
    const logButton = h("button", { type: "button", class: "chart-button log-toggle" }, "log scale");
    const remove = h("button", { type: "button", class: "chart-button chart-remove", title: "Remove this chart", "aria-label": `Remove the chart ${spec.title}` }, "×");
    const plot = h("div", { class: "chart-plot" });
    const box = h(
      "figure",
      { class: "chart", dataset: { series: key, unit: spec.unit } },
      h(
        "figcaption",
        { class: "chart-head" },
        h("span", { class: "chart-title" }, spec.title),
        h("span", { class: "spacer" }),
        logButton,
        remove,
      ),
      h("p", { class: "chart-rise" }, h("span", { class: "chart-unit" }, `↕ ${spec.unit}`), ` · ${spec.rise}`),
      plot,
    );
    grid.append(box);
    const entry = { spec, box, plot, logButton, chart: null };
    charts.set(key, entry);
    logButton.addEventListener("click", () => {
      const now = entry.box.dataset.scale === "log";
      ui.log.delete(key);
      ui.lin.delete(key);
      (now ? ui.lin : ui.log).add(key);
      build(entry);
      writeHash();
    });
    remove.addEventListener("click", () => {
      entry.chart.destroy();
      box.remove();
      charts.delete(key);
      ui.keys = ui.keys.filter((k) => k !== key);
      renderPicker();
      writeHash();
    });
    build(entry);
    if (write) {
      if (!ui.keys.includes(key)) ui.keys.push(key);
      renderPicker();
      writeHash();
    }
  };

  const picker = h("select", {
    id: "series-picker",
    "aria-label": "Add a chart",
    onchange: (event) => {
      if (event.target.value) addChart(event.target.value);
      event.target.value = "";
    },
  });
  const renderPicker = () => {
    const rest = choices.filter(([k]) => !charts.has(k));
    picker.replaceChildren(
      h("option", { value: "" }, rest.length ? "Add a chart…" : "Every chart is shown"),
      ...rest.map(([k, label]) => h("option", { value: k }, label)),
    );
  };
  const compareSelect = h(
    "select",
    {
      id: "compare",
      "aria-label": "Compare with another run",
      onchange: (event) => {
        const q = new URLSearchParams();
        q.set("charts", ui.keys.join(","));
        if (ui.zoom) q.set("x", `${Math.round(ui.zoom.min)}..${Math.round(ui.zoom.max)}`);
        if (event.target.value) q.set("compare", event.target.value);
        location.hash = `#/runs/${runId}?${q.toString().replace(/%2C/g, ",").replace(/%3A/g, ":")}`;
      },
    },
    h("option", { value: "" }, "Compare with run…"),
    runList.runs
      .filter((r) => r.run_id !== runId)
      .map((r) => h("option", { value: r.run_id, selected: r.run_id === compareId }, `${r.name} (dashed)`)),
  );
  const resetZoom = () => {
    const xs = rows.map((r) => r.step);
    if (!xs.length) return;
    for (const chart of allCharts()) chart.setScale("x", { min: xs[0], max: xs[xs.length - 1] });
    ui.zoom = null;
    writeHash();
  };
  const counts = run.alert_counts || {};
  const stat = (label, value, id) =>
    h("div", { class: "stat" }, h("span", { class: "stat-label" }, label), h("span", { class: "stat-value", id }, value));
  const verdictText =
    run.verdict === "confirmed" ? "confirmed reward hacking" : run.verdict === "dismissed" ? "dismissed" : run.verdict === "open" ? "under review" : "no alert";

  view.replaceChildren(
    h(
      "section",
      { class: "page-head" },
      h("p", { class: "crumbs" }, h("a", { href: "#/runs" }, "Runs"), " / "),
      h(
        "h1",
        {},
        run.name,
        " ",
        pill(run.status, run.status === "live" ? "live" : "idle"),
        h("span", { id: "run-verdict", dataset: { verdict: run.verdict } }, pill(verdictText, `verdict-${run.verdict}`)),
        run.rebaseline_pending
          ? h("span", { id: "rebaseline-pending", title: "A reviewer dismissed an alert as the new normal" }, pill("re-baseline at the next step", "acknowledged"))
          : null,
      ),
    ),
    h(
      "section",
      { class: "stats" },
      stat("steps processed", `${run.steps_processed} / ${run.steps_received}`, "stat-steps"),
      stat("last step", ago(run.last_step_at), "stat-last"),
      stat("D₀", fmt(run.D0)),
      stat("latent dim", run.latent_dim),
      h(
        "div",
        { class: "stat" },
        h("span", { class: "stat-label" }, "open alerts"),
        h("a", { class: "stat-value", href: `#/alerts?run=${runId}&status=open` }, `${counts.open ?? run.open_alerts}`),
      ),
      h("div", { class: "stat" }, h("span", { class: "stat-label" }, "export"), exportLinks(runId, run.name)),
    ),
    h(
      "section",
      { class: "toolbar" },
      markerLegend(),
      h("span", { class: "muted" }, "Drag to zoom (all charts); click a point to inspect its step."),
      h("span", { class: "spacer" }),
      compareSelect,
      picker,
      h("button", { type: "button", id: "reset-zoom", onclick: resetZoom }, "Reset zoom"),
    ),
    ...(compareRows
      ? [h("p", { class: "compare-note", id: "compare-note" }, `Dashed: ${compareName} (run ${compareId}), the same observable.`)]
      : []),
    h(
      "section",
      { class: "card evidence-card" },
      h("h2", {}, "Why alerts fire: evidence of change ", h("span", { class: "muted" }, "(natural log of the e-detectors' e-values)")),
      evidence.holder,
    ),
    grid,
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Alerts of this run"),
      marks.alerts.length ? alertsTable(marks.alerts, { [runId]: run.name }) : h("p", { class: "muted" }, "No alert."),
    ),
  );
  if (!rows.length) grid.append(h("p", { class: "muted" }, "No processed step yet."));
  evidenceChart = evidence.mount();
  applyZoom(evidenceChart);
  for (const key of ui.keys) addChart(key, { write: false });
  renderPicker();
  ready = true;
  grid.dataset.zoom = zoomText();
  if (params.has("compare") && !compareRows) {
    view.prepend(h("p", { class: "error" }, `Could not load run ${params.get("compare")} to compare with.`));
  }

  const onResize = () => {
    if (evidenceChart) evidenceChart.setSize({ width: Math.max(320, evidence.box.clientWidth - 8), height: EVIDENCE_HEIGHT });
    for (const c of charts.values()) c.chart.setSize({ width: Math.max(320, c.box.clientWidth - 8), height: CHART_HEIGHT });
  };
  window.addEventListener("resize", onResize);
  state.cleanups.push(() => window.removeEventListener("resize", onResize));

  if (run.status === "live") {
    state.timers.push(
      setInterval(async () => {
        const last = rows.length ? rows[rows.length - 1].step : -1;
        const [fresh, latest, now] = await Promise.all([
          api(`v1/runs/${runId}/metrics?start=${last + 1}&max_points=5000&evidence=all`).catch(() => null),
          api(`v1/alerts?run_id=${runId}&limit=1000`).catch(() => null),
          api(`v1/runs/${runId}`).catch(() => null),
        ]);
        if (latest) marks.alerts = latest.alerts;
        if (now) {
          document.getElementById("stat-steps").textContent = `${now.steps_processed} / ${now.steps_received}`;
          document.getElementById("stat-last").textContent = ago(now.last_step_at);
        }
        if (!fresh || !fresh.rows.length) {
          for (const chart of allCharts()) chart.redraw(false);
          return;
        }
        rows = rows.concat(fresh.rows);
        marks.transitions = rows.filter((r) => r.transition).map((r) => r.step);
        // new data: a zoomed view keeps its range (the scales are not reset), else the charts grow with the run
        const keep = Boolean(ui.zoom);
        evidenceChart = evidence.update(rows, fresh.evidence_threshold, keep);
        for (const c of charts.values()) {
          c.chart.setData(chartColumns(c.spec, rows, compareRows), !keep);
          c.box.dataset.lastStep = rows[rows.length - 1].step;
        }
        applyZoom(evidenceChart); // rebuilt when a stream appeared
      }, POLL_MS),
    );
  }
}
