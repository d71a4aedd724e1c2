"""fpmon in the trainer's own loggers, and alerts on the training thread (:class:`TrainerLogs`, used by
``FPEMonitorCallback``).

Values (added to the trainer's ``logs`` dict by ``on_log``, so every ``report_to`` integration — W&B,
TensorBoard, MLflow, trackio, … — records them with no code of its own):

- ``fpmon/<name>``: the observables of the run's latest processed step (``MonitorClient.latest()``), by default
  those of ``monitor.fpe.SCALAR_NAMES`` that were computed (``fpmon/C``, ``fpmon/S_dot``, ``fpmon/W2_ref``, …);
- ``fpmon/processed_step``: the training step those observables belong to (they lag the trainer's step);
- ``fpmon/alerts``: how many alerts this run has raised so far, whatever their review status (a count that
  only grows: each rise marks a new alert).

Order of the callbacks. ``Trainer`` builds its ``CallbackHandler`` from ``[DefaultFlowCallback, <report_to
integrations>, *callbacks]`` and ``CallbackHandler.call_event`` calls them in that order with the same ``logs``
object, so a callback passed by the user sees ``logs`` only after the integrations wrote it. The callback
therefore moves itself, once, to just before the first integration (:func:`place_before_loggers`). It finds the
handler that calls it (:func:`calling_handler`: the ``CallbackHandler`` whose ``call_event`` frame is on the
stack, at ``on_init_end`` and again at ``on_train_begin``, for callbacks added with ``trainer.add_callback``);
``FPEMonitorCallback.place_before_loggers(trainer)`` does the same explicitly.

Nothing here waits: the alerts and the latest step are what the client polled in the background.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState

from ..fpe import SCALAR_NAMES
from .distributed import collective_device, rank_and_world
from .reset import alert_key

log = logging.getLogger("fpmon.trl")

#: the prefix of every key the hook adds to the trainer's logs
PREFIX = "fpmon/"
#: ``on_alert(alert, control)``: called once per new alert (the REST API's alert dict) on the training thread
AlertHandler = Callable[[dict[str, Any], TrainerControl], None]
#: the ``TrainerControl`` flags an ``on_alert`` may set that every rank must follow (broadcast from rank 0)
SHARED_FLAGS = ("should_training_stop", "should_save", "should_evaluate", "should_log")


class LatestLike(Protocol):
    """What ``MonitorClient.latest()`` returns (``monitor.client.LatestStep``)."""

    step: int
    scalars: Mapping[str, float | None]


def review_link(url: str | None, alert_id: Any) -> str:
    """Where a person reviews the alert: ``<url>/#/alerts/<id>`` (the review page's alert route); without a
    sidecar URL (in-process client), the route to open on ``fpmon serve`` over the client's database."""
    if url:
        return f"{url.rstrip('/')}/#/alerts/{alert_id}"
    return f"#/alerts/{alert_id} on `fpmon serve` over the client's database"


def alert_line(alert: Mapping[str, Any], url: str | None) -> str:
    """One line for the log: id, type, step, the first two reasons (each cut at 160 characters) and the link."""
    reasons = [str(r)[:160] for r in (alert.get("reasons") or [])]
    more = f" (+{len(reasons) - 2} more)" if len(reasons) > 2 else ""
    return (
        f"fpmon alert #{alert.get('alert_id')} ({alert.get('type')}) at step {alert.get('step')}: "
        f"{'; '.join(reasons[:2]) or 'no reason given'}{more} - review: {review_link(url, alert.get('alert_id'))}"
    )


def log_values(latest: LatestLike | None, alerts: int | None, names: Sequence[str] | None) -> dict[str, float]:
    """The ``fpmon/…`` entries: the latest step's finite observables among ``names`` (None: SCALAR_NAMES),
    ``fpmon/processed_step`` (with them) and ``fpmon/alerts`` (when ``alerts`` is known)."""
    out: dict[str, float] = {}
    if latest is not None:
        scalars = latest.scalars or {}
        for name in SCALAR_NAMES if names is None else names:
            value = scalars.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                out[PREFIX + name] = float(value)
        out[PREFIX + "processed_step"] = float(latest.step)
    if alerts is not None:
        out[PREFIX + "alerts"] = float(alerts)
    return out


