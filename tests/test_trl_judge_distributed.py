"""``judge_reward`` under torch.distributed: two CPU processes (gloo). Each rank's judge values travel with its
completions to rank 0, which ships them once as ``reference_rewards`` (in rank order, beside the rewards)."""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _RankClient:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def observe(self, step: int, responses: Any = None, rewards: Any = None, prompts: Any = None, **kw: Any) -> None:
        self.calls.append({"step": step, "responses": responses, "rewards": rewards, **kw})

    def flush(self, timeout: float) -> bool:
        return True

    def alerts(self) -> list[dict[str, Any]]:
        return []


def _embed(texts: list[str]) -> torch.Tensor:
    return torch.tensor([[len(t), ord(t[0]), 1.0] for t in texts], dtype=torch.float32)


def proxy(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    return [float(len(c)) for c in completions]


def judge(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    return [10.0 + len(c) for c in completions]


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from monitor.trl import FPEMonitorCallback, gather_to_main, wrap_reward_funcs

    result: dict[str, Any] = {}
    try:
        n = 3 if rank == 0 else 2
        lat = torch.ones(n, 2) * rank
        result["gather"] = gather_to_main(lat, [0.0] * n, ["t"] * n, None, reference_rewards=[rank + 0.5] * n)
        # a rank without a judge this step: nobody gets reference rewards
        result["partial"] = gather_to_main(
            lat, [0.0] * n, ["t"] * n, None, reference_rewards=[1.0] * n if rank == 0 else None
        )
        client = _RankClient() if rank == 0 else None
        cb = FPEMonitorCallback(client, embedder=_embed, judge_reward="judge")
        wrapped = wrap_reward_funcs([proxy, judge], cb)
        args = TrainingArguments(output_dir=out_dir, report_to=[], use_cpu=True)
        args.reward_weights = [1.0, 0.0]
        state, control = TrainerState(), TrainerControl()
        cb.on_train_begin(args, state, control, model=nn.Linear(1, 1))
        state.global_step = 1
        comps = [f"{'xy'[rank]}{'!' * i}" for i in range(rank + 2)]  # rank 0: 2 completions, rank 1: 3
        for f in wrapped:
            f(prompts=[f"q{rank}"] * len(comps), completions=comps, trainer_state=state)
        cb.on_step_end(args, state, control)
        result["calls"] = client.calls if client is not None else None
        result["errors"] = dict(cb.stats.errors)
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as fh:
            pickle.dump(result, fh)
        dist.destroy_process_group()


def test_the_judge_is_gathered_to_rank0_and_shipped_once(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = []
    for r in range(WORLD):
        with open(tmp_path / f"rank{r}.pkl", "rb") as fh:
            ranks.append(pickle.load(fh))
    got = ranks[0]["gather"]
    assert ranks[1]["gather"] is None
    assert torch.equal(got.reference_rewards, torch.tensor([0.5, 0.5, 0.5, 1.5, 1.5]))
    assert ranks[0]["partial"].reference_rewards is None and ranks[0]["partial"].rewards is not None
    (call,) = ranks[0]["calls"]
    assert ranks[1]["calls"] is None and not ranks[0]["errors"] and not ranks[1]["errors"]
    assert call["responses"] == ["x", "x!", "y", "y!", "y!!"]
    assert call["rewards"].tolist() == [1.0, 2.0, 1.0, 2.0, 3.0]
    assert call["reference_rewards"].tolist() == [11.0, 12.0, 11.0, 12.0, 13.0]
