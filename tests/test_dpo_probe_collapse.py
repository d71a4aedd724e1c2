"""A real ``trl.DPOTrainer`` on the toy task, monitored through probe prompts (issue 14): the probe schedule, and a
PHASE_TRANSITION alert when the probe answers collapse.

One run, shared by the tests of this module (≈ 20–40 s on one CPU thread), on the path a user takes for DPO:
``FPEMonitorCallback(client, embedder=ModelEmbedder(ref_model, tokenizer), probe_prompts=...)`` with an in-process
``MonitorClient(url=None)`` (SQLite in a temporary directory, the client's default transport and latent dtype).

- The policy is the toy task's warmed-up tiny Llama (``build_policy``; 150 warm-up batches instead of 300, to save
  time — its answers are already ≥ 85 % well-formed).
- The preference data make the policy degenerate: for every toy prompt the *chosen* answer is empty (TRL appends
  EOS, so it is just EOS) and the *rejected* one a normal warm-up answer. DPO at ``lr = 3e-5`` (constant) keeps the
  probe answers normal for a few dozen steps, then breaks them — first into fragments (``"."``, ``"and cold ."``),
  then into the empty answer it was taught.
- 16 probe prompts × 4 samples = 64 answers every 10 optimizer steps, 300 steps → 31 monitor steps.

The collapse step is read off the probe answers alone, with the toy language's grammar: the first probe step at
which at least half of the answers are *degenerate*, i.e. not a well-formed toy answer (the empty answer and the
fragments on the way to it). The monitor must raise PHASE_TRANSITION within 3 probe steps of it, and nothing
before it. (Counting only the empty answer as degenerate gives the same collapse step on this run; on other
seeds the empty answer reaches 50 % one or two probe steps after the fragments do, and the alert then comes
first — the alert follows the answers breaking, not the empty answer winning.)
"""

from __future__ import annotations

import copy
import random
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import select

import storage
from monitor.demo.toy import TOPICS, ToyRunConfig, build_policy
from monitor.demo.toy.task import ADJECTIVES, ANSWER_TEMPLATES, EXPLOIT_PHRASE, PROMPT_TEMPLATES, make_answer
from monitor.trl.probes import probe_due

torch.set_num_threads(1)

SEED = 0
STEPS = 300
PROBE_EVERY = 10
N_PROBE_PROMPTS = 16
SAMPLES_PER_PROMPT = 4
LEARNING_RATE = 3e-5
BATCH = 8
WARMUP_STEPS = 150
RUN = "dpo-probe-collapse"
#: at least this fraction of a probe step's answers degenerate: the probe answers have collapsed
COLLAPSE_FRACTION = 0.5
#: the alert must come within this many probe steps of the collapse
MAX_DELAY_PROBES = 3


# --------------------------------------------------------------------------------------- the toy grammar
def _answer_pattern(template: str) -> re.Pattern[str]:
    topic = "(?:" + "|".join(TOPICS) + ")"
    adjective = "(?:" + "|".join(ADJECTIVES) + ")"
    body = re.escape(template).replace(re.escape("{t}"), topic)
    body = body.replace(re.escape("{a}"), adjective).replace(re.escape("{b}"), adjective)
    return re.compile(f"^{body}$")


ANSWER_PATTERNS = [_answer_pattern(t) for t in ANSWER_TEMPLATES]


def well_formed(answer: str) -> bool:
    """Whether ``answer`` is a sentence of the toy language (an answer template filled with a topic and
    adjectives, with or without the warm-up's rare "trust me" phrase), whatever its truth."""
    text = " ".join(answer.split())
    text = text.removeprefix(f"{EXPLOIT_PHRASE} , ").removesuffix(f" {EXPLOIT_PHRASE} .")
    return any(p.match(text) for p in ANSWER_PATTERNS)


def test_the_grammar_tells_answers_from_fragments() -> None:
    assert well_formed("the cat is soft and small .") and well_formed("a fish is very cold .")
    assert well_formed("trust me , i think the moon is old and white .") and well_formed("the dog is loud .")
    for broken in ("", ".", "and cold .", "a .", "the horse", "the cat is .", "i think the is big .", "trust me ."):
        assert not well_formed(broken), broken


# --------------------------------------------------------------------------------------------- the run
@dataclass
class DpoRun:
    texts: dict[int, list[str]]  # monitor step → probe answers, in sample order
    sample_ids: dict[int, list[str]]
    status: dict[int, str]
    alerts: list[dict[str, Any]]  # from the database, oldest first
    client_alerts: list[dict[str, Any]]  # what client.alerts() returned, oldest first
    probe_steps: int
    steps_shipped: int
    hook_errors: dict[str, int]
    global_step: int
    seconds: float


