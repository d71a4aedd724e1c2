"""The RLHF monitor: per-step observables, streaming detection and alerts for an RLHF run (DESIGN.md §3.5).

The math layer's entry point (no HTTP, SQL or trainer here). Modules, all public names re-exported here:

* :mod:`monitor.rlhf.monitor` — :class:`RLHFMonitor` (``observe`` one batch per step, ``calibrate`` on a
  safe run, ``state_dict`` / ``from_state_dict``); its docstring describes the alerts.
* :mod:`monitor.rlhf.config` — :class:`MonitorConfig` and :class:`Thresholds`.
* :mod:`monitor.rlhf.report` — :class:`StepReport`, :class:`Alert`, :class:`SampleRef`, ``AlertType``,
  :data:`RECOMMENDATIONS` and :func:`with_recalibration` (the reports as a sidecar stores them).
* :mod:`monitor.rlhf.guards` — what keeps a bad step from poisoning the run: the latent-scale check
  (outliers), the frame's sample count, the reports of steps without observables.
"""

from __future__ import annotations

from .config import MonitorConfig, Thresholds
from .monitor import RLHFMonitor
from .report import RECOMMENDATIONS, Alert, AlertType, SampleRef, StepReport, with_recalibration

__all__ = [
    "RECOMMENDATIONS",
    "Alert",
    "AlertType",
    "MonitorConfig",
    "RLHFMonitor",
    "SampleRef",
    "StepReport",
    "Thresholds",
    "with_recalibration",
]
