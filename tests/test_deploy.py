"""The deployment files (``docker/``, ``dashboards/grafana/``), checked without a Docker engine.

* the compose files: every mounted or built path exists, every ``FPMON_*`` variable is a real setting, the
  sidecar's port, its database URL against the postgres service, Prometheus' scrape target;
* the Grafana dashboard: every metric (and grouping label, and observable name) it queries is exported by
  the running app's ``/metrics``; the values ``/metrics`` exports (live, and at 5,000 stored steps against
  the queries it used before issue 12); ``FPMON_METRICS_TOKEN``;
* the Grafana provisioning: the datasource uid and the dashboard folder agree with the dashboard and compose;
* the Dockerfile and its entrypoint: the port, the CPU torch wheel, a non-root user, migrations before serve.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from api_helpers import D, step_payload
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

import storage
from api.main import create_app
from api.metrics import EXPORTED_OBSERVABLES
from api.settings import Settings
from monitor.processing import StepProcessor

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
GRAFANA = ROOT / "dashboards" / "grafana"
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_CUDA = DOCKER / "compose.cuda.yaml"
DASHBOARD = GRAFANA / "fpmon.json"
PROMETHEUS_CONFIG = GRAFANA / "prometheus.yml"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "fpmon.yml"
DOCKERFILE = DOCKER / "Dockerfile"
ENTRYPOINT = DOCKER / "entrypoint.sh"

SIDECAR, POSTGRES, PROMETHEUS, GRAFANA_SERVICE = "sidecar", "postgres", "prometheus", "grafana"
#: metrics that have no sample until the event they count happens (their # TYPE line is enough)
NO_SAMPLE_YET = {"fpmon_alerts_total"}

# --------------------------------------------------------------------------------------------- compose


_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)")


def interpolate(text: str) -> str:
    """Compose's variable interpolation with an empty environment: every ``${NAME:-default}`` is its default.

    So the checks see what ``docker compose up`` runs with no variable set (the documented defaults).
    """

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg")
        if op in (":-", "-"):
            return interpolate(arg)
        pytest.fail(f"${{{name}}} has no default: the deployment would not start with one command")

    return _VARIABLE.sub(sub, text)


def _resolve(node: Any) -> Any:
    if isinstance(node, str):
        return interpolate(node)
    if isinstance(node, dict):
        return {key: _resolve(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(item) for item in node]
    return node


def _merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file (mappings merged key by key, the rest replaced)."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return override


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_compose(*paths: Path) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for path in paths:
        config = _merge(config, _resolve(load_yaml(path)))
    return config


@pytest.fixture(scope="module", params=["compose.yaml", "compose.yaml+compose.cuda.yaml"])
def compose(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The stack as ``docker compose`` sees it: the base file, and the base with the CUDA override."""
    files = [DOCKER / name for name in request.param.split("+")]
    return load_compose(*files)


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    assert name in compose["services"], f"compose has no {name!r} service"
    return compose["services"][name]


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): str(value) for key, value in env.items()}


