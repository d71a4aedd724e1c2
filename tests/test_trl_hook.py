"""The TRL hook (``monitor.trl``): reward wrapping, resets, fault isolation, and real training runs.

Real runs use a tiny Llama (hidden 32, 2 layers) and a word-level tokenizer built here, on CPU:

- ``GRPOTrainer`` with ``wrap_reward_funcs`` → a real sidecar (``fpmon serve`` on loopback, SQLite; one server
  for the module) and the in-process client on SQLite and PostgreSQL: steps 1..N stored exactly once and
  processed, one sample per completion, texts = the completions the reward function saw, rewards = TRL's
  weighted sum.
- ``RLOOTrainer`` with two weighted reward functions (fake client): one record per step, TRL's weighted sum.
- ``DPOTrainer`` with probe prompts (4 steps, ``probe_every=2``) → probe steps 0, 2, 4 with paired sample ids.
- A hand-written PPO-style loop (sample, toy reward, clipped-ratio policy-gradient update) calling
  ``client.observe`` → one row per sample with its reward.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import select
from torch import nn
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

import storage
from monitor.trl import (
    BatchRecorder,
    FPEMonitorCallback,
    ResetPolicy,
    apply_reset,
    completion_text,
    gather_to_main,
    prompt_text,
    wrap_reward_funcs,
)

torch.set_num_threads(1)

WORDS = [*"abcdefghijklmnopqrstuvwxyz", "say"]


# --------------------------------------------------------------------------------------------- fixtures
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[PAD]", "[BOS]", "[EOS]", "[UNK]", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]", unk_token="[UNK]"
    )


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=4 + len(WORDS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


class PoolEmbedder:
    """Mean of a frozen tiny model's last hidden state over the text's tokens: texts → (n, 32)."""

    def __init__(self) -> None:
        self.model = tiny_model(seed=99).eval().requires_grad_(False)
        self.tok = tiny_tokenizer()

    def __call__(self, texts: list[str]) -> torch.Tensor:
        enc = self.tok([t if t.strip() else "[UNK]" for t in texts], return_tensors="pt", padding=True)
        with torch.no_grad():
            h = self.model(**enc, output_hidden_states=True).hidden_states[-1]
        m = enc["attention_mask"].unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1)


def count_a(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """Toy reward: how often the word 'a' occurs."""
    return [float(c.split().count("a")) for c in completions]


class FakeClient:
    """Records observe() calls; alerts() returns whatever the test put in ``alert_list``."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.alert_list: list[dict[str, Any]] = []

    def observe(self, step: int, responses: Any = None, rewards: Any = None, prompts: Any = None, **kw: Any) -> None:
        self.calls.append({"step": step, "responses": responses, "rewards": rewards, "prompts": prompts, **kw})

    def flush(self, timeout: float) -> bool:
        return True

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.alert_list)


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real ``fpmon serve`` (SQLite) on an ephemeral loopback port for the whole module."""
    from api_helpers import ServerProcess

    tmp = tmp_path_factory.mktemp("sidecar")
    url = f"sqlite:///{tmp / 'fpmon.db'}"
    storage.upgrade(url)
    server = ServerProcess(url, tmp / "server.log").start()
    try:
        yield server
    finally:
        server.stop()


def make_client(mode: str, run_name: str, tmp_path: Path, sidecar_url: str | None, database_url: str | None) -> Any:
    from monitor.client import ClientConfig, MonitorClient

    cfg = ClientConfig(spool_dir=tmp_path / "spool", database_url=database_url, latent_dtype=torch.float32)
    url = sidecar_url if mode == "sidecar" else None
    return MonitorClient(url, run_name=run_name, config=cfg)


def stored_steps(database_url: str, run_name: str) -> dict[int, dict[str, Any]]:
    """step → {status, n, texts, rewards, sample_ids} read straight from the database."""
    engine = storage.make_engine(database_url)
    try:
        with storage.session_factory(engine)() as session:
            run = storage.get_run_by_name(session, run_name)
            assert run is not None, f"run {run_name!r} is not in the database"
            out: dict[int, dict[str, Any]] = {}
            steps = session.scalars(select(storage.Step).where(storage.Step.run_id == run.id)).all()
            for row in steps:
                assert row.step not in out, f"step {row.step} stored twice"
                samples = session.scalars(
                    select(storage.StepSample)
                    .where(storage.StepSample.run_id == run.id, storage.StepSample.step == row.step)
                    .order_by(storage.StepSample.index)
                ).all()
                out[row.step] = {
                    "status": row.status,
                    "error": row.error,
                    "n": row.n,
                    "texts": [s.text for s in samples],
                    "rewards": [s.reward for s in samples],
                    "sample_ids": [s.sample_id for s in samples],
                }
            return out
    finally:
        engine.dispose()


def wait_stored(database_url: str, run_name: str, steps: list[int], timeout: float = 120.0) -> dict[int, dict]:
    """Poll the database until every step in ``steps`` is processed (done or failed)."""
    import time

    deadline = time.monotonic() + timeout
    rows: dict[int, dict] = {}
    while time.monotonic() < deadline:
        try:
            rows = stored_steps(database_url, run_name)
        except AssertionError:
            rows = {}
        if all(s in rows and rows[s]["status"] in ("done", "failed") for s in steps):
            return rows
        time.sleep(0.2)
    raise AssertionError(f"steps {steps} not processed after {timeout} s: {rows}")


def trainer_args(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    return {
        "output_dir": str(tmp_path / "out"),
        "use_cpu": True,
        "report_to": [],
        "save_strategy": "no",
        "logging_steps": 1,
        "bf16": False,
        "seed": 0,
        "disable_tqdm": True,
        **kw,
    }


# --------------------------------------------------------------------------------- wrap_reward_funcs
def test_wrappers_keep_name_signature_and_return_value() -> None:
    cb = FPEMonitorCallback(FakeClient(), embedder=PoolEmbedder())

    class Scorer:
        def __call__(self, prompts: list[str], completions: list[str], **kwargs: Any) -> list[float | None]:
            return [None if c == "skip" else 0.5 for c in completions]

    async def async_len(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        return [float(len(c)) for c in completions]

    partial = functools.partial(count_a)
    wrapped = wrap_reward_funcs([count_a, Scorer(), async_len, partial], cb)
    assert len(wrapped) == 4
    assert wrapped[0].__name__ == "count_a" and wrapped[0].__qualname__ == count_a.__qualname__
    assert inspect.signature(wrapped[0]) == inspect.signature(count_a)
    assert wrapped[1].__name__ == "Scorer" and wrapped[3].__name__ == "count_a"
    assert inspect.iscoroutinefunction(wrapped[2]) and wrapped[2].__name__ == "async_len"

    prompts, comps = ["say a", "say b", "say c"], ["a a", "b", "skip"]
    state = TrainerState()
    state.global_step = 4
    result = count_a(prompts=prompts, completions=comps)
    got = wrapped[0](prompts=prompts, completions=comps, trainer_state=state)
    assert got == result == [2.0, 0.0, 0.0]
    assert wrapped[1](prompts=prompts, completions=comps, trainer_state=state) == [0.5, 0.5, None]
    assert asyncio.run(wrapped[2](prompts=prompts, completions=comps)) == [3.0, 1.0, 4.0]
    assert wrapped[3](prompts, comps) == [2.0, 0.0, 0.0]  # positional call still recorded

    # one record for the batch, with the per-function rewards; None → NaN
    (batch,) = cb._pending
    assert batch.completions == comps and batch.prompts == prompts and batch.step == 4
    assert batch.rewards[0] == [2.0, 0.0, 0.0] and batch.rewards[3] == [2.0, 0.0, 0.0]
    assert batch.rewards[1][:2] == [0.5, 0.5] and math.isnan(batch.rewards[1][2])
    assert batch.rewards[2] == [3.0, 1.0, 4.0]

    # a new call of the first function starts a new record
    wrapped[0](prompts=prompts, completions=["x", "y", "z"])
    assert len(cb._pending) == 2 and cb._pending[1].rewards[1] is None


def test_errors_of_the_reward_function_propagate_and_recording_never_raises() -> None:
    cb = FPEMonitorCallback(FakeClient(), embedder=PoolEmbedder())

    def broken(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        raise KeyError("solution")

    def wrong_length(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        return [1.0]

    w_broken, w_wrong = wrap_reward_funcs([broken, wrong_length], cb)
    with pytest.raises(KeyError, match="solution"):
        w_broken(prompts=["p", "q"], completions=["a", "b"])
    assert w_wrong(prompts=["p", "q"], completions=["a", "b"]) == [1.0]  # TRL raises on this, not the hook
    assert cb.stats.errors["record:ValueError"] == 1 and not cb._pending


def test_reward_models_pass_through_unwrapped(caplog: pytest.LogCaptureFixture) -> None:
    cb = FPEMonitorCallback(FakeClient(), embedder=PoolEmbedder())
    rm = nn.Linear(2, 1)
    with caplog.at_level(logging.WARNING, logger="fpmon.trl"):
        out = wrap_reward_funcs([rm, "org/reward-model", count_a], cb)
    assert out[0] is rm and out[1] == "org/reward-model" and out[2] is not count_a
    assert sum("passed through unwrapped" in r.message for r in caplog.records) == 2
    with pytest.raises(TypeError, match="not callable"):
        wrap_reward_funcs([42], cb)
    with pytest.raises(TypeError, match="FPEMonitorCallback"):
        wrap_reward_funcs([count_a], object())  # type: ignore[arg-type]


def test_wrappers_talk_to_any_batch_recorder() -> None:
    """The wrappers need only the BatchRecorder protocol (register, record, note errors), not the callback."""

    class Recorder:
        def __init__(self) -> None:
            self.funcs: list[Any] = []
            self.records: list[tuple[Any, ...]] = []
            self.errors: list[str] = []

        def register_reward_func(self, func: Any) -> int:
            self.funcs.append(func)
            return len(self.funcs) - 1

        def record_batch(self, slot: int, prompts: Any, completions: Any, rewards: Any, step: int | None) -> None:
            if slot == 1:
                raise RuntimeError("recorder is full")
            self.records.append((slot, prompts, completions, rewards, step))

        def note_error(self, kind: str, exc: BaseException) -> None:
            self.errors.append(f"{kind}:{type(exc).__name__}")

    rec = Recorder()
    assert isinstance(rec, BatchRecorder) and isinstance(FPEMonitorCallback(None), BatchRecorder)
    w0, w1 = wrap_reward_funcs([count_a, count_a], rec)
    state = TrainerState()
    state.global_step = 3
    assert w0(prompts=["p"], completions=["a a"], trainer_state=state) == [2.0]
    assert w1(["p"], ["a"]) == [1.0]  # the recorder's error is noted, not raised
    assert rec.funcs == [count_a, count_a]
    assert rec.records == [(0, ["p"], ["a a"], [2.0], 3)]
    assert rec.errors == ["record:RuntimeError"]


def test_step_end_ships_weighted_rewards_and_text_of_conversations() -> None:
    client = FakeClient()
    emb = PoolEmbedder()
    cb = FPEMonitorCallback(client, embedder=emb)
    f1, f2 = wrap_reward_funcs(
        [
            lambda prompts, completions, **kw: [1.0, None, None],
            lambda prompts, completions, **kw: [10.0, 20.0, None],
        ],
        cb,
    )
    args = TrainingArguments(output_dir="/tmp/unused", report_to=[], use_cpu=True)
    args.reward_weights = [2.0, None]  # TRL's field on GRPO/RLOO configs; None → 1
    state, control = TrainerState(), TrainerControl()
    cb.on_train_begin(args, state, control, model=nn.Linear(1, 1))
    prompts = [[{"role": "system", "content": "be brief"}, {"role": "user", "content": f"say {c}"}] for c in "abc"]
    comps = [[{"role": "assistant", "content": [{"type": "text", "text": c}]}] for c in ("a", "b b", "c")]
    sched = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5), lambda s: 1.0)
    f1(prompts=["eval"] * 3, completions=["x", "y", "z"], trainer_state=state)  # scored by an evaluation
    cb.on_step_begin(args, state, control, lr_scheduler=sched)
    assert cb.stats.dropped_outside_steps == 3 and not cb._pending
    for f in (f1, f2):
        f(prompts=prompts, completions=comps, trainer_state=state)
    state.global_step = 1
    cb.on_step_end(args, state, control)
    (call,) = client.calls
    assert call["step"] == 1 and call["lr"] == 0.5 and call["embedder"] is emb
    assert call["responses"] == ["a", "b b", "c"] and call["prompts"] == ["say a", "say b", "say c"]
    # TRL: nansum over functions of weight × reward; a row where every function said None → 0
    assert torch.equal(call["rewards"], torch.tensor([12.0, 20.0, 0.0]))
    assert cb.stats.steps_shipped == 1 and cb.stats.samples_shipped == 3
    # nothing pending → nothing shipped at the next step
    state.global_step = 2
    cb.on_step_end(args, state, control)
    assert len(client.calls) == 1


def test_text_helpers_and_single_process_gather() -> None:
    assert completion_text("x") == "x"
    assert completion_text([{"role": "assistant", "content": "hi"}]) == "hi"
    assert prompt_text([{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a"}]) == "q1"
    batch = gather_to_main(torch.ones(2, 3), [1.0, 2.0], ["a", "b"], None)
    assert batch is not None and batch.texts == ["a", "b"] and batch.prompts is None
    assert torch.equal(batch.rewards, torch.tensor([1.0, 2.0]))
    assert gather_to_main(None, None, None, None) is None
    with pytest.raises(ValueError, match="one reward/text/prompt per row"):
        gather_to_main(torch.ones(2, 3), [1.0], ["a", "b"], None)


def test_constructor_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="probe_every"):
        FPEMonitorCallback(FakeClient(), probe_every=0)
    with pytest.raises(TypeError, match="list of prompts"):
        FPEMonitorCallback(FakeClient(), probe_prompts="say a")
    with pytest.raises(ValueError, match="alpha"):
        ResetPolicy(alpha=1.5)
    with pytest.raises(ValueError, match="cooldown_steps"):
        ResetPolicy(cooldown_steps=-1)


# ------------------------------------------------------------------------------------------------ resets
def test_apply_reset_follows_the_rule() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 200), nn.LayerNorm(200), nn.Linear(200, 4))
    model[2].requires_grad_(False)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    alpha, scale = 0.15, 0.01
    stats = apply_reset(model, alpha, scale, torch.Generator().manual_seed(5))
    after = dict(model.named_parameters())

    w0, w1 = before["0.weight"], after["0.weight"].detach()
    changed = w0 != w1
    n = w0.numel()
    # the fraction of changed entries is Binomial(n, alpha)/n: within 5 standard deviations of alpha
    assert abs(changed.float().mean().item() - alpha) < 5 * math.sqrt(alpha * (1 - alpha) / n)
    # the changes are noise_scale · std(W) · N(0, 1): their RMS relative to that is 1 within 5 %
    rel = (w1 - w0)[changed] / (scale * w0.std(correction=0))
    assert abs(rel.pow(2).mean().sqrt().item() - 1.0) < 0.05 and abs(rel.mean().item()) < 0.05
    assert torch.equal(w1[~changed], w0[~changed])  # the others are untouched, bit for bit

    # LayerNorm weight (all ones: std 0) is scaled by its RMS (1); its bias (all zeros) stays zero
    ln = after["1.weight"].detach() - 1.0
    assert 0 < (ln != 0).float().mean().item() < 0.5 and ln.abs().max().item() < 10 * scale
    assert torch.equal(after["1.bias"].detach(), before["1.bias"])
    # frozen parameters are skipped (trainable_only=True)
    assert torch.equal(after["2.weight"].detach(), before["2.weight"])
    assert stats.tensors == 3  # 0.weight, 0.bias, 1.weight
    assert stats.entries == 300 * 200 + 200 + 200 + 200

    # the same generator state gives the same perturbation
    torch.manual_seed(0)
    twin = nn.Sequential(nn.Linear(300, 200), nn.LayerNorm(200), nn.Linear(200, 4))
    twin[2].requires_grad_(False)
    apply_reset(twin, alpha, scale, torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters(), strict=True))
    with pytest.raises(ValueError, match="alpha"):
        apply_reset(model, 0.0, scale)
    with pytest.raises(ValueError, match="noise_scale"):
        apply_reset(model, 0.1, -1.0)


def test_reset_policy_fires_once_per_alert_and_respects_cooldown() -> None:
    client = FakeClient()
    policy = ResetPolicy(alpha=0.3, noise_scale=0.05, cooldown_steps=5, seed=11)
    cb = FPEMonitorCallback(client, embedder=PoolEmbedder(), reset_policy=policy)
    torch.manual_seed(0)
    model = nn.Linear(40, 30)
    expected = nn.Linear(40, 30)
    expected.load_state_dict(model.state_dict())
    args = TrainingArguments(output_dir="/tmp/unused", report_to=[], use_cpu=True)
    state, control = TrainerState(), TrainerControl()

    def step(s: int) -> None:
        state.global_step = s
        cb.on_step_end(args, state, control, model=model)

    step(1)
    assert cb.stats.resets == 0  # no alert yet
    client.alert_list = [
        {"alert_id": 1, "run_id": 1, "step": 1, "type": "PHASE_TRANSITION", "status": "open"},
        {"alert_id": 2, "run_id": 1, "step": 1, "type": "SOMETHING_ELSE", "status": "open"},
    ]
    step(2)
    assert cb.stats.resets == 1
    apply_reset(expected, policy.alpha, policy.noise_scale, torch.Generator().manual_seed(policy.seed))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), expected.parameters(), strict=True))
    snapshot = [p.detach().clone() for p in model.parameters()]
    step(3)  # the same alerts again: nothing new
    client.alert_list.insert(
        0, {"alert_id": 3, "run_id": 1, "step": 3, "type": "POTENTIAL_REWARD_HACKING", "status": "open"}
    )
    step(4)  # new alert inside the cooldown (2 + 5): consumed, no reset
    client.alert_list.insert(
        0, {"alert_id": 4, "run_id": 1, "step": 5, "type": "PHASE_TRANSITION", "status": "dismissed"}
    )
    step(8)  # dismissed alerts never trigger
    assert cb.stats.resets == 1
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), snapshot, strict=True))
    client.alert_list.insert(0, {"alert_id": 5, "run_id": 1, "step": 8, "type": "PHASE_TRANSITION", "status": "open"})
    step(9)  # after the cooldown: second reset, drawn with seed + 1
    assert cb.stats.resets == 2 and [e["step"] for e in cb.reset_log] == [2, 9]
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), snapshot, strict=True))


# -------------------------------------------------------------------------------------- real trainers
def run_grpo(
    tmp_path: Path,
    cb: FPEMonitorCallback,
    steps: int,
    seen: dict[int, list[str]] | None = None,
    judge: Any = None,
) -> Any:
    """A tiny GRPO run rewarded by 2 × ``count_a``; ``judge``: a second reward function logged at weight 0."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    def reward(prompts: list[str], completions: list[str], trainer_state: Any = None, **kw: Any) -> list[float]:
        if seen is not None:
            seen.setdefault(trainer_state.global_step + 1, []).extend(completions)
        return count_a(prompts, completions)

    ds = Dataset.from_dict({"prompt": [f"say {c}" for c in "abcdefghijklmnopqrstuvwxyz"] * 2})
    args = GRPOConfig(
        **trainer_args(tmp_path),
        per_device_train_batch_size=16,
        num_generations=4,
        max_completion_length=6,
        max_steps=steps,
        learning_rate=1e-3,
        reward_weights=[2.0] if judge is None else [2.0, 0.0],
    )
    trainer = GRPOTrainer(
        model=tiny_model(),
        reward_funcs=wrap_reward_funcs([reward] if judge is None else [reward, judge], cb),
        args=args,
        train_dataset=ds,
        processing_class=tiny_tokenizer(),
        callbacks=[cb],
    )
    trainer.train()
    return trainer


