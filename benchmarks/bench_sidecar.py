"""Throughput and ingest latency of the sidecar: a real ``fpmon serve`` process on loopback.

Run::

    python benchmarks/bench_sidecar.py [--steps 100] [--runs 8] [--steps-per-run 25] [--n 256] [--d 768]
                                       [--backends sqlite,postgresql] [--postgres-url URL] [--json PATH]

For each backend (SQLite file; PostgreSQL in a fresh schema, dropped afterwards), migrated with
``fpmon db upgrade``, one server process (``fpmon serve``, one compute worker) is started and:

1. **one run**: a client streams ``--steps`` step payloads (n × d float32 latents, rewards, texts) one
   after the other. Accepted steps/s = steps / time to post them all; processed steps/s = steps / time
   from the first post until the worker has processed the last one; p50/p99 ingest latency = the client's
   round trip of each POST.
2. **eight runs**: ``--runs`` client threads stream ``--steps-per-run`` steps each to their own run at
   the same time; then the database is checked: every run has exactly that many processed steps, every
   step one row with status ``done`` claimed once, and n sample rows per step (lost = missing, duplicated
   = extra).

Targets (2-core machine): ≥ 20 processed steps/s for one run, p99 ingest ≤ 100 ms, zero lost or
duplicated steps with eight runs. The script prints a table and exits 0 (it measures, it does not test).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import torch
from rich.console import Console
from rich.table import Table

import storage
from monitor.demo.sidecar import SidecarProcess
from monitor.stepfile import StepPayload, encode_step

DEFAULT_PG = os.environ.get("FPMON_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")


def make_payloads(count: int, n: int, d: int, seed: int) -> list[bytes]:
    gen = torch.Generator().manual_seed(seed)
    basis = torch.randn(16, d, generator=gen)
    out = []
    for step in range(count):
        z = torch.randn(n, 16, generator=gen) @ basis + 0.3 * torch.randn(n, d, generator=gen)
        r = torch.randn(n, generator=gen)
        texts = [f"response {i} of step {step}" for i in range(n)]
        out.append(encode_step(StepPayload(step=step, latents=z, rewards=r, texts=texts, lr=1e-6)))
    return out


def wait_processed(client: httpx.Client, run_id: int, count: int, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get(f"/v1/runs/{run_id}").json()["steps_processed"] >= count:
            return time.perf_counter()
        time.sleep(0.01)
    raise RuntimeError(f"run {run_id}: not all {count} steps processed within {timeout} s")


def one_run(server: SidecarProcess, payloads: list[bytes]) -> dict[str, float]:
    headers = {"Content-Type": "application/octet-stream"}
    latencies = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        run_id = client.post("/v1/runs", json={"name": "bench-one", "latent_dim": args_d}).json()["run_id"]
        t0 = time.perf_counter()
        for body in payloads:
            t = time.perf_counter()
            resp = client.post(f"/v1/runs/{run_id}/steps", content=body, headers=headers)
            latencies.append(time.perf_counter() - t)
            resp.raise_for_status()
        t_posted = time.perf_counter()
        t_done = wait_processed(client, run_id, len(payloads))
    latencies.sort()
    return {
        "accepted_per_s": len(payloads) / (t_posted - t0),
        "processed_per_s": len(payloads) / (t_done - t0),
        "p50_ms": 1e3 * statistics.median(latencies),
        "p99_ms": 1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


def many_runs(
    server: SidecarProcess, payloads: list[bytes], runs: int, database_url: str, n: int, earlier_samples: int
) -> dict[str, Any]:
    headers = {"Content-Type": "application/octet-stream"}
    ids: list[int] = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for i in range(runs):
            ids.append(client.post("/v1/runs", json={"name": f"bench-many-{i}", "latent_dim": args_d}).json()["run_id"])
    errors: list[str] = []

    def stream(run_id: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for body in payloads:
                resp = client.post(f"/v1/runs/{run_id}/steps", content=body, headers=headers)
                if resp.status_code != 202:
                    errors.append(f"{resp.status_code} {resp.text[:200]}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=stream, args=(rid,)) for rid in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        t_done = max(wait_processed(client, rid, len(payloads)) for rid in ids)
    engine = storage.make_engine(database_url)
    lost = duplicated = 0
    with storage.session_factory(engine)() as session:
        for rid in ids:
            steps = storage.list_steps(session, rid, limit=100_000)
            numbers = [s.step for s in steps if s.status == "done"]
            lost += len(set(range(len(payloads))) - set(numbers))
            duplicated += len(numbers) - len(set(numbers)) + sum(1 for s in steps if s.attempts != 1)
        samples = storage.counts(session)["step_samples"]
    engine.dispose()
    expected_samples = earlier_samples + runs * len(payloads) * n
    return {
        "runs": runs,
        "steps": runs * len(payloads),
        "processed_per_s": runs * len(payloads) / (t_done - t0),
        "lost": lost,
        "duplicated": duplicated,
        "sample_rows_missing_or_extra": abs(samples - expected_samples),
        "errors": len(errors),
    }


def postgres_schema_url(base: str) -> tuple[str, str]:
    from sqlalchemy import create_engine

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    admin.dispose()
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}", schema


def drop_schema(base: str, schema: str) -> None:
    from sqlalchemy import create_engine

    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    admin.dispose()


args_d = 768


def main(argv: list[str] | None = None) -> int:
    global args_d
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--steps-per-run", type=int, default=25)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--postgres-url", default=DEFAULT_PG)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    args_d = args.d
    console = Console(width=max(Console().width, 120))
    single = make_payloads(args.steps, args.n, args.d, seed=0)
    multi = make_payloads(args.steps_per_run, args.n, args.d, seed=1)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fpmon-bench-") as tmp:
        for backend in args.backends.split(","):
            schema = None
            if backend == "sqlite":
                url = f"sqlite:///{Path(tmp) / 'bench.db'}"
            else:
                url, schema = postgres_schema_url(args.postgres_url)
            try:
                server = SidecarProcess(url, Path(tmp) / f"{backend}.log", extra_env={"FPMON_WORKER_POLL_S": "0.01"})
                server.start(timeout_s=60)
                try:
                    one = one_run(server, single)
                    many = many_runs(server, multi, args.runs, url, args.n, earlier_samples=len(single) * args.n)
                finally:
                    server.stop()
            finally:
                if schema is not None:
                    drop_schema(args.postgres_url, schema)
            row = {"backend": backend, **one, "many": many}
            rows.append(row)
            console.print(f"{backend}: {json.dumps(row)}")
    table = Table(
        title=f"fpmon sidecar on loopback: n = {args.n}, d = {args.d}, one compute worker", header_style="bold"
    )
    for col in (
        "backend",
        "accepted steps/s",
        "processed steps/s (1 run)",
        "p50 ingest ms",
        "p99 ingest ms",
        f"processed steps/s ({args.runs} runs)",
        "lost",
        "duplicated",
        "targets",
    ):
        table.add_column(col, justify="right")
    for row in rows:
        many = row["many"]
        ok = (
            row["processed_per_s"] >= 20
            and row["p99_ms"] <= 100
            and many["lost"] == 0
            and many["duplicated"] == 0
            and many["sample_rows_missing_or_extra"] == 0
            and many["errors"] == 0
        )
        table.add_row(
            row["backend"],
            f"{row['accepted_per_s']:.1f}",
            f"{row['processed_per_s']:.1f}",
            f"{row['p50_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
            f"{many['processed_per_s']:.1f}",
            str(many["lost"]),
            str(many["duplicated"]),
            "pass" if ok else "FAIL",
        )
    console.print(table)
    console.print("targets: ≥ 20 processed steps/s (1 run), p99 ingest ≤ 100 ms, 0 lost / 0 duplicated (8 runs)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
