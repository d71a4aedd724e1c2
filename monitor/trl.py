"""The TRL hook: ship each training step's responses to fpmon without slowing or breaking training.

Three sources of responses:

- **GRPO / RLOO** (on-policy completions): pass ``wrap_reward_funcs([...], callback)`` as the trainer's
  ``reward_funcs``. The wrappers keep TRL's calling convention and return the rewards unchanged; they record
  prompts, completions and rewards, which :class:`FPEMonitorCallback` ships at ``on_step_end``.
- **DPO and any trainer** (probes): a fixed ``probe_prompts`` set answered every ``probe_every`` optimizer steps
  (and once at the start, step 0, unless reward functions are wrapped) by the current policy.
- **PPO loops outside TRL** (TRL 1.x has no PPOTrainer): call ``MonitorClient.observe(step, responses, rewards)``
  from the loop; no callback needed.

Single process: the training thread only copies the batch; embedding and shipping happen in the client's
background thread. Under ``torch.distributed`` (world size > 1) every rank embeds its own responses on the
training thread (collectives must be issued in step on every rank), :func:`gather_to_main` gathers latents,
rewards and texts to rank 0, and only rank 0 talks to the sidecar.

Resets (seed §5, **experimental, off by default**): :class:`ResetPolicy` perturbs a fraction of the policy's
weights when the monitor raises a transition alert; :func:`apply_reset` is the perturbation itself.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import math
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

log = logging.getLogger("fpmon.trl")

Embedder = Callable[[list[str]], Tensor]
"""Texts → latents: ``list[str]`` of length n → float tensor (n, d) (``monitor.embed``'s protocol)."""


@runtime_checkable
class MonitorClientLike(Protocol):
    """What the hook needs from ``monitor.client.MonitorClient`` (a fake in tests)."""

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
    ) -> Any: ...

    def flush(self, timeout: float) -> bool: ...

    def alerts(self) -> list[dict[str, Any]]: ...


# ---------------------------------------------------------------------------------------------- resets
@dataclass(frozen=True)
class ResetPolicy:
    """When and how hard to perturb the policy after a transition alert (seed §5). **Experimental.**

    Attributes:
        alpha: fraction of the entries of each parameter tensor that is perturbed, in (0, 1]. Default 0.15 (seed).
        noise_scale: noise amplitude relative to each tensor's own scale (see :func:`apply_reset`), > 0.
            Default 0.01.
        alert_types: alert types that trigger a reset. Default both kinds fpmon raises.
        cooldown_steps: after a reset at step s, no reset before step s + cooldown_steps; alerts arriving in
            between are consumed without a reset. Default 20.
        max_resets: stop after this many resets (None: no limit).
        seed: seed of the perturbation; reset number k (0-based) draws from ``torch.Generator().manual_seed(seed +
            k)``, identical on every rank, so data-parallel replicas stay in sync.
    """

    alpha: float = 0.15
    noise_scale: float = 0.01
    alert_types: tuple[str, ...] = ("PHASE_TRANSITION", "POTENTIAL_REWARD_HACKING")
    cooldown_steps: int = 20
    max_resets: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _check_alpha_scale(self.alpha, self.noise_scale)
        if not self.alert_types:
            raise ValueError("alert_types is empty: name at least one alert type, e.g. ('PHASE_TRANSITION',)")
        if self.cooldown_steps < 0:
            raise ValueError(f"cooldown_steps must be ≥ 0, got {self.cooldown_steps}")
        if self.max_resets is not None and self.max_resets < 1:
            raise ValueError(f"max_resets must be ≥ 1 or None (no limit), got {self.max_resets}")


@dataclass(frozen=True)
class ResetStats:
    """What :func:`apply_reset` changed: tensors touched, entries considered, entries perturbed."""

    tensors: int
    entries: int
    perturbed: int


def _check_alpha_scale(alpha: float, noise_scale: float) -> None:
    if not (0.0 < alpha <= 1.0):
        raise ValueError(f"alpha is the fraction of weights to perturb and must be in (0, 1], got {alpha}")
    if not (math.isfinite(noise_scale) and noise_scale > 0):
        raise ValueError(f"noise_scale must be a positive finite number, got {noise_scale}")


