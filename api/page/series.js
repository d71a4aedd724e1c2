// What each chart shows: a plain title, the value axis's label with its units, and what a rise means.
// The observables live in the run's frozen whitened PCA frame (docs/estimators.md): latent distances are in
// whitened (dimensionless) units, entropies in nats, rates per training step.

const LATENT = "whitened latent units";

//: observable (scalar name) -> { title, unit (value axis), rise (one line) }
export const OBSERVABLES = {
  W2_ref: {
    title: "Distance from the reference (W2)",
    unit: `W2 (${LATENT})`,
    rise: "A rise: the responses move away from the run's first step (its reference batch).",
  },
  W2_step: {
    title: "Movement per step (W2 between steps)",
    unit: `W2 (${LATENT})`,
    rise: "A rise: the responses change faster from one step to the next than before.",
  },
  C: {
    title: "Coupling C (reward drift ÷ diffusion)",
    unit: "ratio (dimensionless)",
    rise: "A rise: the reward's pull outweighs the random spread; the policy is being steered hard.",
  },
  S_dot: {
    title: "Entropy production Ṡ",
    unit: "nats per step",
    rise: "A rise: the responses concentrate (their entropy falls) faster; Ṡ = −dH/dt.",
  },
  sigma_tot: {
    title: "Total entropy production σ_tot",
    unit: "per step (dimensionless)",
    rise: "A rise: the responses move faster than diffusion alone would carry them: a driven change.",
  },
  H: {
    title: "Entropy H of the responses",
    unit: `nats (${LATENT})`,
    rise: "A rise: the responses spread out; a fall: they collapse onto fewer kinds of answer.",
  },
  KL_ref: {
    title: "KL divergence from the reference",
    unit: "nats",
    rise: "A rise: the responses' distribution diverges from the reference batch's.",
  },
  T_eff: {
    title: "Effective temperature T_eff (diffusion ÷ drift)",
    unit: "ratio (dimensionless)",
    rise: "A rise: noise outweighs the reward's pull; a fall: the reward dominates.",
  },
  div_max: {
    title: "Largest local flux divergence max |δ|",
    unit: "|δ| per step",
    rise: "A rise: somewhere the responses pile up or drain away fast (a new attractor filling).",
  },
  div_q99: {
    title: "Local flux divergence |δ| (99th percentile)",
    unit: "|δ| per step",
    rise: "A rise: many responses sit where mass arrives or leaves fast, not just a few outliers.",
  },
  drift_alignment: {
    title: "Drift alignment (flow · reward pull)",
    unit: "cosine (−1 … 1)",
    rise: "A rise: the responses move the way the reward pulls them.",
  },
  reward_mean: {
    title: "Mean reward",
    unit: "reward (trainer's units)",
    rise: "A rise: the proxy reward the trainer optimises goes up.",
  },
  reward_std: {
    title: "Reward spread (std)",
    unit: "reward (trainer's units)",
    rise: "A rise: the batch's rewards disagree more.",
  },
};

//: the charts shown by default (when the run has them), before the ones its alerts cite
export const DEFAULT_CHARTS = ["W2_ref", "C", "S_dot", "sigma_tot", "H", "rewards"];
export const REWARDS = "rewards";
export const EXTRA_PREFIX = "extra:";
const PALETTE = ["#3860e0", "#2b8a3e", "#e8590c", "#7048e8", "#0c8599", "#c2255c"];

const scalar = (name) => (row) => (row.scalars ? row.scalars[name] ?? null : null);
const extra = (name) => (row) => (row.extra ? row.extra[name] ?? null : null);

// The names present in the rows: scalars (observables) and extra scalars (sent by the trainer).
export function namesOf(rows) {
  const scalars = new Set();
  const extras = new Set();
  for (const r of rows) {
    for (const k of Object.keys(r.scalars || {})) scalars.add(k);
    for (const k of Object.keys(r.extra || {})) extras.add(k);
  }
  return { scalars: [...scalars].sort(), extras: [...extras].sort() };
}

// Every chart the run can show, as [key, title] for the picker: observables, "Rewards", one per extra scalar.
export function chartChoices(names) {
  const choices = names.scalars.map((n) => [n, OBSERVABLES[n] ? `${OBSERVABLES[n].title} (${n})` : n]);
  if (names.scalars.includes("reward_mean") || names.extras.some((n) => /reward/i.test(n))) {
    choices.push([REWARDS, "Rewards: proxy mean beside the trainer's reward scalars"]);
  }
  for (const n of names.extras) choices.push([`${EXTRA_PREFIX}${n}`, `${n} (extra scalar)`]);
  return choices;
}

// The observables the alerts' reasons cite by name (e.g. "W2_step", "C", "div_max"), in first-cited order.
export function citedNames(alerts, names) {
  const known = [...names.scalars, ...names.extras].sort((a, b) => b.length - a.length);
  const cited = [];
  for (const alert of alerts) {
    for (const reason of alert.reasons || []) {
      for (const name of known) {
        const escaped = name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
        const key = names.scalars.includes(name) ? name : `${EXTRA_PREFIX}${name}`;
        if (!cited.includes(key) && new RegExp(`(^|[^A-Za-z0-9_])${escaped}($|[^A-Za-z0-9_])`).test(reason)) {
          cited.push(key);
        }
      }
    }
  }
  return cited;
}

// The default chart set: the standard observables the run has, the rewards, then the ones the alerts cite.
export function defaultCharts(names, alerts) {
  const available = new Set(chartChoices(names).map(([k]) => k));
  const keys = DEFAULT_CHARTS.filter((k) => available.has(k));
  for (const k of citedNames(alerts, names)) if (!keys.includes(k) && available.has(k)) keys.push(k);
  return keys;
}

// A chart's spec: { key, title, unit, rise, series: [{ label, get(row), stroke }] }.
export function chartSpec(key, names) {
  if (key === REWARDS) {
    const series = [];
    if (names.scalars.includes("reward_mean")) series.push({ label: "proxy reward (mean)", get: scalar("reward_mean") });
    for (const n of names.extras.filter((e) => /reward/i.test(e))) series.push({ label: n, get: extra(n) });
    series.forEach((s, i) => (s.stroke = PALETTE[i % PALETTE.length]));
    return {
      key,
      title: series.length > 1 ? "Rewards: the proxy beside the trainer's reward scalars" : "Rewards (proxy mean)",
      unit: "reward (trainer's units)",
      rise: "A proxy reward that climbs while a true reward stalls or falls is the signature of reward hacking.",
      series,
    };
  }
  if (key.startsWith(EXTRA_PREFIX)) {
    const n = key.slice(EXTRA_PREFIX.length);
    return {
      key,
      title: n,
      unit: "value (as the trainer sent it)",
      rise: `An extra scalar the trainer sent with each step (observe(scalars={"${n}": …})).`,
      series: [{ label: n, get: extra(n), stroke: PALETTE[1] }],
    };
  }
  const info = OBSERVABLES[key] || { title: key, unit: "value", rise: "A scalar the monitor stores for each step." };
  return { key, ...info, series: [{ label: key, get: scalar(key), stroke: PALETTE[0] }] };
}
