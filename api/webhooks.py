"""Webhook targets, request bodies and signatures: what the notifier (:mod:`api.notify`) sends for an alert.

* Targets (:func:`parse_targets`): ``FPMON_WEBHOOK_URLS`` is a comma-separated list of ``[FORMAT:]URL``
  entries, ``FORMAT`` being ``json`` or ``slack`` (default ``FPMON_WEBHOOK_FORMAT``). A target's id
  (:func:`target_id`, stored in ``webhook_outbox.target``) is a hash of its URL: Slack URLs hold a secret,
  so no URL is stored in the database.
* Bodies: :func:`json_body` (generic JSON) and :func:`slack_body` (a Slack incoming-webhook message,
  ``{"text": …, "blocks": […]}``); both link to the review page, ``<public_url>/#/alerts/<id>``.
* Headers (:func:`delivery_headers`): ``X-Fpmon-Delivery`` (the idempotency id: the same in every attempt of
  one (alert, target)), ``X-Fpmon-Event``, ``X-Fpmon-Attempt``, ``X-Fpmon-Timestamp`` (Unix seconds) and, with a
  secret, ``X-Fpmon-Signature: sha256=<hex>``, the HMAC-SHA256 with the secret of ``"<timestamp>." + body``
  (:func:`signature`; a receiver checks it with :func:`verify_signature`, which also refuses a timestamp older
  than ``tolerance_s``: replay protection).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import storage

WebhookFormat = Literal["json", "slack"]
FORMATS: tuple[str, ...] = ("json", "slack")
EVENT = "alert.raised"
#: a sample's text is cut to this many characters in a notification
MAX_TEXT_CHARS = 300
#: default tolerance of :func:`verify_signature` (seconds between the timestamp and the receiver's clock)
SIGNATURE_TOLERANCE_S = 300


@dataclass(frozen=True)
class WebhookTarget:
    """One configured webhook: its URL, body format and id (:func:`target_id`)."""

    url: str
    format: WebhookFormat
    id: str


def target_id(url: str) -> str:
    """The id of the target at ``url`` in the outbox: ``wh_`` + 16 hex chars of its sha256."""
    return "wh_" + hashlib.sha256(url.encode()).hexdigest()[:16]


def check_http_url(url: str, what: str, hint: str = "") -> str:
    """``url`` if it is an absolute http(s) URL with a host, else ``ValueError`` saying what to write."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} {url!r} is not an absolute http:// or https:// URL with a host{hint}")
    return url


def parse_target(entry: str, default_format: str = "json") -> WebhookTarget:
    """One ``[json:|slack:]URL`` entry of ``FPMON_WEBHOOK_URLS`` (``ValueError`` with the fix when malformed)."""
    entry = entry.strip()
    fmt, sep, rest = entry.partition(":")
    if sep and fmt in FORMATS:
        entry, chosen = rest.strip(), fmt
    else:
        chosen = default_format
    if chosen not in FORMATS:
        raise ValueError(f"FPMON_WEBHOOK_FORMAT must be one of {list(FORMATS)}, got {chosen!r}")
    check_http_url(entry, "FPMON_WEBHOOK_URLS entry", "; write comma-separated [json:|slack:]https://host/path entries")
    return WebhookTarget(url=entry, format=chosen, id=target_id(entry))  # type: ignore[arg-type]


def parse_targets(entries: list[str], default_format: str = "json") -> list[WebhookTarget]:
    """The targets of ``FPMON_WEBHOOK_URLS`` (a URL listed twice is one target)."""
    targets: dict[str, WebhookTarget] = {}
    for entry in entries:
        target = parse_target(entry, default_format)
        targets.setdefault(target.id, target)
    return list(targets.values())


def alert_link(public_url: str, alert_id: int) -> str:
    """The review page's view of the alert: ``<public_url>/#/alerts/<id>``."""
    return f"{public_url.rstrip('/')}/#/alerts/{int(alert_id)}"


