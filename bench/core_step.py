"""Time per optimization step of the core optimizer, solo and batched.

Usage: python bench/core_step.py [--model smollm2-135m-instruct] [--batch 8] [--steps 10]
       [--out bench/results/core_step_cpu.json]

Prints seconds per optimizer step for one job alone and for a batch of B jobs
(different prompts and layers), plus seconds per *vector*-step for the batch.
Each run first takes 2 warm-up steps, which are not counted. The figures are
also written as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from workers import ModelSpec, StopRules, VectorJob, chat, load_model, optimize

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "How do I bake bread at home?",
    "Explain photosynthesis to a child.",
    "What are the rules of chess?",
    "Give me three tips for learning Spanish.",
    "Why is the sky blue?",
    "Summarize the plot of Hamlet.",
]


def jobs(n: int, steps: int, layer: int) -> list[VectorJob]:
    return [
        VectorJob.simple(
            f"b{i}",
            chat(PROMPTS[i % len(PROMPTS)]),
            promote=["I cannot answer that."],
            layer=layer + (i % 3) - 1,
            lr=0.5,
            norm_bound=30.0,
            seed=i,
            stop=StopRules(max_iters=steps, eps=None),
        )
        for i in range(n)
    ]


def timed(lm, batch: list[VectorJob], steps: int) -> float:
    warm = [j.__class__(**{**j.__dict__, "stop": StopRules(max_iters=2, eps=None)}) for j in batch]
    optimize(lm, warm)
    start = time.perf_counter()
    optimize(lm, batch)
    # steps optimizer steps plus the final evaluation of the last vector.
    return (time.perf_counter() - start) / (steps + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "core_step_cpu.json",
        help="write the figures as JSON here",
    )
    args = parser.parse_args()
    lm = load_model(ModelSpec(args.model, dtype=args.dtype))
    print(
        f"model={args.model} device={lm.device} dtype={lm.dtype} threads={torch.get_num_threads()}"
    )
    solo = timed(lm, jobs(1, args.steps, args.layer), args.steps)
    batched = timed(lm, jobs(args.batch, args.steps, args.layer), args.steps)
    print(f"solo:      {solo * 1000:8.1f} ms/step")
    print(
        f"batch B={args.batch}: {batched * 1000:8.1f} ms/step = "
        f"{batched / args.batch * 1000:.1f} ms per vector-step "
        f"({solo * args.batch / batched:.2f}x the solo throughput)"
    )
    result = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "model": args.model,
        "device": str(lm.device),
        "dtype": str(lm.dtype),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "steps": args.steps,
        "layer": args.layer,
        "solo_ms_per_step": solo * 1000,
        "batch_ms_per_step": batched * 1000,
        "batch_ms_per_vector_step": batched / args.batch * 1000,
        "batch_throughput_over_solo": solo * args.batch / batched,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
