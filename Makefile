# fpmon developer commands. Everything runs inside a virtual environment at .venv.
# `make demo` runs the main job, `make test` the test suite (lint, types, pytest).
SHELL := /bin/bash
PY ?= python3
# e.g. `make install VENV_FLAGS=--system-site-packages` to use a torch (CUDA build) installed system-wide
VENV_FLAGS ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser postgres demo docs-demo docs-images test lint typecheck pytest bench bench-sidecar bench-hook bench-detection validate clean

$(BIN)/python:
	$(PY) -m venv $(VENV_FLAGS) $(VENV)

# torch: keep a torch that is already importable (a GPU user's own build); otherwise, on a machine
# without an NVIDIA driver, pin the CPU wheel so pip never pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	@if $(BIN)/python -c "import torch" 2>/dev/null; then \
	    echo "torch already installed: $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
	    $(BIN)/python -m pip install -q "torch>=2.2,<3"; \
	else \
	    $(BIN)/python -m pip install -q torch==2.13.0; \
	fi
	$(BIN)/python -m pip install -q -e '.[dev,trl,embed,parquet]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fpmon demo

# docs/demo.md's output block, from a real run of `fpmon demo` (benchmarks/render_demo_doc.py)
docs-demo: $(STAMP)
	$(BIN)/python benchmarks/render_demo_doc.py

# the docs' screenshots (docs/img: the README's hero from a real GRPO demo, the run and step views), retaken by
# the browser tests; `make test` takes the same captures into test-artifacts/ and leaves docs/img alone
docs-images: $(STAMP) browser postgres
	FPMON_DOCS_IMAGES=1 $(BIN)/python -m pytest -n 0 tests/test_review_page.py tests/test_review_demo_page.py

# ruff, then the import contracts of docs/architecture.md ([tool.importlinter] in pyproject.toml)
lint: $(STAMP)
	$(BIN)/ruff check monitor api storage tests benchmarks
	$(BIN)/ruff format --check monitor api storage tests benchmarks
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

# The review page is tested in a real headless browser (Debian's chromium, driven by Playwright): install
# it where we can (root with apt-get); elsewhere say how. FPMON_SKIP_BROWSER=1 skips that test instead.
browser:
	@if command -v chromium >/dev/null 2>&1 || [ "$$FPMON_SKIP_BROWSER" = 1 ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser test"; \
	    apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q chromium; }; \
	else \
	    echo "the browser test needs Debian's chromium: run 'sudo apt-get install chromium' (or set FPMON_SKIP_BROWSER=1)" >&2; \
	    exit 1; \
	fi

# The storage and sidecar tests need the PostgreSQL on 127.0.0.1:5432 (trust auth, database test): start the
# machine's cluster if it is installed but down. If it still does not answer, those tests FAIL, on purpose
# (FPMON_SKIP_POSTGRES=1 skips them; FPMON_TEST_POSTGRES_URL points them at another server).
postgres:
	@if [ "$$FPMON_SKIP_POSTGRES" != 1 ] && [ -z "$$FPMON_TEST_POSTGRES_URL" ] && command -v pg_isready >/dev/null 2>&1 \
	    && ! pg_isready -q -h 127.0.0.1 -p 5432; then \
	    echo "PostgreSQL is not answering on 127.0.0.1:5432; trying to start it" >&2; \
	    pg_ctlcluster --skip-systemctl-redirect "$$(ls /etc/postgresql 2>/dev/null | head -n 1)" main start 2>&1 || true; \
	    for _ in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done; \
	fi

# pytest-xdist: one worker per CPU (PYTEST_WORKERS=0 runs in one process), idle workers steal queued tests from
# busy ones (the long sidecar tests no longer leave one worker alone at the end); PYTEST_ARGS for anything else
PYTEST_WORKERS ?= auto
pytest: $(STAMP) browser postgres
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_engine.py

bench-sidecar: $(STAMP)
	$(BIN)/python benchmarks/bench_sidecar.py

# docs/performance.md "Hook overhead": the hook off/on in alternating blocks, the sidecar (and the sender) on their own CPU (≈ 10 min)
bench-hook: $(STAMP)
	$(BIN)/python benchmarks/bench_hook.py --pin

# docs/validation.md §1: record 5 seeds × {hackable, control} GRPO runs, then evaluate every detector (≈ 20 min)
bench-detection: $(STAMP)
	$(BIN)/python benchmarks/detection/run.py all --plan full --embedders model -j 2 --split all

# docs/validation.md §2–3: particle transitions, grokking, double descent, Theorems 3–4 (≈ 1 h on 2 cores)
validate: $(STAMP)
	for exp in particles grokking double_descent theorems; do $(BIN)/python -m benchmarks.validation.$$exp || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
