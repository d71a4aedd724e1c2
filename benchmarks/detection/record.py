"""Record toy TRL GRPO runs once, so that every detector is evaluated offline on identical data.

A run folder (``<out>/<kind>-s<seed>/``) holds:

* ``<embedder>/step_00012.safetensors``: the step's completion embeddings in fpmon's wire format
  (``monitor.stepfile``: ``latents`` (n, d) float32, ``rewards`` = the training reward per completion, the
  learning rate, sample ids, completion texts and prompts), one folder per embedder;
* ``samples.jsonl``: per step, per completion: the driving (proxy) reward, the judge's reward, whether the
  answer carries the kind's behaviour (``marker``), completion length (tokens);
* ``scalars.csv``: per step: batch means of the rewards (``proxy_mean`` = the driving reward, ``true_mean`` =
  the judge), ``exploit_fraction`` (the fraction of marked answers, the behaviour's prevalence), ``kl`` (mean
  over the batch's completion tokens of log π(y_t) − log π_ref(y_t), π_ref the frozen warmed-up model,
  nats/token), ``entropy`` (mean token entropy of π, nats/token), ``length`` (mean completion length,
  tokens), the learning rate;
* ``run.json``: the run's config, kind, seed, embedders, timing.

The recorder wraps the toy trainer's driving reward function (``build_grpo_trainer(reward_wrapper=...)``):
TRL calls it once per step with the step's prompts, completions and completion token ids, before the
optimizer step, so the policy seen there is the one that sampled the completions.
"""

from __future__ import annotations

import copy
import csv
import functools
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from monitor.demo.toy import task
from monitor.demo.toy.grpo import ToyRunConfig, build_grpo_trainer, build_policy
from monitor.stepfile import StepPayload, save_step

from .kinds import RunKind, kind_of

Embedder = Callable[[list[str]], Tensor]
"""Maps n texts to an (n, d) float tensor."""

EMBEDDERS: tuple[str, ...] = ("model", "minilm")
"""``model``: ``monitor.embed.ModelEmbedder`` on the frozen warmed-up policy (the run's reference model);
``minilm``: ``monitor.embed.SentenceTransformerEmbedder`` (the packaged all-MiniLM-L6-v2, 384-d)."""

SCALAR_COLUMNS: tuple[str, ...] = (
    "step",
    "reward_mean",
    "reward_std",
    "proxy_mean",
    "true_mean",
    "exploit_fraction",
    "kl",
    "entropy",
    "length",
    "lr",
    "record_seconds",
)


@dataclass(frozen=True)
class RecordConfig:
    """What to record.

    Attributes:
        out_dir: parent folder of the run folders (``bench-out/detection`` is gitignored).
        seeds: seeds; one run of each kind per seed.
        kinds: run kinds to record (see ``benchmarks/detection/kinds.py``).
        max_steps: GRPO steps per run.
        warmup_steps: supervised warm-up batches (None: the toy's default).
        prompts_per_step: prompts per GRPO step (None: the toy's default, 8 → 64 completions per step).
        embedders: which embeddings to record (subset of :data:`EMBEDDERS`).
    """

    out_dir: Path = Path("bench-out/detection")
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    kinds: tuple[RunKind, ...] = ("phrase", "control")
    max_steps: int = 200
    warmup_steps: int | None = None
    prompts_per_step: int | None = None
    embedders: tuple[str, ...] = EMBEDDERS

    def __post_init__(self) -> None:
        unknown = set(self.embedders) - set(EMBEDDERS)
        if unknown:
            raise ValueError(f"unknown embedders {sorted(unknown)}; choose from {EMBEDDERS}")
        if not self.seeds:
            raise ValueError("give at least one seed")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")

    def toy_config(self, seed: int, kind: RunKind = "phrase") -> ToyRunConfig:
        extra: dict[str, Any] = {} if self.warmup_steps is None else {"warmup_steps": self.warmup_steps}
        if self.prompts_per_step is not None:
            extra["prompts_per_step"] = self.prompts_per_step
        return ToyRunConfig(seed=seed, max_steps=self.max_steps, progress_bar=False, quirk=kind_of(kind).quirk, **extra)


