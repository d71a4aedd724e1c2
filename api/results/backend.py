"""The results interface shared by the HTTP and SQL sources, and what a run's export is made of.

Every method returns the ``/v1`` API's JSON objects as plain dicts (timestamps as ISO 8601 strings):

* a run: ``RunOut`` (``run_id``, ``name``, ``latent_dim``, ``config``, ``created_at``, ``steps_received``,
  ``steps_processed``, ``last_step_at``, ``open_alerts``, ``status``, …);
* an alert: ``AlertOut`` (``alert_id``, ``run_id``, ``step``, ``type``, ``status``, ``created_at``, ``scalars``,
  ``reasons``, ``top_samples``, ``recommendation``, ``reviews`` — oldest first, filled where a method says so);
* a metric row: ``MetricRow`` (``step``, ``scalars``, ``extra``, ``transition``, ``evidence``: ``{name: log
  e-value | None}``; a name absent from a row has no value at that step).

A run is named on the command line by its id or its name (:func:`parse_run_ref`): a decimal integer is an id
first — and a name when no run has that id — anything else is a name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

#: the largest id the API accepts (PostgreSQL ``integer``)
MAX_ID = 2**31 - 1

#: why a request failed: ``not_found`` (unknown run or alert), ``invalid`` (a refused value), ``auth`` (a
#: missing, unknown or read-only token), ``unavailable`` (the sidecar or database cannot be reached or used)
ErrorKind = Literal["not_found", "invalid", "auth", "unavailable"]


class ResultsError(Exception):
    """A request a results source refused or could not answer; the message says what to change."""

    def __init__(self, message: str, kind: ErrorKind = "unavailable") -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind


def parse_run_ref(ref: str) -> int | None:
    """The run id ``ref`` may be (a decimal integer in 1…MAX_ID), else None (then it is only a name)."""
    text = ref.strip()
    if text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_ID:
        return int(text)
    return None


def run_not_found(ref: str) -> ResultsError:
    """The error for a run that no id or name matches."""
    return ResultsError(
        f"run {ref!r} does not exist (no run has this id or name; `fpmon runs` lists them)", "not_found"
    )


class ResultsBackend(Protocol):
    """Where the results come from: a sidecar (:class:`api.results.http.HttpResults`) or its database
    (:class:`api.results.sql.SqlResults`). Methods raise :class:`ResultsError`."""

    def list_runs(self, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` runs, by id."""
        ...

    def find_run(self, ref: str) -> dict[str, Any]:
        """The run with this id or name (see the module docstring)."""
        ...

    def list_alerts(self, run_id: int | None, status: str | None, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` alerts, newest first, of one run or all, of one status or all (reviews not filled)."""
        ...

    def review(self, alert_id: int, decision: str, reviewer: str, note: str | None, rebaseline: bool) -> dict[str, Any]:
        """Record a review (``decision``: acknowledged, confirmed or dismissed); the alert after it, with reviews."""
        ...

    def metric_rows(self, run_id: int) -> list[dict[str, Any]]:
        """Every processed step of the run, by step, with every evidence series that has a value."""
        ...

    def run_alerts(self, run_id: int) -> list[dict[str, Any]]:
        """Every alert of the run, oldest (lowest id) first, each with its reviews (oldest first)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@dataclass
class RunResults:
    """Everything an export holds about one run, in the API's shapes: the run, its metric rows (by step) and
    its alerts (by id, with reviews)."""

    run: dict[str, Any]
    rows: list[dict[str, Any]]
    alerts: list[dict[str, Any]]


def collect(backend: ResultsBackend, ref: str) -> RunResults:
    """The run named ``ref`` (id or name) and all its results."""
    run = backend.find_run(ref)
    run_id = int(run["run_id"])
    return RunResults(run=run, rows=backend.metric_rows(run_id), alerts=backend.run_alerts(run_id))
