"""fpmon: Fokker–Planck monitoring of RLHF runs.

The engine (``monitor.fpe``) turns each training step's response latents into the observables of a
probability flow; ``monitor.detect`` finds phase transitions in their histories; ``RLHFMonitor`` turns
both into alerts a person can review.

Every name below is imported on first use (PEP 562), so that ``import monitor`` — and the ``fpmon`` command,
whose ``--help`` needs none of it — does not pay for torch, the client's httpx or the TRL hook's
transformers until a name that needs them is touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: public name → the module that defines it
_LAZY = {
    "StreamingConfig": "monitor.detect",
    "StreamingDetector": "monitor.detect",
    "detect_phase_transitions": "monitor.detect",
    "FPEConfig": "monitor.fpe",
    "Observables": "monitor.fpe",
    "Projection": "monitor.fpe",
    "compute_observables": "monitor.fpe",
    "DynamicsConfig": "monitor.fpe.dynamics",
    "FokkerPlanckDynamics": "monitor.fpe.dynamics",
    "Alert": "monitor.rlhf",
    "MonitorConfig": "monitor.rlhf",
    "RLHFMonitor": "monitor.rlhf",
    "SampleRef": "monitor.rlhf",
    "StepReport": "monitor.rlhf",
    "Thresholds": "monitor.rlhf",
    "MonitorClient": "monitor.client",
    "ClientConfig": "monitor.client",
    "FPEMonitorCallback": "monitor.trl",
    "ResetPolicy": "monitor.trl",
    "wrap_reward_funcs": "monitor.trl",
}

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names come from __getattr__
    from .client import ClientConfig, MonitorClient
    from .detect import StreamingConfig, StreamingDetector, detect_phase_transitions
    from .fpe import FPEConfig, Observables, Projection, compute_observables
    from .fpe.dynamics import DynamicsConfig, FokkerPlanckDynamics
    from .rlhf import Alert, MonitorConfig, RLHFMonitor, SampleRef, StepReport, Thresholds
    from .trl import FPEMonitorCallback, ResetPolicy, wrap_reward_funcs


def __getattr__(name: str) -> object:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'monitor' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


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
