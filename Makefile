# fpmon developer commands. Everything runs inside a virtual environment at .venv.
# `make demo` runs the main job, `make test` the test suite (lint, types, pytest).
SHELL := /bin/bash
PY ?= python3
# e.g. `make install VENV_FLAGS=--system-site-packages` to use a torch (CUDA build) installed system-wide
VENV_FLAGS ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck pytest bench bench-sidecar bench-hook bench-detection validate clean

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
	$(BIN)/python -m pip install -q -e '.[dev,trl,embed]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fpmon demo

lint: $(STAMP)
	$(BIN)/ruff check monitor api storage tests benchmarks
	$(BIN)/ruff format --check monitor api storage tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

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
	$(BIN)/python benchmarks/detection/run.py

# docs/validation.md §2–3: particle transitions, grokking, double descent, Theorems 3–4 (≈ 1 h on 2 cores)
validate: $(STAMP)
	for exp in particles grokking double_descent theorems; do $(BIN)/python -m benchmarks.validation.$$exp || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
