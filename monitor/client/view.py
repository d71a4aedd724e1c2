"""What the client knows of its run at the sink, polled in the background: :class:`RunView` holds the run's
alerts and its latest processed step (:class:`LatestStep`).

The background thread of a ``Deliverer`` polls both every ``ClientConfig.poll_alerts_s`` seconds (and soon
after a ``flush``) through :meth:`RunView.poll`; the sender process reports what it polled to the training
process, which keeps it in a ``RunView`` too. Reading a view (``MonitorClient.alerts()``,
``MonitorClient.latest()``) takes a lock held only for copies: it never waits for the network.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class LatestStep:
    """The run's latest processed step at the sink, as the sidecar stored it.

    Attributes:
        step: its training step number (≥ 0).
        scalars: its observables ``{name: value}`` (``monitor.fpe.SCALAR_NAMES``, plus the step's flags such
            as ``degenerate`` or ``frame_pending`` when set); None where a value was not computed (NaN, e.g.
            the flow observables of the first step). During a ``D0="auto"`` warm-up the D₀-dependent values
            are those stored then (D₀ = 1) until the calibrating step rescales them.
    """

    step: int
    scalars: Mapping[str, float | None] = field(default_factory=dict)

    @classmethod
    def of(cls, step: Any, scalars: Any) -> LatestStep | None:
        """From the sink's JSON (``RunOut.latest_step``, ``RunOut.latest_scalars``): None when there is no
        processed step yet; values that are not finite numbers become None, other entries are left out."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            return None
        clean: dict[str, float | None] = {}
        for name, value in (scalars or {}).items() if isinstance(scalars, Mapping) else ():
            if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
                clean[str(name)] = float(value) if value is not None and math.isfinite(value) else None
        return cls(step, clean)


class Pollable(Protocol):
    """What :meth:`RunView.poll` reads (``monitor.client.sinks.RunSink``): None where it has no answer."""

    def fetch_alerts(self) -> list[dict[str, Any]] | None: ...

    def fetch_latest(self) -> LatestStep | None: ...


class RunView:
    """The run's alerts (newest first, as the REST API returns them) and its latest processed step; updated
    by one thread, read by any (each read returns a copy)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._alerts: list[dict[str, Any]] = []
        self._latest: LatestStep | None = None

    def poll(self, link: Pollable | None) -> None:
        """Fetch both from ``link`` (None: offline, keep what is known); an unanswered one keeps its value."""
        if link is not None:
            self.update(link.fetch_alerts(), link.fetch_latest())

    def update(self, alerts: list[dict[str, Any]] | None, latest: LatestStep | None) -> None:
        """Replace the alerts and/or the latest step (None: keep the current one)."""
        with self._lock:
            if alerts is not None:
                self._alerts = [dict(a) for a in alerts]
            if latest is not None:
                self._latest = latest

    def alerts(self) -> list[dict[str, Any]]:
        """The run's alerts seen so far (newest first)."""
        with self._lock:
            return [dict(a) for a in self._alerts]

    def latest(self) -> LatestStep | None:
        """The run's latest processed step, once one was seen."""
        with self._lock:
            return self._latest
