"""Pure-torch Fokker–Planck estimators: tensors in, tensors and dataclasses out (no I/O)."""

from .config import FPEConfig
from .dynamics import HISTORY_KEYS, DynamicsConfig, FokkerPlanckDynamics
from .gaussian import GaussianFit, bures_map_matrix, bures_w2, gaussian_fit
from .kernels import kde_log_density, kde_score, kernel_fit, pairwise_sq_dists, scott_bandwidth
from .observables import RATIO_BOUND, SCALAR_NAMES, FlowParts, Observables, compute_observables
from .projection import Projection
from .scenarios import Scenario, TwoWellLoss, new_minimum_scenario, reset_escape_scenario
from .velocity import gaussian_velocity, ot_velocity
from .wasserstein import w2_exact, w2_sinkhorn_debiased

__all__ = [
    "HISTORY_KEYS",
    "RATIO_BOUND",
    "SCALAR_NAMES",
    "DynamicsConfig",
    "FPEConfig",
    "FlowParts",
    "FokkerPlanckDynamics",
    "GaussianFit",
    "Observables",
    "Projection",
    "Scenario",
    "TwoWellLoss",
    "bures_map_matrix",
    "bures_w2",
    "compute_observables",
    "gaussian_fit",
    "gaussian_velocity",
    "kde_log_density",
    "kde_score",
    "kernel_fit",
    "new_minimum_scenario",
    "ot_velocity",
    "pairwise_sq_dists",
    "reset_escape_scenario",
    "scott_bandwidth",
    "w2_exact",
    "w2_sinkhorn_debiased",
]
