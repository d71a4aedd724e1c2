// fpmon review page: a hash-routed single page over the sidecar's /v1 API (no build step, no CDN).
//   #/runs                              runs list
//   #/runs/<id>                         run view: uPlot charts (synced cursor, drag-to-zoom), alert markers
//   #/alerts?run=<id>&status=&type=     alert queue across runs
//   #/alerts/<id>                       alert detail: observables, responses, 2-D map, review actions
// Response texts are untrusted: every text goes through textContent (the h() helper), never innerHTML.

const TOKEN_KEY = "fpmon.token";
const REVIEWER_KEY = "fpmon.reviewer";
const POLL_MS = 5000;
const MAIN_SERIES = ["C", "S_dot", "sigma_tot", "H", "W2_ref", "reward_mean"];
const ALERT_STATUSES = ["open", "acknowledged", "confirmed", "dismissed"];
const ALERT_TYPES = ["POTENTIAL_REWARD_HACKING", "PHASE_TRANSITION"];
const DECISIONS = [
  ["acknowledged", "Acknowledge", "a"],
  ["confirmed", "Confirm", "c"],
  ["dismissed", "Dismiss as false positive", "d"],
];
// evidence of change (GET /v1/runs/{id}/metrics?evidence=all): combined series first, then the streams
const EVIDENCE_COMBINED = ["embedding", "reward"];
const EVIDENCE_STREAMS = ["embedding_lagged", "embedding_reference", "reward_rise", "judge_gap"];
const EVIDENCE_STYLE = {
  embedding: { label: "embedding evidence", stroke: "#7048e8", width: 2 },
  reward: { label: "reward evidence", stroke: "#e8590c", width: 2 },
  embedding_lagged: { label: "stream: embedding vs lagged window", stroke: "#9775fa", width: 1.2, dash: [5, 3] },
  embedding_reference: { label: "stream: embedding vs reference", stroke: "#4dabf7", width: 1.2, dash: [5, 3] },
  reward_rise: { label: "stream: reward rise", stroke: "#ffa94d", width: 1.2, dash: [5, 3] },
  judge_gap: { label: "stream: proxy − judge gap", stroke: "#a9711b", width: 1.2, dash: [5, 3] },
};
const EVIDENCE_TITLE = "Evidence of change (log e-value)";
const THRESHOLD_RGB = "#e03131"; // not the alert markers' #d6336c
const SERIES_HELP = {
  C: "coherence C: share of the flow explained by the drift",
  S_dot: "entropy production rate Ṡ",
  sigma_tot: "total entropy production σ_tot",
  H: "differential entropy H of the batch",
  W2_ref: "Wasserstein-2 distance to the reference batch",
  reward_mean: "mean reward of the batch",
};

const view = document.getElementById("view");
const state = { token: sessionStorage.getItem(TOKEN_KEY), timers: [], charts: [], cleanups: [] };

// ------------------------------------------------------------------------------------------ DOM helpers
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function fmt(value, digits = 4) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  if (typeof value !== "number") return String(value);
  if (value !== 0 && (Math.abs(value) >= 1e5 || Math.abs(value) < 1e-3)) return value.toExponential(2);
  return Number(value.toPrecision(digits)).toString();
}

// The step axis and the value axis every chart shares (uPlot options); ``label`` names the value axis.
function chartAxes(label) {
  const style = { stroke: "#5b6472", grid: { stroke: "#eef1f5" }, ticks: { stroke: "#dfe3ea" } };
  const values = { ...style, size: 72, values: (u, splits) => splits.map(axisLabel) };
  return [style, label ? { label, ...values } : values];
}

function axisLabel(value) {
  if (value === null || value === undefined) return "";
  if (value !== 0 && (Math.abs(value) >= 1e5 || Math.abs(value) < 1e-3)) return value.toExponential(1);
  return Number(value.toPrecision(4)).toString();
}

function ago(iso) {
  if (!iso) return "never";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleString();
}

function pill(text, kind) {
  return h("span", { class: `pill pill-${kind}` }, text);
}

function typeLabel(type) {
  return type === "POTENTIAL_REWARD_HACKING" ? "reward hacking?" : type === "PHASE_TRANSITION" ? "phase transition" : type;
}

function setTitle(...parts) {
  document.title = [...parts, "fpmon review"].join(" · ");
}