def is_reporting_integration(callback: TrainerCallback) -> bool:
    """Whether ``callback`` is one of transformers' ``report_to`` integrations (``transformers.integrations``)."""
    return type(callback).__module__.startswith("transformers.integrations")


def place_before_loggers(callbacks: list[TrainerCallback], callback: TrainerCallback) -> bool:
    """Move ``callback`` (in place) to just before the first reporting integration that comes before it in
    ``callbacks``; returns True when it is (now) before every integration (False: not in ``callbacks``).

    Safe while ``CallbackHandler.call_event`` iterates over ``callbacks`` and is calling ``callback``: the
    callbacks it already called move one place right, so the next index is still the callback after ours.
    """
    if callback not in callbacks:
        return False
    mine = callbacks.index(callback)
    first = next((i for i, cb in enumerate(callbacks) if is_reporting_integration(cb)), None)
    if first is not None and first < mine:
        callbacks.insert(first, callbacks.pop(mine))
    return True


def calling_handler(callback: TrainerCallback, depth: int = 8) -> Any:
    """The ``CallbackHandler`` (any object with a ``callbacks`` list holding ``callback`` and a ``call_event``)
    found as ``self`` in the ``depth`` frames above the caller, or None."""
    frame = inspect.currentframe()
    try:
        for _ in range(depth):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                return None
            owner = frame.f_locals.get("self")
            found = getattr(owner, "callbacks", None)
            if isinstance(found, list) and hasattr(owner, "call_event") and any(cb is callback for cb in found):
                return owner
        return None
    finally:
        del frame


def broadcast_flags(control: TrainerControl) -> None:
    """Rank 0's :data:`SHARED_FLAGS` on every rank (one collective; call it on every rank, in step)."""
    if rank_and_world()[1] == 1:
        return
    t = torch.tensor([int(bool(getattr(control, f))) for f in SHARED_FLAGS], dtype=torch.long)
    t = t.to(collective_device())
    torch.distributed.broadcast(t, src=0)
    for flag, value in zip(SHARED_FLAGS, t.tolist(), strict=True):
        setattr(control, flag, bool(value))


