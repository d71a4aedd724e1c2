"""The hook under torch.distributed: two CPU processes on the gloo backend (``torch.multiprocessing.spawn``).

One spawn runs every scenario (starting processes is the expensive part); each rank writes what it saw to a
pickle that the test then checks:

- ``gather_to_main`` with unequal batch sizes: rank 0 gets the concatenation in rank order, rank 1 gets None;
  a rank with nothing contributes nothing; ranks disagreeing on d raise on both ranks.
- ``FPEMonitorCallback`` on two ranks (client only on rank 0): each rank's recorded completions are embedded on
  that rank, gathered, and shipped once by rank 0 with latents; an alert seen by rank 0 triggers the same reset
  on both ranks (the replicas' weights stay identical), and its ``on_alert`` runs on rank 0 while the stop it
  sets reaches both ranks.
- A judge (``judge_reward=``): its per-completion values are gathered like the rewards and shipped once as
  ``reference_rewards`` (a second spawn).
"""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path
from typing import Any

import pytest
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
    """The client rank 0 holds: records observe() calls; reports one PHASE_TRANSITION alert."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def observe(self, step: int, responses: Any = None, rewards: Any = None, prompts: Any = None, **kw: Any) -> None:
        self.calls.append({"step": step, "responses": responses, "rewards": rewards, "prompts": prompts, **kw})

    def flush(self, timeout: float) -> bool:
        return True

    def alerts(self) -> list[dict[str, Any]]:
        return [{"alert_id": 7, "run_id": 1, "step": 1, "type": "PHASE_TRANSITION", "status": "open"}]


def _embed(texts: list[str]) -> torch.Tensor:
    """Deterministic 3-d latents from the text (length, first char code, rank-independent)."""
    return torch.tensor([[len(t), ord(t[0]), 1.0] for t in texts], dtype=torch.float32)


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from monitor.trl import FPEMonitorCallback, ResetPolicy, gather_to_main, wrap_reward_funcs

    result: dict[str, Any] = {}
    try:
        # 1. unequal sizes: rank 0 has 3 responses, rank 1 has 2
        n = 3 if rank == 0 else 2
        lat = torch.arange(n * 4, dtype=torch.float32).reshape(n, 4) + 100 * rank
        texts = [f"r{rank}-t{i}" for i in range(n)]
        prompts = [f"r{rank}-p{i}" for i in range(n)]
        rewards = torch.tensor([rank + 0.5 * i for i in range(n)])
        result["unequal"] = gather_to_main(lat, rewards, texts, prompts)
        # 2. rank 1 has nothing this step
        result["one_empty"] = gather_to_main(lat if rank == 0 else None, rewards if rank == 0 else None, texts, prompts)
        # 3. nobody has anything
        result["all_empty"] = gather_to_main(None, None, None, None)
        # 4. ranks disagree on d
        try:
            gather_to_main(torch.zeros(2, 4 + rank), None, ["a", "b"], None)
            result["mismatch"] = "no error"
        except ValueError as exc:
            result["mismatch"] = str(exc)

        # 5. the callback: rank 0 alone holds the client
        client = _RankClient() if rank == 0 else None
        torch.manual_seed(123)  # identical replicas, as DDP makes them
        model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
        handled: list[int] = []

        def stop(alert: dict[str, Any], control: TrainerControl) -> None:  # runs on rank 0 only
            handled.append(alert["alert_id"])
            control.should_training_stop = True

        cb = FPEMonitorCallback(
            client,
            embedder=_embed,
            reset_policy=ResetPolicy(alpha=1.0, noise_scale=0.1, cooldown_steps=100),
            on_alert=stop,
        )

        def reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
            return [float(len(c)) for c in completions]

        (wrapped,) = wrap_reward_funcs([reward], cb)
        args = TrainingArguments(output_dir=out_dir, report_to=[], use_cpu=True)
        state, control = TrainerState(), TrainerControl()
        before = [p.detach().clone() for p in model.parameters()]
        cb.on_train_begin(args, state, control, model=model)
        state.global_step = 1
        comps = [f"{'xyz'[rank]}{'!' * i}" for i in range(rank + 2)]  # rank 0: 2 completions, rank 1: 3
        wrapped(prompts=[f"q{rank}"] * len(comps), completions=comps, trainer_state=state)
        cb.on_step_end(args, state, control, model=model)
        result["calls"] = client.calls if client is not None else None
        result["params"] = [p.detach().clone() for p in model.parameters()]
        result["before"] = before
        result["resets"] = cb.stats.resets
        result["handled"], result["stop"] = handled, control.should_training_stop
        result["errors"] = dict(cb.stats.errors)
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as fh:
            pickle.dump(result, fh)
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    results = []
    for r in range(WORLD):
        with open(Path(out) / f"rank{r}.pkl", "rb") as fh:
            results.append(pickle.load(fh))
    return results


def test_gather_concatenates_in_rank_order_on_rank0_only(ranks: list[dict[str, Any]]) -> None:
    got = ranks[0]["unequal"]
    assert ranks[1]["unequal"] is None
    expected = torch.cat([torch.arange(12.0).reshape(3, 4), torch.arange(8.0).reshape(2, 4) + 100])
    assert torch.equal(got.latents, expected)
    assert got.texts == ["r0-t0", "r0-t1", "r0-t2", "r1-t0", "r1-t1"]
    assert got.prompts == ["r0-p0", "r0-p1", "r0-p2", "r1-p0", "r1-p1"]
    assert torch.equal(got.rewards, torch.tensor([0.0, 0.5, 1.0, 1.0, 1.5]))


def test_gather_with_an_empty_rank_and_with_nothing(ranks: list[dict[str, Any]]) -> None:
    got = ranks[0]["one_empty"]
    assert ranks[1]["one_empty"] is None
    assert got.latents.shape == (3, 4) and got.texts == ["r0-t0", "r0-t1", "r0-t2"]
    assert torch.equal(got.rewards, torch.tensor([0.0, 0.5, 1.0]))
    assert ranks[0]["all_empty"] is None and ranks[1]["all_empty"] is None


def test_gather_dimension_mismatch_raises_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    for r in ranks:
        assert "disagree on the latent dimension" in r["mismatch"]


def test_callback_ships_once_from_rank0_with_gathered_latents(ranks: list[dict[str, Any]]) -> None:
    assert ranks[1]["calls"] is None  # rank 1 has no client and never talks to the sidecar
    (call,) = ranks[0]["calls"]
    assert call["step"] == 1
    assert call["responses"] == ["x", "x!", "y", "y!", "y!!"]
    assert call["prompts"] == ["q0", "q0", "q1", "q1", "q1"]
    assert torch.equal(call["latents"], _embed(["x", "x!", "y", "y!", "y!!"]))
    assert torch.equal(call["rewards"], torch.tensor([1.0, 2.0, 1.0, 2.0, 3.0]))
    assert ranks[0]["errors"] == {} and ranks[1]["errors"] == {}


def test_on_alert_runs_on_rank0_and_its_stop_reaches_every_rank(ranks: list[dict[str, Any]]) -> None:
    assert ranks[0]["handled"] == [7] and ranks[1]["handled"] == []
    assert ranks[0]["stop"] is True and ranks[1]["stop"] is True


def test_reset_is_broadcast_and_identical_on_both_ranks(ranks: list[dict[str, Any]]) -> None:
    assert ranks[0]["resets"] == 1 and ranks[1]["resets"] == 1
    for p0, p1, b in zip(ranks[0]["params"], ranks[1]["params"], ranks[0]["before"], strict=True):
        assert torch.equal(p0, p1)  # replicas stay in sync
        assert not torch.equal(p0, b)  # and were perturbed


# ---------------------------------------------------------------------------------------------- the judge
class _QuietRankClient(_RankClient):
    """Rank 0's client for the judge scenario: records observe() calls, reports no alert (no reset)."""

    def alerts(self) -> list[dict[str, Any]]:
        return []


def _proxy(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    return [float(len(c)) for c in completions]


def _judge(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    return [10.0 + len(c) for c in completions]


def _judge_worker(rank: int, port: int, out_dir: str) -> None:
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
        client = _QuietRankClient() if rank == 0 else None
        cb = FPEMonitorCallback(client, embedder=_embed, judge_reward="_judge")
        wrapped = wrap_reward_funcs([_proxy, _judge], cb)
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
    mp.spawn(_judge_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
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