def _toy_source_digest() -> str:
    h = hashlib.sha256()
    for path in sorted(Path(task.__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


TOY_SOURCE_SHA256 = _toy_source_digest()
"""sha256 over ``monitor/demo/toy/*.py`` when this module was imported (the toy code a recording ran with)."""


def run_name(kind: RunKind, seed: int) -> str:
    return f"{kind}-s{seed}"


@torch.no_grad()
def token_kl_entropy(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    pad_id: int,
) -> tuple[float, float]:
    """Mean per-token log π(y_t) − log π_ref(y_t) and mean token entropy of π over all completion tokens.

    Args:
        policy, reference: causal LMs over the same vocabulary.
        prompt_ids: n prompt token lists (as the trainer tokenised them).
        completion_ids: n completion token lists (the sampled tokens, EOS included when generated).
        pad_id: padding token id (right padding; masked out).

    Returns:
        ``(kl, entropy)`` in nats per token, averaged over every completion token of the batch (NaN if the
        batch has no completion token). The KL term is the usual single-sample estimator of KL(π‖π_ref).
    """
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts for {len(completion_ids)} completions")
    seqs = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids, strict=True)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    target = torch.zeros((len(seqs), width), dtype=torch.bool)  # positions holding a completion token
    for i, (p, s) in enumerate(zip(prompt_ids, seqs, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
        target[i, len(p) : len(s)] = True
    if not bool(target.any()):
        return math.nan, math.nan
    mask = target[:, 1:]  # logits at position t predict token t + 1
    nxt = ids[:, 1:]
    was_training = policy.training
    policy.eval()
    try:
        logp = torch.log_softmax(policy(input_ids=ids, attention_mask=attn).logits[:, :-1].float(), dim=-1)
    finally:
        policy.train(was_training)
    logq = torch.log_softmax(reference(input_ids=ids, attention_mask=attn).logits[:, :-1].float(), dim=-1)
    tok_p = logp.gather(-1, nxt[..., None])[..., 0]
    tok_q = logq.gather(-1, nxt[..., None])[..., 0]
    kl = float((tok_p - tok_q)[mask].mean())
    entropy = float((-(logp.exp() * logp).sum(-1))[mask].mean())
    return kl, entropy


@dataclass
class StepRecorder:
    """Records every GRPO step of one run into ``run_dir`` (see the module docstring for the layout).

    Attributes:
        run_dir: the run folder (created).
        policy: the model being trained (the same object the trainer optimises).
        reference: a frozen copy of the policy before RL (π_ref).
        tokenizer: the toy tokenizer (prompts are re-tokenised exactly as TRL does: ``tokenizer(text=prompts)``).
        embedders: name -> texts → (n, d) embeddings.
        lr: the run's (constant) learning rate, stored with each step.
        kind: the run's kind, whose judge and marker are recorded.
    """

    run_dir: Path
    policy: torch.nn.Module
    reference: torch.nn.Module
    tokenizer: Any
    embedders: dict[str, Embedder]
    lr: float
    kind: RunKind = "phrase"
    rows: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name in self.embedders:
            (self.run_dir / name).mkdir(exist_ok=True)
        (self.run_dir / "samples.jsonl").write_text("")

    def wrap(self, funcs: list[Callable[..., list[float]]]) -> list[Callable[..., list[float]]]:
        """``reward_wrapper`` for ``build_grpo_trainer``: records around the driving reward ``funcs[0]``."""
        driving = funcs[0]

        @functools.wraps(driving)
        def recorded(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
            rewards = [float(r) for r in driving(prompts, completions, **kwargs)]
            state = kwargs.get("trainer_state")
            step = int(state.global_step) if state is not None else len(self.rows)
            self.record(step, prompts, completions, kwargs.get("completion_ids"), rewards)
            return rewards

        return [recorded, *funcs[1:]]

    def record(
        self,
        step: int,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None,
        rewards: Sequence[float],
    ) -> None:
        """Save one step: embeddings (one step file per embedder), per-sample rewards, scalars."""
        start = time.perf_counter()
        texts = [task.as_text(c) for c in completions]
        prompt_texts = [task.as_text(p) for p in prompts]
        if completion_ids is None:
            completion_ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        kind = kind_of(self.kind)
        judge = [float(v) for v in kind.judge(prompt_texts, texts)]
        marker = [bool(kind.marker(p, t)) for p, t in zip(prompt_texts, texts, strict=True)]
        lengths = [len(c) for c in completion_ids]
        prompt_ids = self.tokenizer(text=prompt_texts)["input_ids"]
        kl, entropy = token_kl_entropy(
            self.policy, self.reference, prompt_ids, completion_ids, self.tokenizer.pad_token_id
        )
        r = torch.tensor(rewards, dtype=torch.float32)
        ids = [f"{step}:{i}" for i in range(len(texts))]
        for name, embed in self.embedders.items():
            latents = embed(texts).detach().to("cpu", torch.float32)
            payload = StepPayload(
                step=step, latents=latents, rewards=r, lr=self.lr, sample_ids=ids, texts=texts, prompts=prompt_texts
            )
            save_step(self.run_dir / name / f"step_{step:05d}.safetensors", payload)
        with (self.run_dir / "samples.jsonl").open("a") as fh:
            row = {"step": step, "reward": list(rewards), "judge": judge, "marker": marker, "length": lengths}
            fh.write(json.dumps(row))
            fh.write("\n")
        n = len(texts)
        self.rows.append(
            {
                "step": step,
                "reward_mean": float(r.mean()),
                "reward_std": float(r.std()) if n > 1 else 0.0,
                "proxy_mean": float(r.mean()),
                "true_mean": sum(judge) / n,
                "exploit_fraction": sum(marker) / n,
                "kl": kl,
                "entropy": entropy,
                "length": sum(lengths) / n,
                "lr": self.lr,
                "record_seconds": time.perf_counter() - start,
            }
        )

    def write_scalars(self) -> None:
        with (self.run_dir / "scalars.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(SCALAR_COLUMNS))
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: row[k] for k in SCALAR_COLUMNS})


def build_embedders(names: Sequence[str], reference: torch.nn.Module, tokenizer: Any) -> dict[str, Embedder]:
    """The embedders named (see :data:`EMBEDDERS`), on the CPU; both embed the completion text alone."""
    from monitor.embed import ModelEmbedder, SentenceTransformerEmbedder

    out: dict[str, Embedder] = {}
    for name in names:
        if name == "model":
            out[name] = ModelEmbedder(reference, tokenizer)
        elif name == "minilm":
            out[name] = SentenceTransformerEmbedder(device="cpu")
        else:
            raise ValueError(f"unknown embedder {name!r}; choose from {EMBEDDERS}")
    return out


def embedder_source(embedders: dict[str, Embedder]) -> dict[str, str]:
    """name -> the class used (module-qualified), for the run's record."""
    return {k: f"{type(v).__module__}.{type(v).__qualname__}" for k, v in embedders.items()}


def record_run(config: RecordConfig, kind: RunKind, seed: int, log: Callable[[str], None] = print) -> Path:
    """Train and record one run; returns its folder. Overwrites a previous recording of the same run."""
    torch.set_num_threads(1)
    run_dir = config.out_dir / run_name(kind, seed)
    if run_dir.exists():
        for old in sorted(run_dir.rglob("*"), reverse=True):
            old.unlink() if old.is_file() else old.rmdir()
    toy = config.toy_config(seed, kind)
    t0 = time.perf_counter()
    policy, tokenizer = build_policy(toy)
    reference = copy.deepcopy(policy).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    embedders = build_embedders(config.embedders, reference, tokenizer)
    recorder = StepRecorder(
        run_dir=run_dir,
        policy=policy,
        reference=reference,
        tokenizer=tokenizer,
        embedders=embedders,
        lr=toy.learning_rate,
        kind=kind,
    )
    t1 = time.perf_counter()
    trainer = build_grpo_trainer(
        toy,
        reward=kind_of(kind).driving,
        reward_wrapper=recorder.wrap,
        output_dir=config.out_dir / f"trl-output-{run_name(kind, seed)}",
        model=policy,
        tokenizer=tokenizer,
    )
    trainer.train()
    t2 = time.perf_counter()
    recorder.write_scalars()
    meta = {
        "name": run_name(kind, seed),
        "kind": kind,
        "seed": seed,
        "embedders": list(config.embedders),
        "embedder_classes": embedder_source(embedders),
        "toy_config": asdict(toy),
        "toy_source_sha256": TOY_SOURCE_SHA256,
        "steps": len(recorder.rows),
        "completions_per_step": toy.completions_per_step,
        "seconds": {"warmup": t1 - t0, "train_and_record": t2 - t1},
    }
    (run_dir / "run.json").write_text(json.dumps(meta, indent=2))
    log(f"recorded {run_name(kind, seed)}: {len(recorder.rows)} steps in {t2 - t0:.0f} s")
    return run_dir