@torch.no_grad()
def apply_reset(
    model: nn.Module,
    alpha: float,
    noise_scale: float,
    generator: torch.Generator | None = None,
    *,
    trainable_only: bool = True,
) -> ResetStats:
    """Perturb a random fraction ``alpha`` of the entries of each floating-point parameter, in place.

    The rule, per parameter tensor p (in ``model.named_parameters()`` order; with ``trainable_only`` only those
    with ``requires_grad``):

    - scale σ_p = the standard deviation of p's entries (population, ``correction=0``), or, if that is 0 (a
      constant tensor, e.g. a freshly initialised norm weight), the RMS of p; a tensor of zeros is left as is;
    - mask m_ij ~ Bernoulli(alpha) independently per entry; noise ε_ij ~ N(0, 1);
    - p ← p + m ⊙ (noise_scale · σ_p · ε).

    So the expected fraction of changed entries is alpha (binomial: its standard deviation over N entries is
    √(alpha(1 − alpha)/N)), each changed entry moves by noise_scale·σ_p·|ε| (relative to the tensor's own scale,
    so embeddings and norm weights are perturbed alike), and unselected entries are bit-for-bit unchanged.
    Random numbers are drawn on the generator's device (CPU by default) in float32 and cast to p's dtype, so a
    given generator state gives the same perturbation on any device. Runs under ``torch.no_grad``.

    Args:
        model: the policy (any ``nn.Module``).
        alpha: fraction of entries to perturb, in (0, 1].
        noise_scale: noise amplitude relative to σ_p, > 0.
        generator: source of randomness (default: a CPU generator seeded 0).
        trainable_only: skip parameters with ``requires_grad=False`` (frozen bases of adapters).

    Returns:
        :class:`ResetStats` (tensors touched, entries considered, entries selected by the mask).
    """
    _check_alpha_scale(alpha, noise_scale)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    tensors = entries = perturbed = 0
    for _, p in model.named_parameters():
        if not p.is_floating_point() or (trainable_only and not p.requires_grad) or p.numel() == 0:
            continue
        pf = p.detach().float()
        scale = float(pf.std(correction=0)) if p.numel() > 1 else 0.0
        if not (math.isfinite(scale) and scale > 0):
            scale = float(pf.pow(2).mean().sqrt())
        mask = torch.rand(p.shape, generator=gen, device=gen.device) < alpha
        noise = torch.randn(p.shape, generator=gen, device=gen.device)
        entries += p.numel()
        if not (math.isfinite(scale) and scale > 0):
            continue
        delta = (noise * mask).mul_(noise_scale * scale).to(device=p.device, dtype=p.dtype)
        p.add_(delta)
        tensors += 1
        perturbed += int(mask.sum())
    return ResetStats(tensors=tensors, entries=entries, perturbed=perturbed)


# ------------------------------------------------------------------------------------------ distributed
@dataclass
class GatheredBatch:
    """A step's responses gathered to the main process, concatenated in rank order.

    ``latents`` (n, d) float32 on CPU; ``rewards`` (n,) float32 or None (None when any rank had none);
    ``texts`` n strings; ``prompts`` and ``sample_ids`` n strings each, or None when any rank had none.
    """

    latents: Tensor
    rewards: Tensor | None
    texts: list[str]
    prompts: list[str] | None
    sample_ids: list[str] | None = None


def _dist_active() -> bool:
    return bool(torch.distributed.is_available() and torch.distributed.is_initialized())


def _world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    if not _dist_active():
        return 0, 1
    return int(torch.distributed.get_rank()), int(torch.distributed.get_world_size())


