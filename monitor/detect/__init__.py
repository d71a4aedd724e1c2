"""Phase-transition detectors: an offline (whole-history, causal) one and a streaming one with saved state.

Pure numpy; see :mod:`monitor.detect.offline` and :mod:`monitor.detect.streaming`.
"""

from .offline import OfflineDetectorConfig, detect_phase_transitions, transition_criteria
from .robust import lagged_difference, robust_location_scale
from .streaming import Detection, Direction, StreamingConfig, StreamingDetector

__all__ = [
    "Detection",
    "Direction",
    "OfflineDetectorConfig",
    "StreamingConfig",
    "StreamingDetector",
    "detect_phase_transitions",
    "lagged_difference",
    "robust_location_scale",
    "transition_criteria",
]
