"""``source scripts/env.sh`` in a user's interactive shell changes PATH and
STEER_SWEEP_VENV only: no shell options (``set -e`` would close the terminal
at the user's next failing command), traps, functions, other variables or
working directory; a failed install returns non-zero and the shell goes on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)  # the venv these tests run in: install.sh finds it up to date

# Variables bash itself changes from one command to the next.
DYNAMIC = {
    "_", "BASH_ARGC", "BASH_ARGV", "BASH_COMMAND", "BASH_LINENO", "BASH_SOURCE", "BASHPID",
    "COLUMNS", "EPOCHREALTIME", "EPOCHSECONDS", "FUNCNAME", "HISTCMD", "LINENO", "LINES",
    "PIPESTATUS", "RANDOM", "SECONDS", "SRANDOM", "PATH", "STEER_SWEEP_VENV",
}  # fmt: skip

STATE = "set -o; echo ---; trap -p; echo ---; declare -f; echo ---; pwd; echo ---; declare -p"


def _interactive(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "--norc", "-i", "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={"HOME": str(ROOT), "PATH": "/usr/bin:/bin", "STEER_SWEEP_VENV": str(VENV), **env},
    )


def _state(text: str) -> tuple[list[str], list[str]]:
    """The shell's options, traps, functions and folder; and its variables
    other than those bash changes itself."""
    *fixed, variables = text.split("---\n")
    kept = [
        line
        for line in variables.splitlines()
        if line.startswith("declare") and line.split(" ", 2)[2].split("=")[0] not in DYNAMIC
    ]
    return fixed, kept


def test_sourcing_changes_only_path_and_the_venv_variable() -> None:
    script = (
        f"{{ {STATE}; }} > before.txt.tmp; source scripts/env.sh; echo rc=$?; "
        f"{{ {STATE}; }} > after.txt.tmp; false; echo still-here; echo $PATH; "
        "source scripts/env.sh; echo $PATH"
    )
    try:
        done = _interactive(script)
        before = _state((ROOT / "before.txt.tmp").read_text())
        after = _state((ROOT / "after.txt.tmp").read_text())
    finally:
        for name in ("before.txt.tmp", "after.txt.tmp"):
            (ROOT / name).unlink(missing_ok=True)
    out = done.stdout.splitlines()
    assert "rc=0" in out and "still-here" in out, done.stdout + done.stderr
    assert before[0] == after[0]  # options, traps, functions, folder
    assert before[1] == after[1]  # every other variable
    first, second = out[-2:]
    assert first.startswith(f"{VENV}/bin:") and second == first  # once, however often sourced


def test_a_failed_install_returns_non_zero_and_the_shell_goes_on() -> None:
    done = _interactive(
        "source scripts/env.sh; echo rc=$?; false; echo still-here; echo $PATH",
        STEER_SWEEP_VENV="/proc/no-venv-here",
    )
    out = done.stdout.splitlines()
    assert "rc=1" in out and "still-here" in out, done.stdout + done.stderr
    assert out[-1] == "/usr/bin:/bin"
