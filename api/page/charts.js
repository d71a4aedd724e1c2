// uPlot charts of a run: one observable (or several series) per chart against the step, with alert markers
// coloured by review status, clickable transition marks, click-a-point-to-inspect, a log scale where values
// span decades, an optional dashed overlay of a second run; and the evidence-of-change chart.

import { STATUS_COLOURS, axisLabel, fmt, h } from "./util.js";

export const CHART_HEIGHT = 230;
export const EVIDENCE_HEIGHT = 240;
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
const THRESHOLD_RGB = "#e03131"; // not the alert markers' colours
//: values spanning more than this factor (all positive) get a log scale by default
export const LOG_SPAN = 100;

// The step axis and the value axis every chart shares (uPlot options); ``label`` names the value axis.
export function chartAxes(label) {
  const style = { stroke: "#5b6472", grid: { stroke: "#eef1f5" }, ticks: { stroke: "#dfe3ea" } };
  const values = { ...style, size: 72, values: (u, splits) => splits.map(axisLabel) };
  const labelled = { labelSize: 20, labelFont: "600 11px system-ui, sans-serif" };
  return [{ ...style, ...labelled, label: "training step" }, label ? { label, ...labelled, ...values } : values];
}

// Whether a chart's values call for a log scale: all positive and spanning more than LOG_SPAN.
export function wantsLog(columns) {
  const values = columns.slice(1).flat().filter((v) => v !== null && v !== undefined && Number.isFinite(v));
  if (!values.length || values.some((v) => v <= 0)) return false;
  return Math.max(...values) / Math.min(...values) > LOG_SPAN;
}

export function canLog(columns) {
  const values = columns.slice(1).flat().filter((v) => v !== null && v !== undefined && Number.isFinite(v));
  return values.length > 0 && values.every((v) => v > 0);
}

// marks: { alerts: [AlertOut], transitions: [step], current: step | null, stepHref(step) -> "#/…" | null }
export function markerPlugin(getMarks) {
  return {
    hooks: {
      draw: [
        (u) => {
          const { ctx } = u;
          const { top, height, left, width } = u.bbox;
          const marks = getMarks();
          const inside = (x) => x >= left && x <= left + width;
          ctx.save();
          ctx.strokeStyle = "rgba(217, 142, 4, 0.55)";
          ctx.setLineDash([4 * devicePixelRatio, 4 * devicePixelRatio]);
          ctx.lineWidth = devicePixelRatio;
          for (const step of marks.transitions) {
            const x = Math.round(u.valToPos(step, "x", true));
            if (!inside(x)) continue;
            ctx.beginPath();
            ctx.moveTo(x, top);
            ctx.lineTo(x, top + height);
            ctx.stroke();
          }
          ctx.setLineDash([]);
          for (const alert of marks.alerts) {
            const x = Math.round(u.valToPos(alert.step, "x", true));
            if (!inside(x)) continue;
            ctx.strokeStyle = STATUS_COLOURS[alert.status] || STATUS_COLOURS.open;
            ctx.lineWidth = 2 * devicePixelRatio;
            ctx.beginPath();
            ctx.moveTo(x, top);
            ctx.lineTo(x, top + height);
            ctx.stroke();
          }
          if (marks.current !== null && marks.current !== undefined) {
            const x = Math.round(u.valToPos(marks.current, "x", true));
            if (inside(x)) {
              ctx.strokeStyle = "rgba(56, 96, 224, 0.8)";
              ctx.lineWidth = 3 * devicePixelRatio;
              ctx.beginPath();
              ctx.moveTo(x, top);
              ctx.lineTo(x, top + height);
              ctx.stroke();
            }
          }
          ctx.restore();
          placeFlags(u, marks);
        },
      ],
    },
  };
}

function placeFlags(u, marks) {
  let layer = u.over.querySelector(".flags");
  if (!layer) {
    layer = h("div", { class: "flags" });
    u.over.append(layer);
  }
  const [min, max] = [u.scales.x.min, u.scales.x.max];
  const stop = (event) => event.stopPropagation();
  const flags = marks.alerts
    .filter((a) => a.step >= min && a.step <= max)
    .map((a) =>
      h(
        "a",
        {
          class: `alert-marker status-${a.status}`,
          href: `#/alerts/${a.alert_id}`,
          title: `${a.type} at step ${a.step} (${a.status}) — open the alert`,
          style: `left:${u.valToPos(a.step, "x")}px`,
          dataset: { alertId: a.alert_id, step: a.step, status: a.status },
          onmousedown: stop,
          onclick: stop,
        },
        "!",
      ),
    );
  if (marks.stepHref) {
    let lastX = -Infinity;
    for (const step of marks.transitions) {
      if (step < min || step > max) continue;
      const x = u.valToPos(step, "x");
      if (x - lastX < 9) continue; // a run of flagged steps: one mark per 9 px
      lastX = x;
      flags.push(
        h("a", {
          class: "transition-marker",
          href: marks.stepHref(step),
          title: `detected transition at step ${step} — inspect the step`,
          style: `left:${x}px`,
          dataset: { step },
          onmousedown: stop,
          onclick: stop,
        }),
      );
    }
  }
  layer.replaceChildren(...flags);
}

