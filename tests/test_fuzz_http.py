"""Property-based fuzzing of a real ``fpmon serve`` over HTTP (Hypothesis), on SQLite and PostgreSQL.

Hypothesis generates step payloads (hostile strings in texts, prompts and sample ids; latents and rewards of
every dtype, shape and scale; broken metadata; garbage bytes), run bodies and review bodies, and sends each
one to a real server process with a write token. Two properties must hold for every request:

* the server never answers 5xx;
* a 202 means the step will be processed: once the fuzzing is over, every step answered 202 ends ``done``.

Size: ``FPMON_FUZZ_HTTP_EXAMPLES`` requests per backend (default 120 in ``make test``; the nightly-sized run
is ``FPMON_FUZZ_HTTP_EXAMPLES=5000``). The examples are the same every run (``derandomize``) so that CI is
not flaky; ``FPMON_FUZZ_RANDOM=1`` explores new ones.
"""

from __future__ import annotations

import json
import os
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from api_helpers import ServerProcess
from conftest import POSTGRES_URL
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

import storage

EXAMPLES = int(os.environ.get("FPMON_FUZZ_HTTP_EXAMPLES", "120"))
DERANDOMIZE = os.environ.get("FPMON_FUZZ_RANDOM") != "1"
TOKEN = "fuzz-write-token"
D = 8  # the pool runs' latent dimension
POOL_RUNS = 3

HOSTILE = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    "\u202e\u2066rtl",
    "😀🧪",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "中文テキスト",
    "<script>alert(1)</script>",
    "'; DROP TABLE runs; --",
    "../../etc/passwd",
    "%00%ff",
    "x" * 201,
    "y" * 5000,
    "\n\r\t",
]
strings = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=40))
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.complex64]
if hasattr(torch, "float8_e4m3fn"):
    DTYPES.append(torch.float8_e4m3fn)


@dataclass
class Fuzzed:
    """One backend's server, its pool runs, and what it accepted."""

    server: ServerProcess
    database_url: str
    http: httpx.Client
    runs: list[int]
    next_step: dict[int, int] = field(default_factory=dict)
    accepted: set[tuple[int, int]] = field(default_factory=set)
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)

    def count(self, kind: str, status: int) -> None:
        per_kind = self.statuses.setdefault(kind, {})
        per_kind[status] = per_kind.get(status, 0) + 1


@pytest.fixture(params=["sqlite", "postgresql"])
def fuzzed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fuzzed]:
    schema = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fuzz.db'}"
    else:
        if os.environ.get("FPMON_SKIP_POSTGRES") == "1":
            pytest.skip("FPMON_SKIP_POSTGRES=1: PostgreSQL tests skipped on request")
        from sqlalchemy import create_engine

        schema = f"fuzz_{uuid.uuid4().hex[:12]}"
        admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        url = f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}options=-csearch_path%3D{schema}"
    storage.upgrade(url)
    server = ServerProcess(url, tmp_path / "server.log", FPMON_WORKER_MODE="thread", FPMON_API_TOKENS=TOKEN)
    server.start()
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    try:
        runs = []
        for i in range(POOL_RUNS):
            resp = http.post("/v1/runs", json={"name": f"pool-{i}", "latent_dim": D})
            assert resp.status_code == 201, resp.text
            runs.append(int(resp.json()["run_id"]))
        yield Fuzzed(server, url, http, runs, next_step=dict.fromkeys(runs, 0))
    finally:
        http.close()
        server.stop()
        if schema is not None:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
            admin.dispose()


# ---------------------------------------------------------------------------------------------- strategies
@st.composite
def tensors(draw: st.DrawFn, shape: tuple[int, ...], sane: bool) -> torch.Tensor:
    """A tensor whose values are normal, constant, huge, tiny or non-finite; of a wire dtype when ``sane``,
    else of any dtype."""
    dtype = draw(st.sampled_from(DTYPES[:3] if sane else DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1.0, 1.0, 1.0, 0.0, 1e-30, 1e4, 1e30]))
    t = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    if t.numel() and draw(st.booleans()) and draw(st.booleans()):
        t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from([float("nan"), float("inf"), 1e300]))
    if dtype.is_complex:
        return t.to(torch.complex64)
    if not dtype.is_floating_point:
        return t.clamp(-1e6, 1e6).to(dtype)
    return t.to(dtype)


@st.composite
def string_list(draw: st.DrawFn, n: int, sane: bool) -> str:
    """The JSON text of a metadata list: n hostile strings; unless ``sane``, sometimes the wrong length or
    type, or no list at all."""
    kind = "ok" if sane else draw(st.sampled_from(["ok", "length", "type", "json"]))
    if kind == "json":
        return draw(st.sampled_from(["[", "{}", "null", '"text"', "[1, 2]", "not json"]))
    length = n if kind != "length" else draw(st.integers(0, n + 2).filter(lambda k: k != n))
    values: list[Any] = draw(st.lists(strings, min_size=length, max_size=length))
    if kind == "type" and values:
        values[0] = draw(st.sampled_from([None, 1, 2.5, ["nested"], {"a": 1}]))
    return json.dumps(values)


