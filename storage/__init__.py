"""fpmon's SQL storage layer (DESIGN.md §2): runs, steps, per-sample divergences, alerts, reviews, run state.

``storage`` knows SQL and nothing about HTTP or the mathematics. It is used by the API (ingest and reads)
and by the compute worker (claim a pending step, write its results and the run's monitor state in one
transaction). SQLite (the embedded default, WAL mode) and PostgreSQL (several replicas claiming steps with
``SELECT … FOR UPDATE SKIP LOCKED``) are both supported; the schema is managed by Alembic migrations shipped
inside the package (``storage/migrations``).
"""

from __future__ import annotations

from .db import (
    DEFAULT_DATABASE_URL,
    SchemaError,
    check_schema,
    current_revision,
    head_revision,
    make_engine,
    session_factory,
    upgrade,
)
from .models import Alert, Base, Review, Run, RunState, Step, StepSample
from .repository import (
    ALERT_STATUSES,
    REVIEW_DECISIONS,
    STEP_STATUSES,
    LostClaim,
    NotFound,
    StepConflict,
    StoredState,
    claim_next_step,
    complete_step,
    counts,
    fail_step,
    get_alert,
    get_or_create_run,
    get_run,
    get_run_by_name,
    get_step,
    ingest_step,
    list_alerts,
    list_reviews,
    list_runs,
    list_steps,
    load_run_state,
    metrics,
    purge_payloads,
    review_alert,
    step_samples,
    step_status_counts,
)
from .state_codec import decode_state, encode_state

__all__ = [
    "ALERT_STATUSES",
    "DEFAULT_DATABASE_URL",
    "REVIEW_DECISIONS",
    "STEP_STATUSES",
    "Alert",
    "Base",
    "LostClaim",
    "NotFound",
    "Review",
    "Run",
    "RunState",
    "SchemaError",
    "Step",
    "StepConflict",
    "StepSample",
    "StoredState",
    "check_schema",
    "claim_next_step",
    "complete_step",
    "counts",
    "current_revision",
    "decode_state",
    "encode_state",
    "fail_step",
    "get_alert",
    "get_or_create_run",
    "get_run",
    "get_run_by_name",
    "get_step",
    "head_revision",
    "ingest_step",
    "list_alerts",
    "list_reviews",
    "list_runs",
    "list_steps",
    "load_run_state",
    "make_engine",
    "metrics",
    "purge_payloads",
    "review_alert",
    "session_factory",
    "step_samples",
    "step_status_counts",
    "upgrade",
]