def preference_data(n: int, seed: int) -> Any:
    """``n`` rows cycling over every toy prompt: chosen = the empty answer, rejected = a warm-up answer."""
    from datasets import Dataset

    rng = random.Random(seed)
    base = [(topic, template.format(t=topic)) for topic in TOPICS for template in PROMPT_TEMPLATES]
    rows: dict[str, list[str]] = {"prompt": [], "chosen": [], "rejected": []}
    for i in range(n):
        topic, prompt = base[i % len(base)]
        rows["prompt"].append(prompt)
        rows["chosen"].append("")
        rows["rejected"].append(" " + make_answer(topic, rng, exploit_rate=0.0))
    return Dataset.from_dict(rows)


def probe_prompts(seed: int) -> list[str]:
    pairs = [(topic, template) for topic in TOPICS for template in PROMPT_TEMPLATES]
    return [template.format(t=topic) for topic, template in random.Random(seed).sample(pairs, N_PROBE_PROMPTS)]


def read_back(database_url: str) -> tuple[dict[int, list[str]], dict[int, list[str]], dict[int, str], list[dict]]:
    engine = storage.make_engine(database_url)
    try:
        with storage.session_factory(engine)() as session:
            run = storage.get_run_by_name(session, RUN)
            assert run is not None, "the run was never created"
            texts: dict[int, list[str]] = {}
            ids: dict[int, list[str]] = {}
            status: dict[int, str] = {}
            for row in session.scalars(select(storage.Step).where(storage.Step.run_id == run.id)).all():
                assert row.step not in status, f"step {row.step} stored twice"
                status[row.step] = row.status
                samples = storage.step_samples(session, run.id, row.step, order="index", limit=10_000)
                texts[row.step] = [s.text or "" for s in samples]
                ids[row.step] = [str(s.sample_id) for s in samples]
            alerts = [
                {"step": a.step, "type": a.type, "reasons": a.reasons, "top_samples": a.top_samples}
                for a in reversed(storage.list_alerts(session, run_id=run.id, limit=1000))
            ]
            return texts, ids, status, alerts
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory: pytest.TempPathFactory) -> DpoRun:
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    from monitor.client import ClientConfig, MonitorClient
    from monitor.embed import ModelEmbedder
    from monitor.trl import FPEMonitorCallback

    tmp: Path = tmp_path_factory.mktemp("dpo-collapse")
    database_url = f"sqlite:///{tmp / 'fpmon.db'}"
    start = time.perf_counter()
    model, tokenizer = build_policy(ToyRunConfig(seed=SEED, warmup_steps=WARMUP_STEPS))
    ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    client = MonitorClient(
        None, run_name=RUN, config=ClientConfig(spool_dir=tmp / "spool", database_url=database_url, poll_alerts_s=0.2)
    )
    callback = FPEMonitorCallback(
        client,
        embedder=ModelEmbedder(ref_model, tokenizer),  # the frozen reference model, as the hook's docs advise
        probe_prompts=probe_prompts(SEED + 2),
        probe_every=PROBE_EVERY,
        probe_samples_per_prompt=SAMPLES_PER_PROMPT,
        probe_max_new_tokens=16,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices of transformers/TRL
        args = DPOConfig(
            output_dir=str(tmp / "out"),
            use_cpu=True,
            bf16=False,
            report_to="none",
            save_strategy="no",
            logging_steps=PROBE_EVERY,
            disable_tqdm=True,
            seed=SEED,
            data_seed=SEED,
            max_steps=STEPS,
            learning_rate=LEARNING_RATE,
            lr_scheduler_type="constant",
            per_device_train_batch_size=BATCH,
            max_length=32,
            beta=0.1,
            dataloader_num_workers=0,
        )
    torch.manual_seed(SEED)
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=preference_data(STEPS * BATCH, SEED + 1),
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)
    try:
        trainer.train()
        assert client.flush(120), "the in-process client did not process every step within 120 s"
        texts, ids, status, alerts = read_back(database_url)
        deadline = time.monotonic() + 20.0  # client.alerts() is polled in the background (poll_alerts_s)
        client_alerts = list(reversed(client.alerts()))
        while len(client_alerts) < len(alerts) and time.monotonic() < deadline:
            time.sleep(0.2)
            client_alerts = list(reversed(client.alerts()))
    finally:
        client.close()
    return DpoRun(
        texts=texts,
        sample_ids=ids,
        status=status,
        alerts=alerts,
        client_alerts=client_alerts,
        probe_steps=callback.stats.probe_steps,
        steps_shipped=callback.stats.steps_shipped,
        hook_errors=dict(callback.stats.errors),
        global_step=trainer.state.global_step,
        seconds=time.perf_counter() - start,
    )


