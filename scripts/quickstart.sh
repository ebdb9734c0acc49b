#!/usr/bin/env bash
# The quickstart: set up the venv if needed, then run the quickstart study
# (real SmolLM2-135M-Instruct on the CPU, a local Ray, a local Parquet store).
# Extra arguments are overrides, e.g. `bash scripts/quickstart.sh n_trials=3`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
export HF_HUB_OFFLINE=1
steer-sweep run examples/quickstart.yaml "$@"
