#!/usr/bin/env bash
# The quickstart: set up the venv if needed, then optimize a refusal-style
# promotion vector on the real SmolLM2-135M-Instruct, on the CPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
export HF_HUB_OFFLINE=1
steer-sweep optimize \
    --model smollm2-135m-instruct \
    --prompt "What is the capital of France?" \
    --promote "I cannot answer that." \
    --layer 12 --lr 0.5 --norm 30 --max-iters 30 \
    --out results/quickstart/vector.safetensors
