"""From a step's evidence to an alert: which type, why, and which responses show it.

* ``POTENTIAL_REWARD_HACKING``: the embedding evidence and the reward evidence (the proxy − judge gap when
  the run logs a judge, the reward rise otherwise) have both crossed their threshold, within
  ``EvidenceConfig.pairing_steps`` of each other. Each accumulates on its own, so they need not cross on the
  same step.
* ``PHASE_TRANSITION``: the embedding evidence crossed (with or without rewards: DPO probes have none).
* Optionally (``MonitorConfig.seed_rule``) the seed's absolute rule C < C_alert and div_max > div_alert.

An alert carries the responses with the largest witness score (the evidence each contributes: how much more
it resembles where the run is moving than the run's base window), largest first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..detect.streams import EvidenceStep
from .config import MonitorConfig
from .report import RECOMMENDATIONS, Alert, AlertType, SampleRef


@dataclass
class Latches:
    """The last step at which each combined evidence crossed (None: not since the last alert that used it),
    and the last step of each alert type (for the cool-down). JSON-serialisable via :meth:`to_dict`."""

    embedding: int | None = None
    reward: int | None = None
    last_alert: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"embedding": self.embedding, "reward": self.reward, "last_alert": dict(self.last_alert)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Latches:
        return cls(
            embedding=data.get("embedding"),
            reward=data.get("reward"),
            last_alert={str(k): int(v) for k, v in data.get("last_alert", {}).items()},
        )


def _fmt_e(log_value: float) -> str:
    return f"e^{log_value:.1f}" if log_value > 700 else f"{math.exp(log_value):.3g}"


def evidence_reasons(ev: EvidenceStep, alpha: float, crossings: dict[str, int]) -> list[str]:
    """One line per evidence behind the alert: the one that crossed at this step with its value and streams
    against 1/α, and the one that had crossed earlier (``crossings``: evidence name → step of its crossing)."""
    out = []
    streams = ", ".join(
        f"{name} {_fmt_e(v)}" for name, v in ev.log_values.items() if name not in ("embedding", "reward")
    )
    what = "proxy − judge gap" if ev.reward_source == "judge_gap" else "reward"
    if ev.embedding_crossed:
        out.append(
            f"embedding evidence {_fmt_e(ev.log_values['embedding'])} ≥ 1/α = {1 / alpha:.3g}: the responses moved "
            f"away from the run's lagged window faster than ordinary learning allows ({streams})"
        )
    elif "embedding" in crossings:
        out.append(f"embedding evidence crossed 1/α = {1 / alpha:.3g} at step {crossings['embedding']}")
    if ev.reward_crossed:
        out.append(f"{what} evidence {_fmt_e(ev.log_values['reward'])} ≥ 1/α = {1 / alpha:.3g}")
    elif "reward" in crossings:
        out.append(f"{what} evidence crossed 1/α = {1 / alpha:.3g} at step {crossings['reward']}")
    return out


def decide(
    step: int, ev: EvidenceStep, latches: Latches, pairing_steps: int, cooldown_steps: int, has_rewards: bool
) -> tuple[AlertType | None, dict[str, int]]:
    """The alert type this step raises (or None) and the crossings behind it (evidence name → step), updating
    ``latches`` in place."""
    if ev.embedding_crossed:
        latches.embedding = step
    if ev.reward_crossed:
        latches.reward = step
    for name in ("embedding", "reward"):
        at = getattr(latches, name)
        if at is not None and step - at > pairing_steps:
            setattr(latches, name, None)
    kind: AlertType | None = None
    crossings = {name: at for name in ("embedding", "reward") if (at := getattr(latches, name)) is not None}
    if has_rewards and latches.embedding is not None and latches.reward is not None:
        kind = "POTENTIAL_REWARD_HACKING"
    elif ev.embedding_crossed:
        kind = "PHASE_TRANSITION"
    if kind is None:
        return None, crossings
    last = latches.last_alert.get(kind)
    if last is not None and step - last <= cooldown_steps:
        return None, crossings
    latches.last_alert[kind] = step
    if kind == "POTENTIAL_REWARD_HACKING":
        latches.embedding = latches.reward = None
    return kind, crossings


def seed_rule_reason(config: MonitorConfig, scalars: dict[str, float]) -> str | None:
    """The seed's absolute rule (``config.seed_rule``): C < C_alert and div_max > div_alert, as a reason, or None."""
    c_val, div_max = scalars.get("C", math.nan), scalars.get("div_max", math.nan)
    if not (config.seed_rule and math.isfinite(c_val) and math.isfinite(div_max)):
        return None
    if c_val < config.C_alert and div_max > config.div_alert:
        return f"C = {c_val:.3g} < {config.C_alert:g} and div_max = {div_max:.3g} > {config.div_alert:g}"
    return None


def top_samples(
    top_k: int,
    witness: Tensor | None,
    div: Tensor | None,
    rewards: Tensor | None,
    texts: Sequence[str] | None,
    sample_ids: Sequence[str] | None,
    reward_scores: Tensor | None = None,
) -> tuple[SampleRef, ...]:
    """The ``top_k`` distinct samples that carry the most evidence, largest first.

    Ordered by witness score (else by |δ| before the streams have a window); with ``reward_scores`` (for a
    POTENTIAL_REWARD_HACKING alert), the samples that also carry the reward evidence come first. Responses
    with the same text are listed once (the first of them), so one repeated answer cannot fill the list.
    Empty when no score is finite.
    """
    score: Tensor | None = None
    if witness is not None and bool(torch.isfinite(witness).all()):
        score = witness.detach().to("cpu", torch.float64)
    elif div is not None and bool(torch.isfinite(div).all()):
        score = div.detach().to("cpu", torch.float64).abs()
    if score is None:
        return ()
    if reward_scores is not None:
        span = float(score.max() - score.min()) + 1.0
        score = score + span * reward_scores.detach().to("cpu", torch.float64)
    ranked = torch.argsort(score, descending=True, stable=True).tolist()
    order: list[int] = []
    seen: set[str] = set()
    for i in ranked:
        if texts is not None:
            if texts[i] in seen:
                continue
            seen.add(texts[i])
        order.append(i)
        if len(order) == top_k:
            break
    div64 = div.detach().to("cpu", torch.float64) if div is not None else None
    return tuple(
        SampleRef(
            index=i,
            div=float(div64[i]) if div64 is not None else math.nan,
            sample_id=str(sample_ids[i]) if sample_ids is not None else None,
            text=texts[i] if texts is not None else None,
            reward=float(rewards[i]) if rewards is not None else None,
            witness=float(witness[i]) if witness is not None else None,
        )
        for i in order
    )


def make_alert(
    kind: AlertType, step: int, scalars: dict[str, float], reasons: Sequence[str], samples: tuple[SampleRef, ...]
) -> Alert:
    return Alert(
        type=kind,
        step=step,
        scalars=dict(scalars),
        reasons=tuple(reasons),
        top_samples=samples,
        recommendation=RECOMMENDATIONS[kind],
    )