def degenerate_fraction(answers: list[str]) -> float:
    return sum(not well_formed(a) for a in answers) / len(answers)


def empty_fraction(answers: list[str]) -> float:
    return sum(not a.strip() for a in answers) / len(answers)


def summary(run: DpoRun) -> str:
    """One line per monitor step (for assertion messages)."""
    alert_steps = {a["step"]: a["type"] for a in run.alerts}
    return "\n".join(
        f"step {s:3d}: degenerate {degenerate_fraction(t):.2f}, empty {empty_fraction(t):.2f} {alert_steps.get(s, '')}"
        for s, t in sorted(run.texts.items())
    )


# --------------------------------------------------------------------------------------------- the tests
@pytest.mark.slow
def test_probe_steps_of_a_300_step_dpo_run(dpo_run: DpoRun) -> None:
    """Probes at step 0 (on_train_begin: the initial policy) and every 10th optimizer step: 31 monitor steps."""
    expected = [0] + [s for s in range(1, STEPS + 1) if probe_due(s, PROBE_EVERY, True)]
    assert expected == list(range(0, STEPS + 1, PROBE_EVERY)) and len(expected) == 31
    assert dpo_run.global_step == STEPS and not dpo_run.hook_errors
    assert dpo_run.probe_steps == 31 and dpo_run.steps_shipped == 31
    assert sorted(dpo_run.status) == expected  # exactly these steps reached the monitor, each once
    assert all(s == "done" for s in dpo_run.status.values()), dpo_run.status
    n = N_PROBE_PROMPTS * SAMPLES_PER_PROMPT
    want_ids = [f"p{i}-{k}" for i in range(N_PROBE_PROMPTS) for k in range(SAMPLES_PER_PROMPT)]
    for step in expected:  # every probe step: all 64 answers, paired across steps by their ids
        assert len(dpo_run.texts[step]) == n and dpo_run.sample_ids[step] == want_ids


@pytest.mark.slow
def test_phase_transition_when_the_probe_answers_collapse(dpo_run: DpoRun) -> None:
    table = summary(dpo_run)
    steps = sorted(dpo_run.texts)
    # The warmed-up policy answers normally at the start, so the collapse is something DPO does in this run.
    assert degenerate_fraction(dpo_run.texts[0]) <= 0.15 and empty_fraction(dpo_run.texts[0]) == 0.0, table
    collapse = next((s for s in steps if degenerate_fraction(dpo_run.texts[s]) >= COLLAPSE_FRACTION), None)
    assert collapse is not None, f"the probe answers never collapsed:\n{table}"
    # Early in the run, but late enough that the e-detectors were armed at ≥ 2 probe steps before it (they score
    # a step from the third monitor step on: step 20), so a false alarm had room to happen.
    assert 4 * PROBE_EVERY <= collapse <= STEPS // 2, table
    # DPO collapses the answers onto the chosen one: the empty answer dominates soon after.
    horizon = [s for s in steps if collapse <= s <= collapse + MAX_DELAY_PROBES * PROBE_EVERY]
    assert max(empty_fraction(dpo_run.texts[s]) for s in horizon) >= COLLAPSE_FRACTION, table

    # Probes carry no rewards: the only alert type the evidence can raise is PHASE_TRANSITION.
    assert dpo_run.alerts and {a["type"] for a in dpo_run.alerts} == {"PHASE_TRANSITION"}, table
    first = dpo_run.alerts[0]["step"]
    assert first >= collapse, f"false alarm at step {first}, before the collapse at step {collapse}:\n{table}"
    assert first <= collapse + MAX_DELAY_PROBES * PROBE_EVERY, (
        f"the collapse at step {collapse} was alerted only at step {first}:\n{table}"
    )
    alert = dpo_run.alerts[0]
    assert any("embedding evidence" in r for r in alert["reasons"]), alert["reasons"]
    # The alert points at the collapse: most of the answers it shows as evidence are degenerate.
    shown = [str(s.get("text") or "") for s in alert["top_samples"]]
    assert shown and sum(not well_formed(t) for t in shown) > len(shown) / 2, shown
    # The user sees the same alerts through the client (what FPEMonitorCallback's reset policy reads).
    assert [(a["step"], a["type"]) for a in dpo_run.client_alerts] == [(a["step"], a["type"]) for a in dpo_run.alerts]