def _collective_device() -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_to_main(
    latents: Tensor | None,
    rewards: Tensor | Sequence[float] | None,
    texts: Sequence[str] | None,
    prompts: Sequence[str] | None,
    sample_ids: Sequence[str] | None = None,
) -> GatheredBatch | None:
    """Gather every rank's (latents, rewards, texts, prompts) to rank 0. A collective: call it on every rank.

    Each rank passes its own batch of n_r responses — ``latents`` (n_r, d), ``rewards`` (n_r,), n_r texts,
    prompts and (optionally) sample ids — or ``latents=None`` when it has nothing this step (or its embedding
    failed). Sizes are gathered first (all_gather), then latents padded to max n_r are gathered and trimmed;
    texts, prompts, ids and rewards go through ``gather_object``.
    Rank 0 receives the concatenation in rank order; other ranks get None. Rank 0 also gets None when no
    rank had a response. Outside torch.distributed (or world size 1) the inputs come back as one
    batch (None if ``latents`` is None).

    Raises:
        ValueError: (on every rank) if ranks disagree on the latent dimension d, or a rank's lists or rewards
            do not have one entry per latent.
    """
    n_local = 0 if latents is None else int(latents.shape[0])
    d_local = 0 if latents is None else int(latents.shape[1]) if latents.ndim == 2 else -1
    local_ok = latents is None or (
        latents.ndim == 2
        and (texts is None or len(texts) == n_local)
        and (prompts is None or len(prompts) == n_local)
        and (rewards is None or len(rewards) == n_local)
        and (sample_ids is None or len(sample_ids) == n_local)
    )
    rank, world = _world()
    if world == 1:
        if not local_ok:
            raise ValueError(_shape_message(latents, rewards, texts, prompts))
        if latents is None or n_local == 0:
            return None
        return GatheredBatch(
            latents=latents.detach().to("cpu", torch.float32),
            rewards=None if rewards is None else torch.as_tensor(rewards, dtype=torch.float32).cpu(),
            texts=list(texts) if texts is not None else [""] * n_local,
            prompts=list(prompts) if prompts is not None else None,
            sample_ids=list(sample_ids) if sample_ids is not None else None,
        )
    dist = torch.distributed
    dev = _collective_device()
    meta = torch.tensor([n_local, d_local, int(local_ok)], dtype=torch.long, device=dev)
    metas = [torch.zeros_like(meta) for _ in range(world)]
    dist.all_gather(metas, meta)
    sizes = [int(m[0]) for m in metas]
    dims = {int(m[1]) for m, n in zip(metas, sizes, strict=True) if n > 0}
    if not all(int(m[2]) for m in metas):
        bad = [r for r, m in enumerate(metas) if not int(m[2])]
        raise ValueError(f"ranks {bad} passed latents that are not (n, d) or lists/rewards of another length")
    if len(dims) > 1:
        raise ValueError(f"ranks disagree on the latent dimension: {sorted(dims)}; use the same embedder everywhere")
    total = sum(sizes)
    if total == 0:
        return None
    d = dims.pop()
    n_max = max(sizes)
    padded = torch.zeros(n_max, d, dtype=torch.float32, device=dev)
    if latents is not None and n_local > 0:
        padded[:n_local] = latents.detach().to(dev, torch.float32)
    gather_list = [torch.zeros_like(padded) for _ in range(world)] if rank == 0 else None
    dist.gather(padded, gather_list, dst=0)
    obj = (
        None if rewards is None else [float(x) for x in torch.as_tensor(rewards, dtype=torch.float64).tolist()],
        None if texts is None else list(texts),
        None if prompts is None else list(prompts),
        None if sample_ids is None else list(sample_ids),
    )
    objs: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(obj, objs, dst=0)
    if rank != 0:
        return None
    assert gather_list is not None and objs is not None
    lat = torch.cat([g[:n].cpu() for g, n in zip(gather_list, sizes, strict=True) if n > 0])
    parts = [(o, n) for o, n in zip(objs, sizes, strict=True) if n > 0]
    rew = None
    if all(o[0] is not None for o, _ in parts):
        rew = torch.tensor([x for o, _ in parts for x in o[0]], dtype=torch.float32)
    txt = [t for o, n in parts for t in (o[1] if o[1] is not None else [""] * n)]
    prm = [p for o, _ in parts for p in o[2]] if all(o[2] is not None for o, _ in parts) else None
    ids = [i for o, _ in parts for i in o[3]] if all(o[3] is not None for o, _ in parts) else None
    return GatheredBatch(latents=lat, rewards=rew, texts=txt, prompts=prm, sample_ids=ids)


def _shape_message(latents: Any, rewards: Any, texts: Any, prompts: Any) -> str:
    shape = None if latents is None else tuple(latents.shape)
    lens = {
        k: (None if v is None else len(v)) for k, v in (("rewards", rewards), ("texts", texts), ("prompts", prompts))
    }
    return f"latents must be (n, d) with one reward/text/prompt per row; got latents {shape} and lengths {lens}"


# ------------------------------------------------------------------------------------- reward wrapping
@dataclass
class _Batch:
    """One call of the reward functions on one batch: n prompts/completions, one reward list per function slot."""

    prompts: list[Any]
    completions: list[Any]
    rewards: list[list[float] | None]
    step: int | None


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal content blocks: keep the text parts
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def completion_text(completion: Any) -> str:
    """A TRL completion as text: a string as is; a conversation → the assistant messages' content, joined."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        msgs = [m for m in completion if isinstance(m, dict)]
        picked = [m for m in msgs if m.get("role") == "assistant"] or msgs
        return "\n".join(_content_text(m.get("content")) for m in picked)
    if isinstance(completion, dict):
        return _content_text(completion.get("content"))
    return str(completion)


def prompt_text(prompt: Any) -> str:
    """A TRL prompt as text: a string as is; a conversation → the last user message's content."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        msgs = [m for m in prompt if isinstance(m, dict)]
        users = [m for m in msgs if m.get("role") == "user"] or msgs
        return _content_text(users[-1].get("content")) if users else ""
    return str(prompt)


