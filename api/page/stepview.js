// The step view (#/runs/<id>/steps/<step>): any processed step's most-evidence responses, typical ones,
// reference ones and the 2-D map — the same content as the alert view, which reuses contextSections().
// ←/→ step through the run's processed steps.

import { api } from "./api.js";
import { evidenceFigure } from "./charts.js";
import { OBSERVABLES } from "./series.js";
import { ago, fmt, h, onKey, setTitle, state, typePill, typing, view } from "./util.js";

const MAIN = ["W2_ref", "W2_step", "C", "S_dot", "sigma_tot", "H", "KL_ref", "div_max", "div_q99", "reward_mean"];

export function stepHref(runId, step) {
  return `#/runs/${runId}/steps/${step}`;
}

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
  for (const p of pts) if (!p.flagged) dot(p, 2.8, "rgba(96, 106, 122, 0.55)", null, `step ${ctx.step}`);
  for (const p of pts) if (p.flagged) dot(p, 5.5, "#d6336c", "#ffffff", `flagged, step ${ctx.step}`);

  canvas.onmousemove = (event) => {
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
  canvas.onmouseleave = () => {
    tooltip.hidden = true;
  };
}

function observablesTable(ctx) {
  const scalars = ctx.step_scalars;
  const names = [...MAIN.filter((n) => n in scalars), ...Object.keys(scalars).filter((n) => !MAIN.includes(n)).sort()];
  const extra = Object.keys(ctx.extra || {}).sort();
  const row = (name, value, title) => h("tr", {}, h("th", { title }, name), h("td", { class: "num" }, fmt(value)));
  return h(
    "table",
    { class: "table compact", id: "observables" },
    h(
      "tbody",
      {},
      names.map((n) => row(n, scalars[n], OBSERVABLES[n] ? `${OBSERVABLES[n].title}, ${OBSERVABLES[n].unit}` : "")),
      extra.map((n) => row(n, ctx.extra[n], "extra scalar sent by the trainer")),
    ),
  );
}

// The evidence chart around a step (why an alert fired there, or not): 60 steps before, 20 after.
async function evidenceAround(runId, step, id, marks) {
  const around = await api(`v1/runs/${runId}/metrics?start=${Math.max(0, step - 60)}&end=${step + 20}&names=C&evidence=all&max_points=1000`);
  const figure = evidenceFigure(around.rows, around.evidence_threshold, {
    id,
    syncKey: `${id}-${runId}-${step}`,
    marks,
    height: 200,
    onPick: (picked) => {
      location.hash = stepHref(runId, picked);
    },
  });
  state.cleanups.push(() => figure.chart && figure.chart.destroy());
  return figure;
}

// The sections shared by the step and alert views. Returns { why, map, responses, evidence, mount() }.
export async function contextSections(ctx, { flaggedSubtitle, marks, evidenceId }) {
  const canvas = h("canvas", { id: "map", class: "map", role: "img", "aria-label": "2-D map of the step's samples" });
  const tooltip = h("div", { class: "tooltip", hidden: true });
  const evidence = await evidenceAround(ctx.run_id, ctx.step, evidenceId, marks);
  const map = h(
    "div",
    { class: "card map-card" },
    h("h2", {}, "Map of the step ", h("span", { class: "muted" }, "(run's projection, axes 1–2, whitened)")),
    h("div", { class: "map-wrap" }, canvas, tooltip),
    h(
      "p",
      { class: "map-legend" },
      h("span", { class: "legend-item" }, h("i", { class: "dot dot-flagged" }), `flagged (${ctx.flagged.length} responses)`),
      h("span", { class: "legend-item" }, h("i", { class: "dot dot-step" }), `step ${ctx.step} (${ctx.n} samples)`),
      h("span", { class: "legend-item" }, h("i", { class: "dot dot-ref" }), `reference, step ${ctx.reference_step ?? "—"}`),
    ),
  );
  const responses = h(
    "section",
    { class: "card" },
    h("h2", {}, "Responses"),
    h(
      "div",
      { class: "columns" },
      sampleList("Flagged", flaggedSubtitle, ctx.flagged, "flagged"),
      sampleList("Typical", "same step, smallest witness score", ctx.typical, "typical"),
      sampleList("Reference", `step ${ctx.reference_step ?? "—"}`, ctx.reference, "reference"),
    ),
  );
  const evidenceCard = h(
    "section",
    { class: "card evidence-card" },
    h("h2", {}, `Evidence of change around step ${ctx.step} `, h("span", { class: "muted" }, "(click a point to inspect that step)")),
    evidence.holder,
  );
  const mount = () => {
    drawMap(canvas, tooltip, ctx);
    evidence.mount();
    const onResize = () => {
      drawMap(canvas, tooltip, ctx);
      if (evidence.chart) evidence.chart.setSize({ width: Math.max(320, evidence.box.clientWidth - 8), height: 200 });
    };
    window.addEventListener("resize", onResize);
    state.cleanups.push(() => window.removeEventListener("resize", onResize));
  };
  return { observables: observablesTable(ctx), map, responses, evidence: evidenceCard, mount };
}