class TrainerLogs:
    """The hook's side of the trainer's loggers and of alerts (see the module docstring).

    Args:
        on_alert: called once per new alert (see :data:`AlertHandler`), or None.
        log_scalars: the observables logged as ``fpmon/<name>``; None: ``monitor.fpe.SCALAR_NAMES``.
    """

    def __init__(self, on_alert: AlertHandler | None, log_scalars: Sequence[str] | None) -> None:
        if on_alert is not None and not callable(on_alert):
            raise TypeError(f"on_alert must be a callable (alert, control) -> None, got {type(on_alert).__name__}")
        if log_scalars is not None:
            if isinstance(log_scalars, str) or not all(isinstance(n, str) and n for n in log_scalars):
                raise TypeError(f"log_scalars must be a list of observable names (strings), got {log_scalars!r}")
            log_scalars = list(log_scalars)
        self.on_alert = on_alert
        self.log_scalars = log_scalars
        #: alerts announced (warned about, handed to on_alert), by id
        self.seen: set[Any] = set()
        #: alerts known by the last read of ``client.alerts()`` (None: not read, or the read failed)
        self.alert_count: int | None = None
        #: the callback was found in a trainer's callbacks and placed before its integrations
        self.placed = False
        self._told = False
        self._start_step = 0
        self._logged_step: int | None = None

    def place(self, callback: TrainerCallback, handler: Any = None) -> None:
        """Put ``callback`` before the reporting integrations of ``handler`` (default: the handler calling it;
        when none is found, and it was never placed, say so once at INFO)."""
        handler = handler if handler is not None else calling_handler(callback)
        if handler is not None:
            self.placed = place_before_loggers(handler.callbacks, callback) or self.placed
        elif not self.placed and not self._told:
            self._told = True
            log.info(
                "fpmon hook: the trainer's CallbackHandler was not found on the call stack; the fpmon/... values "
                "reach only the callbacks after this one (call callback.place_before_loggers(trainer))"
            )

    def begin(self, step: int) -> None:
        """Training (re)starts at ``step``: alerts of steps up to it come from before and are not announced."""
        self._start_step = int(step)

    def announce(
        self, alerts: list[dict[str, Any]] | None, control: TrainerControl, url: str | None, warn: bool = True
    ) -> list[tuple[dict[str, Any], BaseException]]:
        """Warn about each alert not seen before (at DEBUG instead with ``warn=False``: the client already
        warned) and hand it to ``on_alert``; returns the (alert, exception) pairs of ``on_alert`` calls that
        raised (the caller counts them; they are logged here)."""
        failed: list[tuple[dict[str, Any], BaseException]] = []
        self.alert_count = None if alerts is None else len(alerts)
        for alert in reversed(alerts or []):  # oldest first
            key = alert_key(alert)
            if key in self.seen:
                continue
            self.seen.add(key)
            step = alert.get("step")
            if self._start_step and isinstance(step, int) and step <= self._start_step:
                continue  # raised before this training (re)started
            log.log(logging.WARNING if warn else logging.DEBUG, "%s", alert_line(alert, url))
            if self.on_alert is None:
                continue
            try:
                self.on_alert(dict(alert), control)
            except Exception as exc:
                log.error("fpmon on_alert raised on alert #%s; training continues", key, exc_info=exc)
                failed.append((alert, exc))
        return failed

    def step_end(
        self, alerts: list[dict[str, Any]] | None, control: TrainerControl, client: Any, errors: Counter[str]
    ) -> None:
        """``on_step_end``: :meth:`announce` rank 0's ``alerts`` (failures of ``on_alert`` counted in ``errors``
        as ``on_alert:<type>``; the warning only when the client does not log alerts itself,
        ``client.announces_alerts``, so each alert is one line), then, when there is an ``on_alert``, share rank
        0's flags with every rank."""
        try:
            url = getattr(client, "url", None)
            warn = not getattr(client, "announces_alerts", False)
            for _, exc in self.announce(alerts, control, url if isinstance(url, str) else None, warn):
                errors[f"on_alert:{type(exc).__name__}"] += 1
        finally:
            if self.on_alert is not None:
                broadcast_flags(control)  # a collective: every rank, every step

    def on_log(self, client: Any, logs: dict[str, Any] | None, state: TrainerState) -> None:
        """``on_log``: add the ``fpmon/…`` values to ``logs`` (rank 0, with a client; see :meth:`add_to`)."""
        if logs is None or client is None or rank_and_world()[0] != 0:
            return
        latest = client.latest() if callable(getattr(client, "latest", None)) else None
        self.add_to(logs, int(state.global_step), latest, state.log_history)

    def add_to(
        self, logs: dict[str, Any], step: int, latest: LatestLike | None, history: list[dict[str, Any]]
    ) -> dict[str, float]:
        """Add the ``fpmon/…`` values to ``logs`` once per training step (the first ``on_log`` of a step: the
        training log; evaluation and end-of-training logs at the same step do not repeat them), and to the
        entry ``Trainer.log`` appended to ``history`` (``state.log_history``) for these ``logs`` just before."""
        if self._logged_step == step:
            return {}
        values = log_values(latest, self.alert_count, self.log_scalars)
        if not values:
            return values
        self._logged_step = step
        last = history[-1] if history else None
        if last is not None and last.get("step") == step and all(last.get(k) == v for k, v in logs.items()):
            last.update(values)
        logs.update(values)
        return values
