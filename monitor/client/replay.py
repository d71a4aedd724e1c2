"""``fpmon sync SPOOL_DIR``: replay the steps a client left in its spool (``monitor.client.spool``).

Each run folder is replayed in step order (the sidecar fails a step that arrives after a later step of
the same run was processed); a step file is deleted once the server acknowledged it (202, or 200 for a step
it already had), so running it twice sends nothing the second time. A refused step moves to ``rejected/``
with the server's message; a 401/403, or a sidecar that stays unreachable, stops that run's replay and
leaves its files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .sinks import DeliveryError, HttpSink, RetryPolicy
from .spool import REJECTED_DIR, RunSpool, infer_info, run_folders, sanitise_run_name

log = logging.getLogger("fpmon.client")


def call_with_retries(
    fn: Callable[[], Any],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], object] = time.sleep,
    on_retry: Callable[[DeliveryError], None] | None = None,
) -> Any:
    """``fn()``, retried on retryable :class:`DeliveryError` per ``policy``; the last error is raised."""
    attempt = 0
    while True:
        try:
            return fn()
        except DeliveryError as exc:
            if not exc.retryable or attempt >= policy.max_retries:
                raise
            attempt += 1
            if on_retry is not None:
                on_retry(exc)
            sleep(policy.delay(attempt, exc.retry_after))


@dataclass
class ReplayResult:
    """What one run folder's replay did.

    Attributes:
        run: the run's name; ``run_id`` its id on the server (None when it could not be created).
        sent: steps the server accepted (202); ``duplicates``: steps it already had (200); both deleted.
        rejected: steps the server refused (4xx), moved to ``rejected/`` with its message.
        remaining: step files left in the folder (the server became unreachable, or auth failed).
        error: why the replay stopped early (None when it finished).
    """

    run: str
    run_id: int | None = None
    sent: int = 0
    duplicates: int = 0
    rejected: int = 0
    remaining: int = 0
    error: str | None = None


def replay_run(
    spool: RunSpool, sink: HttpSink, policy: RetryPolicy, sleep: Callable[[float], object] = time.sleep
) -> ReplayResult:
    """Replay one run folder in step order (see the module docstring); returns a :class:`ReplayResult`.

    Connection errors, 429 and 5xx are retried per ``policy``; when they persist the replay stops and the
    remaining files stay. A 401/403 on run creation stops it too (wrong token: nothing is moved, run again
    with ``--token``). Any other refusal of a step moves that step to ``rejected/`` and goes on.
    """
    result = ReplayResult(run=spool.run_name)
    steps = spool.steps()
    if not steps:
        return result
    try:
        info = spool.read_info() or infer_info(spool, steps[0])
    except ValueError as exc:
        result.error, result.remaining = str(exc), len(steps)
        return result
    result.run = info.name
    try:
        result.run_id = call_with_retries(lambda: sink.ensure_run(info), policy, sleep=sleep)
    except DeliveryError as exc:
        if exc.retryable or exc.status in (401, 403):
            result.error, result.remaining = f"cannot create run {info.name!r}: {exc}", len(steps)
            return result
        for step in steps:  # the server refuses the run itself (409 latent_dim, 422 config): nothing can go
            spool.reject(step, None, f"run creation refused: {exc}")
            result.rejected += 1
        log.error("run %r refused by the server: %s; %d steps moved to rejected/", info.name, exc, len(steps))
        return result
    run_id: int = result.run_id
    for i, step in enumerate(steps):
        body = spool.read_step(step)

        def post(body: bytes = body) -> str:
            return sink.post_step(run_id, body)

        try:
            outcome = call_with_retries(post, policy, sleep=sleep)
        except DeliveryError as exc:
            if exc.retryable or exc.status in (401, 403):
                result.error, result.remaining = f"step {step}: {exc}", len(steps) - i
                return result
            spool.reject(step, None, str(exc))
            result.rejected += 1
            log.error("step %d of run %r refused: %s (moved to %s)", step, info.name, exc, spool.path / REJECTED_DIR)
            continue
        spool.delete_step(step)
        if outcome == "duplicate":
            result.duplicates += 1
        else:
            result.sent += 1
    return result


def sync_spool(
    spool_dir: str | Path,
    url: str,
    token: str | None = None,
    run: str | None = None,
    policy: RetryPolicy | None = None,
    timeout_s: float = 10.0,
) -> list[ReplayResult]:
    """Replay every run folder of ``spool_dir`` (or only run ``run``, by name or folder name) to ``url``."""
    folders = run_folders(spool_dir)
    if run is not None:
        wanted = {run, sanitise_run_name(run)}
        folders = [f for f in folders if f.name in wanted or RunSpool.from_folder(f).run_name == run]
    policy = policy or RetryPolicy(max_retries=3, base_s=0.5, max_s=5.0)
    sink = HttpSink(url, token, timeout_s)
    try:
        return [replay_run(RunSpool.from_folder(folder), sink, policy) for folder in folders]
    finally:
        sink.close()
