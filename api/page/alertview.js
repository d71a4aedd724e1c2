// The alert view (#/alerts/<id>): the step's context (shared with the step view), why the alert fired, and the
// review: acknowledge / confirm / dismiss (optionally as the new normal), or re-open a decided alert.

import { api } from "./api.js";
import { contextSections, stepHref } from "./stepview.js";
import { ago, h, onKey, pill, setTitle, typePill, view } from "./util.js";

const REVIEWER_KEY = "fpmon.reviewer";
const DECISIONS = [
  ["acknowledged", "Acknowledge", "a"],
  ["confirmed", "Confirm", "c"],
  ["dismissed", "Dismiss as false positive", "d"],
];

function reviewsList(reviews) {
  return h(
    "ul",
    { class: "reviews", id: "reviews" },
    reviews.length
      ? reviews.map((r) =>
          h(
            "li",
            {},
            pill(r.decision === "open" ? "re-opened" : r.decision, r.decision),
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
  let current = alert.status;
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
  const reopen = h(
    "button",
    {
      type: "button",
      class: "decision decision-open",
      id: "reopen",
      title: "Back to the queue as open; the history keeps every decision (Alt+O)",
      "aria-keyshortcuts": "Alt+O",
      onclick: () => submit("open"),
    },
    "Re-open",
  );
  const showReopen = () => {
    reopen.hidden = current === "open";
  };
  showReopen();
  const all = [...buttons, reopen];
  async function submit(decision) {
    if (!reviewer.value.trim()) {
      message.className = "review-message error";
      message.textContent = "Enter the reviewer's name first.";
      reviewer.focus();
      return;
    }
    localStorage.setItem(REVIEWER_KEY, reviewer.value.trim());
    for (const b of all) b.disabled = true;
    try {
      const body = { decision, reviewer: reviewer.value.trim(), note: note.value.trim() || null };
      // the re-baseline goes with a dismissal only (the API refuses it with any other decision)
      if (decision === "dismissed" && rebaseline.checked) body.rebaseline = true;
      const updated = await api(`v1/alerts/${alert.alert_id}/review`, { method: "POST", body });
      message.className = "review-message ok";
      message.textContent =
        decision === "open"
          ? `Re-opened by ${body.reviewer}: the alert is open again.`
          : body.rebaseline
            ? `Recorded: ${decision} by ${body.reviewer}; the detector is re-baselined before the run's next step.`
            : `Recorded: ${decision} by ${body.reviewer}.`;
      note.value = "";
      rebaseline.checked = false;
      current = updated.status;
      showReopen();
      onDone(updated);
    } catch (error) {
      message.className = "review-message error";
      message.textContent =
        error.status === 403
          ? "This token is read-only: nothing was recorded. Sign in with a write token (FPMON_API_TOKENS) to review."
          : `Not recorded: ${error.message}`;
    } finally {
      for (const b of all) b.disabled = false;
    }
  }
  onKey((event) => {
    if (!event.altKey) return;
    const key = event.key.toLowerCase();
    const hit = DECISIONS.find(([, , k]) => k === key);
    if (hit) {
      event.preventDefault();
      submit(hit[0]);
    } else if (key === "o" && current !== "open") {
      event.preventDefault();
      submit("open");
    }
  });
  return h(
    "form",
    { class: "review-form", id: "review-form", onsubmit: (event) => event.preventDefault() },
    h("label", {}, "Reviewer", reviewer),
    h("label", {}, "Note", note),
    h("div", { class: "decisions" }, buttons, reopen),
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

export async function renderAlert(alertId) {
  const ctx = await api(`v1/alerts/${alertId}/context?k=8`);
  const alert = ctx.alert;
  const run = await api(`v1/runs/${alert.run_id}`);
  const marks = { alerts: [alert], transitions: [], current: null };
  const parts = await contextSections(ctx, {
    flaggedSubtitle: `the alert's ${ctx.flagged.length} responses, by evidence (witness score)`,
    marks,
    evidenceId: "alert-evidence",
  });
  setTitle(`Alert #${alert.alert_id}`, run.name);
  const statusPill = h("span", { id: "alert-status" }, pill(alert.status, alert.status));
  const reviewsBox = h("div", {}, reviewsList(alert.reviews));
  const onDone = (updated) => {
    statusPill.replaceChildren(pill(updated.status, updated.status));
    reviewsBox.replaceChildren(reviewsList(updated.reviews));
    marks.alerts = [updated];
  };
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
      h("h1", {}, `Alert #${alert.alert_id} `, typePill(alert.type), " ", statusPill),
      h(
        "p",
        { class: "muted" },
        `step ${alert.step} of ${run.name} · raised ${ago(alert.created_at)}`,
        ctx.transition ? " · the streaming detector flagged this step" : "",
        " · ",
        h("a", { href: stepHref(alert.run_id, alert.step), id: "open-step" }, "step view (← / → through the run)"),
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
        h(
          "details",
          { class: "observables-details" },
          h("summary", {}, "Observables at this step"),
          parts.observables,
        ),
      ),
      parts.map,
      h("div", { class: "card review-card" }, h("h2", {}, "Review"), reviewPanel(alert, onDone), h("h3", {}, "History"), reviewsBox),
    ),
    parts.responses,
    parts.evidence,
  );
  parts.mount();
}
