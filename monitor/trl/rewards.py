"""Reward-function wrapping (GRPO / RLOO): record each scored batch without changing what TRL sees.

:func:`wrap_reward_funcs` wraps TRL reward functions; the wrappers hand prompts, completions and rewards to a
:class:`BatchRecorder` (the :class:`~monitor.trl.FPEMonitorCallback`). :class:`RewardBatch` is one recorded
batch and :func:`combine_batches` turns a step's batches into texts, prompts and TRL-weighted rewards;
:func:`combine_step` adds the judge's rewards (one wrapped function named by ``judge_reward``, found by
:func:`judge_slot`) into one :class:`StepRecord`; :func:`judge_scalars` gives the step's mean proxy and judge
rewards, shipped as the step's extra scalars.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

log = logging.getLogger("fpmon.trl")


@runtime_checkable
class BatchRecorder(Protocol):
    """What the reward wrappers need from the callback that records their batches."""

    def register_reward_func(self, func: Any) -> int:
        """Register one entry of the trainer's ``reward_funcs`` (wrapped or not); returns its slot (0, 1, …)."""
        ...

    def record_batch(self, slot: int, prompts: Any, completions: Any, rewards: Any, step: int | None) -> None:
        """Add the rewards of the function in ``slot`` for one batch of completions; may raise."""
        ...

    def note_error(self, kind: str, exc: BaseException) -> None:
        """Count (and log) an exception of the hook; never raises."""
        ...


#: A recorder may also define ``resolve_judge() -> int | None``: :func:`wrap_reward_funcs` calls it once the
#: functions are registered, so that a judge named by the recorder (``FPEMonitorCallback(judge_reward=...)``)
#: that is not among them is an error at setup (``ValueError``), not a silent omission.
RESOLVE_JUDGE = "resolve_judge"


@dataclass
class RewardBatch:
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


def reward_float(x: Any) -> float:
    """A reward as a float: ``None``, non-numbers and non-finite values (TRL's "not applicable") → NaN."""
    if x is None:
        return math.nan
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def combine_batches(
    batches: list[RewardBatch], weights: list[float] | None, nslots: int
) -> tuple[list[str], list[str], Tensor | None]:
    """Texts, prompts and the TRL-weighted rewards (n,) of ``batches``, concatenated.

    Each row's reward is the ``weights``-weighted sum over the ``nslots`` function slots (weight 1 each when
    ``weights`` is None or of another length), NaN entries skipped (``nansum``); None when every entry is NaN.
    """
    texts: list[str] = []
    prompts: list[str] = []
    rows: list[float] = []
    any_finite = False
    w_list = weights if weights is not None and len(weights) == nslots else [1.0] * nslots
    for b in batches:
        texts += [completion_text(c) for c in b.completions]
        prompts += [prompt_text(p) for p in b.prompts]
        per = torch.full((len(b.completions), nslots), math.nan, dtype=torch.float64)
        for i, vals in enumerate(b.rewards):
            if vals is not None:
                per[:, i] = torch.tensor(vals, dtype=torch.float64)
        finite = ~torch.isnan(per)
        any_finite = any_finite or bool(finite.any())
        w = torch.tensor(w_list, dtype=torch.float64)
        rows += (per * w).nansum(dim=1).tolist()
    rewards = torch.tensor(rows, dtype=torch.float32) if any_finite else None
    return texts, prompts, rewards


@dataclass
class StepRecord:
    """One step's responses as the hook ships them.

    ``texts`` and (or None) ``prompts``, ``sample_ids``: n strings each; ``rewards``: (n,) TRL-weighted
    rewards, or None; ``reference_rewards``: (n,) the judge's own (unweighted) rewards, or None (no judge, a
    judge that said "not applicable" to every completion, or no ``rewards`` to compare them with).
    """

    texts: list[str]
    prompts: list[str] | None
    rewards: Tensor | None
    reference_rewards: Tensor | None = None
    sample_ids: list[str] | None = None


def combine_step(batches: list[RewardBatch], weights: list[float] | None, nslots: int, judge: int | None) -> StepRecord:
    """:func:`combine_batches` plus the reward function in slot ``judge`` (None: no judge) on its own, as
    ``reference_rewards``: its value per completion, NaN where it said "not applicable" (the client drops such
    rows from the whole step)."""
    texts, prompts, rewards = combine_batches(batches, weights, nslots)
    reference = None
    if judge is not None and rewards is not None:
        values = [x for b in batches for x in (b.rewards[judge] or [math.nan] * len(b.completions))]
        ref = torch.tensor(values, dtype=torch.float32)
        reference = ref if bool(torch.isfinite(ref).any()) else None
    return StepRecord(texts, prompts, rewards, reference)


#: the extra scalars a judged step carries (``observe(scalars=...)``): the judge's and the training reward's means
TRUE_REWARD, PROXY_REWARD = "true_reward", "proxy_reward"


