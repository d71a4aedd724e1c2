"""fpmon as a user installs it: the wheel, installed into a fresh virtual environment, serves the review page
and Swagger UI from its own files, with no network.

* the wheel is built from a copy of the sources (``pip wheel --no-deps --no-build-isolation``: no index, the
  build backend of this environment) and holds the review page (``api/page``: HTML, JS, CSS, vendored uPlot);
* it is installed into a fresh venv (``pip install --no-deps --no-index``); the dependencies come from this
  interpreter's site-packages (and PYTHONPATH's folders outside the checkout) through ``.pth`` path entries
  (a path entry's own ``.pth`` files, such as an editable install's finder, are not processed, so ``api``
  resolves to the fresh venv, which is checked);
* its ``fpmon db upgrade`` and ``fpmon serve`` (the fresh venv's console script, cwd a temp folder) answer
  ``/``, the page's files, ``/docs`` and Swagger UI's assets, and ``/docs`` names no outside URL;
* in headless Chromium, with every request to another origin refused and counted, Swagger UI renders the
  sidecar's operations under its CSP (the inline start-up script runs by nonce) and asks for nothing outside.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from monitor.demo.sidecar import SidecarProcess

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "api", "monitor", "storage")
PAGE_FILES = ("api/page/index.html", "api/page/app.js", "api/page/app.css")
CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.slow  # builds a wheel and a venv (≈ 30 s on 2 cores)


def clean_env() -> dict[str, str]:
    """This environment without anything that would point a child at the checkout or at a user's sidecar."""
    return {
        k: v for k, v in os.environ.items() if not k.startswith("FPMON_") and k not in ("PYTHONPATH", "PYTHONHOME")
    } | {"OMP_NUM_THREADS": "1"}


def run(cmd: list[str], cwd: Path, timeout: float = 300) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fpmon's wheel, built offline from a copy of the sources (the build leaves nothing in the checkout)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), "."],
        src,
    )
    (built,) = out.glob("fpmon-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the installed wheel; the dependencies importable from this interpreter's
    site-packages through a .pth path entry. Returns the venv's folder."""
    venv = tmp_path_factory.mktemp("venv")
    cwd = tmp_path_factory.mktemp("cwd")
    run([sys.executable, "-m", "venv", str(venv)], cwd)
    python = venv / "bin" / "python"
    run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", str(wheel)], cwd
    )
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd).strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    deps |= {
        p
        for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if p and not Path(p).resolve().is_relative_to(ROOT)
    }
    (site / "zz_fpmon_test_deps.pth").write_text("".join(f"{p}\n" for p in sorted(deps)))
    return venv


def test_the_wheel_holds_the_review_page_and_the_migrations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in PAGE_FILES:
        assert name in names, name
    vendored = {n for n in names if n.startswith("api/page/vendor/")}
    on_disk = {f"api/page/vendor/{p.name}" for p in (ROOT / "api/page/vendor").iterdir() if p.is_file()}
    assert on_disk and vendored == on_disk  # uPlot's JS and CSS (and its licence), all of them
    assert {"api/routes/docs.py", "storage/migrations/env.py", "storage/migrations/versions/0001_initial.py"} <= names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


def test_the_installed_package_is_the_one_imported(fresh_venv: Path, tmp_path: Path) -> None:
    out = run(
        [str(fresh_venv / "bin" / "python"), "-c", "import api, monitor, storage, fastapi; print(api.__file__)"],
        tmp_path,
    )
    api_file = Path(out.strip())
    assert api_file.is_relative_to(fresh_venv), f"api imported from {api_file}, not from the fresh venv {fresh_venv}"


@pytest.fixture(scope="module")
def installed_sidecar(fresh_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    """The fresh venv's ``fpmon db upgrade`` then ``fpmon serve`` on a free port, a temp SQLite database."""
    folder = tmp_path_factory.mktemp("served")
    sidecar = SidecarProcess(
        f"sqlite:///{folder / 'fpmon.db'}",
        folder / "serve.log",
        env=clean_env(),
        isolate_env=True,
        fpmon_command=(str(fresh_venv / "bin" / "fpmon"),),
        serve_args=("--device", "cpu"),
    )
    sidecar.start(timeout_s=120)
    try:
        yield sidecar
    finally:
        sidecar.stop()


def test_the_installed_sidecar_serves_the_page_and_the_docs_offline(installed_sidecar: SidecarProcess) -> None:
    with httpx.Client(base_url=installed_sidecar.url, timeout=10) as client:
        page = client.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        for name in ("app.js", "app.css"):
            asset = client.get(f"/review/{name}")
            assert asset.status_code == 200 and asset.text == (ROOT / "api/page" / name).read_text()
        docs = client.get("/docs")
        assert docs.status_code == 200
        tags = re.findall(r"<(?:script|link)\b[^>]*>", docs.text)
        urls = [u for tag in tags for u in re.findall(r'(?:src|href)="([^"]*)"', tag)]
        assert tags and urls and not [t for t in tags if "http://" in t or "https://" in t], tags
        assert "/docs-assets/swagger-ui-bundle.js" in urls and "/docs-assets/swagger-ui.css" in urls
        for url in urls:
            assert client.get(url).status_code == 200, url
        bundle = client.get("/docs-assets/swagger-ui-bundle.js")
        assert "SwaggerUIBundle" in bundle.text and bundle.headers["content-type"].startswith(
            ("application/javascript", "text/javascript")
        )
        assert client.get("/docs-assets/index.html").status_code == 404  # only the files the page needs
        assert client.get("/openapi.json").json()["info"]["title"] == "fpmon sidecar"


@pytest.mark.skipif(os.environ.get("FPMON_SKIP_BROWSER") == "1", reason="FPMON_SKIP_BROWSER=1: browser test skipped")
def test_swagger_ui_renders_under_its_csp_without_the_internet(installed_sidecar: SidecarProcess) -> None:
    from playwright.sync_api import sync_playwright

    outside: list[str] = []
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.route(
                re.compile(r"^(?!" + re.escape(installed_sidecar.url) + r"/).*"),
                lambda route: (outside.append(route.request.url), route.abort()),
            )
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{installed_sidecar.url}/docs")
            page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
            assert "fpmon sidecar" in page.inner_text(".swagger-ui .info .title")
            page.wait_for_selector(".opblock-summary-path", timeout=30_000)
            paths = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.textContent)")
        finally:
            browser.close()
    assert "/v1/runs" in " ".join(paths)
    assert outside == [], f"Swagger UI asked for outside URLs: {outside}"
    assert not [e for e in errors if "Content Security Policy" in e or "Refused" in e], errors