// ------------------------------------------------------------------------------------------ API + token
class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await resp.json().catch(() => ({}));
  if (resp.status === 401) {
    askToken(
      state.token
        ? "The sidecar refused this token (401): enter a valid read or write token."
        : "This sidecar requires a token (401).",
    );
    throw new ApiError(401, data.detail || "unauthorized");
  }
  if (!resp.ok) {
    const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail ?? resp.statusText);
    throw new ApiError(resp.status, detail);
  }
  return data;
}

function askToken(message = "") {
  const dialog = document.getElementById("token-dialog");
  document.getElementById("token-error").textContent = message;
  if (!dialog.open) dialog.showModal();
  document.getElementById("token-input").focus();
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = document.getElementById("token-input").value.trim();
  if (!token) return;
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  document.getElementById("token-input").value = "";
  document.getElementById("token-dialog").close();
  route();
});

document.getElementById("signout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  route();
});

// ------------------------------------------------------------------------------------------ router
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
    if (parts[0] === "runs" && parts[1]) await renderRun(Number(parts[1]));
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

window.addEventListener("hashchange", route);

// ------------------------------------------------------------------------------------------ runs list
function runsTable(runs) {
  const rows = runs.map((run) =>
    h(
      "tr",
      {},
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
      h("td", {}, pill(run.status, run.status === "live" ? "live" : "idle")),
    ),
  );
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
        h("th", {}, "Status"),
      ),
    ),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No run yet."))),
  );
}

