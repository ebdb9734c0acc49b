#!/usr/bin/env bash
# Every GPU benchmark in one call of at most 8 minutes, JSON to
# $OUT after every stage (a call cut short still reports what it measured):
#   1. bench/gpu_smoke.py: every worker path once on CUDA (device mix-ups);
#   2. bench/engine_bench.py: the engine against the seed-style loop, uniform
#      and heterogeneous workloads, on random weights of the SmolLM2-135M,
#      Gemma-2-2B and Llama-3-8B shapes (bfloat16, float32 losses);
#   3. bench/headline_study.py: a 2,000-vector pilot of the headline study
#      (Gemma-2-2B shape, 30 steps, 32 held-out prompts, real driver, TPE,
#      engine and Parquet store), then 10,000 vectors if the pilot's rate says
#      they fit in the time left.
# On the device (optuna and pydantic travel as wheels: bash bench/gpu_wheels.sh
# here first), with carry [".whl"]:
#   bash bench/gpu_all.sh
# Here, on the CPU, with tiny models, to check the script (tests/infra runs it):
#   OUT=/tmp/gpu bash bench/gpu_all.sh --smoke
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu_all}
BUDGET=${BUDGET:-470}   # seconds for the whole call, under the device's 8-minute plan
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
mkdir -p "$OUT"
PY=${PYTHON:-python3}
start=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - start) )); }
log() { echo "[gpu_all +$(( $(date +%s) - start ))s] $*"; }

if ! "$PY" -c "import optuna, pydantic" 2>/dev/null; then
  if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || { log "wheel install failed"; exit 1; }
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
  else
    log "optuna and pydantic are missing and there is no .whl folder (bash bench/gpu_wheels.sh)"
    exit 1
  fi
fi
export PYTHONPATH=.:${PYTHONPATH:-}

{ date -u; nvidia-smi 2>&1 | head -15; "$PY" -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

log "1/3 worker paths on the device"
timeout 90 "$PY" bench/gpu_smoke.py 2>&1 | tail -20 | tee "$OUT/smoke.txt"

log "2/3 engine benchmark ($(left) s left)"
if [ "$SMOKE" = 1 ]; then
  timeout 120 "$PY" bench/engine_bench.py --smoke --out "$OUT/engine.json" 2>&1 | tail -20
else
  timeout 200 "$PY" bench/engine_bench.py --shapes smollm2-135m,gemma-2-2b,llama-3-8b \
    --out "$OUT/engine.json" 2>&1 | tail -20
fi

budget=$(( $(left) - 15 ))
log "3/3 headline study (${budget} s budget)"
if [ "$SMOKE" = 1 ]; then
  timeout 300 "$PY" bench/headline_study.py --smoke --out "$OUT/headline.json" 2>&1 | tail -20
else
  timeout "$budget" "$PY" bench/headline_study.py --shape gemma-2-2b --vectors 2000,10000 \
    --budget-s "$(( budget - 10 ))" --out "$OUT/headline.json" 2>&1 | tail -20
fi
log "done; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