@st.composite
def step_request(draw: st.DrawFn, state: Fuzzed) -> tuple[int, int | None, bytes, str]:
    """(run id, the step number if the payload is well-formed enough to carry one, body, content type)."""
    run_id = draw(st.sampled_from([*state.runs, state.runs[0], 99_999]))
    content_type = draw(st.sampled_from(["application/octet-stream"] * 9 + ["application/json"]))
    if draw(st.integers(0, 9)) == 0:  # garbage bytes, or a header that lies about its length
        body = draw(st.one_of(st.binary(max_size=200), st.just(struct.pack("<Q", 2**40) + b"{}")))
        return run_id, None, body, content_type
    step = state.next_step.get(run_id, 0)
    state.next_step[run_id] = step + 1  # every payload gets a new number: the run's steps arrive in order
    sane = draw(st.integers(0, 3)) > 0  # 3 in 4: a well-formed step with hostile strings and values
    n = draw(st.sampled_from([2, 3, 5, 8, 16] if sane else [0, 1, 2, 3, 8]))
    d = D if sane else draw(st.sampled_from([D, D + 1, 1]))
    tensor_map = {"latents": draw(tensors((n, d), sane))}
    if draw(st.booleans()):
        tensor_map["rewards"] = draw(tensors((n if sane else draw(st.sampled_from([n, n + 1])),), sane))
    bad_steps = ["-1", "2147483648", "abc", "1.5", ""]
    meta = {"step": str(step) if sane else draw(st.sampled_from([str(step), *bad_steps]))}
    if draw(st.booleans()):
        lrs = ["1e-6", "0.001"] if sane else ["1e-6", "0", "-1", "nan", "inf", "x"]
        meta["lr"] = draw(st.sampled_from(lrs))
    for name in ("texts", "prompts", "sample_ids"):
        if draw(st.booleans()):
            meta[name] = draw(string_list(n, sane))
    if draw(st.integers(0, 9)) == 0:
        meta["unexpected"] = draw(strings.filter(lambda s: s.isprintable() and s.isascii()))
    try:
        body = st_save(tensor_map, metadata=meta)
    except Exception:  # safetensors cannot write this dtype: send what a broken client would
        body = json.dumps(meta).encode()
    return run_id, step, body, content_type


def json_values() -> st.SearchStrategy[Any]:
    leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), strings)
    return st.recursive(leaves, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(strings, kids, max_size=4))


run_bodies = st.one_of(
    st.fixed_dictionaries(
        {
            "name": strings,
            "latent_dim": st.one_of(st.integers(-5, 10_000), st.booleans(), st.floats(), st.just("8"), st.none()),
        },
        optional={"config": st.one_of(json_values(), st.fixed_dictionaries({"monitor": json_values()}))},
    ),
    json_values(),
)
review_bodies = st.one_of(
    st.fixed_dictionaries(
        {"decision": st.sampled_from(["acknowledged", "confirmed", "dismissed", "bogus", ""]), "reviewer": strings},
        optional={"note": st.one_of(strings, st.none())},
    ),
    json_values(),
)


# ---------------------------------------------------------------------------------------------- the test
def as_json(value: Any) -> dict[str, Any]:
    """A request body of JSON text as a careless client writes it (``NaN``/``Infinity`` included)."""
    return {"content": json.dumps(value).encode(), "headers": {"Content-Type": "application/json"}}


def send(state: Fuzzed, kind: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    resp = state.http.request(method, path, **kwargs)
    state.count(kind, resp.status_code)
    assert resp.status_code < 500, f"{method} {path} → {resp.status_code}: {resp.text[:500]}"
    return resp


def test_no_5xx_and_every_accepted_step_is_processed(fuzzed: Fuzzed) -> None:
    state = fuzzed

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=DERANDOMIZE,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def one_request(data: st.DataObject) -> None:
        kind = data.draw(st.sampled_from(["step"] * 6 + ["run", "run", "review", "raw"]))
        if kind == "step":
            run_id, step, body, content_type = data.draw(step_request(state))
            resp = send(
                state, kind, "POST", f"/v1/runs/{run_id}/steps", content=body, headers={"Content-Type": content_type}
            )
            if resp.status_code == 202:
                assert step is not None and resp.json()["step"] == step
                state.accepted.add((run_id, step))
        elif kind == "run":
            send(state, kind, "POST", "/v1/runs", **as_json(data.draw(run_bodies)))
        elif kind == "review":
            alert_id = data.draw(st.sampled_from([1, 2, 3, 2_147_483_647]))
            send(state, kind, "POST", f"/v1/alerts/{alert_id}/review", **as_json(data.draw(review_bodies)))
        else:  # bodies that are not JSON at all, to the JSON routes
            path = data.draw(st.sampled_from(["/v1/runs", "/v1/alerts/1/review"]))
            body = data.draw(st.one_of(st.binary(max_size=100), st.sampled_from([b"{", b"[]" * 1000, b"\xff\xfe"])))
            send(state, kind, "POST", path, content=body, headers={"Content-Type": "application/json"})

    one_request()
    assert state.http.get("/healthz").status_code == 200

    # every step answered 202 is processed: none pending for long, none failed
    engine = storage.make_engine(state.database_url)
    sessions = storage.session_factory(engine)
    deadline = time.monotonic() + 180
    try:
        while True:
            with sessions() as session:
                status = {
                    (s.run_id, s.step): s.status
                    for run_id in state.runs
                    for s in storage.list_steps(session, run_id, limit=100_000)
                }
                errors = {
                    (s.run_id, s.step): s.error
                    for run_id in state.runs
                    for s in storage.list_steps(session, run_id, limit=100_000)
                    if s.status == "failed"
                }
            assert set(status) == state.accepted, "the database holds exactly the steps answered 202"
            assert not errors, f"accepted steps that failed: {errors}"
            if all(v == "done" for v in status.values()):
                break
            assert time.monotonic() < deadline, f"steps not processed: {[k for k, v in status.items() if v != 'done']}"
            time.sleep(0.2)
    finally:
        engine.dispose()
    print(
        f"\n{fuzzed.database_url.split(':')[0]}: {sum(sum(v.values()) for v in state.statuses.values())} requests, "
        f"{len(state.accepted)} steps accepted and processed; statuses {state.statuses}"
    )
