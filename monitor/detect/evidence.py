"""Anytime-valid change detection: a Shiryaev–Roberts e-detector over per-step betting e-values.

The idea (Shin, Ramdas & Rinaldo, "E-detectors"; Shekhar & Ramdas, "Nonparametric two-sample testing by
betting"): at every step a bettor who starts with 1 unit stakes a fraction of it on the claim "this step
is different"; under the null her wealth is a non-negative supermartingale, so it rarely grows. Here a
step's evidence is an *exceedance* test, one bet per independent block of the step's samples:

* each sample gets a score ``s_i ∈ [0, 1]`` from a function fitted on past steps only (for example
  ``1[witness(y_i) > the (1 − β) quantile of the witness over a past window]``);
* the null says that, given the past, every block's mean score has expectation at most ``c`` (the null
  rate, e.g. ``β + ε``) and the blocks are independent;
* the step's e-value for a bet ``f ∈ (0, 1)`` is ``e = Π_blocks (1 + f · (s̄_b − c) / c)``, which is ≥ 0
  (``s̄_b ≥ 0``) and has expectation ≤ 1 under the null.

The Shiryaev–Roberts statistic ``M_t = e_t · (1 + M_{t−1})`` (``M_0 = 0``) sums the wealth of bettors that
started at every past step, so it reacts to a change whenever it begins. Under the null ``M_t − t`` is a
supermartingale, so the first ``t`` with ``M_t ≥ 1/α`` has expectation ≥ 1/α: the average run length to
a false alarm is at least ``1/α`` steps (Shin et al., Thm. 2.4). Several bets ``f`` are mixed by
averaging their statistics (an average of such statistics has the same property), so no bet has to be
tuned. After an alarm the statistic restarts from 0, and the guarantee holds again for the next alarm.

Everything here is plain Python floats (a few numbers per step); the state is JSON-serialisable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_STATE_VERSION = 1


@dataclass(frozen=True)
class EDetectorConfig:
    """Settings of :class:`ShiryaevRoberts`.

    Attributes:
        alpha: target false-alarm level; the detector alarms when the statistic reaches ``1/alpha``, which
            bounds the average run length to a false alarm below by ``1/alpha`` steps under the null.
            Default 1e-3 (at most one false alarm per 1000 steps on average).
        bets: fractions ``f`` of the largest safe bet (``1/c`` for null rate ``c``) that are mixed, each
            with equal weight. Small bets win slowly but lose little; large ones win fast on a clear change.
            Default (0.1, 0.25, 0.5, 0.8).
    """

    alpha: float = 1e-3
    bets: tuple[float, ...] = (0.1, 0.25, 0.5, 0.8)

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"EDetectorConfig.alpha must be in (0, 1), got {self.alpha}")
        if not self.bets or any(not 0 < f < 1 for f in self.bets):
            raise ValueError(f"EDetectorConfig.bets must be fractions in (0, 1), got {self.bets}")

    @property
    def log_threshold(self) -> float:
        """``log(1/alpha)``: the alarm level of the log statistic (nats)."""
        return -math.log(self.alpha)


def exceedance_log_evalues(block_means: Sequence[float], null_rate: float, bets: Sequence[float]) -> list[float]:
    """The log e-value of one step for each bet ``f``: ``Σ_b log(1 + f (s̄_b − c) / c)``.

    Args:
        block_means: mean score ``s̄_b ∈ [0, 1]`` of each independent block of the step (values outside are
            clipped).
        null_rate: ``c ∈ (0, 1)``, the largest expected block mean the null allows.
        bets: fractions ``f ∈ (0, 1)`` of the largest safe bet ``1/c``.

    Returns:
        One log e-value per bet (nats). With no block, all zeros (no evidence either way).
    """
    if not 0 < null_rate < 1:
        raise ValueError(f"null_rate must be in (0, 1), got {null_rate}")
    out = []
    for f in bets:
        total = 0.0
        for m in block_means:
            m = min(max(float(m), 0.0), 1.0)
            total += math.log1p(f * (m - null_rate) / null_rate)
        out.append(total)
    return out


class ShiryaevRoberts:
    """A mixture of Shiryaev–Roberts e-detectors, one per bet, fed one step's log e-values at a time.

    ``update(log_evalues)`` returns the log of the mixed statistic ``M_t = mean_f M_t(f)``; ``alarm`` is True
    when it has reached ``log(1/alpha)``. The owner calls :meth:`reset` after acting on an alarm, so that
    successive alarms are separate renewals (each with the ``1/alpha`` average run length).
    """

    def __init__(self, config: EDetectorConfig | None = None) -> None:
        self.config = config or EDetectorConfig()
        self._log_m = [-math.inf] * len(self.config.bets)
        self.log_value = -math.inf
        self.alarm = False

    def update(self, log_evalues: Sequence[float]) -> float:
        """Feed one step (one log e-value per bet, nats); returns the mixed log statistic after it."""
        if len(log_evalues) != len(self._log_m):
            raise ValueError(f"expected {len(self._log_m)} log e-values (one per bet), got {len(log_evalues)}")
        self._log_m = [le + _log1p_exp(m) for le, m in zip(log_evalues, self._log_m, strict=True)]
        self.log_value = log_mean_exp(self._log_m)
        self.alarm = self.log_value >= self.config.log_threshold
        return self.log_value

    def reset(self) -> None:
        """Forget all evidence (for example after a reviewer re-baselines the stream)."""
        self._log_m = [-math.inf] * len(self._log_m)
        self.log_value = -math.inf
        self.alarm = False

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (``-inf`` written as ``None``)."""
        return {
            "version": _STATE_VERSION,
            "log_m": [None if math.isinf(v) else v for v in self._log_m],
            "alarm": self.alarm,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported e-detector state version {state.get('version')!r}")
        log_m = [(-math.inf if v is None else float(v)) for v in state["log_m"]]
        if len(log_m) != len(self._log_m):
            raise ValueError(f"the state has {len(log_m)} bets, this detector {len(self._log_m)}")
        self._log_m = log_m
        self.log_value = log_mean_exp(log_m)
        self.alarm = bool(state["alarm"])


def _log1p_exp(x: float) -> float:
    """log(1 + e^x), stable (x may be −inf)."""
    if x == -math.inf:
        return 0.0
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))


def log_mean_exp(values: Sequence[float]) -> float:
    """log(mean(exp(values))), stable; −inf when every value is −inf (how statistics are averaged in logs)."""
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values) / len(values))
