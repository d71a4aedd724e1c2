"""Throughput and ingest latency of the sidecar: a real ``fpmon serve`` process on loopback.

Run::

    python benchmarks/bench_sidecar.py [--steps 100] [--runs 8] [--steps-per-run 50] [--n 256] [--d 768]
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
   = extra). Meanwhile a probe thread asks ``GET /healthz`` and a read route (``GET /v1/runs/{id}``) in
   turn, every ``PROBE_EVERY_S``: their p50/p99 round trips under write load (and ``/healthz`` idle, before
   the load) show whether ingest keeps the server's event loop free; the clients' p99 ingest round trip
   is reported too.

Targets (2-core machine): ≥ 20 processed steps/s for one run, p99 ingest ≤ 100 ms (one run), zero lost or
duplicated steps with eight runs, ``/healthz`` p99 ≤ 50 ms while they ingest. The script prints a table and
exits 0 (it measures, it does not test). ``--skip-one-run`` measures only the eight runs (a quicker look at
the health probe under load).
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
#: seconds between two probes of the health and read routes during the eight-run load
PROBE_EVERY_S = 0.02
#: idle /healthz probes before the load starts
IDLE_PROBES = 50


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` in milliseconds (nearest rank; NaN when empty)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return 1e3 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Prober:
    """A thread that times ``GET`` round trips of ``paths`` (in turn) every ``PROBE_EVERY_S`` until stopped."""

    def __init__(self, url: str, paths: list[str]) -> None:
        self.url, self.paths = url, paths
        self.times: dict[str, list[float]] = {p: [] for p in paths}
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = 0
            while not self._stop.is_set():
                path = self.paths[i % len(self.paths)]
                t = time.perf_counter()
                ok = client.get(path).status_code == 200
                self.times[path].append(time.perf_counter() - t)
                self.failures += not ok
                i += 1
                self._stop.wait(PROBE_EVERY_S)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def idle_healthz(url: str) -> list[float]:
    """``IDLE_PROBES`` round trips of ``GET /healthz`` with nothing else going on."""
    out = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(IDLE_PROBES):
            t = time.perf_counter()
            client.get("/healthz").raise_for_status()
            out.append(time.perf_counter() - t)
            time.sleep(PROBE_EVERY_S)
    return out


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
    ingest: list[float] = []
    idle = idle_healthz(server.url)

    def stream(run_id: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for body in payloads:
                t = time.perf_counter()
                resp = client.post(f"/v1/runs/{run_id}/steps", content=body, headers=headers)
                ingest.append(time.perf_counter() - t)
                if resp.status_code != 202:
                    errors.append(f"{resp.status_code} {resp.text[:200]}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=stream, args=(rid,)) for rid in ids]
    with Prober(server.url, ["/healthz", f"/v1/runs/{ids[0]}"]) as probe:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    health, read = probe.times["/healthz"], probe.times[f"/v1/runs/{ids[0]}"]
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
        "errors": len(errors) + probe.failures,
        "ingest_p99_ms": percentile(ingest, 0.99),
        "healthz_idle_p50_ms": percentile(idle, 0.5),
        "healthz_p50_ms": percentile(health, 0.5),
        "healthz_p90_ms": percentile(health, 0.9),
        "healthz_p99_ms": percentile(health, 0.99),
        "read_p99_ms": percentile(read, 0.99),
        "probes": len(health) + len(read),
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
    p.add_argument("--steps-per-run", type=int, default=50)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--postgres-url", default=DEFAULT_PG)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--skip-one-run", action="store_true", help="measure only the eight concurrent runs")
    args = p.parse_args(argv)
    args_d = args.d
    console = Console(width=max(Console().width, 220))
    single = [] if args.skip_one_run else make_payloads(args.steps, args.n, args.d, seed=0)
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
                    one = one_run(server, single) if single else {}
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
        f"p99 ingest ms ({args.runs} clients)",
        "/healthz p50 ms idle",
        f"/healthz p50 / p90 / p99 ms ({args.runs} clients)",
        f"read p99 ms ({args.runs} clients)",
        "targets",
    ):
        table.add_column(col, justify="right")
    for row in rows:
        many = row["many"]
        ok = (
            (args.skip_one_run or (row["processed_per_s"] >= 20 and row["p99_ms"] <= 100))
            and many["lost"] == 0
            and many["duplicated"] == 0
            and many["sample_rows_missing_or_extra"] == 0
            and many["errors"] == 0
            and many["healthz_p99_ms"] <= 50
        )
        table.add_row(
            row["backend"],
            *(
                ["–"] * 4
                if args.skip_one_run
                else [f"{row[k]:.1f}" for k in ("accepted_per_s", "processed_per_s", "p50_ms", "p99_ms")]
            ),
            f"{many['processed_per_s']:.1f}",
            str(many["lost"]),
            str(many["duplicated"]),
            f"{many['ingest_p99_ms']:.0f}",
            f"{many['healthz_idle_p50_ms']:.1f}",
            f"{many['healthz_p50_ms']:.1f} / {many['healthz_p90_ms']:.1f} / {many['healthz_p99_ms']:.1f}",
            f"{many['read_p99_ms']:.1f}",
            "pass" if ok else "FAIL",
        )
    console.print(table)
    console.print(
        f"targets: ≥ 20 processed steps/s (1 run), p99 ingest ≤ 100 ms (1 run), 0 lost / 0 duplicated "
        f"({args.runs} runs), /healthz p99 ≤ 50 ms while {args.runs} clients ingest"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
