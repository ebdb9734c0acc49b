"""The ask-ahead sampler alone: milliseconds per fit and per ask + tell.

Usage: python bench/sampler_cost.py [--history 3000,10000] [--ahead 32]
       [--in-flight 64] [--asks 640] [--out bench/results/X.json]

A study with ``--history`` finished trials (random values over the
driver_capacity benchmark's space: layer int 0-3, norm log 1-30, lr log
0.01-1) and ``--in-flight`` running ones; then asks and tells with
``AheadTPESampler`` (constant liar, multivariate), each tell finishing the
oldest running trial, so the history keeps its size and in-flight count.
Printed: ms per ask + tell with a fit every ``--ahead`` asks, ms per fit
(a fit forced on every ask), and ms per ask + tell served from a batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import optuna

from orchestrator.study.optuna_study import AheadTPESampler

SPACE = {
    "layer": optuna.distributions.IntDistribution(0, 3),
    "norm": optuna.distributions.FloatDistribution(1.0, 30.0, log=True),
    "lr": optuna.distributions.FloatDistribution(0.01, 1.0, log=True),
}


def measure(history: int, ahead: int, in_flight: int, asks: int) -> dict[str, float]:
    sampler = AheadTPESampler(
        ahead=ahead, max_stale_s=1e9, seed=0, constant_liar=True, n_startup_trials=10,
        multivariate=True,
    )  # fmt: skip
    study = optuna.create_study(sampler=sampler, direction="maximize")
    rng = np.random.default_rng(0)
    for _ in range(history):
        params = {
            "layer": int(rng.integers(0, 4)),
            "norm": float(np.exp(rng.uniform(0.0, np.log(30.0)))),
            "lr": float(np.exp(rng.uniform(np.log(0.01), 0.0))),
        }
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=SPACE, values=[rng.normal()])
        )
    running = [study.ask(SPACE) for _ in range(in_flight)]

    def step(n: int, refit: bool = False) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            if refit:
                sampler._queue = []
            running.append(study.ask(SPACE))
            study.tell(running.pop(0), float(rng.normal()))
        return (time.perf_counter() - t0) / n * 1000

    step(ahead)  # the first fit
    per_ask = step(asks)
    per_fit = step(max(8, asks // ahead), refit=True)
    sampler.ahead = asks + 1
    sampler._queue = []
    step(1)  # one fit for all the asks below
    served = step(asks)
    return {"history": history, "ask_tell_ms": per_ask, "fit_ms": per_fit,
            "served_ask_tell_ms": served}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--history", default="3000,10000")
    parser.add_argument("--ahead", type=int, default=32)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--asks", type=int, default=640)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    load = os.getloadavg()
    rows = []
    for h in (int(x) for x in args.history.split(",")):
        r = measure(h, args.ahead, args.in_flight, args.asks)
        rows.append(r)
        print(f"history {h}: ask+tell {r['ask_tell_ms']:.2f} ms (a fit every {args.ahead}), "
              f"fit {r['fit_ms']:.1f} ms, served from a batch {r['served_ask_tell_ms']:.2f} ms; "
              f"load average {load[0]:.2f}")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "machine": platform.platform(), "cpus": os.cpu_count(), "load_before": load,
            "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
        }, indent=2))  # fmt: skip
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
