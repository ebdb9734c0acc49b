"""Driver capacity: can one driver keep many actors busy?

Usage: python bench/driver_capacity.py [--trials 2000] [--actors 16] [--seconds 0.5]

Fake workers (threads, no model) take ``--seconds`` per trial (one vector per
trial); the real driver runs TPE (constant liar) ask/tell, the scheduler and
the local Parquet store. Prints the share of time actors sat idle waiting on
the driver, and ask/tell latency (mean, and the mean over the last 100 trials).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "orchestrator"))

from sweep_helpers import FakeWorker, tiny_config  # noqa: E402

from orchestrator.pool import LocalPool  # noqa: E402
from orchestrator.preflight import prepare  # noqa: E402
from orchestrator.runner import run_study  # noqa: E402


class TimedWorker(FakeWorker):
    def __init__(self, transfer_ids: list[str], seconds: float) -> None:
        super().__init__(transfer_ids, delay=0.0)
        self.seconds = seconds
        self.busy = 0.0

    def __call__(self, key, tasks):  # type: ignore[no-untyped-def]
        time.sleep(self.seconds * len(tasks))
        with self.lock:
            self.busy += self.seconds * len(tasks)
        return [self.outcome(t) for t in tasks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--actors", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = tiny_config(
            tmp,
            name="capacity",
            n_trials=args.trials,
            vectors_per_trial=1,
            model={"name": "tiny-random-llama", "max_batch_jobs": 1},
            search={
                "layer": {"low": 0, "high": 3},
                "norm": {"low": 1.0, "high": 30.0, "log": True},
                "lr": {"low": 0.01, "high": 1.0, "log": True},
                "max_iters": 2,
            },
            sampler={"name": "tpe", "seed": 0, "n_startup_trials": 10},
        )
        plan = prepare(cfg)
        worker = TimedWorker([e.id for e in plan.transfer], args.seconds)
        pool = LocalPool(worker, args.actors)
        started = time.perf_counter()
        summary = run_study(cfg, pool=pool, show_progress=False)
        wall = time.perf_counter() - started
        pool.shutdown()
    ideal = args.trials * args.seconds / args.actors
    idle = 1 - worker.busy / (args.actors * wall)
    t = summary.seconds
    print(f"{args.trials} TPE trials, {args.actors} fake actors at {args.seconds} s/trial")
    print(f"wall {wall:.1f} s (ideal {ideal:.1f} s); actors idle {idle:.1%} of the time")
    print(
        f"driver: ask+tell {t['ask_tell']:.1f} s total = {t['ask_tell'] / args.trials * 1000:.1f} ms/trial; "
        f"store writes {t['write']:.1f} s = {t['write'] / args.trials * 1000:.1f} ms/trial"
    )
    print(
        f"ask+tell latency over the last 100 trials: {summary.seconds.get('ask_tell_last100_ms', float('nan')):.1f} ms"
    )


if __name__ == "__main__":
    main()
