"""fpmon's SQL storage layer (DESIGN.md §2): runs, steps, per-sample divergences and witness scores, evidence
of change per step, alerts, reviews (and re-baseline requests), run state.

``storage`` knows SQL and nothing about HTTP or the mathematics. It is used by the API (ingest and reads)
and by the compute worker (claim a pending step, write its results and the run's monitor state in one
transaction). SQLite (the embedded default, WAL mode) and PostgreSQL (several replicas claiming steps with
``SELECT … FOR UPDATE SKIP LOCKED``) are both supported; the schema is managed by Alembic migrations shipped
inside the package (``storage/migrations``).

Modules (everything public is re-exported here; import from ``storage``):

* :mod:`storage.db` — engines, sessions, schema migrations and checks.
* :mod:`storage.models` — the SQLAlchemy models; :mod:`storage.types` — their portable column types.
* :mod:`storage.runs` — create, list and look up runs.
* :mod:`storage.steps` — the step lifecycle (ingest, complete, fail), run state; its docstring holds the
  transaction rules, the step-processing order and the claim rules (heartbeats, crash recovery, fencing).
* :mod:`storage.claims` — claim the next step, keep the claim alive (heartbeat), take back dead claims.
* :mod:`storage.payloads` — the raw step payloads, in their own table: read, list, retention purge.
* :mod:`storage.reads` — metrics and evidence history and a step's samples, for charts and review pages.
* :mod:`storage.alerts` — alerts and their reviews (a dismissal may request a re-baseline of the run's monitor).
* :mod:`storage.outbox` — the webhook outbox: notifications of alerts (enqueued with them), leased and marked
  by the sidecar's notifier, retried with backoff.
* :mod:`storage.errors` — the exceptions raised by the functions above.
* :mod:`storage.state_codec` — the monitor state to and from (JSON meta, safetensors bytes).
* :mod:`storage.sql` — internal: table handles and the SQLite/PostgreSQL differences.
"""

from __future__ import annotations

from .alerts import (
    ALERT_STATUSES,
    REVIEW_DECISIONS,
    VERDICTS,
    AlreadyOpen,
    alert_status_counts,
    get_alert,
    list_alerts,
    list_reviews,
    open_alert_counts,
    review_alert,
    run_verdict,
)
from .claims import DEFAULT_CLAIM_TIMEOUT_S, Claim, claim_next_step, heartbeat_step
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
from .errors import LostClaim, NotFound, StepConflict, StepTooLate
from .models import Alert, Base, Review, Run, RunState, Step, StepBlob, StepEvidence, StepSample, WebhookDelivery
from .outbox import (
    OUTBOX_STATUSES,
    Delivery,
    RetryPolicy,
    claim_deliveries,
    list_deliveries,
    mark_delivered,
    outbox_counts,
    retry_delivery,
)
from .payloads import load_payload, payload_steps, purge_payloads
from .reads import (
    adjacent_steps,
    evidence_threshold,
    first_processed_step,
    metrics,
    sample_count,
    sample_points,
    samples_at,
    step_samples,
)
from .runs import get_or_create_run, get_run, get_run_by_name, list_runs
from .state_codec import decode_state, encode_state
from .steps import (
    STEP_STATUSES,
    StoredState,
    complete_step,
    counts,
    fail_step,
    get_step,
    ingest_step,
    list_steps,
    load_run_state,
    step_status_counts,
)

__all__ = [
    "ALERT_STATUSES",
    "DEFAULT_CLAIM_TIMEOUT_S",
    "DEFAULT_DATABASE_URL",
    "OUTBOX_STATUSES",
    "REVIEW_DECISIONS",
    "STEP_STATUSES",
    "VERDICTS",
    "Alert",
    "AlreadyOpen",
    "Base",
    "Claim",
    "Delivery",
    "LostClaim",
    "NotFound",
    "RetryPolicy",
    "Review",
    "Run",
    "RunState",
    "SchemaError",
    "Step",
    "StepBlob",
    "StepConflict",
    "StepEvidence",
    "StepSample",
    "StepTooLate",
    "StoredState",
    "WebhookDelivery",
    "adjacent_steps",
    "alert_status_counts",
    "check_schema",
    "claim_deliveries",
    "claim_next_step",
    "complete_step",
    "counts",
    "current_revision",
    "decode_state",
    "encode_state",
    "evidence_threshold",
    "fail_step",
    "first_processed_step",
    "get_alert",
    "get_or_create_run",
    "get_run",
    "get_run_by_name",
    "get_step",
    "head_revision",
    "heartbeat_step",
    "ingest_step",
    "list_alerts",
    "list_deliveries",
    "list_reviews",
    "list_runs",
    "list_steps",
    "load_payload",
    "load_run_state",
    "make_engine",
    "mark_delivered",
    "metrics",
    "open_alert_counts",
    "outbox_counts",
    "payload_steps",
    "purge_payloads",
    "retry_delivery",
    "review_alert",
    "run_verdict",
    "sample_count",
    "sample_points",
    "samples_at",
    "session_factory",
    "step_samples",
    "step_status_counts",
    "upgrade",
]