export async function renderStep(runId, step) {
  const [ctx, run, alertList] = await Promise.all([
    api(`v1/runs/${runId}/steps/${step}/context?k=8`),
    api(`v1/runs/${runId}`),
    api(`v1/alerts?run_id=${runId}&limit=1000`),
  ]);
  setTitle(`Step ${step}`, run.name);
  const here = alertList.alerts.filter((a) => a.step === step);
  const marks = { alerts: alertList.alerts, transitions: [], current: step };
  const parts = await contextSections(ctx, {
    flaggedSubtitle: `top ${ctx.flagged.length} by evidence (witness score)`,
    marks,
    evidenceId: "step-evidence",
  });
  const go = (target) => {
    if (target !== null && target !== undefined) location.hash = stepHref(runId, target);
  };
  onKey((event) => {
    if (typing(event) || event.altKey || event.ctrlKey || event.metaKey) return;
    if (event.key === "ArrowLeft" && ctx.prev_step !== null) {
      event.preventDefault();
      go(ctx.prev_step);
    } else if (event.key === "ArrowRight" && ctx.next_step !== null) {
      event.preventDefault();
      go(ctx.next_step);
    }
  });
  const navLink = (target, label, id) =>
    target === null || target === undefined
      ? h("span", { class: "muted step-nav-off", id }, label)
      : h("a", { href: stepHref(runId, target), id, class: "step-nav" }, label);
  view.replaceChildren(
    h(
      "section",
      { class: "page-head" },
      h("p", { class: "crumbs" }, h("a", { href: "#/runs" }, "Runs"), " / ", h("a", { href: `#/runs/${runId}` }, run.name), " / "),
      h(
        "h1",
        { id: "step-title", dataset: { step } },
        `Step ${step}`,
        ctx.transition ? h("span", { class: "pill pill-phase" }, "detected transition") : null,
      ),
      h(
        "p",
        { class: "muted step-nav-bar" },
        navLink(ctx.prev_step, `← step ${ctx.prev_step ?? "—"}`, "prev-step"),
        " · ",
        navLink(ctx.next_step, `step ${ctx.next_step ?? "—"} →`, "next-step"),
        ` · ${run.name}, ${ctx.n} responses · the ← / → keys step through the run's processed steps`,
      ),
    ),
    h(
      "section",
      { class: "detail-grid" },
      h(
        "div",
        { class: "card" },
        h("h2", {}, "Alerts at this step"),
        here.length
          ? h(
              "ul",
              { class: "reasons", id: "step-alerts" },
              here.map((a) =>
                h("li", {}, h("a", { href: `#/alerts/${a.alert_id}` }, `#${a.alert_id}`), " ", typePill(a.type), " ", h("span", { class: `pill pill-${a.status}` }, a.status), ` · ${ago(a.created_at)}`),
              ),
            )
          : h("p", { class: "muted", id: "step-alerts" }, "None: no alert was raised at this step."),
        h("h2", {}, "Observables at this step"),
        parts.observables,
      ),
      parts.map,
      h(
        "div",
        { class: "card" },
        h("h2", {}, "Reading this step"),
        h(
          "p",
          { class: "muted" },
          "Flagged: the step's responses that carry the most evidence of change (largest witness score: most like where the run is moving, least like its recent past). Typical: the smallest witness scores. Reference: the run's first processed step.",
        ),
      ),
    ),
    parts.responses,
    parts.evidence,
  );
  parts.mount();
}
