"""A run's results as flat tables, one row per record, the same whichever source they came from.

* ``steps`` — one row per processed step, by step: ``step``, ``transition``, each observable under its own name
  (``C``, ``S_dot``, …), ``extra.<name>`` for each extra scalar the trainer sent, ``evidence.<name>`` for each
  evidence series (natural-log e-value after the step) that has a value somewhere in the run. Columns are
  sorted by name within each group; a step without a value has None.
* ``alerts`` — one row per alert, by id: the alert (``reasons``, ``scalars``, ``top_samples`` as JSON values)
  with its latest review (``decision``, ``reviewer``, ``note``, ``reviewed_at``, ``rebaseline``; None when it
  has none) and ``review_count``.
* ``reviews`` — one row per review, by alert then time: every decision, not only the latest.

Each column has a kind (:data:`Kind`): ``int``, ``float``, ``bool``, ``str`` or ``json`` (a list or an object,
written as JSON text where a format has no nested values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .backend import ResultsError, RunResults

Kind = Literal["int", "float", "bool", "str", "json"]
TableName = Literal["steps", "alerts", "reviews"]
TABLES: tuple[TableName, ...] = ("steps", "alerts", "reviews")

#: prefixes of the extra-scalar and evidence columns of ``steps``
EXTRA, EVIDENCE = "extra.", "evidence."

ALERT_COLUMNS: dict[str, Kind] = {
    "alert_id": "int",
    "run_id": "int",
    "step": "int",
    "type": "str",
    "status": "str",
    "created_at": "str",
    "reasons": "json",
    "recommendation": "str",
    "scalars": "json",
    "top_samples": "json",
    "review_count": "int",
    "decision": "str",
    "reviewer": "str",
    "note": "str",
    "reviewed_at": "str",
    "rebaseline": "bool",
    "rebaseline_step": "int",
}

REVIEW_COLUMNS: dict[str, Kind] = {
    "alert_id": "int",
    "step": "int",
    "decision": "str",
    "reviewer": "str",
    "note": "str",
    "created_at": "str",
    "rebaseline": "bool",
    "rebaseline_step": "int",
}


@dataclass
class Table:
    """One table: ``columns`` (name → kind, in order) and ``rows`` (dicts holding every column)."""

    name: TableName
    columns: dict[str, Kind]
    rows: list[dict[str, Any]]


def steps_table(rows: list[dict[str, Any]]) -> Table:
    """The ``steps`` table of metric rows (``MetricRow`` objects)."""
    scalars = sorted({name for r in rows for name in r["scalars"]})
    extra = sorted({name for r in rows for name in r.get("extra") or {}})
    evidence = sorted({n for r in rows for n, v in (r.get("evidence") or {}).items() if v is not None})
    clashes = {"step", "transition"} & set(scalars)
    if clashes:
        raise ResultsError(f"observables named {sorted(clashes)} clash with the steps table's own columns", "invalid")
    columns: dict[str, Kind] = {"step": "int", "transition": "bool"}
    columns.update(dict.fromkeys(scalars, "float"))
    columns.update(dict.fromkeys((EXTRA + n for n in extra), "float"))
    columns.update(dict.fromkeys((EVIDENCE + n for n in evidence), "float"))
    out = []
    for r in sorted(rows, key=lambda r: r["step"]):
        row: dict[str, Any] = {"step": r["step"], "transition": r.get("transition")}
        row.update({n: r["scalars"].get(n) for n in scalars})
        row.update({EXTRA + n: (r.get("extra") or {}).get(n) for n in extra})
        row.update({EVIDENCE + n: (r.get("evidence") or {}).get(n) for n in evidence})
        out.append(row)
    return Table("steps", columns, out)


def alerts_table(alerts: list[dict[str, Any]]) -> Table:
    """The ``alerts`` table of ``AlertOut`` objects with their reviews."""
    out = []
    for a in sorted(alerts, key=lambda a: a["alert_id"]):
        reviews = a.get("reviews") or []
        latest = reviews[-1] if reviews else {}
        row = {name: a.get(name) for name in ALERT_COLUMNS}
        row.update(
            review_count=len(reviews),
            decision=latest.get("decision"),
            reviewer=latest.get("reviewer"),
            note=latest.get("note"),
            reviewed_at=latest.get("created_at"),
            rebaseline=latest.get("rebaseline"),
            rebaseline_step=latest.get("rebaseline_step"),
        )
        out.append(row)
    return Table("alerts", dict(ALERT_COLUMNS), out)


def reviews_table(alerts: list[dict[str, Any]]) -> Table:
    """The ``reviews`` table: every review of these alerts, by alert id, oldest first."""
    out = []
    for a in sorted(alerts, key=lambda a: a["alert_id"]):
        for r in a.get("reviews") or []:
            row = {"alert_id": a["alert_id"], "step": a["step"], **{k: r.get(k) for k in REVIEW_COLUMNS if k in r}}
            out.append({name: row.get(name) for name in REVIEW_COLUMNS})
    return Table("reviews", dict(REVIEW_COLUMNS), out)


def build(results: RunResults, names: tuple[TableName, ...] = TABLES) -> list[Table]:
    """The tables ``names`` of a run's results, in that order."""
    makers = {
        "steps": lambda: steps_table(results.rows),
        "alerts": lambda: alerts_table(results.alerts),
        "reviews": lambda: reviews_table(results.alerts),
    }
    return [makers[name]() for name in names]
