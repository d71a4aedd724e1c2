"""The hook under ``torch.distributed``: rank and world size, and gathering each step's responses to rank 0.

Every rank embeds its own responses; :func:`gather_to_main` gathers latents, rewards and texts to rank 0, which
alone talks to the sidecar. :func:`broadcast_from_main` shares rank 0's decisions (resets) with every rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class GatheredBatch:
    """A step's responses gathered to the main process, concatenated in rank order.

    ``latents`` (n, d) float32 on CPU; ``rewards`` and ``reference_rewards`` (n,) float32 or None (None when
    any rank had none); ``texts`` n strings; ``prompts`` and ``sample_ids`` n strings each, or None when any
    rank had none.
    """

    latents: Tensor
    rewards: Tensor | None
    texts: list[str]
    prompts: list[str] | None
    sample_ids: list[str] | None = None
    reference_rewards: Tensor | None = None


def dist_active() -> bool:
    """Whether a ``torch.distributed`` process group is initialised."""
    return bool(torch.distributed.is_available() and torch.distributed.is_initialized())


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    if not dist_active():
        return 0, 1
    return int(torch.distributed.get_rank()), int(torch.distributed.get_world_size())


def collective_device() -> torch.device:
    """Where tensors of a collective live: the current CUDA device under NCCL, else the CPU."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_from_main(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank. A collective when world size > 1: call it on every rank."""
    if rank_and_world()[1] == 1:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.long, device=collective_device())
    torch.distributed.broadcast(t, src=0)
    return bool(t.item())


def gather_to_main(
    latents: Tensor | None,
    rewards: Tensor | Sequence[float] | None,
    texts: Sequence[str] | None,
    prompts: Sequence[str] | None,
    sample_ids: Sequence[str] | None = None,
    *,
    reference_rewards: Tensor | Sequence[float] | None = None,
) -> GatheredBatch | None:
    """Gather every rank's (latents, rewards, texts, prompts) to rank 0. A collective: call it on every rank.

    Each rank passes its own batch of n_r responses — ``latents`` (n_r, d), ``rewards`` (n_r,), n_r texts,
    prompts and (optionally) sample ids and a judge's ``reference_rewards`` (n_r,) — or ``latents=None`` when it
    has nothing this step (or its embedding failed). Sizes are gathered first (all_gather), then latents padded
    to max n_r are gathered and trimmed; texts, prompts, ids and both rewards go through ``gather_object``.
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
        and (reference_rewards is None or len(reference_rewards) == n_local)
        and (sample_ids is None or len(sample_ids) == n_local)
    )
    rank, world = rank_and_world()
    if world == 1:
        if not local_ok:
            raise ValueError(_shape_message(latents, rewards, texts, prompts))
        if latents is None or n_local == 0:
            return None
        return GatheredBatch(
            latents=latents.detach().to("cpu", torch.float32),
            rewards=vector(rewards),
            texts=list(texts) if texts is not None else [""] * n_local,
            prompts=list(prompts) if prompts is not None else None,
            sample_ids=list(sample_ids) if sample_ids is not None else None,
            reference_rewards=vector(reference_rewards),
        )
    dist = torch.distributed
    dev = collective_device()
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
        floats(rewards),
        None if texts is None else list(texts),
        None if prompts is None else list(prompts),
        None if sample_ids is None else list(sample_ids),
        floats(reference_rewards),
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
    ref = None
    if all(o[4] is not None for o, _ in parts):
        ref = torch.tensor([x for o, _ in parts for x in o[4]], dtype=torch.float32)
    txt = [t for o, n in parts for t in (o[1] if o[1] is not None else [""] * n)]
    prm = [p for o, _ in parts for p in o[2]] if all(o[2] is not None for o, _ in parts) else None
    ids = [i for o, _ in parts for i in o[3]] if all(o[3] is not None for o, _ in parts) else None
    return GatheredBatch(latents=lat, rewards=rew, texts=txt, prompts=prm, sample_ids=ids, reference_rewards=ref)


def vector(values: Tensor | Sequence[float] | None) -> Tensor | None:
    """``values`` as a float32 CPU tensor (None stays None)."""
    return None if values is None else torch.as_tensor(values, dtype=torch.float32).cpu()


def floats(values: Tensor | Sequence[float] | None) -> list[float] | None:
    """``values`` as a list of Python floats for ``gather_object`` (None stays None)."""
    return None if values is None else [float(x) for x in torch.as_tensor(values, dtype=torch.float64).tolist()]


def _shape_message(latents: Any, rewards: Any, texts: Any, prompts: Any) -> str:
    shape = None if latents is None else tuple(latents.shape)
    lens = {
        k: (None if v is None else len(v)) for k, v in (("rewards", rewards), ("texts", texts), ("prompts", prompts))
    }
    return f"latents must be (n, d) with one reward/text/prompt per row; got latents {shape} and lengths {lens}"