def _cut(text: Any, limit: int) -> str | None:
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _samples(alert: storage.Alert, count: int) -> list[dict[str, Any]]:
    return [
        {
            "index": s.get("index"),
            "sample_id": s.get("sample_id"),
            "reward": s.get("reward"),
            "text": _cut(s.get("text"), MAX_TEXT_CHARS),
        }
        for s in list(alert.top_samples or [])[: max(0, count)]
    ]


def json_body(
    delivery_id: int, alert: storage.Alert, run_name: str | None, public_url: str, samples: int = 3
) -> dict[str, Any]:
    """The generic JSON notification of ``alert`` (see docs/sidecar.md, "Notifications", for an example)."""
    return {
        "event": EVENT,
        "delivery_id": int(delivery_id),
        "alert_id": alert.id,
        "run_id": alert.run_id,
        "run_name": run_name,
        "step": alert.step,
        "type": alert.type,
        "created_at": alert.created_at.isoformat().replace("+00:00", "Z"),
        "reasons": list(alert.reasons or []),
        "recommendation": alert.recommendation,
        "scalars": alert.scalars,
        "top_samples": _samples(alert, samples),
        "url": alert_link(public_url, alert.id),
    }


def _mrkdwn(text: Any) -> str:
    """Slack's three escapes (``&``, ``<``, ``>``): a sample's text cannot inject a link or a mention."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(alert: storage.Alert, run_name: str | None, public_url: str, samples: int = 3) -> dict[str, Any]:
    """A Slack incoming-webhook message for ``alert``: ``text`` (the notification's fallback) and ``blocks``."""
    link = alert_link(public_url, alert.id)
    run = _mrkdwn(run_name if run_name is not None else f"run {alert.run_id}")
    headline = f"fpmon alert #{alert.id}: {alert.type} in {run} at step {alert.step}"
    reasons = "\n".join(f"• {_mrkdwn(r)}" for r in list(alert.reasons or [])[:10]) or "• (no reason given)"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(f"{alert.type} at step {alert.step}", 150)}},
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": _cut(f"*Run* {run} · *alert* <{link}|#{alert.id}>\n{reasons}", 3000)},
        },
    ]
    texts = [s["text"] for s in _samples(alert, samples) if s["text"]]
    if texts:
        quoted = "\n".join(f"> {_mrkdwn(t).replace(chr(10), ' ')}" for t in texts)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _cut(f"*Top samples*\n{quoted}", 3000)}})
    blocks.append(
        {
            "type": "actions",
            "elements": [{"type": "button", "text": {"type": "plain_text", "text": "Review the alert"}, "url": link}],
        }
    )
    return {"text": f"{headline} <{link}|review>", "blocks": blocks}


def encode_body(body: dict[str, Any]) -> bytes:
    """The raw request body: compact JSON in UTF-8 (what the signature covers, byte for byte)."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=`` + hex HMAC-SHA256, keyed with ``secret`` (UTF-8), of ``b"<timestamp>." + body``."""
    mac = hmac.new(secret.encode(), str(int(timestamp)).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str,
    body: bytes,
    timestamp: str | None,
    signature_header: str | None,
    tolerance_s: float = SIGNATURE_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """A receiver's check: the signature matches (constant-time compare) and the timestamp is within
    ``tolerance_s`` of ``now`` (replay protection; a receiver also drops delivery ids it has seen)."""
    if not timestamp or not signature_header or not timestamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, int(timestamp), body), signature_header)


def delivery_headers(
    delivery: storage.Delivery, body: bytes, secret: str | None, now: float | None = None
) -> dict[str, str]:
    """The headers of one attempt (see the module docstring)."""
    timestamp = int(time.time() if now is None else now)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "fpmon-webhook/1",
        "X-Fpmon-Event": EVENT,
        "X-Fpmon-Delivery": str(delivery.id),
        "X-Fpmon-Attempt": str(delivery.attempt),
        "X-Fpmon-Timestamp": str(timestamp),
    }
    if secret:
        headers["X-Fpmon-Signature"] = signature(secret, timestamp, body)
    return headers
