# shellcheck shell=bash
# Source this file (bash) to use the project's virtualenv in your shell:
#
#   source scripts/env.sh
#
# It creates or refreshes the venv first (scripts/install.sh, in a process of
# its own), then changes exactly two things in the calling shell: it puts the
# venv's bin/ first on PATH (once, however often it is sourced) and exports
# STEER_SWEEP_VENV (the venv's folder). No shell option, trap, variable or
# working directory of the caller changes; on a failed install it returns
# non-zero and changes nothing.
#
#   STEER_SWEEP_VENV            where the venv lives (default: .venv in the repo)
#   STEER_SWEEP_TORCH_VERSION   see scripts/install.sh
#   STEER_SWEEP_TORCH_INDEX_URL see scripts/install.sh

_steer_sweep_env() {
    local repo_root venv
    repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1
    venv="${STEER_SWEEP_VENV:-$repo_root/.venv}"
    bash "$repo_root/scripts/install.sh" "$venv" || return 1
    case ":$PATH:" in
        *":$venv/bin:"*) ;;
        *) export PATH="$venv/bin:$PATH" ;;
    esac
    export STEER_SWEEP_VENV="$venv"
}

if _steer_sweep_env; then
    unset -f _steer_sweep_env
else
    unset -f _steer_sweep_env
    false
fi
