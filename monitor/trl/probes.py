"""Probes (DPO and any trainer): a fixed prompt set answered by the current policy every ``probe_every`` steps.

:func:`probe_due` schedules them, :func:`probe_indices` splits the prompts across ranks, :func:`generate_probes`
samples the answers without touching the training's random stream, and :func:`score_probes` scores them with
the original (unwrapped) reward functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .rewards import RewardBatch, is_async, reward_float


def probe_due(step: int, probe_every: int, has_probes: bool) -> bool:
    """Whether probes are answered at optimizer step ``step`` > 0 (step 0 is handled at ``on_train_begin``)."""
    return has_probes and step > 0 and step % probe_every == 0


def probe_indices(n_prompts: int, rank: int, world: int) -> list[int]:
    """The probe prompts a rank answers: ``prompts[rank::world]``, as indices."""
    return list(range(rank, n_prompts, world))


def generate_probes(
    model: nn.Module,
    tokenizer: Any,
    probe_prompts: Sequence[Any],
    indices: list[int],
    *,
    samples_per_prompt: int,
    max_new_tokens: int,
    seed: int,
) -> tuple[list[str], list[Any], list[str]]:
    """Sample the probe answers: (texts, prompts, sample ids), k per prompt, prompts in ``indices`` order.

    ``samples_per_prompt`` (k) answers per prompt of ``probe_prompts`` at ``indices`` (strings, or conversations
    rendered with the tokenizer's chat template), at most ``max_new_tokens`` new tokens each, sampled in eval
    mode under ``no_grad`` with the global RNG seeded ``seed`` inside ``torch.random.fork_rng`` (the training's
    RNG state and the model's train mode and the tokenizer's padding side are restored). Sample ids are
    ``p{prompt index}-{j}``.

    Raises:
        ValueError: if ``tokenizer`` is None.
    """
    tok = tokenizer
    if tok is None:
        raise ValueError("probes need a tokenizer: the trainer has no processing_class")
    if not indices:
        return [], [], []
    k = samples_per_prompt
    raw = [probe_prompts[i] for i in indices]
    rendered = [
        p if isinstance(p, str) else tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in raw
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
            torch.manual_seed(seed)
            out = gen_fn(
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                do_sample=True,
                num_return_sequences=k,
                max_new_tokens=max_new_tokens,
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


def score_probes(slots: Sequence[Any], prompts: list[Any], texts: list[str], step: int) -> RewardBatch | None:
    """The probes' rewards from the reward functions in ``slots`` (the originals, by slot), as one batch.

    Reward models (``nn.Module``) and model id strings in ``slots`` are skipped; None when no slot is a function.

    Raises:
        TypeError: if a function is async (probes are scored synchronously).
        Exception: whatever a reward function raises.
    """
    funcs = [(i, f) for i, f in enumerate(slots) if callable(f) and not isinstance(f, nn.Module)]
    if not funcs:
        return None
    batch = RewardBatch(prompts=list(prompts), completions=list(texts), rewards=[None] * len(slots), step=step)
    for i, f in funcs:
        if is_async(f):
            raise TypeError("async reward functions are not used to score probes")
        batch.rewards[i] = [reward_float(x) for x in f(prompts=list(prompts), completions=list(texts))]
    return batch
