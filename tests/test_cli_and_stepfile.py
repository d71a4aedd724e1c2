"""The ``fpmon`` command and the step-file format, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from monitor.cli import app
from monitor.demo.particles import run_demo
from monitor.stepfile import StepPayload, decode_step, encode_step, load_step, save_step

runner = CliRunner()


def test_step_payload_round_trip_all_dtypes() -> None:
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        payload = StepPayload(
            step=7,
            latents=torch.randn(4, 3).to(dtype),
            rewards=torch.tensor([1.0, 0.0, 0.5, -1.0]),
            lr=1e-6,
            sample_ids=["a", "b", "c", "d"],
            texts=["x", "y", "z", "w"],
            prompts=["p"] * 4,
        )
        back = decode_step(encode_step(payload))
        assert back.step == 7 and back.lr == 1e-6 and back.texts == payload.texts
        assert back.latents.dtype == dtype
        torch.testing.assert_close(back.latents, payload.latents)
        torch.testing.assert_close(back.rewards, payload.rewards)


def test_step_payload_errors_say_what_to_fix() -> None:
    with pytest.raises(ValueError, match="not a safetensors step payload"):
        decode_step(b"definitely not safetensors")
    good = encode_step(StepPayload(step=1, latents=torch.randn(4, 3)))
    with pytest.raises(ValueError, match="not a safetensors step payload"):
        decode_step(good[: len(good) // 2])
    with pytest.raises(ValueError, match="'texts' has 2 entries for 4 latents"):
        encode_step(StepPayload(step=1, latents=torch.randn(4, 3), texts=["a", "b"]))
    with pytest.raises(ValueError, match=r"'rewards' must have shape \(4,\)"):
        encode_step(StepPayload(step=1, latents=torch.randn(4, 3), rewards=torch.zeros(5)))
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        encode_step(StepPayload(step=1, latents=torch.zeros(4, 3, dtype=torch.int64)))


def test_step_payload_rewards_dtypes_and_string_lists() -> None:
    """Rewards are real floating point (read as sent, written as float32); metadata lists hold strings only."""
    from safetensors.torch import save as st_save

    z = torch.randn(4, 3)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        body = st_save({"latents": z, "rewards": torch.arange(4).to(dtype)}, metadata={"step": "1"})
        assert decode_step(body).rewards.dtype == dtype
        assert decode_step(encode_step(decode_step(body))).rewards.dtype == torch.float32
    for dtype in (torch.complex64, torch.float8_e4m3fn, torch.float8_e5m2, torch.int64, torch.int32, torch.bool):
        body = st_save({"latents": z, "rewards": torch.ones(4).to(dtype)}, metadata={"step": "1"})
        with pytest.raises(ValueError, match=f"'rewards' must be real floating point .*got {dtype}; send them as"):
            decode_step(body)
    with pytest.raises(ValueError, match="'rewards' must be real floating point"):
        encode_step(StepPayload(step=1, latents=z, rewards=torch.ones(4, dtype=torch.complex64)))
    for value, message in (
        ([1, 2, 3, 4], "entry 0 is int"),
        (["a", None, "c", "d"], "entry 1 is NoneType"),
        (["a", "b", ["c"], "d"], "entry 2 is list"),
        ({"a": 1}, ", got dict"),
        ("a string", ", got str"),
    ):
        body = st_save({"latents": z}, metadata={"step": "1", "texts": json.dumps(value)})
        with pytest.raises(ValueError, match=f"metadata 'texts' must be a JSON list of strings.*{message}"):
            decode_step(body)
    # strings the databases refuse are well-formed: the wire format carries them, the ingest check refuses them
    odd = ["\ud800", "a\x00", "x" * 300, "🦀"]
    back = decode_step(encode_step(StepPayload(step=1, latents=z, texts=odd, sample_ids=odd, prompts=odd)))
    assert back.texts == back.sample_ids == back.prompts == odd


def test_demo_detects_the_known_transition_without_false_alarms() -> None:
    """A shortened `make demo`: the alert comes within 3 steps of the transition, none before it."""
    result = run_demo(n=128, latent_dim=64, n_steps=36, transition_step=25, progress=False)
    assert result.delay is not None and 0 <= result.delay <= 3
    assert result.false_alarms == 0
    first = next(rep.alert for rep in result.reports if rep.alert)
    assert first.type == "POTENTIAL_REWARD_HACKING"
    assert all(s.div < 0 for s in first.top_samples)  # mass arriving in the new minimum


def test_fpmon_demo_command_prints_table_and_alert() -> None:
    result = runner.invoke(app, ["demo", "--steps", "30", "--transition", "20", "--n", "96", "--latent-dim", "32"])
    assert result.exit_code == 0, result.output
    assert "Observables per step" in result.output
    assert "POTENTIAL_REWARD_HACKING at step 2" in result.output
    assert "Known transition at step 20" in result.output
    bad = runner.invoke(app, ["demo", "--steps", "10", "--transition", "20"])
    assert bad.exit_code != 0 and "--transition must be between" in bad.output


def test_fpmon_analyze_over_saved_step_files(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(4, 24, generator=gen)
    for step in range(30):
        z = torch.randn(96, 4, generator=gen) @ basis + 0.1 * torch.randn(96, 24, generator=gen)
        r = 0.1 * torch.randn(96, generator=gen)
        if step >= 20:
            z[:30] = 4 * basis[0] + 0.02 * torch.randn(30, 24, generator=gen)
            r[:30] += 1
        texts = [f"s{step}-{i}" for i in range(96)]
        save_step(
            tmp_path / f"step_{step:03d}.safetensors",
            StepPayload(step=step, latents=z, rewards=r, texts=texts),
        )
    files = sorted(str(p) for p in tmp_path.glob("*.safetensors"))
    out = tmp_path / "report.json"
    result = runner.invoke(app, ["analyze", *reversed(files), "--json", str(out)])  # any order: sorted by step
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["rows"]
    assert [row["step"] for row in rows] == list(range(30))
    alerted = [row["step"] for row in rows if row["alert"]]
    assert alerted and 20 <= alerted[0] <= 25  # the e-detectors need a few steps of the change (docs/detection.md)
    assert load_step(files[0]).texts == [f"s0-{i}" for i in range(96)]
    (tmp_path / "broken.safetensors").write_bytes(b"garbage")
    bad = runner.invoke(app, ["analyze", str(tmp_path / "broken.safetensors")])
    assert bad.exit_code != 0 and "not a safetensors step payload" in bad.output


def test_console_script_is_installed() -> None:
    """`fpmon --help` works through the composition root the entry point runs (`python -m api.cli`)."""
    proc = subprocess.run([sys.executable, "-m", "api.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert all(command in proc.stdout for command in ("demo", "analyze", "sync", "serve", "db"))


def test_payload_digest_ignores_the_encoding_order_but_not_the_content() -> None:
    base = StepPayload(step=3, latents=torch.ones(4, 2), rewards=torch.zeros(4), texts=["a", "b", "c", "d"], lr=0.1)
    from monitor.stepfile import payload_digest

    encodings = {encode_step(base) for _ in range(20)}  # safetensors may order its metadata differently
    digests = {payload_digest(decode_step(e)) for e in encodings}
    assert len(digests) == 1
    changed = StepPayload(step=3, latents=torch.ones(4, 2), rewards=torch.zeros(4), texts=["a", "b", "c", "x"], lr=0.1)
    assert payload_digest(changed) not in digests
    bf16 = StepPayload(step=3, latents=torch.ones(4, 2, dtype=torch.bfloat16))
    assert payload_digest(bf16) == payload_digest(decode_step(encode_step(bf16)))


# ------------------------------------------------------------------------ reference_rewards (a held-out judge)
def judged(step: int = 3, reference: torch.Tensor | None = None) -> StepPayload:
    return StepPayload(
        step=step,
        latents=torch.arange(8, dtype=torch.float32).reshape(4, 2),
        rewards=torch.tensor([0.5, -1.0, 2.0, 0.0]),
        lr=1e-5,
        sample_ids=["a", "b", "c", "d"],
        texts=["w", "x", "y", "z"],
        reference_rewards=reference,
    )


def test_reference_rewards_round_trip_and_old_payloads_still_decode() -> None:
    from safetensors.torch import save as st_save

    ref = torch.tensor([0.25, 0.0, -3.0, 1.5])
    back = decode_step(encode_step(judged(reference=ref)))
    assert back.reference_rewards is not None and back.reference_rewards.dtype == torch.float32
    assert torch.equal(back.reference_rewards, ref) and torch.equal(back.rewards, judged().rewards)
    assert decode_step(encode_step(judged())).reference_rewards is None
    r = torch.tensor([0.5, -1.0, 2.0, 0.0])  # the very tensor of the rewards (safetensors refuses shared memory)
    assert torch.equal(
        decode_step(encode_step(StepPayload(3, torch.ones(4, 2), r, reference_rewards=r))).reference_rewards, r
    )
    # read in every reward dtype, written as float32 (like the rewards)
    z = torch.randn(4, 3)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        body = st_save(
            {"latents": z, "rewards": torch.ones(4), "reference_rewards": torch.arange(4).to(dtype)},
            metadata={"step": "1"},
        )
        assert decode_step(body).reference_rewards.dtype == dtype
        assert decode_step(encode_step(decode_step(body))).reference_rewards.dtype == torch.float32
    # a payload written before the field existed (no such tensor) decodes as it did
    old = st_save({"latents": z, "rewards": torch.ones(4)}, metadata={"step": "2", "texts": json.dumps(list("abcd"))})
    assert decode_step(old).reference_rewards is None and decode_step(old).texts == list("abcd")


def test_payload_digest_without_reference_rewards_is_unchanged() -> None:
    """Idempotent re-sends: a step without reference_rewards keeps the digest it had before the field existed
    (the values below were computed by the earlier ``payload_digest``); with them the digest changes."""
    from monitor.stepfile import payload_digest

    before = "e420bf86ab045e4dc99666699b1c7beb6d0512f4970ef7cb72878c7d67b7e68f"
    assert payload_digest(judged()) == payload_digest(decode_step(encode_step(judged()))) == before
    bf16 = StepPayload(step=4, latents=torch.ones(3, 2, dtype=torch.bfloat16))
    assert payload_digest(bf16) == "fbdde4606b22cb73c60167e71d7335cf053c3bae5ee7e587a1d71ff9be466a12"
    with_ref = judged(reference=torch.zeros(4))
    assert payload_digest(with_ref) != before
    assert payload_digest(with_ref) == payload_digest(decode_step(encode_step(with_ref)))
    assert payload_digest(judged(reference=torch.ones(4))) != payload_digest(with_ref)


def test_reference_rewards_errors_say_what_to_fix() -> None:
    from safetensors.torch import save as st_save

    z = torch.randn(4, 3)
    cases = [
        ({"latents": z, "reference_rewards": torch.ones(4)}, "'reference_rewards' need 'rewards'"),
        ({"latents": z, "rewards": torch.ones(4), "reference_rewards": torch.ones(3)}, r"must have shape \(4,\)"),
        ({"latents": z, "rewards": torch.ones(4), "reference_rewards": torch.ones(4, 1)}, r"must have shape \(4,\)"),
        (
            {"latents": z, "rewards": torch.ones(4), "reference_rewards": torch.arange(4)},
            "'reference_rewards' must be real floating point .*int64; send them as float32",
        ),
        (
            {"latents": z, "rewards": torch.ones(4), "reference_rewards": torch.tensor([1.0, float("nan"), 0, 0])},
            "'reference_rewards' contain NaN or Inf",
        ),
        (
            {"latents": z, "rewards": torch.ones(4), "reference_rewards": torch.tensor([1.0, float("inf"), 0, 0])},
            "'reference_rewards' contain NaN or Inf",
        ),
    ]
    for tensors, message in cases:
        with pytest.raises(ValueError, match=message):
            decode_step(st_save(tensors, metadata={"step": "1"}))
        payload = StepPayload(
            step=1, latents=z, rewards=tensors.get("rewards"), reference_rewards=tensors["reference_rewards"]
        )
        with pytest.raises(ValueError, match=message):
            encode_step(payload)


def test_fpmon_analyze_reads_reference_rewards(tmp_path: Path) -> None:
    """A step file with a judge: ``fpmon analyze`` hands the judge's rewards to the monitor (its reward
    evidence is then the proxy − judge gap: the ``judge_gap`` stream appears in the report's evidence)."""
    gen = torch.Generator().manual_seed(3)
    files = []
    for step in range(6):
        z = torch.randn(64, 8, generator=gen)
        r = torch.randn(64, generator=gen)
        payload = StepPayload(
            step=step, latents=z, rewards=r, reference_rewards=r - 0.1 * torch.rand(64, generator=gen)
        )
        save_step(tmp_path / f"s{step}.safetensors", payload)
        files.append(str(tmp_path / f"s{step}.safetensors"))
    result = runner.invoke(app, ["analyze", *files, "--json", str(tmp_path / "out.json")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "out.json").read_text())["rows"]
    assert "judge_gap" in rows[-1]["evidence"] and "reward_rise" in rows[-1]["evidence"]
    assert "judge_gap" not in rows[0]["evidence"]  # no lagged window yet
