"""A 202 from step ingest means the step will be processed: what the worker or a database would refuse is
refused at ingest (400 unreadable, 422 invalid), with a message that names the field, on SQLite and
PostgreSQL; and ``MonitorClient.observe`` refuses the same strings at once, on the calling thread.

Each hostile payload below was once answered 202 "queued" and then failed in the worker (lone surrogates,
complex rewards, NUL characters, sample ids over the column's length) or answered 500 (float8 rewards).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from api_helpers import D
from fastapi.testclient import TestClient
from safetensors.torch import save as st_save
from sqlalchemy import String
from sqlalchemy.orm import Session

import storage
from api.main import create_app
from api.settings import Settings
from monitor import ClientConfig, MonitorClient, processing
from monitor.processing import StepProcessor
from monitor.stepfile import MAX_SAMPLE_ID_CHARS, StepPayload, check_strings, decode_step, encode_step

OCTET = {"Content-Type": "application/octet-stream"}
N = 16
nan = float("nan")


def latents(step: int, n: int = N) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(step))


def raw(step: int | str, tensors: dict[str, torch.Tensor] | None = None, **meta: object) -> bytes:
    """A safetensors body written directly (no ``encode_step`` checks): a client in another language."""
    header = {"step": str(step)}
    for key, value in meta.items():
        header[key] = value if isinstance(value, str) else json.dumps(value)
    return st_save(tensors if tensors is not None else {"latents": latents(0)}, metadata=header)


def with_strings(
    step: int, texts: list[str] | None = None, prompts: list[str] | None = None, sample_ids: list[str] | None = None
) -> bytes:
    """A valid step with these string lists (``encode_step`` writes them as any JSON encoder would)."""
    payload = StepPayload(
        step, latents(step), torch.randn(N), 1e-5, sample_ids=sample_ids, texts=texts, prompts=prompts
    )
    return encode_step(payload)


def strings(bad: str, at: int = 3) -> list[str]:
    out = [f"answer {i}" for i in range(N)]
    out[at] = bad
    return out


#: name → (body, status, what the message must contain: the field and what is wrong)
REFUSED: dict[str, Callable[[], tuple[bytes, int, tuple[str, ...]]]] = {
    "lone surrogate in texts": lambda: (
        with_strings(100, texts=strings("bad \ud800 text")),
        422,
        ("metadata 'texts' entry 3", "UTF-8", "surrogate"),
    ),
    "lone low surrogate in prompts": lambda: (
        with_strings(101, prompts=strings("\udfff")),
        422,
        ("metadata 'prompts' entry 3", "UTF-8"),
    ),
    "split surrogate pair across entries": lambda: (
        with_strings(102, texts=["\ud83d", "\ude00", *[f"t{i}" for i in range(N - 2)]]),
        422,
        ("metadata 'texts' entry 0", "UTF-8", "and 1 more entry"),
    ),
    "lone surrogate in sample_ids": lambda: (
        with_strings(103, sample_ids=strings("id-\ud800")),
        422,
        ("metadata 'sample_ids' entry 3", "UTF-8"),
    ),
    "NUL in texts": lambda: (with_strings(104, texts=strings("a\x00b")), 422, ("metadata 'texts' entry 3", "NUL")),
    "NUL in prompts": lambda: (with_strings(105, prompts=strings("\x00")), 422, ("metadata 'prompts' entry 3", "NUL")),
    "NUL in sample_ids": lambda: (
        with_strings(106, sample_ids=strings("id\x00")),
        422,
        ("metadata 'sample_ids' entry 3", "NUL"),
    ),
    "sample id over the column length": lambda: (
        with_strings(107, sample_ids=strings("x" * (MAX_SAMPLE_ID_CHARS + 1))),
        422,
        ("metadata 'sample_ids' entry 3", f"{MAX_SAMPLE_ID_CHARS + 1} characters", str(MAX_SAMPLE_ID_CHARS)),
    ),
    "several string problems at once": lambda: (
        with_strings(108, texts=strings("\x00"), sample_ids=strings("y" * 500, at=0)),
        422,
        ("metadata 'texts' entry 3", "metadata 'sample_ids' entry 0"),
    ),
    "complex64 rewards": lambda: (
        raw(110, {"latents": latents(110), "rewards": torch.randn(N, dtype=torch.complex64)}),
        400,
        ("'rewards'", "complex64", "float32"),
    ),
    "float8_e4m3fn rewards": lambda: (
        raw(111, {"latents": latents(111), "rewards": torch.randn(N).to(torch.float8_e4m3fn)}),
        400,
        ("'rewards'", "float8_e4m3fn"),
    ),
    "float8_e5m2 rewards": lambda: (
        raw(112, {"latents": latents(112), "rewards": torch.randn(N).to(torch.float8_e5m2)}),
        400,
        ("'rewards'", "float8_e5m2"),
    ),
    "int64 rewards": lambda: (
        raw(113, {"latents": latents(113), "rewards": torch.arange(N)}),
        400,
        ("'rewards'", "int64", "send them as float32"),
    ),
    "bool rewards": lambda: (
        raw(114, {"latents": latents(114), "rewards": torch.ones(N, dtype=torch.bool)}),
        400,
        ("'rewards'", "bool"),
    ),
    "2-D rewards": lambda: (
        raw(115, {"latents": latents(115), "rewards": torch.randn(N, 1)}),
        400,
        ("'rewards' must have shape",),
    ),
    "float64 latents": lambda: (raw(116, {"latents": latents(116).double()}), 400, ("'latents'", "float64")),
    "float8 latents": lambda: (
        raw(117, {"latents": latents(117).to(torch.float8_e4m3fn)}),
        400,
        ("'latents'", "float8"),
    ),
    "int latents": lambda: (raw(118, {"latents": torch.ones(N, D, dtype=torch.int32)}), 400, ("'latents'", "int32")),
    "texts of numbers": lambda: (raw(119, texts=list(range(N))), 400, ("metadata 'texts'", "entry 0 is int")),
    "a null sample id": lambda: (
        raw(120, sample_ids=[None] + [f"s{i}" for i in range(N - 1)]),
        400,
        ("metadata 'sample_ids'", "entry 0 is NoneType"),
    ),
    "prompts as an object": lambda: (raw(121, prompts={"a": "b"}), 400, ("metadata 'prompts'", "list of strings")),
    "prompts not JSON": lambda: (raw(122, prompts="[oops"), 400, ("metadata 'prompts'",)),
    "texts of the wrong length": lambda: (raw(123, texts=["a", "b"]), 400, ("metadata 'texts' has 2 entries",)),
    "lr NaN": lambda: (raw(124, lr="nan"), 400, ("'lr'",)),
    "lr infinite": lambda: (raw(125, lr="1e400"), 400, ("'lr'",)),
    "lr zero": lambda: (raw(126, lr="0"), 400, ("'lr'",)),
    "lr not a number": lambda: (raw(127, lr="fast"), 400, ("'lr'",)),
    "step negative": lambda: (raw(-1), 422, ("step must be between 0",)),
    "step beyond the column": lambda: (raw(2**31), 422, ("step must be between 0",)),
    "step not an integer": lambda: (raw("1.5"), 400, ("'step'",)),
    "no step": lambda: (st_save({"latents": latents(0)}, metadata={"texts": "[]"}), 400, ("'step'",)),
    "latents near float32's limit": lambda: (
        raw(129, {"latents": latents(129) * 1e37}),
        422,
        ("latents reach |x| = ", "rescale"),
    ),
    "NaN rewards": lambda: (
        raw(128, {"latents": latents(128), "rewards": torch.full((N,), float("nan"))}),
        422,
        ("rewards contain NaN",),
    ),
    "not safetensors": lambda: (b"\x00" * 64, 400, ("not a safetensors step payload",)),
    "reference_rewards without rewards": lambda: (
        raw(130, {"latents": latents(130), "reference_rewards": torch.randn(N)}),
        400,
        ("'reference_rewards' need 'rewards'", "send both"),
    ),
    "reference_rewards of another length": lambda: (
        raw(131, {"latents": latents(131), "rewards": torch.randn(N), "reference_rewards": torch.randn(N - 1)}),
        400,
        (f"'reference_rewards' must have shape ({N},)",),
    ),
    "NaN reference_rewards": lambda: (
        raw(132, {"latents": latents(132), "rewards": torch.randn(N), "reference_rewards": torch.full((N,), nan)}),
        400,
        ("'reference_rewards' contain NaN or Inf",),
    ),
    "infinite reference_rewards": lambda: (
        raw(
            133,
            {
                "latents": latents(133),
                "rewards": torch.randn(N),
                "reference_rewards": torch.tensor([float("inf")] + [0.0] * (N - 1)),
            },
        ),
        400,
        ("'reference_rewards' contain NaN or Inf",),
    ),
    "int64 reference_rewards": lambda: (
        raw(134, {"latents": latents(134), "rewards": torch.randn(N), "reference_rewards": torch.arange(N)}),
        400,
        ("'reference_rewards'", "int64", "send them as float32"),
    ),
}


def accepted() -> list[tuple[str, bytes]]:
    """Payloads at the edges of what is allowed, in step order: each must be stored and processed."""
    unicode_texts = [
        "emoji 🦀🚀👩🏽‍💻",
        "CJK 漢字かなカナ한국어",
        "RTL \u202bשלום\u202c مرحبا \u200f",
        "combining e\u0301 and zero-width \u200b\u200d joiner",
        "astral 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and \U0010fffd",
        "control \t\n\r\x01\x7f chars",
        "",
        "quotes \"'\\ and {json}",
        *[f"plain {i}" for i in range(N - 8)],
    ]
    ids = ["🦀" * MAX_SAMPLE_ID_CHARS, "é" * MAX_SAMPLE_ID_CHARS, *[f"id-{i}" for i in range(N - 2)]]
    prompts = [f"prompt ✓ {i} — “quoted”" for i in range(N)]
    g = torch.Generator().manual_seed(7)
    return [
        (
            "unicode texts, prompts and sample ids",
            with_strings(0, texts=unicode_texts, prompts=prompts, sample_ids=ids),
        ),
        ("float64 rewards", raw(1, {"latents": latents(1), "rewards": torch.randn(N, generator=g).double()})),
        ("float16 rewards", raw(2, {"latents": latents(2), "rewards": torch.randn(N, generator=g).half()})),
        (
            "bfloat16 rewards and latents",
            raw(3, {"latents": latents(3).bfloat16(), "rewards": torch.randn(N, generator=g).bfloat16()}),
        ),
        ("float16 latents, no rewards", raw(4, {"latents": latents(4).half()}, lr="3e-6")),
        ("empty metadata lists' strings", with_strings(5, texts=[""] * N, prompts=[""] * N, sample_ids=[""] * N)),
        ("large latents", raw(6, {"latents": latents(6) * 1e29 / 5})),
        (
            "extreme float64 rewards",
            raw(7, {"latents": latents(7), "rewards": torch.tensor([1.7e308, -1.7e308] * 8, dtype=torch.float64)}),
        ),
        (
            "rewards with a judge's reference_rewards (float16)",
            raw(
                8,
                {
                    "latents": latents(8),
                    "rewards": torch.randn(N, generator=g),
                    "reference_rewards": torch.ones(N).half(),
                },
            ),
        ),
    ]


@pytest.fixture
def sidecar(database_url: str) -> Iterator[tuple[TestClient, int, Callable[[], Session]]]:
    storage.upgrade(database_url)
    app = create_app(Settings(database_url=database_url), start_workers=False)
    with TestClient(app) as http:
        run = http.post("/v1/runs", json={"name": "hostile", "latent_dim": D})
        assert run.status_code == 201, run.text
        yield http, run.json()["run_id"], app.state.services.sessions


def test_the_wire_constant_is_the_columns_length() -> None:
    column = storage.StepSample.__table__.c.sample_id.type
    assert isinstance(column, String) and column.length == MAX_SAMPLE_ID_CHARS


def test_hostile_payloads_are_refused_and_valid_unicode_is_processed(
    sidecar: tuple[TestClient, int, Callable[[], Session]],
) -> None:
    http, run_id, sessions = sidecar
    with sessions() as session:
        before = storage.counts(session)
    for name, make in REFUSED.items():
        body, status, needles = make()
        resp = http.post(f"/v1/runs/{run_id}/steps", content=body, headers=OCTET)
        assert resp.status_code == status, (name, resp.text)
        detail = resp.json()["detail"]
        assert isinstance(detail, str)
        for needle in needles:
            assert needle in detail, (name, needle, detail)
    with sessions() as session:
        assert storage.counts(session) == before, "a refused step stored something"

    # the edges of what is allowed: 202, then the worker processes every one of them
    edge = accepted()
    for name, body in edge:
        resp = http.post(f"/v1/runs/{run_id}/steps", content=body, headers=OCTET)
        assert resp.status_code == 202, (name, resp.text)
    processor = StepProcessor(sessions, torch.device("cpu"))
    while processor.process_one():
        pass
    with sessions() as session:
        steps = storage.list_steps(session, run_id, limit=1000)
        assert [(s.step, s.status, s.error) for s in steps] == [(i, "done", None) for i in range(len(edge))]
    samples = http.get(f"/v1/runs/{run_id}/steps/0/samples", params={"order": "index", "limit": 1000}).json()
    sent = decode_step(edge[0][1])
    assert [s["text"] for s in samples["samples"]] == sent.texts
    assert [s["prompt"] for s in samples["samples"]] == sent.prompts
    assert [s["sample_id"] for s in samples["samples"]] == sent.sample_ids


def test_check_strings_names_the_field_entry_and_fix() -> None:
    check_strings("texts", None)
    check_strings("texts", ["ok", "🦀", ""])
    check_strings("sample_ids", ["x" * MAX_SAMPLE_ID_CHARS])
    check_strings("texts", ["x" * 100_000])  # texts have no length limit but the body's
    cases = [
        ("texts", ["a", "\ud800"], "metadata 'texts' entry 1 is not valid UTF-8 (a lone surrogate '\\ud800'"),
        ("prompts", ["\x00", "\x00", "ok"], "metadata 'prompts' entry 0 contains a NUL character"),
        ("sample_ids", ["x" * 201], "metadata 'sample_ids' entry 0 has 201 characters, more than the 200"),
    ]
    for field, values, message in cases:
        with pytest.raises(ValueError) as caught:
            check_strings(field, values)
        assert str(caught.value).startswith(message), str(caught.value)
    with pytest.raises(ValueError, match=r"^responses entry 1 contains a NUL .* \(and 1 more entry like it\)"):
        check_strings("texts", ["a", "\x00", "b\x00"], label="responses")


def test_observe_refuses_at_once_what_the_sidecar_would_refuse(tmp_path: Path) -> None:
    config = ClientConfig(spool_dir=tmp_path / "spool", max_retries=0, timeout_s=1, transport="thread")
    client = MonitorClient("http://127.0.0.1:9", run_name="strings", config=config)
    z = torch.randn(4, 8)
    ok = ["a", "b", "c", "d"]
    try:
        cases: list[tuple[type[Exception], str, dict]] = [
            (ValueError, "responses entry 2 contains a NUL", {"responses": ["a", "b", "c\x00", "d"]}),
            (ValueError, "prompts entry 0 contains a NUL", {"prompts": ["\x00", "b", "c", "d"]}),
            (ValueError, "sample_ids entry 3 contains a NUL", {"sample_ids": ["a", "b", "c", "\x00"]}),
            (ValueError, "responses entry 1 is not valid UTF-8", {"responses": ["a", "\ud800", "c", "d"]}),
            (ValueError, "prompts entry 1 is not valid UTF-8", {"prompts": ["a", "\udc80", "c", "d"]}),
            (ValueError, "sample_ids entry 0 is not valid UTF-8", {"sample_ids": ["\ud800", "b", "c", "d"]}),
            (
                ValueError,
                f"sample_ids entry 1 has {MAX_SAMPLE_ID_CHARS + 1} characters",
                {"sample_ids": ["a", "x" * (MAX_SAMPLE_ID_CHARS + 1), "c", "d"]},
            ),
            (TypeError, "rewards must be real numbers", {"rewards": torch.randn(4, dtype=torch.complex64)}),
        ]
        for exc_type, message, kwargs in cases:
            with pytest.raises(exc_type, match=message):
                client.observe(0, latents=z, **kwargs)
        assert client.stats.spooled == 0 and client.queue_length == 0  # nothing was queued
        # valid Unicode and a sample id of exactly the column's length are fine
        client.observe(
            0,
            ["🦀", "漢字", "\u202bשלום\u202c", ""],
            latents=z,
            prompts=ok,
            sample_ids=["é" * MAX_SAMPLE_ID_CHARS, "b", "c", "d"],
            rewards=[1, 2, 3, 4],
        )
    finally:
        client.close(timeout=10)


def test_ingest_runs_off_the_event_loop(
    sidecar: tuple[TestClient, int, Callable[[], Session]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The route awaits the body on the event loop, then decodes, hashes and writes in a worker thread (no
    running loop there) with a session of its own."""
    http, run_id, _ = sidecar
    seen: list[tuple[bool, Session]] = []  # the sessions are kept alive, so that their ids differ
    real = processing.ingest_step

    def spy(session: Session, *args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        seen.append((on_loop, session))
        return real(session, *args, **kwargs)

    monkeypatch.setattr(processing, "ingest_step", spy)
    for step in range(2):
        resp = http.post(f"/v1/runs/{run_id}/steps", content=with_strings(step), headers=OCTET)
        assert resp.status_code == 202, resp.text
    assert http.post(f"/v1/runs/{run_id}/steps", content=b"junk", headers=OCTET).status_code == 400
    assert [on_loop for on_loop, _ in seen] == [False, False, False]
    assert len({id(session) for _, session in seen}) == 3  # a fresh session per request


def judged_step(step: int) -> StepPayload:
    """A step whose judge agrees with the proxy up to noise: rewards and reference_rewards of n = 64 samples."""
    g = torch.Generator().manual_seed(1000 + step)
    rewards = torch.randn(64, generator=g)
    return StepPayload(
        step,
        torch.randn(64, D, generator=g),
        rewards,
        texts=[f"a{i}" for i in range(64)],
        reference_rewards=rewards - 0.1 * torch.rand(64, generator=g),
    )


def test_ingest_accepts_reference_rewards_and_the_monitor_uses_the_judge(
    sidecar: tuple[TestClient, int, Callable[[], Session]],
) -> None:
    """202 for steps with a judge; what was stored carries the judge's rewards, and the monitor fed with the
    stored step (as ``monitor.processing`` feeds it) computes the proxy − judge gap stream (``judge_gap``)."""
    from monitor.rlhf import RLHFMonitor

    http, run_id, sessions = sidecar
    sent = [judged_step(s) for s in range(5)]
    for p in sent:
        resp = http.post(f"/v1/runs/{run_id}/steps", content=encode_step(p), headers=OCTET)
        assert resp.status_code == 202, resp.text
    again = http.post(f"/v1/runs/{run_id}/steps", content=encode_step(sent[0]), headers=OCTET)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"  # idempotent with the judge too
    changed = StepPayload(0, sent[0].latents, sent[0].rewards, texts=sent[0].texts, reference_rewards=sent[0].rewards)
    assert http.post(f"/v1/runs/{run_id}/steps", content=encode_step(changed), headers=OCTET).status_code == 409
    monitor = RLHFMonitor()
    with sessions() as session:
        for p in sent:
            body = storage.load_payload(session, run_id, p.step)
            assert body is not None and len(body) > 0
            stored = decode_step(body)
            assert stored.step == p.step
            torch.testing.assert_close(stored.latents.float(), p.latents.float())
            assert stored.reference_rewards is not None and p.reference_rewards is not None
            assert torch.equal(stored.reference_rewards, p.reference_rewards)
            report = monitor.observe(
                stored.step, stored.latents, rewards=stored.rewards, reference_rewards=stored.reference_rewards
            )
    assert "judge_gap" in report.evidence and "reward_rise" in report.evidence


def test_the_worker_hands_the_judge_to_the_monitor(sidecar: tuple[TestClient, int, Callable[[], Session]]) -> None:
    """The worker (``StepProcessor``) observes each step with its reference_rewards: the stored evidence has the
    proxy − judge gap stream (``judge_gap``) once the lagged window exists, and the run's stored monitor state
    remembers the gaps of the steps it saw (``evidence.past``: [has rewards, has gaps])."""
    http, run_id, sessions = sidecar
    for s in range(4):
        resp = http.post(f"/v1/runs/{run_id}/steps", content=encode_step(judged_step(s)), headers=OCTET)
        assert resp.status_code == 202, resp.text
    processor = StepProcessor(sessions, torch.device("cpu"))
    while processor.process_one():
        pass
    with sessions() as session:
        assert [s.status for s in storage.list_steps(session, run_id, limit=10)] == ["done"] * 4
        stored = storage.load_run_state(session, run_id)
        assert stored is not None and len(stored.tensors) > 0  # the state was saved with its tensors
        state = storage.decode_state(stored.meta, stored.tensors)
        assert state["meta"]["version"] == 3 and state["meta"]["steps_seen"] == 4
    past = state["meta"]["evidence"]["past"]
    assert len(past) == 4 and all(has_gaps for _, has_gaps in past), past
    rows = http.get(f"/v1/runs/{run_id}/metrics", params={"evidence": "judge_gap,reward_rise"}).json()["rows"]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["evidence"].get("judge_gap") is None  # no lagged window yet
    assert all(r["evidence"]["judge_gap"] is not None for r in rows[2:]), rows
