"""Resets (seed §5, **experimental, off by default**): perturb a fraction of the policy's weights after an alert.

:class:`ResetPolicy` says when and how hard; :func:`apply_reset` is the perturbation itself;
:func:`alert_key` and :func:`pick_trigger` choose the alert that triggers a reset; :class:`Resetter` applies a
policy at each ``on_step_end`` of ``FPEMonitorCallback``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .distributed import broadcast_from_main, rank_and_world

log = logging.getLogger("fpmon.trl")


@dataclass(frozen=True)
class ResetPolicy:
    """When and how hard to perturb the policy after a transition alert (seed §5). **Experimental.**

    Attributes:
        alpha: fraction of the entries of each parameter tensor that is perturbed, in (0, 1]. Default 0.15 (seed).
        noise_scale: noise amplitude relative to each tensor's own scale (see :func:`apply_reset`), > 0.
            Default 0.01.
        alert_types: alert types that trigger a reset. Default both kinds fpmon raises.
        cooldown_steps: after a reset at step s, no reset before step s + cooldown_steps; alerts arriving in
            between are consumed without a reset. Default 20.
        max_resets: stop after this many resets (None: no limit).
        seed: seed of the perturbation; reset number k (0-based) draws from ``torch.Generator().manual_seed(seed +
            k)``, identical on every rank, so data-parallel replicas stay in sync.
    """

    alpha: float = 0.15
    noise_scale: float = 0.01
    alert_types: tuple[str, ...] = ("PHASE_TRANSITION", "POTENTIAL_REWARD_HACKING")
    cooldown_steps: int = 20
    max_resets: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _check_alpha_scale(self.alpha, self.noise_scale)
        if not self.alert_types:
            raise ValueError("alert_types is empty: name at least one alert type, e.g. ('PHASE_TRANSITION',)")
        if self.cooldown_steps < 0:
            raise ValueError(f"cooldown_steps must be ≥ 0, got {self.cooldown_steps}")
        if self.max_resets is not None and self.max_resets < 1:
            raise ValueError(f"max_resets must be ≥ 1 or None (no limit), got {self.max_resets}")

    def allows(self, step: int, resets: int, last_reset_step: int | None) -> bool:
        """Whether a reset may happen at ``step`` after ``resets`` resets, the last at ``last_reset_step``."""
        return (self.max_resets is None or resets < self.max_resets) and (
            last_reset_step is None or step - last_reset_step >= self.cooldown_steps
        )


@dataclass(frozen=True)
class ResetStats:
    """What :func:`apply_reset` changed: tensors touched, entries considered, entries perturbed."""

    tensors: int
    entries: int
    perturbed: int


def _check_alpha_scale(alpha: float, noise_scale: float) -> None:
    if not (0.0 < alpha <= 1.0):
        raise ValueError(f"alpha is the fraction of weights to perturb and must be in (0, 1], got {alpha}")
    if not (math.isfinite(noise_scale) and noise_scale > 0):
        raise ValueError(f"noise_scale must be a positive finite number, got {noise_scale}")


@torch.no_grad()
def apply_reset(
    model: nn.Module,
    alpha: float,
    noise_scale: float,
    generator: torch.Generator | None = None,
    *,
    trainable_only: bool = True,
) -> ResetStats:
    """Perturb a random fraction ``alpha`` of the entries of each floating-point parameter, in place.

    The rule, per parameter tensor p (in ``model.named_parameters()`` order; with ``trainable_only`` only those
    with ``requires_grad``):

    - scale σ_p = the standard deviation of p's entries (population, ``correction=0``), or, if that is 0 (a
      constant tensor, e.g. a freshly initialised norm weight), the RMS of p; a tensor of zeros is left as is;
    - mask m_ij ~ Bernoulli(alpha) independently per entry; noise ε_ij ~ N(0, 1);
    - p ← p + m ⊙ (noise_scale · σ_p · ε).

    So the expected fraction of changed entries is alpha (binomial: its standard deviation over N entries is
    √(alpha(1 − alpha)/N)), each changed entry moves by noise_scale·σ_p·|ε| (relative to the tensor's own scale,
    so embeddings and norm weights are perturbed alike), and unselected entries are bit-for-bit unchanged.
    Random numbers are drawn on the generator's device (CPU by default) in float32 and cast to p's dtype, so a
    given generator state gives the same perturbation on any device. Runs under ``torch.no_grad``.

    Args:
        model: the policy (any ``nn.Module``).
        alpha: fraction of entries to perturb, in (0, 1].
        noise_scale: noise amplitude relative to σ_p, > 0.
        generator: source of randomness (default: a CPU generator seeded 0).
        trainable_only: skip parameters with ``requires_grad=False`` (frozen bases of adapters).

    Returns:
        :class:`ResetStats` (tensors touched, entries considered, entries selected by the mask).
    """
    _check_alpha_scale(alpha, noise_scale)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    tensors = entries = perturbed = 0
    for _, p in model.named_parameters():
        if not p.is_floating_point() or (trainable_only and not p.requires_grad) or p.numel() == 0:
            continue
        pf = p.detach().float()
        scale = float(pf.std(correction=0)) if p.numel() > 1 else 0.0
        if not (math.isfinite(scale) and scale > 0):
            scale = float(pf.pow(2).mean().sqrt())
        mask = torch.rand(p.shape, generator=gen, device=gen.device) < alpha
        noise = torch.randn(p.shape, generator=gen, device=gen.device)
        entries += p.numel()
        if not (math.isfinite(scale) and scale > 0):
            continue
        delta = (noise * mask).mul_(noise_scale * scale).to(device=p.device, dtype=p.dtype)
        p.add_(delta)
        tensors += 1
        perturbed += int(mask.sum())
    return ResetStats(tensors=tensors, entries=entries, perturbed=perturbed)


def alert_key(alert: dict[str, Any]) -> Any:
    """An alert's identity: the REST API's ``alert_id`` (``id`` accepted), else (run, step, type)."""
    key = alert.get("alert_id", alert.get("id"))
    return key if key is not None else (alert.get("run_id"), alert.get("step"), alert.get("type"))


def pick_trigger(alerts: Iterable[dict[str, Any]], seen: set[Any], policy: ResetPolicy) -> dict[str, Any] | None:
    """The first alert not in ``seen`` whose type triggers resets under ``policy`` and that is not dismissed, or None.

    Every alert not seen before is added to ``seen`` (by :func:`alert_key`), whether it triggers or not.
    """
    trigger: dict[str, Any] | None = None
    for alert in alerts:
        key = alert_key(alert)
        if key in seen:
            continue
        seen.add(key)
        if alert.get("type") not in policy.alert_types or alert.get("status") == "dismissed":
            continue
        if trigger is None:
            trigger = alert
    return trigger


class Resetter:
    """Applies a :class:`ResetPolicy` after alerts, one training step at a time (the hook's ``on_step_end``).

    Attributes:
        policy: the policy.
        log: one entry per reset: ``{"step", "alert", "stats"}`` (``FPEMonitorCallback.reset_log``).
    """

    def __init__(self, policy: ResetPolicy) -> None:
        self.policy = policy
        self.log: list[dict[str, Any]] = []
        self._seen: set[Any] = set()
        self._last_step: int | None = None

    def step_end(self, step: int, alerts: list[dict[str, Any]] | None, model: nn.Module | None) -> bool:
        """Reset ``model`` at ``step`` if rank 0's ``alerts`` (None elsewhere) hold a new trigger the policy
        allows; under torch.distributed rank 0 decides for every rank (call it on every rank). True: reset."""
        policy = self.policy
        rank, world = rank_and_world()
        trigger: dict[str, Any] | None = None
        if rank == 0 and alerts is not None:
            trigger = pick_trigger(alerts, self._seen, policy)
        fire = trigger is not None and policy.allows(step, len(self.log), self._last_step)
        if world > 1:
            fire = broadcast_from_main(fire)
        if trigger is not None and not fire and rank == 0:
            log.info("fpmon reset: alert %s at step %s ignored (cooldown or max_resets)", alert_key(trigger), step)
        if not fire or model is None:
            return False
        gen = torch.Generator().manual_seed(policy.seed + len(self.log))
        stats = apply_reset(model, policy.alpha, policy.noise_scale, gen)
        self._last_step = step
        self.log.append({"step": step, "alert": trigger, "stats": stats})
        log.warning(
            "fpmon reset #%d (experimental) at step %d after alert %s: perturbed %d of %d weights "
            "(alpha=%.3g, noise_scale=%.3g)",
            len(self.log),
            step,
            None if trigger is None else f"{alert_key(trigger)} {trigger.get('type')}",
            stats.perturbed,
            stats.entries,
            policy.alpha,
            policy.noise_scale,
        )
        return True
