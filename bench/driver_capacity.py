"""Driver capacity: can one driver keep many actors busy?

Usage: python bench/driver_capacity.py [--trials 2000] [--actors 16] [--seconds 0.5]

Fake workers (threads, no model) take ``--seconds`` per vector (one vector per
trial); the real driver runs TPE (constant liar) ask/tell, the scheduler and
the local Parquet store, exactly as ``steer-sweep run`` does.

Idle share: every actor records when each of its batches started and ended.
From the first batch of the study to the last batch handed out (after that
there is nothing left to give), the share of actor time without a batch is
time an actor waited on the driver. Also printed: the share over the whole
run (setup and the tail included), and the driver's ask and tell latency
(mean, and mean over the last 100).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "orchestrator"))

from sweep_helpers import FakeWorker, tiny_config  # noqa: E402

from orchestrator.run.pools import local_batch_pool  # noqa: E402
from orchestrator.run.preflight import prepare  # noqa: E402
from orchestrator.run.runner import run_study  # noqa: E402


class TimedWorker(FakeWorker):
    def __init__(self, transfer_ids: list[str], seconds: float) -> None:
        super().__init__(transfer_ids, delay=0.0)
        self.seconds = seconds
        self.spans: dict[int, list[tuple[float, float]]] = {}

    def __call__(self, key, assignments):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        time.sleep(self.seconds * len(assignments))
        out = [self.outcome(t) for t in assignments]
        with self.lock:
            self.spans.setdefault(key, []).append((start, time.perf_counter()))
        return out


def idle_share(spans: dict[int, list[tuple[float, float]]], n_actors: int) -> float:
    """Share of actor time without a batch, from the first batch start to the last."""
    starts = [s for v in spans.values() for s, _ in v]
    lo, hi = min(starts), max(starts)
    busy = 0.0
    for v in spans.values():
        busy += sum(max(0.0, min(e, hi) - max(s, lo)) for s, e in v)
    return 1 - busy / (n_actors * (hi - lo))


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
        pool = local_batch_pool(worker, args.actors)
        started, cpu0 = time.perf_counter(), time.process_time()
        summary = run_study(cfg, pool=pool, show_progress=False)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
        pool.shutdown()
    busy = sum(e - s for v in worker.spans.values() for s, e in v)
    ideal = args.trials * args.seconds / args.actors
    t, lat = summary.seconds, summary.latency_ms
    print(f"{args.trials} TPE trials, {args.actors} fake actors at {args.seconds} s/trial")
    print(
        f"wall {wall:.1f} s (ideal {ideal:.1f} s), driver process CPU {cpu:.1f} s; actors idle "
        f"{idle_share(worker.spans, args.actors):.1%} while work remained "
        f"({1 - busy / (args.actors * wall):.1%} of the whole run, setup and tail included)"
    )
    print(
        f"ask {lat['ask_mean']:.1f} ms mean, {lat['ask_last100']:.1f} ms over the last 100; "
        f"tell {lat['tell_mean']:.2f} ms mean, {lat['tell_last100']:.2f} ms over the last 100"
    )
    print(
        f"driver totals: ask {t['ask']:.1f} s, tell {t['tell']:.1f} s; store writes "
        f"{t['write']:.1f} s on background threads = {t['write'] / args.trials * 1000:.1f} ms/trial"
    )


if __name__ == "__main__":
    main()