def _reward_float(x: Any) -> float:
    if x is None:
        return math.nan
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def wrap_reward_funcs(funcs: Any, callback: FPEMonitorCallback) -> list[Any]:
    """Wrap TRL reward functions so that ``callback`` sees every completion and its reward.

    Pass the returned list, in the same order, as the trainer's ``reward_funcs`` (so that
    ``args.reward_weights`` lines up). Each wrapper keeps the function's ``__name__``, ``__qualname__``,
    ``__doc__`` and signature (``functools.wraps``; TRL logs rewards under that name), calls the original with
    the same arguments, and returns its result object unchanged (exceptions of the original propagate
    unchanged too). It then records prompts, completions and rewards (``None`` and non-finite rewards, which
    TRL allows for "not applicable", are recorded as NaN) with ``trainer_state.global_step`` if TRL passed it;
    the callback ships one record per step with the per-function rewards combined as TRL does. Recording never
    raises. Async reward functions get async wrappers.

    Reward *models* (``nn.Module``, or a model id string) are returned unwrapped, with a warning: TRL calls them
    with tokenised text and tells them apart by type, so a wrapper would change how TRL calls them. Their scores
    are not part of the recorded reward; completions are still recorded through the wrapped functions.

    Args:
        funcs: one reward function or a list of them (callables, ``nn.Module`` or model id strings).
        callback: the :class:`FPEMonitorCallback` that ships the records.

    Returns:
        A new list of the same length and order.
    """
    if not isinstance(callback, FPEMonitorCallback):
        raise TypeError(f"callback must be an FPEMonitorCallback, got {type(callback).__name__}")
    items = list(funcs) if isinstance(funcs, list | tuple) else [funcs]
    if not items:
        raise ValueError("funcs is empty: pass at least one reward function")
    out: list[Any] = []
    for func in items:
        slot = callback._register_slot(func)
        if isinstance(func, nn.Module | str):
            log.warning(
                "fpmon: reward model %s is passed through unwrapped; its scores are not part of the recorded reward",
                func if isinstance(func, str) else type(func).__name__,
            )
            out.append(func)
            continue
        if not callable(func):
            raise TypeError(f"reward function #{slot} is not callable: {func!r}")
        out.append(_wrap_one(func, slot, callback))
    return out


def _unwrap_partial(func: Any) -> Any:
    while isinstance(func, functools.partial):
        func = func.func
    return func


def _is_async(func: Any) -> bool:
    base = _unwrap_partial(func)
    return inspect.iscoroutinefunction(base) or inspect.iscoroutinefunction(type(base).__call__)


