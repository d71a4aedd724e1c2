"""Evidence streams: per-step e-values from a run's embeddings and rewards, each with its own e-detector.

A stream turns every step into a score per sample in {0, 1} ("does this sample exceed what the stream's
base window makes typical?", :mod:`monitor.detect.witness`), then into a betting e-value over independent
blocks of the step, accumulated by a Shiryaev–Roberts e-detector (:mod:`monitor.detect.evidence`).

Streams (``EvidenceConfig.streams``):

* ``embedding_lagged``: the step's embeddings against a *lagged* window of the same run (the ``window``
  steps that end ``lag`` steps ago), in the direction of the last ``recent`` steps (an MMD witness).
* ``embedding_reference``: the step's embeddings against the run's reference (an explicit reference batch,
  or the first ``reference_steps`` steps pooled), in the direction of the last ``recent`` steps.
* ``reward_rise``: the step's rewards against the lagged window's rewards.
* ``judge_gap``: the step's proxy − judge gaps (``rewards − reference_rewards``, when the run logs a
  second reward that does not drive training) against the lagged window's gaps.

**The null each stream tests** (the one its false-alarm guarantee assumes): given everything before the
step, each of the step's ``blocks`` contiguous blocks is independent of the others, and a block's expected
fraction of exceeding samples is at most ``β + ε``. A sample drawn like the base window exceeds with
probability at most ``β`` (conformal quantile), so ``ε`` is the tolerance for how far ordinary learning may
move the run between the base window and now. Blocks are independent when each holds whole groups of
responses to the same prompts (GRPO's groups are contiguous) or when responses are independent (PPO).
Under that null, each stream's statistic reaches ``1/α`` no sooner than ``1/α`` steps on average.

The combined *embedding evidence* is the mean of the embedding streams' statistics and the *reward
evidence* is the judge-gap stream's when the step has a judge, the reward-rise stream's otherwise; an
average of Shiryaev–Roberts statistics keeps their guarantee, so each combined evidence also has an average
run length ≥ ``1/α`` to a false crossing. After a crossing, the streams behind it restart from zero.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from .evidence import EDetectorConfig, ShiryaevRoberts, exceedance_log_evalues, log_mean_exp
from .witness import block_means, median_gamma, value_exceedance, witness_exceedance

EMBEDDING_STREAMS: tuple[str, ...] = ("embedding_lagged", "embedding_reference")
REWARD_STREAMS: tuple[str, ...] = ("reward_rise", "judge_gap")
ALL_STREAMS: tuple[str, ...] = EMBEDDING_STREAMS + REWARD_STREAMS
_STATE_VERSION = 1


@dataclass(frozen=True)
class EvidenceConfig:
    """Settings of :class:`EvidenceTracker` (see the module docstring for the streams and their null).

    Attributes:
        alpha: false-alarm level: a combined evidence crosses at ``log(1/alpha)``; its average run length to a
            false crossing is ≥ ``1/alpha`` steps under the null. Default 1e-3.
        bets: betting fractions mixed by every e-detector (see ``EDetectorConfig``). Default (0.1, 0.25, 0.5, 0.8).
        streams: the streams that are computed (any of :data:`ALL_STREAMS`). Default: ``embedding_lagged``,
            ``reward_rise`` and ``judge_gap`` (which only counts at steps that carry reference rewards).
            ``embedding_reference`` is off by default: its null ("the run stays near its reference") is false
            in any run that learns — on the development controls its exceedance rate rose to 0.25–0.6 against
            a null rate of 0.2 late in the runs (docs/validation.md §1).
        beta: exceedance level: a sample exceeds when it passes the base window's conformal ``(1 − beta)``
            quantile. Default 0.1.
        epsilon: tolerance of the null for ordinary learning, as a rate: the null allows ``beta + epsilon``
            exceeding samples per block. Default 0.05 (chosen on the development runs, docs/validation.md §1).
        blocks: independent blocks per step (contiguous; each should hold whole prompt groups). Default 8.
        lag: the lagged window ends this many steps before the current step. Default 10.
        window: steps in the lagged window. Default 10.
        recent: steps that give the witness its direction (the last ones before the current step). Default 3.
        reference_steps: without an explicit reference batch, the first steps pooled as the reference.
            Default 3.
        rows_per_step: at most this many samples of a step are kept (evenly spaced). Default 128.
        max_window_samples: a window is subsampled (evenly) to at most this many samples. Default 256.
        sketch_dim: latents wider than this are first multiplied by a fixed Gaussian random matrix
            (d × sketch_dim, seed 0, scaled by 1/sqrt(sketch_dim)), which keeps pairwise distances within a few
            per cent (Johnson–Lindenstrauss) and makes the kernels' cost independent of d. Default 128.
        pairing_steps: POTENTIAL_REWARD_HACKING needs the embedding and the reward evidence to have crossed
            within this many steps of each other. Default 20.
    """

    alpha: float = 1e-3
    bets: tuple[float, ...] = (0.1, 0.25, 0.5, 0.8)
    streams: tuple[str, ...] = ("embedding_lagged", "reward_rise", "judge_gap")
    beta: float = 0.1
    epsilon: float = 0.05
    blocks: int = 8
    lag: int = 10
    window: int = 10
    recent: int = 3
    reference_steps: int = 3
    rows_per_step: int = 128
    max_window_samples: int = 256
    pairing_steps: int = 20
    sketch_dim: int = 128

    def __post_init__(self) -> None:
        EDetectorConfig(self.alpha, tuple(self.bets))  # validates alpha and bets
        unknown = set(self.streams) - set(ALL_STREAMS)
        if unknown or not self.streams:
            raise ValueError(f"EvidenceConfig.streams must name some of {ALL_STREAMS}, got {self.streams}")
        if not (0 < self.beta < 1 and self.epsilon >= 0 and self.beta + self.epsilon < 1):
            raise ValueError(
                f"EvidenceConfig needs 0 < beta < 1, epsilon >= 0 and beta + epsilon < 1; "
                f"got beta={self.beta}, epsilon={self.epsilon}"
            )
        for name in (
            "blocks",
            "lag",
            "window",
            "recent",
            "reference_steps",
            "rows_per_step",
            "pairing_steps",
            "sketch_dim",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"EvidenceConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_window_samples < 8:
            raise ValueError(f"EvidenceConfig.max_window_samples must be >= 8, got {self.max_window_samples}")

    @property
    def detector(self) -> EDetectorConfig:
        return EDetectorConfig(alpha=self.alpha, bets=tuple(self.bets))

    @property
    def null_rate(self) -> float:
        return self.beta + self.epsilon

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvidenceConfig:
        values = dict(data)
        for key in ("bets", "streams"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


@dataclass(frozen=True)
class EvidenceStep:
    """What :meth:`EvidenceTracker.observe` returns for one step.

    Attributes:
        log_values: natural-log e-detector statistic after this step, per computed stream, plus the combined
            ``"embedding"`` and ``"reward"`` evidence (absent when no stream behind it was computed).
        rates: the fraction of the step's samples that exceeded, per computed stream (a diagnostic).
        log_threshold: ``log(1/alpha)``, where a combined evidence crosses.
        embedding_crossed: the embedding evidence crossed at this step (its streams then restart).
        reward_crossed: the reward evidence crossed at this step (its stream then restarts).
        reward_source: the stream behind the reward evidence at this step (``"judge_gap"`` or ``"reward_rise"``).
        witness: (n,) float32 attribution score of each sample (the witness of the embedding stream with the
            most evidence; larger = more like where the run is moving, less like its base), or None.
        reward_scores: (n,) float32 in {0, 1}: which samples exceeded in the stream behind the reward
            evidence (they carry the reward evidence), or None.
    """

    log_values: dict[str, float]
    rates: dict[str, float]
    log_threshold: float
    embedding_crossed: bool = False
    reward_crossed: bool = False
    reward_source: str | None = None
    witness: Tensor | None = None
    reward_scores: Tensor | None = None


@dataclass
class _Past:
    latents: Tensor  # (≤ rows_per_step, d) float32, CPU
    rewards: Tensor | None  # (≤ rows_per_step,) float64
    gaps: Tensor | None


def _even_rows(n: int, keep: int) -> Tensor:
    if n <= keep:
        return torch.arange(n)
    return torch.linspace(0, n - 1, keep).round().to(torch.long)


@dataclass
class EvidenceTracker:
    """Keeps the windows and e-detectors of every stream of one run (see the module docstring)."""

    config: EvidenceConfig = field(default_factory=EvidenceConfig)
    reference: Tensor | None = None  # (m, d) explicit reference latents, or pooled from the first steps
    gamma: float | None = None
    seen: int = 0
    ref_at: int = 0  # steps seen when the reference was set: later steps can be compared with it
    _past: deque[_Past] = field(default_factory=deque)
    _pooled: list[Tensor] = field(default_factory=list)
    _detectors: dict[str, ShiryaevRoberts] = field(default_factory=dict)
    _sketch: Tensor | None = None

    def __post_init__(self) -> None:
        self._past = deque(maxlen=self.config.lag + self.config.window + self.config.recent)
        self._detectors = {s: ShiryaevRoberts(self.config.detector) for s in ALL_STREAMS}
        if self.reference is not None:
            self.set_reference(self.reference)

    def sketch(self, z: Tensor) -> Tensor:
        """``z`` (n, d) on the CPU in float32, multiplied by the fixed random matrix when d > ``sketch_dim``."""
        z32 = z.detach().to("cpu", torch.float32)
        d, k = z32.shape[1], self.config.sketch_dim
        if d <= k:
            return z32
        if self._sketch is None or self._sketch.shape[0] != d:
            gen = torch.Generator().manual_seed(0)
            self._sketch = torch.randn(d, k, generator=gen) / k**0.5
        return z32 @ self._sketch

    def set_reference(self, z_ref: Tensor) -> None:
        """Use ``z_ref`` (m, d) as the reference of ``embedding_reference`` (evenly subsampled)."""
        z = self.sketch(z_ref)
        self.reference = z[_even_rows(z.shape[0], self.config.max_window_samples)]
        if self.gamma is None:
            self.gamma = median_gamma(self.reference)

    # ------------------------------------------------------------------ one step
    def observe(
        self, z: Tensor, rewards: Tensor | None = None, reference_rewards: Tensor | None = None
    ) -> EvidenceStep:
        """Score the step (latents ``z`` (n, d), optional ``rewards`` and ``reference_rewards`` (n,)) against the
        past, update the e-detectors, then remember the step."""
        cfg = self.config
        z32 = self.sketch(z)
        if self.gamma is None:
            self.gamma = median_gamma(z32)
        r = rewards.detach().to("cpu", torch.float64) if rewards is not None else None
        gaps = (
            r - reference_rewards.detach().to("cpu", torch.float64)
            if (r is not None and reference_rewards is not None)
            else None
        )
        log_values: dict[str, float] = {}
        rates: dict[str, float] = {}
        witnesses: dict[str, Tensor] = {}
        sample_scores: dict[str, Tensor] = {}
        base, recent = self._lagged_windows()
        for name in cfg.streams:
            scores: Tensor | None = None
            if name == "embedding_lagged" and base is not None and recent is not None:
                scores, witnesses[name], _ = witness_exceedance(
                    z32, self._latents(base), self._latents(recent), self.gamma, cfg.beta
                )
            elif name == "embedding_reference":
                ref_recent = self._reference_recent()
                if self.reference is not None and ref_recent is not None:
                    scores, witnesses[name], _ = witness_exceedance(
                        z32, self.reference, self._latents(ref_recent), self.gamma, cfg.beta
                    )
            elif name == "reward_rise" and r is not None and base is not None:
                past = self._stack(base, "rewards")
                if past is not None:
                    scores, _ = value_exceedance(r, past, cfg.beta)
            elif name == "judge_gap" and gaps is not None and base is not None:
                past = self._stack(base, "gaps")
                if past is not None:
                    scores, _ = value_exceedance(gaps, past, cfg.beta)
            if scores is None:
                continue
            rates[name] = float(scores.mean())
            sample_scores[name] = scores
            det = self._detectors[name]
            det.update(exceedance_log_evalues(block_means(scores, cfg.blocks), cfg.null_rate, cfg.bets))
            log_values[name] = det.log_value
        step = self._combine(
            log_values, rates, reward_source="judge_gap" if "judge_gap" in log_values else "reward_rise"
        )
        best = max(witnesses, key=lambda s: log_values.get(s, -math.inf)) if witnesses else None
        step = replace(
            step,
            witness=witnesses[best].detach().to("cpu", torch.float32) if best is not None else None,
            reward_scores=sample_scores.get(step.reward_source) if step.reward_source is not None else None,
        )
        self._remember(z32, r, gaps)
        return step

    def _combine(self, log_values: dict[str, float], rates: dict[str, float], reward_source: str) -> EvidenceStep:
        thr = self.config.detector.log_threshold
        emb = [log_values[s] for s in EMBEDDING_STREAMS if s in log_values]
        emb_crossed = rew_crossed = False
        if emb:
            log_values["embedding"] = log_mean_exp(emb)
            emb_crossed = log_values["embedding"] >= thr
        source = reward_source if reward_source in log_values else None
        if source is not None:
            log_values["reward"] = log_values[source]
            rew_crossed = log_values["reward"] >= thr
        if emb_crossed:  # renewal: the next crossing is judged afresh
            for s in EMBEDDING_STREAMS:
                self._detectors[s].reset()
        if rew_crossed and source is not None:
            self._detectors[source].reset()
        return EvidenceStep(
            log_values=log_values,
            rates=rates,
            log_threshold=thr,
            embedding_crossed=emb_crossed,
            reward_crossed=rew_crossed,
            reward_source=source,
        )

    # ------------------------------------------------------------------ windows
    def _lagged_windows(self) -> tuple[list[_Past] | None, list[_Past] | None]:
        cfg, h = self.config, len(self._past)
        if h < 2:
            return None, None
        past = list(self._past)
        n_recent = min(cfg.recent, h - 1)
        base_end = min(h - n_recent, max(1, h - cfg.lag))
        return past[max(0, base_end - cfg.window) : base_end], past[h - n_recent :]

    def _reference_recent(self) -> list[_Past] | None:
        if self.reference is None:
            return None
        after = self.seen - self.ref_at
        n = min(self.config.recent, after, len(self._past))
        return list(self._past)[len(self._past) - n :] if n >= 1 else None

    def _latents(self, steps: list[_Past]) -> Tensor:
        out = torch.cat([p.latents for p in steps])
        return out[_even_rows(out.shape[0], self.config.max_window_samples)]

    def _stack(self, steps: list[_Past], what: str) -> Tensor | None:
        parts = [getattr(p, what) for p in steps]
        if any(x is None for x in parts) or not parts:
            return None
        out = torch.cat(parts)
        return out[_even_rows(out.shape[0], self.config.max_window_samples)]

    def _remember(self, z: Tensor, r: Tensor | None, gaps: Tensor | None) -> None:
        keep = _even_rows(z.shape[0], self.config.rows_per_step)
        self._past.append(
            _Past(
                z[keep].clone(),
                r[keep].clone() if r is not None else None,
                gaps[keep].clone() if gaps is not None else None,
            )
        )
        self.seen += 1
        if self.reference is None and "embedding_reference" in self.config.streams:
            self._pooled.append(z[keep].clone())
            if len(self._pooled) >= self.config.reference_steps:
                pooled = torch.cat(self._pooled)  # already sketched
                self.reference = pooled[_even_rows(pooled.shape[0], self.config.max_window_samples)]
                self.ref_at = self.seen
                self._pooled = []

    # ------------------------------------------------------------------ reviewer actions and persistence
    def rebaseline(self) -> None:
        """Make the run's current behaviour its new baseline: the reference becomes the recent steps, the lagged
        windows start again from now, and every e-detector restarts from zero."""
        recent = list(self._past)[-self.config.recent :]
        if recent:
            pooled = torch.cat([p.latents for p in recent])  # already sketched
            self.reference = pooled[_even_rows(pooled.shape[0], self.config.max_window_samples)]
            self.ref_at = self.seen
        self._past.clear()
        self._pooled = []
        for det in self._detectors.values():
            det.reset()

    def state_dict(self) -> dict[str, Any]:
        """``{"meta": JSON-serialisable, "tensors": {name: Tensor}}``; :meth:`from_state_dict` continues exactly."""
        meta = {
            "version": _STATE_VERSION,
            "config": asdict(self.config),
            "gamma": self.gamma,
            "seen": self.seen,
            "ref_at": self.ref_at,
            "detectors": {s: d.state_dict() for s, d in self._detectors.items()},
            "past": [[p.rewards is not None, p.gaps is not None] for p in self._past],
            "n_pooled": len(self._pooled),
        }
        tensors: dict[str, Tensor] = {}
        if self.reference is not None:
            tensors["reference"] = self.reference
        for i, p in enumerate(self._past):
            tensors[f"past_{i}_latents"] = p.latents
            if p.rewards is not None:
                tensors[f"past_{i}_rewards"] = p.rewards
            if p.gaps is not None:
                tensors[f"past_{i}_gaps"] = p.gaps
        for i, z in enumerate(self._pooled):
            tensors[f"pooled_{i}"] = z
        return {"meta": meta, "tensors": tensors}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> EvidenceTracker:
        meta, tensors = state["meta"], state["tensors"]
        if meta.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported evidence state version {meta.get('version')!r}")
        tracker = cls(EvidenceConfig.from_dict(meta["config"]))
        tracker.gamma = meta["gamma"]
        tracker.seen = int(meta["seen"])
        tracker.ref_at = int(meta["ref_at"])
        if "reference" in tensors:
            tracker.reference = tensors["reference"].to("cpu", torch.float32)
        for s, d in meta["detectors"].items():
            tracker._detectors[s].load_state_dict(d)
        for i, (has_r, has_g) in enumerate(meta["past"]):
            tracker._past.append(
                _Past(
                    tensors[f"past_{i}_latents"].to("cpu", torch.float32),
                    tensors[f"past_{i}_rewards"].to(torch.float64) if has_r else None,
                    tensors[f"past_{i}_gaps"].to(torch.float64) if has_g else None,
                )
            )
        tracker._pooled = [tensors[f"pooled_{i}"].to("cpu", torch.float32) for i in range(int(meta["n_pooled"]))]
        return tracker
