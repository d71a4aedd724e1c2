#!/usr/bin/env bash
# Engine benchmark on a CUDA machine (fresh and bare; its torch is kept, never reinstalled).
#   bash benchmarks/gpu.sh [bench_engine.py args]    # results in $OUT if set, else ./bench-out
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-./bench-out}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"

command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: no NVIDIA driver here" >&2; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" -c 'import torch; assert torch.cuda.is_available(), "torch has no CUDA"; print("torch", torch.__version__)'

pip_in() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
# the package without its dependencies (torch untouched); else run it from the checkout
pip_in --no-deps --no-build-isolation -e . 2>/dev/null || pip_in --no-deps -e . 2>/dev/null \
    || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# only the missing pure dependencies; into a --target dir if the environment refuses installs
missing=()
for spec in numpy:numpy scipy:scipy ot:POT rich:rich tqdm:tqdm; do
    "$PY" -c "import ${spec%%:*}" 2>/dev/null || missing+=("${spec#*:}")
done
if ((${#missing[@]})); then
    deps="${TMPDIR:-/tmp}/fpmon-bench-deps"
    pip_in "${missing[@]}" || { pip_in --no-deps --target "$deps" "${missing[@]}" \
        && export PYTHONPATH="$deps${PYTHONPATH:+:$PYTHONPATH}"; }
fi

timeout 400 "$PY" benchmarks/bench_engine.py --device cuda --json "$OUT_DIR/bench_gpu.json" "$@" \
    | tee "$OUT_DIR/bench_gpu.txt"
# the same step with W2_ref from the Gaussian fits (closed form on the device, no CPU transport solver)
timeout 150 "$PY" benchmarks/bench_engine.py --device cuda --sizes 2048x1024 --budget-s 10 \
    --w2-ref-method gaussian --json "$OUT_DIR/bench_gpu_w2gauss.json" | tee "$OUT_DIR/bench_gpu_w2gauss.txt"
"$PY" -c 'import torch; print("torch after the run:", torch.__version__)'
echo "rows: $OUT_DIR/bench_gpu.json"
