"""The notifier: one thread of the sidecar that delivers the webhook outbox (``storage.outbox``).

It loops: lease one due notification of a configured target (``storage.claim_deliveries``), build its body
(``api.webhooks``: generic JSON or Slack) from the alert and its run as stored, POST it with a timeout, and
write the outcome under the lease: a 2xx answer marks it ``delivered``; any other answer, a timeout or a
connection error schedules a retry with exponential backoff and jitter, until ``webhook_max_attempts``
attempts have failed (then ``failed``, with the last error). When nothing is due it sleeps
``webhook_poll_s``. Several sidecars (replicas) each run a notifier; their leases keep them off each other's
rows. Delivery is at least once, and every attempt of one (alert, target) carries the same
``X-Fpmon-Delivery`` id (see ``storage.outbox``).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import uuid
from collections.abc import Callable

import httpx
from sqlalchemy.orm import Session

import storage

from .settings import Settings
from .webhooks import WebhookTarget, delivery_headers, encode_body, json_body, slack_body

log = logging.getLogger("fpmon.notify")

#: an answer's text kept in the outbox's ``last_error`` (characters)
ERROR_BODY_CHARS = 200


class Notifier(threading.Thread):
    """A daemon thread delivering the due outbox rows of ``targets`` (see the module docstring).

    Args:
        sessions: a session factory bound to the run database.
        settings: the sidecar's settings (``webhook_*``, ``public_url``).
        on_attempt: called with each attempt's outcome (``delivered``, ``retry``, ``failed``, ``lost``: the
            lease ran out meanwhile); the sidecar counts them in ``/metrics``.
        transport: an httpx transport (tests); default: real HTTP.
    """

    def __init__(
        self,
        sessions: Callable[[], Session],
        settings: Settings,
        on_attempt: Callable[[str], None] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.worker_id = f"notify:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        super().__init__(name=self.worker_id, daemon=True)
        self.sessions = sessions
        self.settings = settings
        self.targets: dict[str, WebhookTarget] = {t.id: t for t in settings.webhook_targets()}
        self.public_url = settings.resolved_public_url()
        self.policy = storage.RetryPolicy(
            max_attempts=settings.webhook_max_attempts,
            base_s=settings.webhook_backoff_s,
            max_s=settings.webhook_backoff_max_s,
        )
        self.lease_s = 3 * settings.webhook_timeout_s + 5  # connect, send, read: each up to the timeout
        self.on_attempt = on_attempt
        self.client = httpx.Client(timeout=settings.webhook_timeout_s, transport=transport, follow_redirects=False)
        self.rng = random.Random()
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                busy = self.deliver_one()
            except Exception:  # the database is away for a moment: log, back off, keep going
                log.exception("notifier loop error")
                busy = False
                self.stop_event.wait(1.0)
            if not busy:
                self.stop_event.wait(self.settings.webhook_poll_s)

    def deliver_one(self) -> bool:
        """Lease and attempt one due notification; False when none was due."""
        with self.sessions() as session:
            leased = storage.claim_deliveries(
                session,
                self.worker_id,
                list(self.targets),
                self.lease_s,
                limit=1,
                max_attempts=self.policy.max_attempts,
            )
            if not leased:
                return False
            delivery = leased[0]
            error = self._attempt(session, delivery)
            if error is None:
                outcome = "delivered" if storage.mark_delivered(session, delivery) else "lost"
            else:
                status = storage.retry_delivery(session, delivery, error, self.policy, self.rng)
                outcome = {"pending": "retry", "failed": "failed"}.get(status or "", "lost")
                level = logging.ERROR if outcome == "failed" else logging.WARNING
                log.log(
                    level, "webhook delivery %s (attempt %s): %s -> %s", delivery.id, delivery.attempt, error, outcome
                )
        if self.on_attempt is not None:
            self.on_attempt(outcome)
        return True

    def _attempt(self, session: Session, delivery: storage.Delivery) -> str | None:
        """POST the notification; None when the receiver answered 2xx, else what went wrong."""
        target = self.targets[delivery.target]
        alert = storage.get_alert(session, delivery.alert_id)
        if alert is None:  # pragma: no cover - the outbox's foreign key keeps the alert
            return f"alert {delivery.alert_id} does not exist"
        run = storage.get_run(session, alert.run_id)
        run_name = run.name if run is not None else None
        session.commit()  # end the read transaction: no database snapshot is held during the HTTP call
        samples = self.settings.webhook_samples
        if target.format == "slack":
            body = encode_body(slack_body(alert, run_name, self.public_url, samples))
        else:
            body = encode_body(json_body(delivery.id, alert, run_name, self.public_url, samples))
        headers = delivery_headers(delivery, body, self.settings.webhook_secret)
        try:
            response = self.client.post(target.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}: {response.text[:ERROR_BODY_CHARS]}"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current attempt (its outcome is written) and close the HTTP client."""
        self.stop_event.set()
        if self.is_alive():
            self.join(timeout)
        self.client.close()