def test_grpo_to_sidecar(sidecar: Any, tmp_path: Path) -> None:
    client = make_client("sidecar", "grpo-sidecar", tmp_path, sidecar.url, None)
    cb = FPEMonitorCallback(client, embedder=PoolEmbedder())
    seen: dict[int, list[str]] = {}
    try:
        trainer = run_grpo(tmp_path, cb, steps=3, seen=seen)
        assert client.flush(60)
    finally:
        client.close()
    assert trainer.state.global_step == 3 and not cb.stats.errors
    rows = wait_stored(sidecar.database_url, "grpo-sidecar", [1, 2, 3])
    assert sorted(rows) == [1, 2, 3]
    for s, row in rows.items():
        assert row["status"] == "done", row["error"]
        assert row["n"] == 16 and row["texts"] == seen[s]
        assert row["rewards"] == [2.0 * c.split().count("a") for c in seen[s]]


def test_grpo_in_process_with_the_default_embedder(database_url: str, tmp_path: Path) -> None:
    """embedder=None: a frozen copy of the initial policy embeds; SQLite and PostgreSQL."""
    client = make_client("in-process", "grpo-inproc", tmp_path, None, database_url)
    cb = FPEMonitorCallback(client)
    seen: dict[int, list[str]] = {}
    try:
        trainer = run_grpo(tmp_path, cb, steps=3, seen=seen)
        live = dict(trainer.model.named_parameters())
        frozen = cb._embed.model  # type: ignore[union-attr]
        assert frozen is not trainer.model
        assert all(not p.requires_grad for p in frozen.parameters())
        # the copy is the initial policy: training moved the live weights, not the copy's
        name, p0 = next(iter(tiny_model().named_parameters()))
        assert torch.equal(dict(frozen.named_parameters())[name], p0) and not torch.equal(live[name], p0)
        assert client.flush(60)
    finally:
        client.close()
    rows = stored_steps(database_url, "grpo-inproc")
    assert sorted(rows) == [1, 2, 3]
    assert all(r["status"] == "done" and r["texts"] == seen[s] for s, r in rows.items())