async function renderRuns() {
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

// ------------------------------------------------------------------------------------------ run view
function columnsOf(rows, names) {
  const xs = rows.map((r) => r.step);
  return [xs, ...names.map((name) => rows.map((r) => (r.scalars[name] ?? null)))];
}

function markerPlugin(getMarks) {
  // vertical lines for alerts (red, solid) and detected transitions (amber, dashed) + clickable alert flags
  return {
    hooks: {
      draw: [
        (u) => {
          const { ctx } = u;
          const { top, height } = u.bbox;
          const marks = getMarks();
          ctx.save();
          for (const step of marks.transitions) {
            const x = Math.round(u.valToPos(step, "x", true));
            if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
            ctx.strokeStyle = "rgba(217, 142, 4, 0.55)";
            ctx.setLineDash([4 * devicePixelRatio, 4 * devicePixelRatio]);
            ctx.lineWidth = devicePixelRatio;
            ctx.beginPath();
            ctx.moveTo(x, top);
            ctx.lineTo(x, top + height);
            ctx.stroke();
          }
          ctx.setLineDash([]);
          for (const alert of marks.alerts) {
            const x = Math.round(u.valToPos(alert.step, "x", true));
            if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
            ctx.strokeStyle = alert.status === "open" ? "#d6336c" : "#9aa4b2";
            ctx.lineWidth = 2 * devicePixelRatio;
            ctx.beginPath();
            ctx.moveTo(x, top);
            ctx.lineTo(x, top + height);
            ctx.stroke();
          }
          ctx.restore();
          placeFlags(u, marks.alerts);
        },
      ],
    },
  };
}

function placeFlags(u, alerts) {
  let layer = u.over.querySelector(".flags");
  if (!layer) {
    layer = h("div", { class: "flags" });
    u.over.append(layer);
  }
  const [min, max] = [u.scales.x.min, u.scales.x.max];
  layer.replaceChildren(
    ...alerts
      .filter((a) => a.step >= min && a.step <= max)
      .map((a) =>
        h(
          "a",
          {
            class: `alert-marker ${a.status === "open" ? "open" : "reviewed"}`,
            href: `#/alerts/${a.alert_id}`,
            title: `${a.type} at step ${a.step} (${a.status}) — open the alert`,
            style: `left:${u.valToPos(a.step, "x")}px`,
            dataset: { alertId: a.alert_id, step: a.step },
            onmousedown: (event) => event.stopPropagation(),
          },
          "!",
        ),
      ),
  );
}

function makeChart(container, name, data, syncKey, marks, width, onZoom) {
  const opts = {
    title: name,
    width,
    height: 190,
    cursor: { sync: { key: syncKey }, drag: { x: true, y: false } },
    scales: { x: { time: false } },
    legend: { live: true },
    axes: chartAxes(),
    series: [
      { label: "step" },
      { label: name, stroke: "#3860e0", width: 1.6, fill: "rgba(56, 96, 224, 0.06)", points: { show: false }, spanGaps: false },
    ],
    plugins: [markerPlugin(() => marks)],
    hooks: { setScale: [(u, key) => key === "x" && onZoom(u)] },
  };
  const chart = new uPlot(opts, data, container);
  chart.root.dataset.series = name;
  return chart;
}

// ------------------------------------------------------------------------------------------ evidence chart
function evidenceNames(rows) {
  // the evidence series with a value at some row, combined first (always listed), then the streams
  const seen = new Set(rows.flatMap((r) => Object.entries(r.evidence || {}).filter(([, v]) => v !== null).map(([k]) => k)));
  return [...EVIDENCE_COMBINED, ...EVIDENCE_STREAMS.filter((n) => seen.has(n))];
}

function evidenceColumns(rows, names) {
  const xs = rows.map((r) => r.step);
  return [xs, ...names.map((name) => rows.map((r) => (r.evidence ? r.evidence[name] ?? null : null)))];
}

function alarmLabel(threshold) {
  return `alarm at 1/α = ${fmt(Math.exp(threshold), 3)}`;
}

function thresholdPlugin(getThreshold) {
  // the alarm level log(1/α): a dashed horizontal line across the plot, labelled
  return {
    hooks: {
      draw: [
        (u) => {
          const threshold = getThreshold();
          if (threshold === null || threshold === undefined) return;
          const y = Math.round(u.valToPos(threshold, "y", true));
          const { left, width } = u.bbox;
          const { ctx } = u;
          ctx.save();
          ctx.strokeStyle = THRESHOLD_RGB;
          ctx.lineWidth = 2 * devicePixelRatio;
          ctx.setLineDash([8 * devicePixelRatio, 5 * devicePixelRatio]);
          ctx.beginPath();
          ctx.moveTo(left, y);
          ctx.lineTo(left + width, y);
          ctx.stroke();
          ctx.setLineDash([]);
          ctx.fillStyle = THRESHOLD_RGB;
          ctx.font = `${600} ${12 * devicePixelRatio}px system-ui, sans-serif`;
          ctx.textAlign = "left"; // the left end: before a change, the series run well below the line
          ctx.fillText(alarmLabel(threshold), left + 6 * devicePixelRatio, y - 5 * devicePixelRatio);
          ctx.restore();
        },
      ],
    },
  };
}

function makeEvidenceChart(container, rows, names, threshold, opts) {
  // one uPlot chart of the evidence series against the threshold; streams start hidden (toggle on demand)
  const { syncKey, marks, width, onZoom, height = 240 } = opts;
  const state_ = { threshold };
  const uopts = {
    title: EVIDENCE_TITLE,
    width,
    height,
    cursor: { sync: { key: syncKey }, drag: { x: true, y: false } },
    scales: {
      x: { time: false },
      y: {
        range: (u, min, max) => {
          const t = state_.threshold ?? 0;
          const lo = Math.min(0, min ?? 0);
          const hi = Math.max(t * 1.2, max ?? 0, 1);
          return [lo - 0.05 * (hi - lo), hi];
        },
      },
    },
    legend: { live: true },
    axes: chartAxes("log e-value"),
    series: [
      { label: "step" },
      ...names.map((name) => {
        const style = EVIDENCE_STYLE[name] || { label: name, stroke: "#868e96", width: 1.2 };
        return {
          label: style.label,
          stroke: style.stroke,
          width: style.width,
          dash: style.dash,
          show: EVIDENCE_COMBINED.includes(name),
          points: { show: false },
          spanGaps: false,
        };
      }),
    ],
    plugins: [markerPlugin(() => marks), thresholdPlugin(() => state_.threshold)],
    hooks: onZoom ? { setScale: [(u, key) => key === "x" && onZoom(u)] } : {},
  };
  const chart = new uPlot(uopts, evidenceColumns(rows, names), container);
  chart.root.dataset.series = "evidence";
  chart.evidence = { names, state: state_ };
  return chart;
}

function evidenceFigure(rows, threshold, opts) {
  // the figure (chart + plain-words legend + per-stream toggles); returns { box, mount(), update(rows, threshold) }
  let names = evidenceNames(rows);
  const box = h("figure", {
    class: "chart evidence-chart",
    id: opts.id,
    dataset: { series: "evidence", threshold: threshold ?? "" },
  });
  const legend = h("p", { class: "evidence-legend", id: `${opts.id}-threshold` });
  const describe = () => {
    legend.textContent =
      threshold === null || threshold === undefined
        ? "No evidence stored yet for this run."
        : `Dashed line: ${alarmLabel(threshold)} (log e-value ${fmt(threshold, 3)}). An alert fires when the embedding evidence (or the reward evidence, for reward hacking) reaches it; a false alarm happens less than once per 1/α steps on average.`;
  };
  describe();
  const toggles = h("div", { class: "evidence-toggles", id: `${opts.id}-streams` });
  const holder = h("div", {}, box, legend, toggles);
  let chart = null;
  const renderToggles = () => {
    const streams = names.filter((n) => !EVIDENCE_COMBINED.includes(n));
    toggles.replaceChildren(
      ...(streams.length ? [h("span", { class: "muted" }, "Show streams: ")] : []),
      ...streams.map((name) => {
        const idx = names.indexOf(name) + 1;
        return h(
          "label",
          { class: "toggle" },
          h("input", {
            type: "checkbox",
            dataset: { stream: name },
            checked: chart ? chart.series[idx].show : false,
            onchange: (event) => chart && chart.setSeries(idx, { show: event.target.checked }),
          }),
          ` ${name}`,
        );
      }),
    );
  };
  const mount = () => {
    const width = Math.max(320, box.clientWidth - 8);
    chart = makeEvidenceChart(box, rows, names, threshold, { ...opts, width });
    box.dataset.lastStep = rows.length ? rows[rows.length - 1].step : "";
    renderToggles();
    return chart;
  };
  const update = (allRows, fresh) => {
    rows = allRows;
    if (fresh !== null && fresh !== undefined) {
      threshold = fresh;
      box.dataset.threshold = fresh;
      chart.evidence.state.threshold = fresh;
      describe();
    }
    const next = evidenceNames(rows);
    if (next.join() !== names.join()) {
      // a stream appeared: rebuild the chart with it (shown series kept)
      const shown = new Set(names.filter((n, i) => chart.series[i + 1].show));
      names = next;
      const width = chart.width;
      chart.destroy();
      box.replaceChildren();
      chart = makeEvidenceChart(box, rows, names, threshold, { ...opts, width });
      names.forEach((n, i) => shown.has(n) && chart.setSeries(i + 1, { show: true }));
      renderToggles();
    } else {
      chart.setData(evidenceColumns(rows, names));
    }
    box.dataset.lastStep = rows.length ? rows[rows.length - 1].step : "";
    return chart;
  };
  return { holder, box, mount, update, get chart() { return chart; } };
}

async function renderRun(runId) {
  const [run, metrics, alertList] = await Promise.all([
    api(`v1/runs/${runId}`),
    api(`v1/runs/${runId}/metrics?max_points=5000&evidence=all`),
    api(`v1/alerts?run_id=${runId}&limit=1000`),
  ]);
  setTitle(run.name);
  let rows = metrics.rows;
  const marks = { alerts: alertList.alerts, transitions: rows.filter((r) => r.transition).map((r) => r.step) };
  const available = [...new Set(rows.flatMap((r) => Object.keys(r.scalars)))].sort();
  const shown = MAIN_SERIES.filter((n) => available.includes(n) || rows.length === 0);
  const extras = available.filter((n) => !MAIN_SERIES.includes(n));
  const syncKey = `run-${runId}`;
  const grid = h("div", { class: "charts", id: "charts" });
  const charts = new Map();
  let zooming = false;
  const zoomOthers = (source) => {
    // drag-to-zoom on one chart zooms them all (same steps on the x axis)
    if (zooming) return;
    zooming = true;
    const { min, max } = source.scales.x;
    for (const chart of charts.values()) if (chart !== source) chart.setScale("x", { min, max });
    zooming = false;
  };
  // default on: the evidence that raises alerts, against its alarm level (the streams on demand)
  const evidence = evidenceFigure(rows, metrics.evidence_threshold, { id: "evidence", syncKey, marks, onZoom: zoomOthers });
  state.cleanups.push(() => evidence.chart && evidence.chart.destroy());

  const addChart = (name) => {
    if (charts.has(name)) return;
    const box = h("figure", { class: "chart", dataset: { series: name } });
    if (SERIES_HELP[name]) box.title = SERIES_HELP[name];
    grid.append(box);
    const width = Math.max(320, box.clientWidth - 8);
    const chart = makeChart(box, name, columnsOf(rows, [name]), syncKey, marks, width, zoomOthers);
    charts.set(name, chart);
    box.dataset.lastStep = rows.length ? rows[rows.length - 1].step : "";
    state.charts.push(chart);
  };

  const picker = h(
    "select",
    {
      id: "series-picker",
      "aria-label": "Add a chart for another scalar",
      onchange: (event) => {
        if (event.target.value) addChart(event.target.value);
        event.target.value = "";
      },
    },
    h("option", { value: "" }, extras.length ? "Add a chart…" : "No other scalar"),
    extras.map((n) => h("option", { value: n }, n)),
  );
  const resetZoom = () => {
    const xs = rows.map((r) => r.step);
    if (!xs.length) return;
    for (const chart of charts.values()) chart.setScale("x", { min: xs[0], max: xs[xs.length - 1] });
  };
  const openAlerts = marks.alerts.filter((a) => a.status === "open").length;
  const stat = (label, value, id) =>
    h("div", { class: "stat" }, h("span", { class: "stat-label" }, label), h("span", { class: "stat-value", id }, value));

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
        h("a", { class: "stat-value", href: `#/alerts?run=${runId}&status=open` }, `${openAlerts}`),
      ),
    ),
    h(
      "section",
      { class: "toolbar" },
      h("span", { class: "legend-item" }, h("i", { class: "swatch swatch-alert" }), "alert (click the ! flag)"),
      h("span", { class: "legend-item" }, h("i", { class: "swatch swatch-transition" }), "detected transition"),
      h("span", { class: "muted" }, "Drag on a chart to zoom; the cursor is shared."),
      h("span", { class: "spacer" }),
      picker,
      h("button", { type: "button", id: "reset-zoom", onclick: resetZoom }, "Reset zoom"),
    ),
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
  charts.set("evidence", evidence.mount());
  for (const name of shown) addChart(name);

  const onResize = () => {
    for (const [name, chart] of charts) {
      const height = name === "evidence" ? 240 : 190;
      chart.setSize({ width: Math.max(320, chart.root.parentElement.clientWidth - 8), height });
    }
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
          for (const chart of charts.values()) chart.redraw(false);
          return;
        }
        rows = rows.concat(fresh.rows);
        marks.transitions = rows.filter((r) => r.transition).map((r) => r.step);
        charts.set("evidence", evidence.update(rows, fresh.evidence_threshold));
        for (const [name, chart] of charts) {
          if (name === "evidence") continue;
          chart.setData(columnsOf(rows, [name]));
          chart.root.parentElement.dataset.lastStep = rows[rows.length - 1].step;
        }
      }, POLL_MS),
    );
  }
}

