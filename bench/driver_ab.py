"""A/B the driver benchmark: the working tree against another git revision, alternating.

Usage: python bench/driver_ab.py --base REV [--pairs 3] --out bench/results/X.json
       -- <bench/driver_capacity.py arguments>

Figures on a shared 2-core VM drift with the load, so the two variants run
one after the other, ``--pairs`` times, and each pair gives a ratio (this
tree over the base). The base is checked out in a temporary git worktree
and run with that worktree first on ``PYTHONPATH``, so its own
``orchestrator`` package is the one imported (each run prints which).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("trials_per_s", "trials_per_s_last", "idle_share", "wall_s", "driver_cpu_s")


def run(tree: Path, args: list[str], out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(tree / "bench" / "driver_capacity.py"), *args, "--out", str(out)]
    check = [sys.executable, "-c", "import orchestrator; print(orchestrator.__file__)"]
    imported = subprocess.run(check, env=env, cwd=tree, capture_output=True, text=True, check=True)
    if not imported.stdout.startswith(str(tree)):
        raise SystemExit(f"{tree}: imported {imported.stdout.strip()}, not this tree's package")
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    print(proc.stdout[-1500:], end="", flush=True)
    if proc.returncode:
        raise SystemExit(f"{tree}: driver_capacity failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def _short(rev: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True, help="the git revision to compare against")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("bench_args", nargs=argparse.REMAINDER)
    a = parser.parse_args()
    bench_args = [x for x in a.bench_args if x != "--"]
    base_rev, head_rev = _short(a.base), _short("HEAD")
    runs, ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), a.base],
            check=True, capture_output=True,
        )  # fmt: skip
        try:
            for i in range(a.pairs):
                pair = {}
                for name, tree in (("base", base), ("head", ROOT)):
                    print(f"pair {i + 1}/{a.pairs}: {name}", flush=True)
                    load = os.getloadavg()[0]
                    fig = run(tree, bench_args, Path(tmp) / f"{name}-{i}.json")
                    pair[name] = fig
                    runs.append({"pair": i, "variant": name, "load_before": load,
                                 **{k: fig[k] for k in KEYS}})  # fmt: skip
                ratios.append(pair["head"]["trials_per_s"] / pair["base"]["trials_per_s"])
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                capture_output=True,
            )  # fmt: skip
    result = {
        "command": "python bench/driver_capacity.py " + " ".join(bench_args),
        "base": base_rev, "head": head_rev, "cpus": os.cpu_count(),
        "runs": runs, "ratios_trials_per_s_head_over_base": ratios,
    }  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print("trials/s ratios (head/base): " + ", ".join(f"{r:.2f}" for r in ratios))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
