"""The read side at scale: how long the read commands take on a large study.

Usage: python bench/read_scale.py [--vectors 10000,100000] [--per-trial 10] [--eval 32]
       [--timeout 900] [--out bench/results/read_scale.json]

For each size, a study is written through the real driver and Parquet store by
fake workers (no model; vectors 64 wide, ``--eval`` held-out rows per vector,
``norm`` and ``lr`` searched as log-uniform ranges, a random sampler, group
commits of 64 trials), then each read command runs as its own process, as a
user runs it: ``status``, ``best``, ``report``, ``export --best 10 --format
gguf`` and ``compact``, and ``open_study(...).joined_frame()`` in a process of
its own. Printed and written as JSON: the wall time of each and its peak
resident memory (the child's ``ru_maxrss``). A command over ``--timeout`` is
killed and recorded as such.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "orchestrator"))

from sweep_helpers import FakeWorker, tiny_config  # noqa: E402

from orchestrator.run.pools import local_batch_pool  # noqa: E402
from orchestrator.run.preflight import prepare  # noqa: E402
from orchestrator.run.runner import run_study  # noqa: E402

EXPORT = ["--best", "10", "--format", "gguf", "--out"]
JOINED = (
    "import sys; from orchestrator.store import open_study; "
    "df = open_study(sys.argv[1], sys.argv[2]).joined_frame(); print(len(df))"
)


def write_study(root: str, n_vectors: int, per_trial: int, n_eval: int) -> float:
    cfg = tiny_config(
        root,
        name="scale",
        n_trials=n_vectors // per_trial,
        vectors_per_trial=per_trial,
        model__max_batch_jobs=16,
        task__max_transfer=n_eval,
        search__layer={"low": 0, "high": 3},
        search__norm={"low": 1.0, "high": 30.0, "log": True},
        search__lr={"low": 0.01, "high": 1.0, "log": True},
        sampler={"name": "random", "seed": 0},
        store__group_trials=64,
        evaluation__keep_generations=0,
    )
    plan = prepare(cfg)
    worker = FakeWorker([e.id for e in plan.transfer], delay=0.0)
    pool = local_batch_pool(worker, 4)
    started = time.perf_counter()
    summary = run_study(cfg, pool=pool, show_progress=False)
    pool.shutdown()
    assert summary.vectors == n_vectors, summary
    return time.perf_counter() - started


def timed(argv: list[str], timeout: float) -> dict[str, object]:
    """Wall time and peak RSS of one command. GNU time runs it: a child forked
    from this (large) process would report this process's memory as its peak."""
    started = time.perf_counter()
    try:
        done = subprocess.run(
            ["/usr/bin/time", "-f", "%M", *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"timed_out": True, "wall_s": timeout}
    lines = done.stderr.strip().splitlines()
    peak_kb = int(lines[-1]) if lines and lines[-1].isdigit() else -1
    return {
        "exit_code": done.returncode,
        "wall_s": round(time.perf_counter() - started, 2),
        "peak_mb": round(peak_kb / 1024, 1),
        **({"stderr": "\n".join(lines[:-1])[-500:]} if done.returncode else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", default="10000,100000", help="study sizes, comma-separated")
    parser.add_argument("--per-trial", type=int, default=10, help="vectors per trial")
    parser.add_argument("--eval", type=int, default=32, help="held-out rows per vector")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per command")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "read_scale.json")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "orchestrator.cli", "-q"]
    runs = []
    for n in (int(v) for v in args.vectors.split(",")):
        with tempfile.TemporaryDirectory(prefix="read-scale-") as tmp:
            root = f"{tmp}/store"
            write_s = write_study(root, n, args.per_trial, args.eval)
            print(f"{n} vectors: written in {write_s:.1f} s", flush=True)
            where = ["scale", "--root", root]
            commands = {
                "status": [*cli, "status", *where],
                "best": [*cli, "best", *where, "--top", "10"],
                "report": [*cli, "report", *where, "--out", f"{tmp}/report"],
                "export --best 10 --format gguf": [*cli, "export", *where, *EXPORT, f"{tmp}/x"],
                "joined_frame": [sys.executable, "-c", JOINED, root, "scale"],
                "compact": [*cli, "compact", *where],
            }
            row: dict[str, object] = {
                "vectors": n,
                "trials": n // args.per_trial,
                "eval_rows_per_vector": args.eval,
                "write_s": round(write_s, 1),
                "load_average_start": os.getloadavg(),
            }
            for name, argv in commands.items():
                row[name] = figures = timed(argv, args.timeout)
                print(f"  {name:32s} {figures}", flush=True)
            row["load_average_end"] = os.getloadavg()
            runs.append(row)
    result = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "command": " ".join(["python", "bench/read_scale.py", *sys.argv[1:]]),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
