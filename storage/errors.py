"""The exceptions the storage functions raise (all re-exported by :mod:`storage`)."""

from __future__ import annotations


class StepConflict(Exception):
    """The same (run, step) was already received with different bytes (HTTP 409)."""


class StepTooLate(StepConflict):
    """The step arrived after a later step of its run was claimed or processed (HTTP 409): the run's monitor
    state only moves forward, so it could never be processed."""


class NotFound(LookupError):
    """The run or alert named does not exist."""


class LostClaim(RuntimeError):
    """The step is no longer claimed by this worker (reclaimed as stale); its results were not written."""
