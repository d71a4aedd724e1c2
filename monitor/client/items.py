"""One observed step on its way to the sidecar: the :class:`Item` ``observe`` copies, and how it becomes
wire bytes (a :class:`Built`): :func:`embed_texts`, :func:`build_step`, and the :class:`StepBuilder` that
applies them for a ``Deliverer`` and counts embedding time and dropped rows. No I/O here.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from ..stepfile import StepPayload, encode_step
from .config import ClientConfig, Embedder

log = logging.getLogger("fpmon.client")


@dataclass
class Item:
    """One observed step, as copied on the calling thread.

    Attributes:
        step: the training step.
        latents: (n, d) CPU tensor in ``ClientConfig.latent_dtype``, or None (to be embedded from ``texts``).
        texts: the n responses, or None. ``rewards``: (n,) float32 CPU tensor, or None.
        prompts, sample_ids: n strings each, or None. ``lr``: the learning rate, or None.
        embedder: what embeds ``texts`` when ``latents`` is None.
        nbytes: what the step weighs in the queue's byte bound (latent, reward and text bytes).
        reference_rewards: (n,) float32 CPU tensor of a held-out judge's rewards (only with ``rewards``), or None.
        scalars: the step's named extra scalars (``{name: float | None}``, checked by
            ``monitor.stepfile.check_scalars``), or None.
    """

    step: int
    latents: Tensor | None
    texts: list[str] | None
    rewards: Tensor | None
    prompts: list[str] | None
    sample_ids: list[str] | None
    lr: float | None
    embedder: Embedder | None
    nbytes: int
    reference_rewards: Tensor | None = None
    scalars: dict[str, float | None] | None = None

    @classmethod
    def of(
        cls,
        step: int,
        latents: Tensor | None,
        texts: list[str] | None,
        rewards: Tensor | None,
        prompts: list[str] | None,
        sample_ids: list[str] | None,
        lr: float | None,
        embedder: Embedder | None = None,
        *,
        reference_rewards: Tensor | None = None,
        scalars: dict[str, float | None] | None = None,
    ) -> Item:
        """An item with its ``nbytes``: latent bytes + 4 bytes per row and reward vector + the characters of
        its strings + 8 bytes and the name's characters per scalar."""
        n = int(latents.shape[0]) if latents is not None else len(texts or [])
        strings = sum(len(s) for seq in (texts, prompts, sample_ids) if seq for s in seq)
        per_row = 4 * (1 + (reference_rewards is not None))
        strings += sum(8 + len(name) for name in scalars or {})
        nbytes = (latents.numel() * latents.element_size() if latents is not None else 0) + per_row * n + strings
        return cls(step, latents, texts, rewards, prompts, sample_ids, lr, embedder, nbytes, reference_rewards, scalars)


@dataclass
class Built:
    """A step turned into wire bytes (``body``, latent dimension ``latent_dim``), or the reason (``problem``)
    it cannot be sent (its ``body`` then goes to ``rejected/``)."""

    step: int
    body: bytes | None
    latent_dim: int
    problem: str | None = None


def embed_texts(embedder: Embedder, texts: list[str], batch_size: int, dtype: torch.dtype) -> Tensor:
    """The latents of the n ``texts``: ``embedder`` on batches of ``batch_size`` under ``torch.no_grad()``,
    concatenated, as ``dtype`` on CPU (check the shape with :func:`check_embedding`)."""
    with torch.no_grad():
        parts = [torch.as_tensor(embedder(texts[i : i + batch_size])) for i in range(0, len(texts), batch_size)]
    return torch.cat(parts).detach().to(device="cpu", dtype=dtype)


def check_embedding(z: Tensor, n: int) -> Tensor:
    """``z`` when it is (n, d); else a ``ValueError`` that names its shape."""
    if z.ndim != 2 or z.shape[0] != n:
        raise ValueError(f"the embedder returned shape {tuple(z.shape)} for {n} responses; want (n, d)")
    return z


def build_step(item: Item, z: Tensor, latent_dim: int | None) -> tuple[Built, int]:
    """Encode ``item`` with (n, d) latents ``z`` without the rows whose latents, reward or reference reward
    are NaN/Inf (such a row is dropped from every array of the step).

    Returns the :class:`Built` step and how many rows were dropped. The step has a ``problem`` (it cannot
    be sent) when fewer than 2 rows are finite, or when ``d`` differs from the run's ``latent_dim``.
    """
    n, d = int(z.shape[0]), int(z.shape[1])
    ref = item.reference_rewards
    payload = StepPayload(
        item.step,
        z,
        item.rewards,
        item.lr,
        item.sample_ids,
        item.texts,
        item.prompts,
        reference_rewards=ref,
        scalars=item.scalars,
    )
    finite = torch.isfinite(z.float()).all(dim=1)
    for r in (item.rewards, ref):
        if r is not None:
            finite &= torch.isfinite(r)
    problem = None
    dropped = 0
    if not bool(finite.all()):
        keep = finite.nonzero().squeeze(1)
        kept = keep.tolist()
        dropped = n - len(kept)

        def pick(seq: list[str] | None) -> list[str] | None:
            return [seq[i] for i in kept] if seq is not None else None

        if len(kept) >= 2:
            payload = StepPayload(
                item.step,
                z[keep],
                item.rewards[keep] if item.rewards is not None else None,
                item.lr,
                pick(item.sample_ids),
                pick(item.texts),
                pick(item.prompts),
                reference_rewards=ref[keep] if ref is not None else None,
                scalars=item.scalars,
            )
        else:
            problem = f"only {len(kept)} of {n} rows are finite; a step needs at least 2"
    if problem is None and latent_dim is not None and d != latent_dim:
        problem = f"the embedder returned d={d}, but this run's latent dimension is {latent_dim}"
    return Built(item.step, encode_step(payload), d, problem), dropped


class StepBuilder:
    """Builds a run's steps: embeds (when a step has no latents), drops non-finite rows (warned once),
    encodes. Counts ``embed_seconds`` (time in the embedder, seconds) and ``dropped_rows``; thread-safe.

    Args:
        config: the client's settings (``embed_batch_size``, ``latent_dtype``).
    """

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.embed_seconds = 0.0
        self.dropped_rows = 0
        self._lock = threading.Lock()
        self._warned = False

    def embed(self, item: Item) -> Tensor:
        """(n, d) latents of ``item.texts`` with ``item.embedder``; raises what the embedder raises, and
        ``ValueError`` for an answer of the wrong shape."""
        assert item.embedder is not None  # checked in observe()
        texts = item.texts or []
        started = time.perf_counter()
        z = embed_texts(item.embedder, texts, self.config.embed_batch_size, self.config.latent_dtype)
        with self._lock:
            self.embed_seconds += time.perf_counter() - started
        return check_embedding(z, len(texts))

    def build(self, item: Item, latent_dim: int | None) -> Built:
        """Embed ``item`` if needed and encode it (see :func:`build_step`; ``latent_dim``: the run's, if known)."""
        z = item.latents if item.latents is not None else self.embed(item)
        built, dropped = build_step(item, z, latent_dim)
        if dropped:
            with self._lock:
                self.dropped_rows += dropped
                warn, self._warned = not self._warned, True
            if warn:
                log.warning(
                    "step %d: %d of %d rows have NaN/Inf latents, rewards or reference rewards; dropping such rows "
                    "(counted in stats.dropped_rows)",
                    item.step,
                    dropped,
                    int(z.shape[0]),
                )
        return built
