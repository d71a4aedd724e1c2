"""What the hook needs from a client (:class:`MonitorClientLike`, satisfied by ``monitor.client.MonitorClient``
and by fakes in tests) and what it counts (:class:`HookStats`, ``FPEMonitorCallback.stats``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from .embedding import Embedder


@runtime_checkable
class MonitorClientLike(Protocol):
    """What the hook needs from ``monitor.client.MonitorClient`` (a fake in tests). Used when present, not
    required: ``latest()`` (the run's latest processed step, for ``on_log``) and ``url`` (for review links)."""

    def observe(
        self,
        step: int,
        responses: Sequence[str] | None = None,
        rewards: Any = None,
        prompts: Sequence[str] | None = None,
        *,
        latents: Tensor | None = None,
        embedder: Embedder | None = None,
        sample_ids: Sequence[str] | None = None,
        lr: float | None = None,
        reference_rewards: Any = None,
        scalars: Mapping[str, Any] | None = None,
    ) -> Any: ...

    def flush(self, timeout: float) -> bool: ...

    def alerts(self) -> list[dict[str, Any]]: ...


@dataclass
class HookStats:
    """Counters of the hook (read ``callback.stats``): steps and samples shipped, probe steps, steps skipped for
    having fewer than 2 responses, completions dropped because they were scored outside a training step
    (evaluation), resets, and errors by ``"<hook>:<exception type>"``."""

    steps_shipped: int = 0
    probe_steps: int = 0
    samples_shipped: int = 0
    skipped_small: int = 0
    dropped_outside_steps: int = 0
    resets: int = 0
    errors: Counter[str] = field(default_factory=Counter)
