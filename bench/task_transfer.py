"""Transfer of one one-shot vector per built-in task, on the real model.

Usage: python bench/task_transfer.py [--layer 12] [--norm 30] [--iters 10] [--n 16]
       [--out bench/results/task_transfer_cpu.json]

For each task: optimize a promotion vector on its first training example
(lr 0.5), then evaluate it on the first N held-out examples: the share of
held-out targets whose log-probability rose (success without thresholds), the
mean change in hartleys, and for two_choice the choice-flip rates per group
and sign (§3). The figures are also written as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from collections import defaultdict
from pathlib import Path

from orchestrator.datasets import builtin_task
from workers import StopRules, VectorJob, load_model, optimize
from workers.evaluation.transfer import choice_flips, target_logprobs
from workers.steering.vectors import SteeringVector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--norm", type=float, default=30.0)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "task_transfer_cpu.json",
        help="write the figures as JSON here",
    )
    args = parser.parse_args()
    lm = load_model("smollm2-135m-instruct")
    result = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "model": lm.model_id,
        "device": str(lm.device),
        "settings": {"layer": args.layer, "norm": args.norm, "iters": args.iters, "n": args.n},
        "tasks": {},
    }
    for name in ("refusal", "sentiment", "fictitious", "two_choice"):
        task = builtin_task(name)
        ex = task.train[0]
        train = dataclasses.replace(ex, promote=ex.promote[:1], suppress=(), thresholds=())
        job = VectorJob(
            job_id=name,
            prompts=(train.scored_prompt(),),
            layers=(args.layer,),
            lr=0.5,
            norm_bound=args.norm,
            stop=StopRules(max_iters=args.iters),
        )
        t0 = time.perf_counter()
        [res] = optimize(lm, [job])
        vec = SteeringVector.from_result(name, res, job)
        held = [
            dataclasses.replace(e, promote=e.promote[:1], suppress=(), thresholds=())
            for e in task.transfer[: args.n]
        ]
        rows = target_logprobs(lm, [vec], [e for e in held if e.promote])
        rose = sum(r.success for r in rows) / len(rows)
        delta = sum(r.steered - r.unsteered for r in rows) / len(rows)
        row = {
            "initial_loss": res.initial_loss,
            "final_loss": res.final_loss,
            "held_out": len(rows),
            "share_rose": rose,
            "mean_change_hartleys": delta,
        }
        line = (
            f"{name:11s} train loss {res.initial_loss:6.2f} -> {res.final_loss:5.2f} | "
            f"held-out targets up {rose:5.1%} of {len(rows)}, mean change {delta:+.2f} hartleys"
        )
        if name == "two_choice":
            flips: dict[str, list[bool]] = defaultdict(list)
            for r in choice_flips(lm, [vec], held):
                group = next(e.group for e in held if e.id == r.example_id)
                flips[r.metric[-1] + group].append(r.success)
            row["flip_rates"] = {k: sum(v) / len(v) for k, v in sorted(flips.items())}
            line += " | flips " + ", ".join(
                f"{k} {sum(v) / len(v):.0%}" for k, v in sorted(flips.items())
            )
        row["seconds"] = time.perf_counter() - t0
        result["tasks"][name] = row
        print(f"{line} ({row['seconds']:.0f} s)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
