"""Every worker code path once on the GPU (or CPU), to catch device mix-ups.

Usage: PYTHONPATH=. python bench/gpu_smoke.py

Runs, on a tiny random model placed on CUDA when available: batched
optimization with add/clamp/affine rows, reentrant steering, CAA, and the
evaluation of vector assignments with every transfer metric. Prints one line per
step and "ok" at the end; any device mismatch raises.
"""

from __future__ import annotations

import time

import torch

from workers.analysis.caa import caa_vector
from workers.engine.reentrant import ReentrantJob, optimize_reentrant
from workers.evaluation.evaluate import EvalCache, EvalSpec
from workers.examples import Example
from workers.jobs import Intervention, ScoredPrompt, StopRules, Target, VectorJob, chat
from workers.models.tiny import tiny_model
from workers.service.assignments import Assignment, run_assignments


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    lm = tiny_model("llama", device=device, dtype=dtype)
    print("device", lm.device, lm.dtype)
    kinds = [Intervention(), Intervention("clamp", clamp_coef=0.5), Intervention("affine", rank=2)]
    assignments = [
        Assignment(
            f"v{i}",
            0,
            f"ex{i}",
            VectorJob(
                f"v{i}",
                prompts=(
                    ScoredPrompt(chat("Hello world"), (Target("Paris"), Target(" No", "suppress"))),
                ),
                layers=(i % 4,),
                norm_bound=4.0,
                intervention=kinds[i % 3],
                stop=StopRules(max_iters=3),
            ),
        )
        for i in range(6)
    ]
    examples = (
        Example("t0", chat("What is the capital?"), promote=("Paris",), split="transfer"),
        Example(
            "t1",
            chat("Choose A or B"),
            choices=("A", "B"),
            correct=0,
            split="transfer",
            group="benign",
        ),
    )
    spec = EvalSpec(
        examples=examples,
        metrics=("target_logprob", "choice_flip", "judge", "side_effect_kl"),
        neutral_prompts=(chat("Hi"),),
        judge_contains_any=("paris",),
        generation_tokens=4,
    )
    t0 = time.perf_counter()
    outs = run_assignments(lm, spec, assignments, EvalCache())
    errors = [o.error for o in outs if o.error]
    assert not errors, errors
    print(
        f"run_assignments: {len(outs)} vectors, {sum(len(o.rows) for o in outs)} rows, {time.perf_counter() - t0:.1f} s"
    )
    stage1 = VectorJob(
        "s1",
        prompts=(ScoredPrompt(chat("Hello"), (Target(" Just kidding", "suppress"),)),),
        layers=(0,),
        intervention=Intervention("affine", rank=1),
        stop=StopRules(max_iters=3),
    )
    [r] = optimize_reentrant(
        lm,
        [
            ReentrantJob(
                stage1, VectorJob("s2", layers=(2,), stop=StopRules(max_iters=3)), n_tokens=3
            )
        ],
    )
    print("reentrant KL", [round(x, 4) for x in r.stage2.loss_history])
    v = caa_vector(lm, [chat("Thank you")], [chat("No")], 2)
    print("caa norm", float((v**2).sum() ** 0.5))
    print("ok")


if __name__ == "__main__":
    main()
