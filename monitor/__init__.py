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

__all__ = [
    "Alert",
    "DynamicsConfig",
    "FPEConfig",
    "FokkerPlanckDynamics",
    "MonitorConfig",
    "Observables",
    "Projection",
    "RLHFMonitor",
    "SampleRef",
    "StepReport",
    "StreamingConfig",
    "StreamingDetector",
    "Thresholds",
    "__version__",
    "compute_observables",
    "detect_phase_transitions",
]
