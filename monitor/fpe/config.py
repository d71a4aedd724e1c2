"""Configuration of the Fokker–Planck estimators.

Every default below is chosen from the measured table in ``docs/estimators.md`` (regenerate it with
``python benchmarks/estimator_table.py``); the doc says why each one was picked.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

VelocityMethod = Literal["gaussian", "ot"]
W2Method = Literal["exact", "sinkhorn", "gaussian"]


@dataclass(frozen=True)
class FPEConfig:
    """Settings of :func:`monitor.fpe.compute_observables`.

    Attributes:
        k: number of whitened PCA coordinates the projection keeps (used by callers that fit the
            projection, e.g. ``RLHFMonitor``; ``compute_observables`` uses the projection it is given).
        bandwidth_factor: c in the KDE bandwidth h = c · n^(−1/(k+4)) (Scott's rule in whitened units,
            where the reference batch has unit variance in every coordinate). 1.5, not Scott's 1: scores
            and log-density ratios at the samples need more smoothing than the density itself (at n = 1024,
            k = 8: corr(δ, truth) 0.33 → 0.55, δ's noise floor 1.13 → 0.29, no stationary offset of δ).
        pool_window: w, how many previous batches the "previous" side pools. The stationary noise floor
            of the velocity falls like √((1 + 1/w)/2) · 2/(w + 1) (0.17 of w = 1 at w = 8); the price is
            lag: the flow observables describe the interval from the window's centre, Δt_eff = (w + 1)/2
            steps back, to the current step. Callers keep the window; ``compute_observables`` accepts a
            list of batches.
        velocity: ``"gaussian"`` (Bures–Wasserstein map between Gaussian fits: low noise, global motion)
            or ``"ot"`` (exact OT plan, barycentric projection, kernel smoothing: local structure, but at
            k ≥ 4 its matching noise exceeds the flow and biases Ṡ negative, and beyond ``ot_exact_max``
            its Sinkhorn costs seconds per step; use it at k ≤ 2 or for small batches only).
        ot_exact_max: above this many samples on either side, the ``ot`` velocity uses log-domain
            Sinkhorn instead of the network simplex.
        sinkhorn_reg: entropic regularisation of Sinkhorn, relative to the median of the cost matrix.
        D0: base diffusion D₀ in whitened units² per step, or ``"auto"``: calibrated once by the caller
            (``RLHFMonitor`` sets it from the first ``d0_calibration_steps`` so that the median of
            ‖μ‖/‖D s‖ over them is 1). A stateless call with ``"auto"`` uses D₀ = 1 and reports it in
            ``Observables.D0``; ``Observables.with_D0`` rescales afterwards.
        tau_D: diffusion decay time τ_D in steps (``inf``: no decay, the trainer's schedule is in η_t).
        gamma: Fisher coupling γ of D = D₀ e^(−t/τ_D) (I + γF); clipped below 1/λ_max(F).
        entropy_weight: λ, weight of the entropy gradient in the model drift μ = −η(∇L̂ + λ∇H).
        w2_ref_max_samples: W2_ref uses at most this many samples of each side (uniform subsample,
            deterministic), exact OT (network simplex).
        w2_ref_method: ``"exact"`` (network simplex on the CPU, ≈ 25 ms at 512 samples per side),
            ``"sinkhorn"`` (debiased Sinkhorn divergence, on the inputs' device) or ``"gaussian"`` (the
            Bures–Wasserstein distance between the two Gaussian fits: closed form, microseconds on a GPU,
            blind to structure beyond the first two moments).
        cov_floor: floor on covariance eigenvalues (whitened units²) in the Gaussian fits, so that a batch
            of identical answers has a finite map.
        seed: seed of the deterministic subsampling.
    """

    k: int = 8
    bandwidth_factor: float = 1.5
    pool_window: int = 8
    velocity: VelocityMethod = "gaussian"
    ot_exact_max: int = 1024
    sinkhorn_reg: float = 0.05
    D0: float | Literal["auto"] = "auto"
    tau_D: float = float("inf")
    gamma: float = 0.05
    entropy_weight: float = 1e-3
    w2_ref_max_samples: int = 512
    w2_ref_method: W2Method = "exact"
    cov_floor: float = 1e-6
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"FPEConfig.k must be >= 1, got {self.k}")
        if not self.bandwidth_factor > 0:
            raise ValueError(f"FPEConfig.bandwidth_factor must be > 0, got {self.bandwidth_factor}")
        if self.pool_window < 1:
            raise ValueError(f"FPEConfig.pool_window must be >= 1, got {self.pool_window}")
        if self.velocity not in ("gaussian", "ot"):
            raise ValueError(f"FPEConfig.velocity must be 'gaussian' or 'ot', got {self.velocity!r}")
        if self.w2_ref_method not in ("exact", "sinkhorn", "gaussian"):
            raise ValueError(
                f"FPEConfig.w2_ref_method must be 'exact', 'sinkhorn' or 'gaussian', got {self.w2_ref_method!r}"
            )
        if self.D0 != "auto" and not (isinstance(self.D0, int | float) and self.D0 > 0):
            raise ValueError(f"FPEConfig.D0 must be a positive number or 'auto', got {self.D0!r}")
        if not self.tau_D > 0:
            raise ValueError(f"FPEConfig.tau_D must be > 0 (use inf for no decay), got {self.tau_D}")
        if self.gamma < 0:
            raise ValueError(f"FPEConfig.gamma must be >= 0, got {self.gamma}")
        if self.w2_ref_max_samples < 2:
            raise ValueError(f"FPEConfig.w2_ref_max_samples must be >= 2, got {self.w2_ref_max_samples}")
        if not self.cov_floor > 0:
            raise ValueError(f"FPEConfig.cov_floor must be > 0, got {self.cov_floor}")

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON form: ``tau_D = inf`` (no decay) is written as ``None`` (JSON has no infinity)."""
        data = asdict(self)
        if math.isinf(self.tau_D):
            data["tau_D"] = None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FPEConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming the valid ones."""
        valid = {f.name for f in fields(cls)}
        unknown = set(data) - valid
        if unknown:
            raise ValueError(f"unknown FPEConfig keys {sorted(unknown)}; valid keys are {sorted(valid)}")
        if "tau_D" in data and data["tau_D"] is None:  # no decay (how to_dict and JSON columns write inf)
            data = {**data, "tau_D": float("inf")}
        return cls(**data)