// A click (not a drag) on the plot picks the nearest step: onPick(step).
function pickOnClick(u, onPick) {
  let down = null;
  u.over.addEventListener("mousedown", (event) => {
    down = [event.clientX, event.clientY];
  });
  u.over.addEventListener("click", (event) => {
    const moved = !down || Math.abs(event.clientX - down[0]) > 3 || Math.abs(event.clientY - down[1]) > 3;
    down = null;
    const idx = u.cursor.idx;
    if (moved || idx === null || idx === undefined) return;
    const step = u.data[0][idx];
    if (step !== null && step !== undefined) onPick(step);
  });
  u.over.classList.add("pickable");
}

// The columns of a chart: [steps, series…, compared series…]; with a compared run the steps are the union.
export function chartColumns(spec, rows, compareRows) {
  if (!compareRows) return [rows.map((r) => r.step), ...spec.series.map((s) => rows.map(s.get))];
  const mine = new Map(rows.map((r) => [r.step, r]));
  const theirs = new Map(compareRows.map((r) => [r.step, r]));
  const xs = [...new Set([...mine.keys(), ...theirs.keys()])].sort((a, b) => a - b);
  const col = (map, s) => xs.map((x) => (map.has(x) ? s.get(map.get(x)) : null));
  return [xs, ...spec.series.map((s) => col(mine, s)), ...spec.series.map((s) => col(theirs, s))];
}

// opts: { syncKey, marks, width, log, onZoom(u), onPick(step), compareName, compareRows, height }
export function makeChart(container, spec, rows, opts) {
  const compared = Boolean(opts.compareRows);
  const line = (s, dashed) => ({
    label: dashed ? `${s.label} · ${opts.compareName}` : s.label,
    stroke: s.stroke,
    width: dashed ? 1.4 : 1.6,
    dash: dashed ? [6, 4] : undefined,
    fill: !dashed && spec.series.length === 1 ? "rgba(56, 96, 224, 0.06)" : undefined,
    points: { show: false },
    spanGaps: compared,
  });
  const uopts = {
    width: opts.width,
    height: opts.height || CHART_HEIGHT,
    cursor: { sync: { key: opts.syncKey }, drag: { x: true, y: false } },
    scales: { x: { time: false }, y: opts.log ? { distr: 3 } : {} },
    legend: { live: true },
    axes: chartAxes(spec.unit),
    series: [
      { label: "step" },
      ...spec.series.map((s) => line(s, false)),
      ...(compared ? spec.series.map((s) => line(s, true)) : []),
    ],
    plugins: [markerPlugin(() => opts.marks)],
    hooks: opts.onZoom ? { setScale: [(u, key) => key === "x" && opts.onZoom(u)] } : {},
  };
  const chart = new uPlot(uopts, chartColumns(spec, rows, opts.compareRows), container);
  chart.root.dataset.series = spec.key;
  if (opts.onPick) pickOnClick(chart, opts.onPick);
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
  const { syncKey, marks, width, onZoom, onPick, height = EVIDENCE_HEIGHT } = opts;
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
    axes: chartAxes("log e-value (nats)"),
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
  if (onPick) pickOnClick(chart, onPick);
  return chart;
}

// The figure (chart + plain-words legend + per-stream toggles); returns
// { holder, box, mount(), update(rows, threshold, keepScales) } (keepScales: new data keeps the x range).
export function evidenceFigure(rows, threshold, opts) {
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
  const update = (allRows, fresh, keepScales = false) => {
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
      chart.setData(evidenceColumns(rows, names), !keepScales);
    }
    box.dataset.lastStep = rows.length ? rows[rows.length - 1].step : "";
    return chart;
  };
  return {
    holder,
    box,
    mount,
    update,
    get chart() {
      return chart;
    },
  };
}

// The markers' legend: one swatch per review status, and the transition marks.
export function markerLegend() {
  return h(
    "span",
    { class: "marker-legend", id: "marker-legend" },
    ...Object.keys(STATUS_COLOURS).map((status) =>
      h("span", { class: "legend-item" }, h("i", { class: `swatch swatch-${status}` }), `alert: ${status}`),
    ),
    h("span", { class: "legend-item" }, h("i", { class: "swatch swatch-transition" }), "detected transition (click ▲ to inspect)"),
  );
}