def _wrap_one(func: Callable[..., Any], slot: int, callback: FPEMonitorCallback) -> Callable[..., Any]:
    try:
        signature: inspect.Signature | None = inspect.signature(func)
    except (TypeError, ValueError):
        signature = None
    name = getattr(_unwrap_partial(func), "__name__", type(func).__name__)

    def record(args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        try:
            bound: dict[str, Any] = dict(kwargs)
            if args and signature is not None:
                bound = {**signature.bind_partial(*args, **kwargs).arguments, **kwargs}
            state = bound.get("trainer_state")
            step = getattr(state, "global_step", None)
            callback._record(slot, bound.get("prompts"), bound.get("completions"), result, step)
        except Exception as exc:  # recording must never break the reward computation
            callback._note_error("record", exc)

    if _is_async(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            result = await func(*args, **kwargs)
            record(args, kwargs, result)
            return result

        wrapper: Callable[..., Any] = async_wrapper
    else:

        @functools.wraps(func)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            result = func(*args, **kwargs)
            record(args, kwargs, result)
            return result

        wrapper = sync_wrapper
    wrapper.__name__ = name  # callable instances and partials have no __name__ of their own
    if not hasattr(wrapper, "__qualname__") or wrapper.__qualname__.endswith("_wrapper"):
        wrapper.__qualname__ = getattr(_unwrap_partial(func), "__qualname__", name)
    wrapper.__fpmon_original__ = func  # type: ignore[attr-defined]
    return wrapper


def _client_embedder(client: Any) -> Any:
    """The embedder a ``MonitorClient`` was built with (``embedder=``), or None."""
    return getattr(client, "embedder", None) if client is not None else None


def _alert_key(alert: dict[str, Any]) -> Any:
    """An alert's identity: the REST API's ``alert_id`` (``id`` accepted), else (run, step, type)."""
    key = alert.get("alert_id", alert.get("id"))
    return key if key is not None else (alert.get("run_id"), alert.get("step"), alert.get("type"))


# ------------------------------------------------------------------------------------------ the callback
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


class FPEMonitorCallback(TrainerCallback):
    """A ``transformers.TrainerCallback`` that ships each step's responses to fpmon.

    Attach it with ``callbacks=[cb]``; for GRPO/RLOO also pass ``reward_funcs=wrap_reward_funcs([...], cb)``.

    - Records from :func:`wrap_reward_funcs` are shipped at ``on_step_end`` as step ``state.global_step`` (one
      step = one optimizer step; all completions scored since the previous step, concatenated), with ``lr`` =
      the learning rate this step's update used (the scheduler's ``get_last_lr()[0]`` at ``on_step_begin``,
      else the optimizer's first group; omitted when 0), rewards = the weighted sum of the wrapped functions'
      rewards as TRL computes it (weights ``args.reward_weights``, 1 when unset; NaN — "not applicable" —
      entries are skipped, ``nansum``; rewards omitted when every entry is NaN), prompts and completions as
      text (conversations: the last user message, the assistant's content). Completions scored outside a
      training step (evaluation, between ``on_step_end`` and the next ``on_step_begin``) are not shipped.
    - With ``probe_prompts``: at the start (step 0: the initial policy's answers, which fix the run's
      reference frame; only when no reward functions are wrapped for this callback) and every
      ``probe_every`` steps, ``probe_samples_per_prompt`` sampled answers per prompt (``probe_max_new_tokens``
      new tokens at most) are generated by the current policy in eval mode under ``no_grad`` (train mode
      restored after; the global RNG state is restored too, so probes do not change the training's random
      stream), scored by the wrapped reward functions' originals if any (rewards omitted if scoring fails),
      and shipped with sample ids ``p{prompt}-{k}`` (paired across steps). Steps with on-policy records ship
      those instead; once on-policy records have been seen, probes stop, so one run never mixes the two
      distributions. Under torch.distributed each rank answers its share of the prompts
      (``prompts[rank::world]``).
    - Embedding: ``embedder`` (``list[str] → (n, d)`` tensor), else the client's own, else a
      ``monitor.embed.ModelEmbedder`` on a **frozen deep copy of the policy taken at on_train_begin** — the
      initial policy, i.e. the usual reference model — never the live policy, whose coordinates move. That copy
      doubles the model's memory (a warning says how much); pass ``ModelEmbedder(trainer.ref_model, tokenizer)``
      or a sentence encoder to avoid it. Single process: embedding happens in the client's background thread.
    - ``reset_policy`` (experimental, default None = off): see :class:`ResetPolicy`; alerts are read with the
      non-blocking ``client.alerts()`` at ``on_step_end``.
    - The callback never raises into the trainer: an exception in the hook is logged (once per kind), counted in
      ``stats.errors``, and training continues. ``on_train_end`` flushes the client for at most
      ``flush_timeout_s`` seconds (the client stays open: close it yourself).

    Args:
        client: a ``monitor.MonitorClient``; may be None on ranks other than 0 under torch.distributed.
        embedder: texts → latents; see above.
        probe_prompts: prompts (strings, or conversations rendered with the tokenizer's chat template) or None.
        probe_every: probe interval in optimizer steps, ≥ 1.
        probe_samples_per_prompt: sampled answers per probe prompt, ≥ 1.
        probe_max_new_tokens: generation length bound of a probe answer, ≥ 1.
        reset_policy: a :class:`ResetPolicy` to enable resets.
        probe_seed: seed of the probe sampling at step s: ``probe_seed + s``.
        flush_timeout_s: bound of the flush at ``on_train_end``, seconds.
    """

    def __init__(
        self,
        client: MonitorClientLike | None,
        embedder: Embedder | None = None,
        probe_prompts: Sequence[Any] | None = None,
        probe_every: int = 10,
        probe_samples_per_prompt: int = 4,
        probe_max_new_tokens: int = 32,
        reset_policy: ResetPolicy | None = None,
        *,
        probe_seed: int = 0,
        flush_timeout_s: float = 30.0,
    ) -> None:
        for name, value in (
            ("probe_every", probe_every),
            ("probe_samples_per_prompt", probe_samples_per_prompt),
            ("probe_max_new_tokens", probe_max_new_tokens),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")
        if probe_prompts is not None:
            if isinstance(probe_prompts, str):
                raise TypeError("probe_prompts must be a list of prompts, not one string; wrap it in a list")
            probe_prompts = list(probe_prompts)
            if not probe_prompts:
                raise ValueError("probe_prompts is empty: pass None to disable probes")
        if reset_policy is not None and not isinstance(reset_policy, ResetPolicy):
            raise TypeError(f"reset_policy must be a ResetPolicy or None, got {type(reset_policy).__name__}")
        if not (math.isfinite(flush_timeout_s) and flush_timeout_s >= 0):
            raise ValueError(f"flush_timeout_s must be a finite number ≥ 0, got {flush_timeout_s}")
        self.client = client
        self.embedder = embedder
        self.probe_prompts = probe_prompts
        self.probe_every = probe_every
        self.probe_samples_per_prompt = probe_samples_per_prompt
        self.probe_max_new_tokens = probe_max_new_tokens
        self.reset_policy = reset_policy
        self.probe_seed = probe_seed
        self.flush_timeout_s = flush_timeout_s
        self.stats = HookStats()
        self.reset_log: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._slots: list[Any] = []  # original reward funcs by slot (modules/strings included, unrecorded)
        self._pending: list[_Batch] = []
        self._weights: list[float] | None = None
        self._embed: Embedder | None = None
        self._tokenizer: Any = None
        self._seen_on_policy = False
        self._logged: set[str] = set()
        self._seen_alerts: set[Any] = set()
        self._last_reset_step: int | None = None
        self._step_lr: float | None = None

    # ---------------------------------------------------------------- bookkeeping
    def _register_slot(self, func: Any) -> int:
        with self._lock:
            self._slots.append(func)
            return len(self._slots) - 1

    def _note_error(self, kind: str, exc: BaseException) -> None:
        key = f"{kind}:{type(exc).__name__}"
        self.stats.errors[key] += 1
        if key not in self._logged:
            self._logged.add(key)
            log.warning(
                "fpmon hook: %s failed (%s: %s); training continues, counted in stats.errors",
                kind,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )

    def _warn_once(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(msg, *args)

    def _record(self, slot: int, prompts: Any, completions: Any, rewards: Any, step: int | None) -> None:
        """Called by the reward wrappers: add one function's rewards for one batch of completions."""
        if completions is None:
            raise ValueError("the reward function was called without 'completions'; nothing to record")
        comps = list(completions)
        n = len(comps)
        values = [_reward_float(x) for x in rewards]
        if len(values) != n:
            raise ValueError(f"{len(values)} rewards for {n} completions")
        prm = list(prompts) if prompts is not None else [""] * n
        with self._lock:
            last = self._pending[-1] if self._pending else None
            same = (
                last is not None
                and last.rewards[slot] is None
                and len(last.completions) == n
                and (last.completions is completions or last.completions == comps)
            )
            if last is not None and same:
                last.rewards[slot] = values
            else:
                batch = _Batch(prompts=prm, completions=comps, rewards=[None] * len(self._slots), step=step)
                batch.rewards[slot] = values
                self._pending.append(batch)

    def _take_pending(self) -> list[_Batch]:
        with self._lock:
            out, self._pending = self._pending, []
        return out

    def _combine(self, batches: list[_Batch]) -> tuple[list[str], list[str], Tensor | None]:
        """Texts, prompts and the TRL-weighted rewards (n,) of the pending batches, concatenated."""
        texts: list[str] = []
        prompts: list[str] = []
        rows: list[float] = []
        any_finite = False
        nslots = len(self._slots)
        weights = self._weights if self._weights is not None and len(self._weights) == nslots else [1.0] * nslots
        for b in batches:
            texts += [completion_text(c) for c in b.completions]
            prompts += [prompt_text(p) for p in b.prompts]
            per = torch.full((len(b.completions), nslots), math.nan, dtype=torch.float64)
            for i, vals in enumerate(b.rewards):
                if vals is not None:
                    per[:, i] = torch.tensor(vals, dtype=torch.float64)
            finite = ~torch.isnan(per)
            any_finite = any_finite or bool(finite.any())
            w = torch.tensor(weights, dtype=torch.float64)
            rows += (per * w).nansum(dim=1).tolist()
        rewards = torch.tensor(rows, dtype=torch.float32) if any_finite else None
        return texts, prompts, rewards

    # ---------------------------------------------------------------- hooks
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        try:
            self._begin(args, state, kwargs)
        except Exception as exc:
            self._note_error("on_train_begin", exc)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        try:
            self._step_lr = self._lr(kwargs)
            # A training step's completions are scored after on_step_begin; anything recorded since the last
            # on_step_end was scored outside training (evaluation) and would mix another distribution in.
            stray = self._take_pending()
            if stray:
                self.stats.dropped_outside_steps += sum(len(b.completions) for b in stray)
                self._warn_once(
                    "stray",
                    "fpmon hook: completions scored outside a training step (evaluation) are not shipped",
                )
        except Exception as exc:
            self._note_error("on_step_begin", exc)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        try:
            self._step_end(args, state, kwargs)
        except Exception as exc:
            self._note_error("on_step_end", exc)
        if self.reset_policy is not None:
            try:
                self._maybe_reset(state, kwargs.get("model"))
            except Exception as exc:
                self._note_error("reset", exc)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        try:
            if self.client is not None and _world()[0] == 0 and not self.client.flush(self.flush_timeout_s):
                log.warning("fpmon hook: the client did not finish shipping within %.0f s", self.flush_timeout_s)
        except Exception as exc:
            self._note_error("on_train_end", exc)

    # ---------------------------------------------------------------- internals
    def _begin(self, args: TrainingArguments, state: TrainerState, kwargs: dict[str, Any]) -> None:
        rank, world = _world()
        if self.client is None and rank == 0:
            self._warn_once("no-client", "fpmon hook: client is None on the main process; nothing will be shipped")
        weights = getattr(args, "reward_weights", None)
        if weights is not None:
            if len(weights) == len(self._slots):
                self._weights = [1.0 if w is None else float(w) for w in weights]
            else:
                self._warn_once(
                    "weights",
                    "fpmon hook: args.reward_weights has %d entries for %d wrapped reward slots; recording "
                    "rewards with weight 1 (pass wrap_reward_funcs' list, in order, as reward_funcs)",
                    len(weights),
                    len(self._slots),
                )
        tok = kwargs.get("processing_class") or kwargs.get("tokenizer")
        self._tokenizer = getattr(tok, "tokenizer", tok)  # processors carry their tokenizer
        model = kwargs.get("model")
        if self.embedder is not None:
            self._embed = self.embedder
        elif world == 1 and _client_embedder(self.client) is not None:
            self._embed = None  # the client embeds with its own
        elif model is not None:
            self._embed = self._reference_embedder(model)
        if self.probe_prompts is not None and not self._slots and state.global_step == 0 and model is not None:
            self._ship_probes(0, model, None)

    def _reference_embedder(self, model: nn.Module) -> Embedder:
        from .embed import ModelEmbedder

        if self._tokenizer is None:
            raise ValueError("no tokenizer: the trainer has no processing_class; pass embedder= to FPEMonitorCallback")
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        log.warning(
            "fpmon hook: embedding with a frozen copy of the initial policy (%.1f MB more memory); pass embedder= "
            "(e.g. ModelEmbedder(trainer.ref_model, tokenizer)) to avoid the copy",
            nbytes / 2**20,
        )
        frozen = copy.deepcopy(model)
        frozen.eval()
        frozen.requires_grad_(False)
        return ModelEmbedder(frozen, self._tokenizer)

    @staticmethod
    def _lr(kwargs: dict[str, Any]) -> float | None:
        lr: float | None = None
        sched = kwargs.get("lr_scheduler")
        if sched is not None and hasattr(sched, "get_last_lr"):
            lr = float(sched.get_last_lr()[0])
        else:
            opt = kwargs.get("optimizer")
            if opt is not None and getattr(opt, "param_groups", None):
                lr = float(opt.param_groups[0]["lr"])
        return lr if lr is not None and math.isfinite(lr) and lr > 0 else None

    def _step_end(self, args: TrainingArguments, state: TrainerState, kwargs: dict[str, Any]) -> None:
        step = int(state.global_step)
        batches = self._take_pending()
        lr, self._step_lr = self._step_lr, None
        _, world = _world()
        if world > 1:
            if self._slots or batches:  # every rank wraps the same funcs, so every rank takes this branch
                texts, prompts, rewards = self._combine(batches) if batches else ([], [], None)
                self._ship_distributed(step, texts, prompts, rewards, None, lr)
                self._seen_on_policy = self._seen_on_policy or bool(batches)
            if not self._seen_on_policy and not batches and self._probe_due(step):
                self._ship_probes(step, kwargs.get("model"), lr)
            return
        if batches:
            self._seen_on_policy = True
            texts, prompts, rewards = self._combine(batches)
            self._ship_local(step, texts, prompts, rewards, None, lr)
        elif not self._seen_on_policy and self._probe_due(step):
            self._ship_probes(step, kwargs.get("model"), lr)

    def _probe_due(self, step: int) -> bool:
        return self.probe_prompts is not None and step > 0 and step % self.probe_every == 0

    def _ship_local(
        self,
        step: int,
        texts: list[str],
        prompts: list[str] | None,
        rewards: Tensor | None,
        sample_ids: list[str] | None,
        lr: float | None,
    ) -> None:
        if len(texts) < 2:
            self.stats.skipped_small += 1
            self._warn_once("small", "fpmon hook: a step with fewer than 2 responses is not shipped")
            return
        if self.client is None:
            return
        self.client.observe(
            step, texts, rewards=rewards, prompts=prompts, embedder=self._embed, sample_ids=sample_ids, lr=lr
        )
        self.stats.steps_shipped += 1
        self.stats.samples_shipped += len(texts)

    def _ship_distributed(
        self,
        step: int,
        texts: list[str],
        prompts: list[str] | None,
        rewards: Tensor | None,
        sample_ids: list[str] | None,
        lr: float | None,
    ) -> None:
        latents: Tensor | None = None
        if texts:
            try:
                if self._embed is None:
                    raise RuntimeError("no embedder on this rank; pass embedder= to FPEMonitorCallback")
                latents = self._embed(texts)
            except Exception as exc:  # still take part in the collective, with nothing
                self._note_error("embed", exc)
                latents = None
        ok = latents is not None
        batch = gather_to_main(
            latents,
            rewards if ok else None,
            texts if ok else None,
            prompts if ok else None,
            sample_ids if ok else None,
        )
        if batch is None:
            return
        if batch.latents.shape[0] < 2:
            self.stats.skipped_small += 1
            return
        if self.client is None:
            self._warn_once("no-client", "fpmon hook: client is None on the main process; nothing will be shipped")
            return
        self.client.observe(
            step,
            batch.texts,
            rewards=batch.rewards,
            prompts=batch.prompts,
            latents=batch.latents,
            sample_ids=batch.sample_ids,
            lr=lr,
        )
        self.stats.steps_shipped += 1
        self.stats.samples_shipped += int(batch.latents.shape[0])

    def _ship_probes(self, step: int, model: nn.Module | None, lr: float | None) -> None:
        if model is None or self.probe_prompts is None:
            return
        rank, world = _world()
        try:
            indices = list(range(rank, len(self.probe_prompts), world))
            texts, prompts, ids = self._generate_probes(model, indices, step)
            rewards = self._score_probes(prompts, texts, step) if texts else None
        except Exception as exc:
            if world > 1:  # the collective below must still happen on every rank
                self._note_error("probe", exc)
                texts, prompts, ids, rewards = [], [], [], None
            else:
                raise
        self.stats.probe_steps += 1
        if world > 1:
            self._ship_distributed(step, texts, [prompt_text(p) for p in prompts], rewards, ids, lr)
        else:
            self._ship_local(step, texts, [prompt_text(p) for p in prompts], rewards, ids, lr)

    def _generate_probes(
        self, model: nn.Module, indices: list[int], step: int
    ) -> tuple[list[str], list[Any], list[str]]:
        """Sample the probe answers: (texts, prompts, sample ids), k per prompt, prompts in ``indices`` order."""
        assert self.probe_prompts is not None
        tok = self._tokenizer
        if tok is None:
            raise ValueError("probes need a tokenizer: the trainer has no processing_class")
        if not indices:
            return [], [], []
        k = self.probe_samples_per_prompt
        raw = [self.probe_prompts[i] for i in indices]
        rendered = [
            p if isinstance(p, str) else tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            for p in raw
        ]
        device = next(model.parameters()).device
        was_training = model.training
        old_side = getattr(tok, "padding_side", "right")
        gen_fn: Callable[..., Any] = model.generate  # type: ignore[assignment]
        devices = [device] if device.type == "cuda" else []
        try:
            tok.padding_side = "left"
            enc = tok(rendered, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            model.eval()
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                torch.manual_seed(self.probe_seed + step)
                out = gen_fn(
                    input_ids=enc["input_ids"],
                    attention_mask=enc["attention_mask"],
                    do_sample=True,
                    num_return_sequences=k,
                    max_new_tokens=self.probe_max_new_tokens,
                    pad_token_id=pad_id,
                )
        finally:
            tok.padding_side = old_side
            model.train(was_training)
        new = out[:, enc["input_ids"].shape[1] :]
        texts = tok.batch_decode(new, skip_special_tokens=True)
        prompts = [raw[j // k] for j in range(len(texts))]
        ids = [f"p{indices[j // k]}-{j % k}" for j in range(len(texts))]
        return texts, prompts, ids

    def _score_probes(self, prompts: list[Any], texts: list[str], step: int) -> Tensor | None:
        """Probe rewards from the wrapped functions' originals (weighted as on-policy), or None."""
        funcs = [(i, f) for i, f in enumerate(self._slots) if callable(f) and not isinstance(f, nn.Module)]
        if not funcs:
            return None
        batch = _Batch(prompts=list(prompts), completions=list(texts), rewards=[None] * len(self._slots), step=step)
        try:
            for i, f in funcs:
                if _is_async(f):
                    raise TypeError("async reward functions are not used to score probes")
                batch.rewards[i] = [_reward_float(x) for x in f(prompts=list(prompts), completions=list(texts))]
        except Exception as exc:
            self._note_error("probe-score", exc)
            return None
        return self._combine([batch])[2]

    def _maybe_reset(self, state: TrainerState, model: nn.Module | None) -> None:
        policy = self.reset_policy
        assert policy is not None
        step = int(state.global_step)
        rank, world = _world()
        trigger: dict[str, Any] | None = None
        if rank == 0 and self.client is not None:
            for alert in self.client.alerts():
                key = _alert_key(alert)
                if key in self._seen_alerts:
                    continue
                self._seen_alerts.add(key)
                if alert.get("type") not in policy.alert_types or alert.get("status") == "dismissed":
                    continue
                if trigger is None:
                    trigger = alert
        allowed = (policy.max_resets is None or self.stats.resets < policy.max_resets) and (
            self._last_reset_step is None or step - self._last_reset_step >= policy.cooldown_steps
        )
        fire = trigger is not None and allowed
        if world > 1:
            flag = torch.tensor([int(fire)], dtype=torch.long, device=_collective_device())
            torch.distributed.broadcast(flag, src=0)
            fire = bool(flag.item())
        if trigger is not None and not fire and rank == 0:
            log.info("fpmon reset: alert %s at step %s ignored (cooldown or max_resets)", _alert_key(trigger), step)
        if not fire or model is None:
            return
        gen = torch.Generator().manual_seed(policy.seed + self.stats.resets)
        stats = apply_reset(model, policy.alpha, policy.noise_scale, gen)
        self.stats.resets += 1
        self._last_reset_step = step
        entry = {"step": step, "alert": trigger, "stats": stats}
        self.reset_log.append(entry)
        log.warning(
            "fpmon reset #%d (experimental) at step %d after alert %s: perturbed %d of %d weights "
            "(alpha=%.3g, noise_scale=%.3g)",
            self.stats.resets,
            step,
            None if trigger is None else f"{_alert_key(trigger)} {trigger.get('type')}",
            stats.perturbed,
            stats.entries,
            policy.alpha,
            policy.noise_scale,
        )
