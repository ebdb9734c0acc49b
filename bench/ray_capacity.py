"""Driver capacity on real Ray actor processes, against the in-process pool.

Usage: python bench/ray_capacity.py [--actors 32,64] [--trials 10000] [--seconds 0.15]
       [--ask-ahead 32] [--group-trials 64] [--out bench/results/ray_capacity.json]

For each actor count, the same study twice, alternating: ``ray``, N real actor
processes (``tests/orchestrator/sleep_actor.py``: the streaming protocol over a
worker that sleeps ``--seconds`` per one-vector trial; no model, no torch)
behind the real ``RayPool`` and feeder, on a local Ray cluster of this
machine; ``local``, the same fake work on N threads in the driver's process
(``LocalPool``). Both run the real driver, ask-ahead TPE and group commits to
a local Parquet store. Printed and written as JSON (``runs``: ``pool``,
``actors``, ``trials_per_s`` between the first and the last tell,
``idle_share`` of the workers between their first and last work, and the load
average).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "orchestrator"))

from sleep_actor import SleepWorker  # noqa: E402
from sweep_helpers import tiny_config  # noqa: E402

from orchestrator.run.pools import LocalPool, RayPool  # noqa: E402
from orchestrator.run.preflight import prepare  # noqa: E402
from orchestrator.run.runner import run_study  # noqa: E402


def study(root: str, args: argparse.Namespace) -> Any:
    return tiny_config(
        root,
        name="capacity",
        n_trials=args.trials,
        vectors_per_trial=1,
        task__max_transfer=4,
        search__layer={"low": 0, "high": 3},
        search__norm={"low": 1.0, "high": 30.0, "log": True},
        search__lr={"low": 0.01, "high": 1.0, "log": True},
        sampler={"name": "tpe", "seed": 0, "ask_ahead": args.ask_ahead, "n_startup_trials": 10},
        store__group_trials=args.group_trials,
        evaluation__keep_generations=0,
    )


def one_run(kind: str, actors: int, args: argparse.Namespace) -> dict[str, Any]:
    import ray

    with tempfile.TemporaryDirectory(prefix="ray-capacity-") as tmp:
        cfg = study(f"{tmp}/store", args)
        plan = prepare(cfg)
        model = {"seconds": args.seconds, "transfer_ids": [e.id for e in plan.transfer]}
        load = os.getloadavg()
        if kind == "ray":
            path = f"{REPO / 'tests' / 'orchestrator'}:{REPO}"
            ray.init(
                address="local",
                num_cpus=actors,  # logical CPUs: one per actor, whatever the machine has
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={"env_vars": {"PYTHONPATH": path}},
            )
            pool: Any = RayPool(
                model=model,
                evaluation=None,
                label="sleep",
                num_actors=actors,
                num_cpus=1,
                num_gpus=0,
                max_batch_jobs=1,
                torch_threads=None,
                namespace="steer-sweep-bench",
                actor_class=SleepWorker,
            )
            started = time.perf_counter()
            pool.info(timeout=600)
            ready_s = time.perf_counter() - started
            workers = pool.actors
        else:
            fakes = [
                SleepWorker(model, label=f"sleep-{i}", max_batch_jobs=1) for i in range(actors)
            ]
            pool = LocalPool(fakes)
            ready_s = 0.0
        try:
            summary = run_study(cfg, pool=pool, show_progress=False)
            if kind == "ray":
                busy = ray.get([w.busy.remote() for w in workers])
            else:
                busy = [w.busy() for w in fakes]
        finally:
            pool.shutdown()
            if kind == "ray":
                ray.shutdown()
    tells = summary.tell_times
    span = tells[-1] - tells[0] if len(tells) > 1 else float("nan")
    first = min(b["first"] for b in busy if b["first"] is not None)
    last = max(b["last"] for b in busy if b["last"] is not None)
    worked = sum(b["busy_s"] for b in busy)
    return {
        "pool": kind,
        "actors": actors,
        "trials": summary.told,
        "stored": summary.stored,
        "trials_per_s": round((len(tells) - 1) / span, 1),
        "idle_share": round(1.0 - worked / (actors * (last - first)), 4),
        "actors_ready_s": round(ready_s, 1),
        "ask_ms": summary.latency_ms,
        "load_average": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actors", default="32,64", help="actor counts, comma-separated")
    parser.add_argument("--trials", type=int, default=10000)
    parser.add_argument("--seconds", type=float, default=0.15, help="per one-vector trial")
    parser.add_argument("--ask-ahead", type=int, default=32)
    parser.add_argument("--group-trials", type=int, default=64)
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / "ray_capacity.json"
    )
    args = parser.parse_args()
    runs = []
    for n in (int(a) for a in args.actors.split(",")):
        for kind in ("ray", "local"):  # alternating, the same settings
            row = one_run(kind, n, args)
            print(row, flush=True)
            runs.append(row)
    result = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "command": " ".join(["python", "bench/ray_capacity.py", *sys.argv[1:]]),
        "runs": runs,
        "ratio_ray_to_local": {
            str(n): round(
                next(r["trials_per_s"] for r in runs if r["pool"] == "ray" and r["actors"] == n)
                / next(
                    r["trials_per_s"] for r in runs if r["pool"] == "local" and r["actors"] == n
                ),
                3,
            )
            for n in sorted({r["actors"] for r in runs})
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