// ------------------------------------------------------------------------------------------ alert queue
function alertsTable(alerts, runNames) {
  return h(
    "table",
    { class: "table", id: "alerts-table" },
    h(
      "thead",
      {},
      h("tr", {}, ["Alert", "Run", "Step", "Type", "Status", "Raised", "Why"].map((t) => h("th", {}, t))),
    ),
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
              h("td", { class: "num" }, a.step),
              h("td", {}, pill(typeLabel(a.type), a.type === "POTENTIAL_REWARD_HACKING" ? "hack" : "phase")),
              h("td", {}, pill(a.status, a.status)),
              h("td", { title: a.created_at }, ago(a.created_at)),
              h("td", { class: "why" }, a.reasons[0] ?? ""),
            ),
          )
        : h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No alert matches.")),
    ),
  );
}

async function renderQueue(params) {
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
      h(
        "select",
        { id, name: id },
        options.map(([v, text]) => h("option", { value: v, selected: v === value }, text)),
      ),
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

// ------------------------------------------------------------------------------------------ alert detail
function sampleList(title, subtitle, samples, kind) {
  return h(
    "section",
    { class: `samples samples-${kind}`, id: `samples-${kind}` },
    h("h3", {}, title, h("span", { class: "muted" }, ` ${subtitle}`)),
    samples.length
      ? h(
          "ol",
          {},
          samples.map((s) =>
            h(
              "li",
              { class: "sample", dataset: { index: s.index } },
              h(
                "div",
                { class: "sample-meta" },
                h("span", { class: "idx" }, `#${s.index}`),
                s.sample_id ? h("span", { class: "muted" }, s.sample_id) : null,
                h("span", { class: "spacer" }),
                h(
                  "span",
                  {
                    class: "metric witness",
                    title: "witness score: the evidence of change this response carries (larger: more like where the run is moving, less like its recent past)",
                  },
                  "witness ",
                  h("b", {}, fmt(s.witness, 3)),
                ),
                h("span", { class: "metric", title: "relative flux divergence δ" }, "δ ", h("b", {}, fmt(s.div, 3))),
                h("span", { class: "metric", title: "reward" }, "r ", h("b", {}, fmt(s.reward, 3))),
              ),
              s.prompt ? h("p", { class: "prompt" }, s.prompt) : null,
              h("p", { class: "text" }, s.text ?? "(no text sent)"),
            ),
          ),
        )
      : h("p", { class: "muted" }, "No sample."),
  );
}

function drawMap(canvas, tooltip, ctx) {
  const pts = ctx.points.filter((p) => p.x !== null && p.y !== null);
  const refs = ctx.reference_points.filter((p) => p.x !== null && p.y !== null);
  const all = [...pts, ...refs];
  const dpr = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  canvas.width = Math.round(width * dpr);
  canvas.height = Math.round(height * dpr);
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.fillStyle = "#fbfcfe";
  g.fillRect(0, 0, width, height);
  if (!all.length) {
    g.fillStyle = "#5b6472";
    g.fillText("No coordinates stored for this step.", 16, 24);
    return;
  }
  const pad = 18;
  const xs = all.map((p) => p.x);
  const ys = all.map((p) => p.y);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const scale = Math.min((width - 2 * pad) / (x1 - x0 || 1), (height - 2 * pad) / (y1 - y0 || 1));
  const cx = (width - scale * (x1 - x0)) / 2;
  const cy = (height - scale * (y1 - y0)) / 2;
  const px = (p) => [cx + scale * (p.x - x0), height - (cy + scale * (p.y - y0))];
  const placed = [];
  const dot = (p, r, fill, stroke, label) => {
    const [x, y] = px(p);
    g.beginPath();
    g.arc(x, y, r, 0, 2 * Math.PI);
    g.fillStyle = fill;
    g.fill();
    if (stroke) {
      g.lineWidth = 1.5;
      g.strokeStyle = stroke;
      g.stroke();
    }
    placed.push({ x, y, p, label });
  };
  for (const p of refs) dot(p, 2.6, "rgba(32, 148, 160, 0.45)", null, `reference step ${ctx.reference_step}`);
  for (const p of pts) if (!p.flagged) dot(p, 2.8, "rgba(96, 106, 122, 0.55)", null, `step ${ctx.alert.step}`);
  for (const p of pts) if (p.flagged) dot(p, 5.5, "#d6336c", "#ffffff", `flagged, step ${ctx.alert.step}`);

  const onMove = (event) => {
    const rect = canvas.getBoundingClientRect();
    const mx = event.clientX - rect.left;
    const my = event.clientY - rect.top;
    let best = null;
    let bestD = 64;
    for (const q of placed) {
      const d = (q.x - mx) ** 2 + (q.y - my) ** 2;
      if (d <= bestD) [best, bestD] = [q, d];
    }
    if (!best) {
      tooltip.hidden = true;
      return;
    }
    const { p, label } = best;
    tooltip.replaceChildren(
      h("div", { class: "tip-head" }, `#${p.index} · ${label}`, p.div !== undefined ? ` · δ ${fmt(p.div, 3)}` : ""),
      h("div", {}, p.text ?? "(no text)"),
    );
    tooltip.hidden = false;
    tooltip.style.left = `${Math.min(best.x + 12, width - 260)}px`;
    tooltip.style.top = `${best.y + 12}px`;
  };
  canvas.onmousemove = onMove;
  canvas.onmouseleave = () => {
    tooltip.hidden = true;
  };
}

function reviewsList(reviews) {
  return h(
    "ul",
    { class: "reviews", id: "reviews" },
    reviews.length
      ? reviews.map((r) =>
          h(
            "li",
            {},
            pill(r.decision, r.decision),
            " ",
            h("b", {}, r.reviewer),
            h("span", { class: "muted" }, ` · ${new Date(r.created_at).toLocaleString()}`),
            r.rebaseline
              ? h(
                  "p",
                  { class: "rebaseline-note" },
                  r.rebaseline_step === null || r.rebaseline_step === undefined
                    ? "Treated as the new normal: the detector is re-baselined before the run's next step (pending)."
                    : `Treated as the new normal: the detector was re-baselined before step ${r.rebaseline_step}.`,
                )
              : null,
            r.note ? h("p", { class: "note" }, r.note) : null,
          ),
        )
      : h("li", { class: "muted" }, "Not reviewed yet."),
  );
}

function reviewPanel(alert, onDone) {
  const message = h("p", { class: "review-message", id: "review-message", role: "status" });
  const reviewer = h("input", {
    id: "reviewer",
    name: "reviewer",
    required: true,
    maxlength: 200,
    placeholder: "your name",
    value: localStorage.getItem(REVIEWER_KEY) || "",
  });
  const note = h("textarea", { id: "note", name: "note", rows: 4, maxlength: 10000, placeholder: "why (optional)" });
  const rebaseline = h("input", { type: "checkbox", id: "rebaseline", name: "rebaseline" });
  const buttons = DECISIONS.map(([decision, label, key]) =>
    h(
      "button",
      {
        type: "button",
        class: `decision decision-${decision}`,
        id: `decide-${decision}`,
        "aria-keyshortcuts": `Alt+${key.toUpperCase()}`,
        title: `Alt+${key.toUpperCase()}`,
        onclick: () => submit(decision),
      },
      label,
    ),
  );
  async function submit(decision) {
    if (!reviewer.value.trim()) {
      message.className = "review-message error";
      message.textContent = "Enter the reviewer's name first.";
      reviewer.focus();
      return;
    }
    localStorage.setItem(REVIEWER_KEY, reviewer.value.trim());
    for (const b of buttons) b.disabled = true;
    try {
      const body = { decision, reviewer: reviewer.value.trim(), note: note.value.trim() || null };
      // the re-baseline goes with a dismissal only (the API refuses it with any other decision)
      if (decision === "dismissed" && rebaseline.checked) body.rebaseline = true;
      const updated = await api(`v1/alerts/${alert.alert_id}/review`, { method: "POST", body });
      message.className = "review-message ok";
      message.textContent = body.rebaseline
        ? `Recorded: ${decision} by ${body.reviewer}; the detector is re-baselined before the run's next step.`
        : `Recorded: ${decision} by ${body.reviewer}.`;
      note.value = "";
      rebaseline.checked = false;
      onDone(updated);
    } catch (error) {
      message.className = "review-message error";
      message.textContent =
        error.status === 403
          ? "This token is read-only: nothing was recorded. Sign in with a write token (FPMON_API_TOKENS) to review."
          : `Not recorded: ${error.message}`;
    } finally {
      for (const b of buttons) b.disabled = false;
    }
  }
  const onKey = (event) => {
    if (!event.altKey) return;
    const hit = DECISIONS.find(([, , key]) => key === event.key.toLowerCase());
    if (hit) {
      event.preventDefault();
      submit(hit[0]);
    }
  };
  document.addEventListener("keydown", onKey);
  state.cleanups.push(() => document.removeEventListener("keydown", onKey));
  return h(
    "form",
    { class: "review-form", id: "review-form", onsubmit: (event) => event.preventDefault() },
    h("label", {}, "Reviewer", reviewer),
    h("label", {}, "Note", note),
    h("div", { class: "decisions" }, buttons),
    h(
      "label",
      {
        class: "check",
        title: "Only with Dismiss: the run's current behaviour becomes the detector's baseline, so this change does not alert again",
      },
      rebaseline,
      " Dismiss: treat as the new normal (re-baseline the detector)",
    ),
    message,
  );
}

async function renderAlert(alertId) {
  const ctx = await api(`v1/alerts/${alertId}/context?k=8`);
  const alert = ctx.alert;
  const window_ = `start=${Math.max(0, alert.step - 60)}&end=${alert.step + 20}`;
  const [run, around] = await Promise.all([
    api(`v1/runs/${alert.run_id}`),
    api(`v1/runs/${alert.run_id}/metrics?${window_}&names=C&evidence=all&max_points=1000`),
  ]);
  const evidence = evidenceFigure(around.rows, around.evidence_threshold, {
    id: "alert-evidence",
    syncKey: `alert-${alert.alert_id}`,
    marks: { alerts: [alert], transitions: [] },
    height: 200,
  });
  state.cleanups.push(() => evidence.chart && evidence.chart.destroy());
  setTitle(`Alert #${alert.alert_id}`, run.name);
  const statusPill = h("span", { id: "alert-status" }, pill(alert.status, alert.status));
  const reviewsBox = h("div", {}, reviewsList(alert.reviews));
  const onDone = (updated) => {
    statusPill.replaceChildren(pill(updated.status, updated.status));
    reviewsBox.replaceChildren(reviewsList(updated.reviews));
  };
  const main = ["C", "S_dot", "sigma_tot", "H", "W2_ref", "W2_step", "div_max", "div_q99", "reward_mean"];
  const scalars = ctx.step_scalars;
  const names = [...main.filter((n) => n in scalars), ...Object.keys(scalars).filter((n) => !main.includes(n)).sort()];
  const canvas = h("canvas", { id: "map", class: "map", role: "img", "aria-label": "2-D map of the step's samples" });
  const tooltip = h("div", { class: "tooltip", hidden: true });

  view.replaceChildren(
    h(
      "section",
      { class: "page-head" },
      h(
        "p",
        { class: "crumbs" },
        h("a", { href: "#/alerts?status=open" }, "Alert queue"),
        " / ",
        h("a", { href: `#/runs/${alert.run_id}` }, run.name),
        " / ",
      ),
      h(
        "h1",
        {},
        `Alert #${alert.alert_id} `,
        pill(typeLabel(alert.type), alert.type === "POTENTIAL_REWARD_HACKING" ? "hack" : "phase"),
        " ",
        statusPill,
      ),
      h(
        "p",
        { class: "muted" },
        `step ${alert.step} of ${run.name} · raised ${ago(alert.created_at)}`,
        ctx.transition ? " · the streaming detector flagged this step" : "",
      ),
    ),
    h(
      "section",
      { class: "detail-grid" },
      h(
        "div",
        { class: "card" },
        h("h2", {}, "Why"),
        h("ul", { class: "reasons" }, alert.reasons.map((r) => h("li", {}, r))),
        h("p", { class: "recommendation" }, alert.recommendation),
        h("h2", {}, "Observables at this step"),
        h(
          "table",
          { class: "table compact", id: "observables" },
          h("tbody", {}, names.map((n) => h("tr", {}, h("th", { title: SERIES_HELP[n] || "" }, n), h("td", { class: "num" }, fmt(scalars[n]))))),
        ),
      ),
      h(
        "div",
        { class: "card map-card" },
        h("h2", {}, "Map of the step ", h("span", { class: "muted" }, "(run's projection, axes 1–2)")),
        h("div", { class: "map-wrap" }, canvas, tooltip),
        h(
          "p",
          { class: "map-legend" },
          h("span", { class: "legend-item" }, h("i", { class: "dot dot-flagged" }), `flagged (the alert's ${ctx.flagged.length} responses)`),
          h("span", { class: "legend-item" }, h("i", { class: "dot dot-step" }), `step ${alert.step} (${ctx.n} samples)`),
          h("span", { class: "legend-item" }, h("i", { class: "dot dot-ref" }), `reference, step ${ctx.reference_step ?? "—"}`),
        ),
      ),
      h("div", { class: "card review-card" }, h("h2", {}, "Review"), reviewPanel(alert, onDone), h("h3", {}, "History"), reviewsBox),
    ),
    h(
      "section",
      { class: "card evidence-card" },
      h("h2", {}, `Evidence of change around step ${alert.step} `, h("span", { class: "muted" }, "(why the alert fired)")),
      evidence.holder,
    ),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Responses"),
      h(
        "div",
        { class: "columns" },
        sampleList("Flagged", `top ${ctx.flagged.length} by evidence (witness score)`, ctx.flagged, "flagged"),
        sampleList("Typical", `same step, smallest witness score`, ctx.typical, "typical"),
        sampleList("Reference", `step ${ctx.reference_step ?? "—"}`, ctx.reference, "reference"),
      ),
    ),
  );
  drawMap(canvas, tooltip, ctx);
  evidence.mount();
  const onResize = () => {
    drawMap(canvas, tooltip, ctx);
    if (evidence.chart) evidence.chart.setSize({ width: Math.max(320, evidence.box.clientWidth - 8), height: 200 });
  };
  window.addEventListener("resize", onResize);
  state.cleanups.push(() => window.removeEventListener("resize", onResize));
}

route();