def judge_scalars(rewards: Tensor | None, reference: Tensor | None) -> dict[str, float]:
    """A judged step's extra scalars: ``true_reward`` = the mean of the judge's (n,) ``reference`` rewards and
    ``proxy_reward`` = the mean of the (n,) TRL-weighted ``rewards`` (the ones that drive training), each over its
    finite entries (NaN: "not applicable", as TRL's logged means skip them). A mean with no finite entry, and
    both without a judge (``reference`` None), are left out."""
    out: dict[str, float] = {}
    if reference is None:
        return out
    for name, values in ((TRUE_REWARD, reference), (PROXY_REWARD, rewards)):
        if values is not None:
            v = values.detach().to("cpu", torch.float64).reshape(-1)
            v = v[torch.isfinite(v)]
            if v.numel():
                out[name] = float(v.mean())
    return out


def reward_func_name(func: Any) -> str:
    """The name TRL logs a reward function under (``rewards/<name>/mean``): its ``__name__`` (through
    ``functools.partial``), else its type's name (callable instances)."""
    return str(getattr(_unwrap_partial(func), "__name__", type(func).__name__))


def judge_slot(slots: list[Any], name: str) -> int:
    """The slot of the one reward function in ``slots`` (the registered ``reward_funcs``, in order) named
    ``name`` (:func:`reward_func_name`). ``ValueError`` when none is, when several are, or when ``name`` is a
    reward model's (their scores are not recorded)."""
    funcs = [(i, f) for i, f in enumerate(slots) if callable(f) and not isinstance(f, nn.Module | str)]
    hits = [i for i, f in funcs if reward_func_name(f) == name]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise ValueError(
            f"judge_reward={name!r} names {len(hits)} of the wrapped reward functions (slots {hits}); give the "
            "judge a name of its own"
        )
    models = [f for f in slots if isinstance(f, nn.Module | str)]
    if any(name in (f, f.split("/")[-1]) for f in models if isinstance(f, str)):
        raise ValueError(
            f"judge_reward={name!r} is a reward model: its scores are not recorded (TRL calls it with tokens); "
            "wrap a reward function that calls it instead"
        )
    names = [reward_func_name(f) for _, f in funcs]
    raise ValueError(
        f"judge_reward={name!r} is not among the wrapped reward functions {names}; pass the judge (e.g. "
        "logged at weight 0) in the list given to wrap_reward_funcs, or fix the name"
    )


def wrap_reward_funcs(funcs: Any, callback: BatchRecorder) -> list[Any]:
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

    With ``FPEMonitorCallback(judge_reward="name")``, the function of that name must be in ``funcs`` (or an
    earlier call's): otherwise this raises ``ValueError``, as it does for a name shared by several functions.

    Args:
        funcs: one reward function or a list of them (callables, ``nn.Module`` or model id strings).
        callback: the :class:`~monitor.trl.FPEMonitorCallback` that ships the records (any
            :class:`BatchRecorder`).

    Returns:
        A new list of the same length and order.
    """
    if not isinstance(callback, BatchRecorder):
        raise TypeError(f"callback must be an FPEMonitorCallback, got {type(callback).__name__}")
    items = list(funcs) if isinstance(funcs, list | tuple) else [funcs]
    if not items:
        raise ValueError("funcs is empty: pass at least one reward function")
    out: list[Any] = []
    for func in items:
        slot = callback.register_reward_func(func)
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
    resolve = getattr(callback, RESOLVE_JUDGE, None)
    if callable(resolve):
        resolve()  # a judge the recorder names must be among the functions wrapped: raises ValueError if not
    return out


def _unwrap_partial(func: Any) -> Any:
    while isinstance(func, functools.partial):
        func = func.func
    return func


def is_async(func: Any) -> bool:
    """Whether calling ``func`` (a function, partial or callable instance) returns a coroutine."""
    base = _unwrap_partial(func)
    return inspect.iscoroutinefunction(base) or inspect.iscoroutinefunction(type(base).__call__)


def _wrap_one(func: Callable[..., Any], slot: int, callback: BatchRecorder) -> Callable[..., Any]:
    try:
        signature: inspect.Signature | None = inspect.signature(func)
    except (TypeError, ValueError):
        signature = None
    name = reward_func_name(func)

    def record(args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        try:
            bound: dict[str, Any] = dict(kwargs)
            if args and signature is not None:
                bound = {**signature.bind_partial(*args, **kwargs).arguments, **kwargs}
            state = bound.get("trainer_state")
            step = getattr(state, "global_step", None)
            callback.record_batch(slot, bound.get("prompts"), bound.get("completions"), result, step)
        except Exception as exc:  # recording must never break the reward computation
            callback.note_error("record", exc)

    if is_async(func):

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