def test_rloo_ships_every_step_with_two_weighted_reward_functions(tmp_path: Path) -> None:
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    client = FakeClient()
    cb = FPEMonitorCallback(client, embedder=PoolEmbedder())
    seen: dict[int, list[str]] = {}

    def length(prompts: list[str], completions: list[str], trainer_state: Any = None, **kw: Any) -> list[float]:
        seen.setdefault(trainer_state.global_step + 1, []).extend(completions)
        return [float(len(c.split())) for c in completions]

    args = RLOOConfig(
        **trainer_args(tmp_path),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=5,
        max_steps=3,
        reward_weights=[1.0, 0.5],
        beta=0.0,  # no reference model (TRL would load one by name)
    )
    trainer = RLOOTrainer(
        model=tiny_model(),
        reward_funcs=wrap_reward_funcs([count_a, length], cb),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": [f"say {c}" for c in "abcdefgh"] * 3}),
        processing_class=tiny_tokenizer(),
        callbacks=[cb],
    )
    trainer.train()
    assert [c["step"] for c in client.calls] == [1, 2, 3] and not cb.stats.errors
    for call in client.calls:
        texts = seen[call["step"]]
        assert call["responses"] == texts
        want = [c.split().count("a") + 0.5 * len(c.split()) for c in texts]
        assert call["rewards"].tolist() == pytest.approx(want)


