"""fpmon: Fokker–Planck monitoring of RLHF runs.

The engine (``monitor.fpe``) turns each training step's response latents into the observables of a
probability flow; ``monitor.detect`` finds phase transitions in their histories; ``RLHFMonitor`` turns
both into alerts a person can review.
"""

from .detect import StreamingConfig, StreamingDetector, detect_phase_transitions
from .fpe import FPEConfig, Observables, Projection, compute_observables
from .fpe.dynamics import DynamicsConfig, FokkerPlanckDynamics
from .rlhf import Alert, MonitorConfig, RLHFMonitor, SampleRef, StepReport, Thresholds

__version__ = "0.1.0"

# Imported on first use: the client pulls in httpx, the TRL hook pulls in transformers.
_LAZY = {
    "MonitorClient": "monitor.client",
    "ClientConfig": "monitor.client",
    "FPEMonitorCallback": "monitor.trl",
    "ResetPolicy": "monitor.trl",
    "wrap_reward_funcs": "monitor.trl",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'monitor' has no attribute {name!r}")


__all__ = [
    "Alert",
    "ClientConfig",
    "DynamicsConfig",
    "FPEConfig",
    "FPEMonitorCallback",
    "FokkerPlanckDynamics",
    "MonitorClient",
    "MonitorConfig",
    "Observables",
    "Projection",
    "RLHFMonitor",
    "ResetPolicy",
    "SampleRef",
    "StepReport",
    "StreamingConfig",
    "StreamingDetector",
    "Thresholds",
    "__version__",
    "compute_observables",
    "detect_phase_transitions",
    "wrap_reward_funcs",
]