def bind_mounts(svc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(host path, container path) of every bind mount; named volumes are skipped."""
    for volume in svc.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                yield volume["source"], volume["target"]
            continue
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/", "~")):
            yield source, target


def named_volumes(svc: dict[str, Any]) -> dict[str, str]:
    out = {}
    for volume in svc.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "volume":
                out[volume["source"]] = volume["target"]
            continue
        source, target = volume.split(":")[:2]
        if not source.startswith((".", "/", "~")):
            out[source] = target
    return out


def container_ports(svc: dict[str, Any]) -> set[int]:
    """Container ports a service publishes or exposes (short and long syntax)."""
    ports: set[int] = {int(str(p).split("/")[0]) for p in svc.get("expose", [])}
    for port in svc.get("ports", []):
        if isinstance(port, dict):
            ports.add(int(port["target"]))
        else:
            ports.add(int(str(port).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def sidecar_settings(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The sidecar's Settings as its container builds them from the compose environment."""
    for key in list(os.environ):
        if key.startswith("FPMON_"):
            monkeypatch.delenv(key)
    for key, value in environment(service(compose, SIDECAR)).items():
        monkeypatch.setenv(key, value)
    return Settings()


def test_compose_paths_exist(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for source, _ in bind_mounts(svc):
            assert (DOCKER / source).exists(), f"{name} mounts {source}, which does not exist next to {COMPOSE}"
        for volume in named_volumes(svc):
            assert volume in (compose.get("volumes") or {}), f"{name} uses the undeclared volume {volume!r}"
        build = svc.get("build")
        if build is None:
            assert "image" in svc, f"{name} has neither build nor image"
            continue
        build = {"context": build} if isinstance(build, str) else build
        context = (DOCKER / build.get("context", ".")).resolve()
        assert context.is_dir(), f"{name}'s build context {context} does not exist"
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}'s dockerfile {dockerfile} does not exist"
    sidecar_build = service(compose, SIDECAR)["build"]
    assert (DOCKER / sidecar_build["context"]).resolve() == ROOT
    assert (ROOT / sidecar_build["dockerfile"]).resolve() == DOCKERFILE


def test_sidecar_environment_names_real_settings(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    env = environment(service(compose, SIDECAR))
    fields = {f"FPMON_{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(key for key in env if key.startswith("FPMON_") and key not in fields)
    assert not unknown, f"not settings of api.settings.Settings: {unknown}"
    assert {"FPMON_DATABASE_URL", "FPMON_API_TOKENS"} <= set(env)
    settings = sidecar_settings(compose, monkeypatch)  # the values validate, too
    assert settings.api_tokens, "the sidecar binds 0.0.0.0 in its container: it needs FPMON_API_TOKENS"
    settings.model_copy(update={"host": "0.0.0.0"}).check_bind()


def test_sidecar_port_matches_settings(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = sidecar_settings(compose, monkeypatch)
    assert settings.port == Settings.model_fields["port"].default or "FPMON_PORT" in environment(
        service(compose, SIDECAR)
    )
    assert container_ports(service(compose, SIDECAR)) == {settings.port}
    assert f"EXPOSE {settings.port}" in DOCKERFILE.read_text()


def test_database_url_points_at_postgres(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    postgres = service(compose, POSTGRES)
    pg_env = environment(postgres)
    url = make_url(sidecar_settings(compose, monkeypatch).database_url)
    assert url.drivername == "postgresql+psycopg"
    assert url.host == POSTGRES and (url.port or 5432) == 5432
    assert url.username == pg_env.get("POSTGRES_USER", "postgres")
    assert url.password == pg_env["POSTGRES_PASSWORD"]
    assert url.database == pg_env.get("POSTGRES_DB", url.username)
    assert postgres["image"].startswith("postgres:16")
    assert "/var/lib/postgresql/data" in named_volumes(postgres).values()
    test = postgres["healthcheck"]["test"]
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))
    assert service(compose, SIDECAR)["depends_on"][POSTGRES]["condition"] == "service_healthy"


def test_prometheus_scrapes_the_sidecar(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    mounts = {(DOCKER / source).resolve(): target for source, target in bind_mounts(service(compose, PROMETHEUS))}
    target_path = mounts[PROMETHEUS_CONFIG]
    command = service(compose, PROMETHEUS).get("command", [])
    config_file = next((c.split("=", 1)[1] for c in command if c.startswith("--config.file=")), None)
    assert (config_file or "/etc/prometheus/prometheus.yml") == target_path
    config = load_yaml(PROMETHEUS_CONFIG)
    port = sidecar_settings(compose, monkeypatch).port
    jobs = [
        job
        for job in config["scrape_configs"]
        if any(f"{SIDECAR}:{port}" in group["targets"] for group in job.get("static_configs", []))
    ]
    assert jobs, f"no scrape job targets {SIDECAR}:{port}"
    for job in jobs:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        assert job.get("scheme", "http") == "http"
        # /metrics is public in the app (checked against the running app below): no credentials needed
        assert "authorization" not in job and "bearer_token" not in job


# ------------------------------------------------------------------------------ dashboard vs. the app


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[str]:
    board = dashboard()
    queries = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    for variable in board.get("templating", {}).get("list", []):
        query = variable.get("query")
        queries.append(query["query"] if isinstance(query, dict) else str(query))
    return queries


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``/metrics`` of the app with a run, three processed steps, a duplicate and a rejected request."""
    url = f"sqlite:///{tmp_path_factory.mktemp('deploy') / 'fpmon.db'}"
    storage.upgrade(url)
    app = create_app(Settings(database_url=url, api_tokens=["w"]), start_workers=False)
    processor = StepProcessor(app.state.services.sessions, torch.device("cpu"))
    auth = {"Authorization": "Bearer w"}
    octet = {**auth, "Content-Type": "application/octet-stream"}
    with TestClient(app) as client:
        run = client.post("/v1/runs", json={"name": "deploy-run", "latent_dim": D, "config": {}}, headers=auth)
        assert run.status_code == 201, run.text
        steps = f"/v1/runs/{run.json()['run_id']}/steps"
        for step in range(3):  # S_dot and div_q99 need a previous step
            assert client.post(steps, content=step_payload(step), headers=octet).status_code == 202
        assert client.post(steps, content=step_payload(0), headers=octet).status_code == 200  # duplicate
        assert client.post(steps, content=b"not safetensors", headers=octet).status_code == 400
        while processor.process_one():
            pass
        response = client.get("/metrics")  # no token: Prometheus scrapes without credentials
        assert response.status_code == 200
        return response.text


def test_dashboard_queries_only_exported_metrics(exposition: str) -> None:
    families = list(text_string_to_metric_families(exposition))
    typed = {line.split()[2]: line.split()[3] for line in exposition.splitlines() if line.startswith("# TYPE ")}
    labels: dict[str, set[str]] = {}
    for family in families:
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    used = {name for query in dashboard_queries() for name in re.findall(r"fpmon_[a-z0-9_]+", query)}
    assert {"fpmon_steps_ingested_total", "fpmon_queue_depth", "fpmon_alerts_total", "fpmon_observable"} <= used
    for name in sorted(used):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        base = base if typed.get(base) == "histogram" else name
        assert base in typed, f"the dashboard queries {name}, which the app does not export"
        if name not in NO_SAMPLE_YET:
            assert name in labels, f"the dashboard queries {name}, which has no sample in /metrics"
    for query in dashboard_queries():
        metrics = [m for m in re.findall(r"fpmon_[a-z0-9_]+", query) if m in labels]
        for clause in re.findall(r"\bby\s*\(([^)]*)\)", query):
            for label in filter(None, (part.strip() for part in clause.split(","))):
                assert any(label in labels[m] for m in metrics) or not metrics, f"{query}: no label {label!r}"
        for observable in re.findall(r'\bname\s*=\s*"([^"]+)"', query):
            assert observable in EXPORTED_OBSERVABLES, f"{query}: {observable} is not exported"
            assert f'name="{observable}"' in exposition, f"no fpmon_observable sample for {observable}"


def test_live_metrics_follow_the_steps(exposition: str) -> None:
    """The counters, queue depth and latest observables of the exposition fixture's run (three steps processed,
    none failed or queued), read from the run row rather than from the steps."""
    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }
    assert values["fpmon_steps_processed_total", ()] == 3
    assert values["fpmon_steps_failed_total", ()] == 0
    assert values["fpmon_queue_depth", ()] == 0
    observed = {dict(labels)["name"] for name, labels in values if name == "fpmon_observable"}
    assert observed == set(EXPORTED_OBSERVABLES)
    assert {dict(labels)["quantile"] for name, labels in values if name == "fpmon_processing_latency_seconds"} == {
        "0.5",
        "0.9",
        "0.99",
    }


def test_metrics_at_5000_steps_export_what_the_old_queries_did(database_url: str) -> None:
    """``benchmarks/bench_metrics.py`` reduced to 5,000 steps (values, not times): a database filled under
    revision 0002 (payloads inline), scraped with the old queries, migrated to head (0003 back-fills the run
    counters), scraped with the new collector and through ``GET /metrics``: the same values."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks import bench_metrics

    storage.upgrade(database_url, bench_metrics.OLD_REVISION)
    engine = storage.make_engine(database_url)
    try:
        written = bench_metrics.fill_old_schema(engine, 5000, runs=7, payload_bytes=256, real_payload_steps=2)
        before = bench_metrics.old_collect(engine)
        storage.upgrade(engine)
        after = bench_metrics.new_collect(engine)
        assert bench_metrics.differences(before, after) == []
        assert after["fpmon_steps_processed_total", ()] == written["done"]
        assert after["fpmon_steps_failed_total", ()] == written["failed"] > 0
        assert after["fpmon_queue_depth", ()] == written["pending"] + written["processing"] == 7 * 4
        assert sum(v for (name, _), v in after.items() if name == "fpmon_alerts_total") == written["alerts"] > 0
        assert len({labels for name, labels in after if name == "fpmon_observable"}) == 7 * len(EXPORTED_OBSERVABLES)
        exported = bench_metrics.http_scrape(database_url)()
        http = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(exported)
            for sample in family.samples
        }
        assert {key: http[key] for key in after} == after
    finally:
        engine.dispose()


def test_metrics_token_guards_metrics_when_set(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fpmon.db'}"
    storage.upgrade(url)
    app = create_app(Settings(database_url=url, metrics_token="scrape-me"), start_workers=False)
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 401
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        ok = client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert ok.status_code == 200
        assert 'fpmon_requests_rejected_total{reason="auth"} 2.0' in ok.text
        assert client.get("/healthz").status_code == 200  # only /metrics is guarded by it


# ------------------------------------------------------------------------------------------ grafana


def test_grafana_provisioning_matches_dashboard_and_compose(compose: dict[str, Any]) -> None:
    datasources = load_yaml(DATASOURCES)["datasources"]
    prometheus = [ds for ds in datasources if ds["type"] == "prometheus"]
    assert len(prometheus) == 1 and prometheus[0]["uid"]
    uid = prometheus[0]["uid"]
    assert prometheus[0]["url"] == f"http://{PROMETHEUS}:9090"
    assert service(compose, PROMETHEUS)["image"].startswith("prom/prometheus")  # listens on 9090

    board = dashboard()
    assert board["uid"] and board["title"] and board["panels"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))

    def datasource_uids(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("datasource"), dict):
                yield node["datasource"]["uid"]
            for value in node.values():
                yield from datasource_uids(value)
        elif isinstance(node, list):
            for item in node:
                yield from datasource_uids(item)

    assert set(datasource_uids(board)) == {uid}
    for panel in board["panels"]:
        assert panel.get("targets") and all(t["expr"] for t in panel["targets"]), panel["title"]

    mounts = {(DOCKER / source).resolve(): target for source, target in bind_mounts(service(compose, GRAFANA_SERVICE))}
    provisioning = mounts[(GRAFANA / "provisioning").resolve()]
    assert provisioning == "/etc/grafana/provisioning"
    dashboard_target = mounts[DASHBOARD.resolve()]
    providers = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert [p["options"]["path"] for p in providers if p["type"] == "file"] == [str(Path(dashboard_target).parent)]
    env = environment(service(compose, GRAFANA_SERVICE))
    assert env["GF_SECURITY_ADMIN_PASSWORD"], "Grafana's admin password comes from the environment"


# ------------------------------------------------------------------------------------------ dockerfile


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            rows.append((keyword.upper(), rest.strip()))
    return rows


def test_dockerfile() -> None:
    rows = dockerfile_instructions()
    args = dict((rest.split("=", 1) if "=" in rest else (rest, "")) for keyword, rest in rows if keyword == "ARG")
    assert args["BASE_IMAGE"] == "python:3.11-slim"
    assert rows[[k for k, _ in rows].index("FROM")][1] == "${BASE_IMAGE}"
    assert "/whl/cpu" in args["TORCH_INDEX"] and args["TORCH_VERSION"] == "2.13.0"
    runs = [rest for keyword, rest in rows if keyword == "RUN"]
    torch_at = next(i for i, r in enumerate(runs) if 'torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"' in r)
    fpmon_at = next(i for i, r in enumerate(runs) if "pip install /tmp/fpmon-src" in r)
    assert torch_at < fpmon_at, "torch (CPU wheel) must be installed before fpmon pulls its own"
    users = [rest for keyword, rest in rows if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert [rest for keyword, rest in rows if keyword == "EXPOSE"] == [str(Settings.model_fields["port"].default)]
    ignored = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    for keyword, rest in rows:
        if keyword == "COPY":
            *sources, _ = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the build context"
                assert f"!{source}" in ignored or f"!{source}/" in ignored, f"COPY {source}: dockerignored"
    copies = {rest.split()[-1]: rest.split()[0] for keyword, rest in rows if keyword == "COPY"}
    # the review page ships inside the installed package (api/page is package data), not as a separate copy
    assert "FPMON_REVIEW_DIR" not in " ".join(rest for keyword, rest in rows if keyword == "ENV")
    assert copies.get("/tmp/fpmon-src/api") == "api" and (ROOT / "api" / "page" / "index.html").is_file()
    entrypoint = json.loads(next(rest for keyword, rest in rows if keyword == "ENTRYPOINT"))
    assert copies[entrypoint[0]] == "docker/entrypoint.sh"


def run_entrypoint(tmp_path: Path, *args: str, fail_upgrade: bool = False, **env: str) -> tuple[int, list[str]]:
    """Run docker/entrypoint.sh with a fake ``fpmon`` on PATH that records its arguments."""
    log = tmp_path / "calls.log"
    log.unlink(missing_ok=True)
    fake = tmp_path / "bin" / "fpmon"
    fake.parent.mkdir(exist_ok=True)
    status = 'if [[ "$1" == db ]]; then exit 1; fi' if fail_upgrade else ""
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> "{log}"\n{status}\n')
    fake.chmod(0o755)
    base = {key: value for key, value in os.environ.items() if not key.startswith("FPMON_")}
    full_env = {**base, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}", **env}
    proc = subprocess.run(["bash", str(ENTRYPOINT), *args], env=full_env, capture_output=True, timeout=30)
    return proc.returncode, log.read_text().splitlines() if log.exists() else []


def test_entrypoint_migrates_then_serves(tmp_path: Path) -> None:
    assert subprocess.run(["bash", "-n", str(ENTRYPOINT)], capture_output=True).returncode == 0
    text = ENTRYPOINT.read_text()
    assert 0 <= text.index("fpmon db upgrade") < text.index("fpmon serve")
    assert run_entrypoint(tmp_path, FPMON_API_TOKENS="t") == (0, ["db upgrade", "serve --host 0.0.0.0"])
    assert run_entrypoint(tmp_path, "serve", "--workers", "2", FPMON_API_TOKENS="t") == (
        0,
        ["db upgrade", "serve --host 0.0.0.0 --workers 2"],
    )
    assert run_entrypoint(tmp_path, "db", "current") == (0, ["db current"])
    # without tokens the server would refuse 0.0.0.0: say so before touching the database
    assert run_entrypoint(tmp_path) == (2, [])
    # a failed migration never serves
    code, calls = run_entrypoint(tmp_path, fail_upgrade=True, FPMON_API_TOKENS="t", FPMON_DB_UPGRADE_ATTEMPTS="1")
    assert code == 1 and calls == ["db upgrade"]


def test_cuda_override_builds_a_cuda_image() -> None:
    cuda = load_compose(COMPOSE, COMPOSE_CUDA)
    base = load_compose(COMPOSE)
    assert "/whl/cpu" in service(base, SIDECAR)["build"]["args"]["TORCH_INDEX"]
    assert "/whl/cu" in service(cuda, SIDECAR)["build"]["args"]["TORCH_INDEX"]
    assert "/whl/cpu" not in service(cuda, SIDECAR)["build"]["args"]["TORCH_INDEX"]
    assert environment(service(cuda, SIDECAR))["FPMON_DEVICE"] == "cuda"
    devices = service(cuda, SIDECAR)["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