def test_a_failing_hook_does_not_stop_training(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Broken(FakeClient):
        def observe(self, *a: Any, **kw: Any) -> None:
            raise RuntimeError("sidecar client exploded")

        def alerts(self) -> list[dict[str, Any]]:
            raise ConnectionError("no alerts today")

    cb = FPEMonitorCallback(Broken(), embedder=PoolEmbedder(), reset_policy=ResetPolicy())
    with caplog.at_level(logging.WARNING, logger="fpmon.trl"):
        trainer = run_grpo(tmp_path, cb, steps=3)
    assert trainer.state.global_step == 3
    assert cb.stats.errors["on_step_end:RuntimeError"] == 3 and cb.stats.errors["alerts:ConnectionError"] == 3
    assert sum("training continues" in r.message for r in caplog.records) == 2  # once per kind


def test_a_throwing_embedder_in_the_client_does_not_stop_training(tmp_path: Path) -> None:
    def bad_embedder(texts: list[str]) -> torch.Tensor:
        raise RuntimeError("embedder out of memory")

    client = make_client("in-process", "grpo-bad-embedder", tmp_path, None, f"sqlite:///{tmp_path / 'x.db'}")
    cb = FPEMonitorCallback(client, embedder=bad_embedder)
    try:
        trainer = run_grpo(tmp_path, cb, steps=2)
        client.flush(30)
        assert trainer.state.global_step == 2
        assert client.stats.dropped == 2 and "embedder out of memory" in (client.stats.last_error or "")
    finally:
        client.close()


@pytest.mark.parametrize("mode", ["sidecar", "in-process"])
def test_dpo_probes_are_shipped(mode: str, sidecar: Any, tmp_path: Path) -> None:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    db = sidecar.database_url if mode == "sidecar" else f"sqlite:///{tmp_path / 'inproc.db'}"
    client = make_client(mode, f"dpo-{mode}", tmp_path, sidecar.url, db)
    probes = ["say a", "say b", "say c"]
    cb = FPEMonitorCallback(
        client,
        embedder=PoolEmbedder(),
        probe_prompts=probes,
        probe_every=2,
        probe_samples_per_prompt=3,
        probe_max_new_tokens=5,
    )
    letters = "abcdefgh"
    ds = Dataset.from_dict(
        {
            "prompt": [f"say {c}" for c in letters],
            "chosen": [f" {c} {c}" for c in letters],
            "rejected": [" z q" for _ in letters],
        }
    )
    args = DPOConfig(**trainer_args(tmp_path), per_device_train_batch_size=2, max_steps=4, max_length=16)
    model = tiny_model()
    trainer = DPOTrainer(
        model=model,
        ref_model=tiny_model(),
        args=args,
        train_dataset=ds,
        processing_class=tiny_tokenizer(),
        callbacks=[cb],
    )
    try:
        trainer.train()
        assert client.flush(60)
    finally:
        client.close()
    assert trainer.state.global_step == 4 and not cb.stats.errors
    assert model.training  # train mode restored after each probe
    rows = wait_stored(db, f"dpo-{mode}", [0, 2, 4])
    assert sorted(rows) == [0, 2, 4]  # step 0 = the initial policy, then every probe_every steps
    for row in rows.values():
        assert row["status"] == "done", row["error"]
        assert row["n"] == 9
        assert row["sample_ids"] == [f"p{i}-{k}" for i in range(3) for k in range(3)]
        assert row["rewards"] == [None] * 9  # no reward functions given


def test_probes_do_not_touch_the_training_rng() -> None:
    cb = FPEMonitorCallback(FakeClient(), embedder=PoolEmbedder(), probe_prompts=["say a"], probe_every=1)
    args = TrainingArguments(output_dir="/tmp/unused", report_to=[], use_cpu=True)
    state, control = TrainerState(), TrainerControl()
    model = tiny_model().train()
    torch.manual_seed(3)
    cb.on_train_begin(args, state, control, model=model, processing_class=tiny_tokenizer())
    after_probe = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(after_probe, torch.rand(3)) and model.training
    (call,) = cb.client.calls  # type: ignore[union-attr]
    assert call["step"] == 0 and len(call["responses"]) == 4


def test_probes_are_scored_by_the_wrapped_functions_and_on_policy_records_win() -> None:
    client = FakeClient()
    cb = FPEMonitorCallback(
        client, embedder=PoolEmbedder(), probe_prompts=["say a", "say b"], probe_every=2, probe_samples_per_prompt=2
    )
    (scorer,) = wrap_reward_funcs([count_a], cb)  # for scoring only: no trainer calls it
    args = TrainingArguments(output_dir="/tmp/unused", report_to=[], use_cpu=True)
    state, control = TrainerState(), TrainerControl()
    model = tiny_model()
    cb.on_train_begin(args, state, control, model=model, processing_class=tiny_tokenizer())
    assert client.calls == []  # reward functions are wrapped: no step-0 probe
    state.global_step = 1
    cb.on_step_end(args, state, control, model=model)  # not a probe step
    state.global_step = 2
    cb.on_step_end(args, state, control, model=model)
    (probe,) = client.calls
    assert probe["step"] == 2 and probe["sample_ids"] == ["p0-0", "p0-1", "p1-0", "p1-1"]
    assert probe["prompts"] == ["say a", "say a", "say b", "say b"]
    assert probe["rewards"].tolist() == count_a(probe["prompts"], probe["responses"])
    # a probe step with on-policy records ships the records, and probes stop for good
    state.global_step = 4
    scorer(prompts=["say a", "say b"], completions=["a", "b"], trainer_state=state)
    cb.on_step_end(args, state, control, model=model)
    state.global_step = 6
    cb.on_step_end(args, state, control, model=model)
    assert [c["step"] for c in client.calls] == [2, 4] and client.calls[1]["responses"] == ["a", "b"]
    assert cb.stats.probe_steps == 1 and not cb.stats.errors


@pytest.mark.parametrize("mode", ["sidecar", "in-process"])
def test_ppo_style_loop_with_client_observe(mode: str, sidecar: Any, tmp_path: Path) -> None:
    """A loop outside TRL: sample, score, clipped-ratio policy-gradient update, client.observe."""
    db = sidecar.database_url if mode == "sidecar" else f"sqlite:///{tmp_path / 'inproc.db'}"
    from monitor.client import ClientConfig, MonitorClient

    cfg = ClientConfig(spool_dir=tmp_path / "spool", database_url=db, latent_dtype=torch.float32)
    client = MonitorClient(
        sidecar.url if mode == "sidecar" else None, run_name=f"ppo-{mode}", embedder=PoolEmbedder(), config=cfg
    )
    tok = tiny_tokenizer()
    tok.padding_side = "left"
    policy = tiny_model()
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    prompts = ["say a", "say b", "say c", "say d"] * 3
    shipped: dict[int, tuple[list[str], list[float]]] = {}
    try:
        for step in range(1, 4):
            enc = tok(prompts, return_tensors="pt", padding=True)
            policy.eval()
            with torch.no_grad():
                out = policy.generate(**enc, do_sample=True, max_new_tokens=5, pad_token_id=0)
            policy.train()
            gen = out[:, enc["input_ids"].shape[1] :]
            responses = tok.batch_decode(gen, skip_special_tokens=True)
            rewards = torch.tensor(count_a(prompts, responses))
            mask = (out != 0).long()
            logits = policy(input_ids=out, attention_mask=mask).logits[:, enc["input_ids"].shape[1] - 1 : -1]
            logp = torch.log_softmax(logits, -1).gather(-1, gen.unsqueeze(-1)).squeeze(-1).sum(-1)
            adv = rewards - rewards.mean()
            ratio = torch.exp(logp - logp.detach())  # one PPO epoch: ratio 1, the clip is inactive
            loss = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            client.observe(step, responses, rewards=rewards, prompts=prompts, lr=1e-3)
            shipped[step] = (responses, rewards.tolist())
        assert client.flush(60)
    finally:
        client.close()
    rows = wait_stored(db, f"ppo-{mode}", [1, 2, 3])
    assert sorted(rows) == [1, 2, 3]
    for s, row in rows.items():
        assert row["status"] == "done", row["error"]
        assert row["texts"] == shipped[s][0] and row["rewards"] == shipped[s][1]


# --------------------------------------------------------------------- judge_reward (reference_rewards)
def judge_len(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float | None]:
    """A held-out judge: the completion's length in words; None ("not applicable") for the completion "skip"."""
    return [None if c == "skip" else float(len(c.split())) for c in completions]


def test_the_named_judge_is_shipped_as_reference_rewards() -> None:
    client = FakeClient()
    cb = FPEMonitorCallback(client, embedder=PoolEmbedder(), judge_reward="judge_len")
    proxy, judge = wrap_reward_funcs([count_a, judge_len], cb)
    args = TrainingArguments(output_dir="/tmp/unused", report_to=[], use_cpu=True)
    args.reward_weights = [1.0, 0.0]  # the judge is logged, it does not drive training
    state, control = TrainerState(), TrainerControl()
    cb.on_train_begin(args, state, control, model=nn.Linear(1, 1))

    def step(s: int, comps: list[str]) -> dict[str, Any]:
        cb.on_step_begin(args, state, control)
        for f in (proxy, judge):
            f(prompts=["say a"] * len(comps), completions=comps, trainer_state=state)
        state.global_step = s
        cb.on_step_end(args, state, control)
        return client.calls[-1]

    call = step(1, ["a a", "b", "a b c"])
    assert torch.equal(call["rewards"], torch.tensor([2.0, 0.0, 1.0]))  # TRL's weighted sum: the judge at 0
    assert torch.equal(call["reference_rewards"], torch.tensor([2.0, 1.0, 3.0]))  # the judge's own values
    assert call["scalars"] == {"true_reward": 2.0, "proxy_reward": 1.0}  # the step means, as extra scalars
    call = step(2, ["a", "skip", "a a"])  # "not applicable": NaN, a row the client drops from the whole step
    assert call["reference_rewards"][[0, 2]].tolist() == [1.0, 2.0] and math.isnan(call["reference_rewards"][1])
    assert call["scalars"] == {"true_reward": 1.5, "proxy_reward": 1.0}  # the judge's mean skips "not applicable"
    call = step(3, ["skip", "skip"])  # no judgement at all: no reference_rewards argument
    assert "reference_rewards" not in call and call["rewards"].tolist() == [0.0, 0.0]
    assert "scalars" not in call
    assert not cb.stats.errors
    # without judge_reward, observe() gets no reference_rewards argument (clients that predate it still work)
    plain = FakeClient()
    cb2 = FPEMonitorCallback(plain, embedder=PoolEmbedder())
    (f,) = wrap_reward_funcs([count_a], cb2)
    cb2.on_step_begin(args, state, control)
    f(prompts=["p", "q"], completions=["a", "b"], trainer_state=state)
    cb2.on_step_end(args, state, control)
    assert "reference_rewards" not in plain.calls[0] and "scalars" not in plain.calls[0]


def test_scalars_fn_adds_extra_scalars_and_its_failures_never_lose_a_step() -> None:
    client = FakeClient()
    answers: list[Any] = [{"kl": 0.5, "true_reward": 7.0}, RuntimeError("boom"), {"kl": math.inf}, {"kl": None}]
    asked: list[int] = []

    def extra(step: int) -> Any:
        asked.append(step)
        answer = answers[len(asked) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    cb = FPEMonitorCallback(client, embedder=PoolEmbedder(), judge_reward="judge_len", scalars_fn=extra)
    proxy, judge = wrap_reward_funcs([count_a, judge_len], cb)
    args = TrainingArguments(output_dir="/tmp/unused", report_to=[], use_cpu=True)
    args.reward_weights = [1.0, 0.0]
    state, control = TrainerState(), TrainerControl()
    cb.on_train_begin(args, state, control, model=nn.Linear(1, 1))
    for s in (1, 2, 3, 4):
        cb.on_step_begin(args, state, control)
        for f in (proxy, judge):
            f(prompts=["p", "q"], completions=["a a", "b"], trainer_state=state)
        state.global_step = s
        cb.on_step_end(args, state, control)
    assert asked == [1, 2, 3, 4] and [c["step"] for c in client.calls] == [1, 2, 3, 4]
    own = {"true_reward": 1.5, "proxy_reward": 1.0}
    assert client.calls[0]["scalars"] == {"true_reward": 7.0, "proxy_reward": 1.0, "kl": 0.5}  # the function wins
    assert client.calls[1]["scalars"] == own and client.calls[2]["scalars"] == own  # raised / refused: left out
    assert client.calls[3]["scalars"] == {**own, "kl": None}
    assert cb.stats.errors == {"scalars_fn:RuntimeError": 1, "scalars_fn:ValueError": 1}
    assert cb.stats.steps_shipped == 4
    with pytest.raises(TypeError, match="scalars_fn must be a function"):
        FPEMonitorCallback(client, scalars_fn={"kl": 1.0})  # type: ignore[arg-type]


def test_a_judge_that_is_not_wrapped_is_a_setup_error(caplog: pytest.LogCaptureFixture) -> None:
    def callback(judge: Any) -> FPEMonitorCallback:
        return FPEMonitorCallback(FakeClient(), embedder=PoolEmbedder(), judge_reward=judge)

    with pytest.raises(
        ValueError,
        match=r"judge_reward='true_reward' is not among the wrapped reward functions \['count_a', 'judge_len'\]",
    ):
        wrap_reward_funcs([count_a, judge_len], callback("true_reward"))
    with pytest.raises(ValueError, match="judge_reward='count_a' names 2 of the wrapped reward functions"):
        wrap_reward_funcs([count_a, functools.partial(count_a)], callback("count_a"))
    with pytest.raises(ValueError, match="is a reward model: its scores are not recorded"):
        wrap_reward_funcs(["org/reward-model", count_a], callback("reward-model"))
    with pytest.raises(TypeError, match="judge_reward must be a reward function's name"):
        callback(judge_len)
    # nothing wrapped at all (probes only): the trainer's on_train_begin raises, before any step
    args = TrainingArguments(output_dir="/tmp/unused", report_to=[], use_cpu=True)
    lonely = callback("judge_len")
    with pytest.raises(ValueError, match="judge_reward='judge_len' is not among the wrapped reward functions"):
        lonely.on_train_begin(args, TrainerState(), TrainerControl(), model=nn.Linear(1, 1))
    # a judge that drives training is allowed, with a warning
    weighted = callback("judge_len")
    wrap_reward_funcs([count_a, judge_len], weighted)
    args.reward_weights = [1.0, 0.5]
    with caplog.at_level(logging.WARNING, logger="fpmon.trl"):
        weighted.on_train_begin(args, TrainerState(), TrainerControl(), model=nn.Linear(1, 1))
    assert any("nonzero weight" in r.message for r in caplog.records) and not weighted.stats.errors


def test_a_grpo_run_ships_the_judge_as_reference_rewards(tmp_path: Path) -> None:
    """A real GRPOTrainer with the judge logged at weight 0 → the in-process client: each stored step carries
    the judge's value of every completion as reference_rewards, beside TRL's weighted rewards."""
    db = f"sqlite:///{tmp_path / 'judge.db'}"
    client = make_client("in-process", "grpo-judge", tmp_path, None, db)
    cb = FPEMonitorCallback(client, embedder=PoolEmbedder(), judge_reward="judge_len")
    seen: dict[int, list[str]] = {}
    try:
        trainer = run_grpo(tmp_path, cb, steps=2, seen=seen, judge=judge_len)
        assert client.flush(60)
    finally:
        client.close()
    assert trainer.state.global_step == 2 and not cb.stats.errors
    rows = stored_steps(db, "grpo-judge")
    assert sorted(rows) == [1, 2] and all(r["status"] == "done" for r in rows.values())
    from monitor.stepfile import decode_step

    engine = storage.make_engine(db)
    try:
        with storage.session_factory(engine)() as session:
            run = storage.get_run_by_name(session, "grpo-judge")
            assert run is not None
            for s in (1, 2):
                body = storage.load_payload(session, run.id, s)
                assert body is not None
                payload = decode_step(body)
                assert payload.texts == seen[s]
                assert payload.rewards is not None and payload.reference_rewards is not None
                assert payload.rewards.tolist() == [2.0 * c.split().count("a") for c in seen[s]]
                assert payload.reference_rewards.tolist() == judge_len([], seen[s])
                # the judge's and the proxy's step means, stored as the step's extra scalars (/metrics "extra")
                true = sum(judge_len([], seen[s])) / len(seen[s])  # type: ignore[arg-type]
                proxy = sum(payload.rewards.tolist()) / len(seen[s])
                extra = storage.get_step(session, run.id, s).extra_scalars  # type: ignore[union-attr]
                assert extra == pytest.approx({"true_reward": true, "proxy_reward": proxy})
    finally:
        engine.dispose()


def test_probes_are_judged_too_and_gathering_keeps_the_judge() -> None:
    client = FakeClient()
    cb = FPEMonitorCallback(
        client,
        embedder=PoolEmbedder(),
        probe_prompts=["say a", "say b"],
        probe_every=2,
        probe_samples_per_prompt=2,
        judge_reward="judge_len",
    )
    wrap_reward_funcs([count_a, judge_len], cb)  # for scoring only: no trainer calls them
    args = TrainingArguments(output_dir="/tmp/unused", report_to=[], use_cpu=True)
    args.reward_weights = [1.0, 0.0]
    state, control = TrainerState(), TrainerControl()
    model = tiny_model()
    cb.on_train_begin(args, state, control, model=model, processing_class=tiny_tokenizer())
    state.global_step = 2
    cb.on_step_end(args, state, control, model=model)
    (probe,) = client.calls
    assert probe["rewards"].tolist() == count_a(probe["prompts"], probe["responses"])
    assert probe["reference_rewards"].tolist() == judge_len(probe["prompts"], probe["responses"])
    # the single-process gather carries the judge's rewards through (None stays None)
    batch = gather_to_main(torch.ones(2, 3), [1.0, 2.0], ["a", "b"], None, reference_rewards=[0.5, 1.5])
    assert batch is not None and torch.equal(batch.reference_rewards, torch.tensor([0.5, 1.5]))
    assert gather_to_main(torch.ones(2, 3), [1.0, 2.0], ["a", "b"], None).reference_rewards is None
    with pytest.raises(ValueError, match="one reward/text/prompt per row"):
        gather_to_main(torch.ones(2, 3), [1.0, 2.0], ["a", "b"], None, reference_rewards=[0.5])
