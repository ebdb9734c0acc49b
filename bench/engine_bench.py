"""The engine against a faithful seed-style loop, on the same device, model and workload.

Usage (repo root):
    python bench/engine_bench.py                       # CPU: the real SmolLM2-135M-Instruct
    python bench/engine_bench.py --shapes smollm2-135m,gemma-2-2b,llama-3-8b --out r.json
                                                       # GPU: random weights of real shapes

(a) seed-style: one vector at a time; the whole model runs every step, logits
    are computed at every position, softmaxed in float32, and the loss sums
    the target tokens in a Python loop; ``torch.optim.Adam`` and the norm
    projection of the paper's App. A.
(b) the engine (``workers.engine.loop.optimize``): continuous batching, prefix
    reuse, logits only at scored positions.

Workloads:
- uniform: T=64 tokens per row (56 prompt + m=8 target), one layer (L/2).
- heterogeneous: prompts of 20 to 200 tokens, m=8, six layers spread over
  the model, each job stopping after its own number of steps (4 to 16); 8 jobs
  per row on a GPU (3 on the CPU, to keep it short), so rows are refilled as
  jobs stop. Reports the mean row occupancy and the padding share.

Figures: vector-steps/s (optimizer steps: one forward and one backward each;
the engine's extra forward that scores each final vector is included in its
time but not counted), the ratio (b)/(a), achieved TFLOP/s and peak memory.
The seed-style loop runs an evenly spaced sample of the engine's jobs (4 steps
each); its time per step, fitted as ``a + b * tokens`` on that sample, gives
its time for the engine's whole workload, and the ratio compares the two on
that same workload.

FLOPs executed per vector-step (2 per multiply-add; P = parameters of the
decoder blocks; L blocks, steering at block l; T tokens of the row; V vocab;
attention's T^2 terms left out):
    seed-style: forward  T*2*P + T*2*d*V            (every block, logits everywhere)
                backward T*2*P*(L-l)/L + T*2*d*V    (input grads from the logits down to l)
    engine:     forward  T*2*P*(L-l)/L + m*2*d*V    (blocks >= l, logits at m positions)
                backward T*2*P*(L-l)/L + m*2*d*V
The engine's one prefix pass per job (blocks < l, no grad) is not counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_core_check import DEVICE, real_shape, sync  # noqa: E402

from workers.engine.loop import EngineStats, optimize  # noqa: E402
from workers.jobs import StopRules, VectorJob  # noqa: E402
from workers.models import LoadedModel, ModelSpec, load_model  # noqa: E402

WORDS = (
    "the quick brown fox jumps over a lazy dog while paris is lovely in spring and "
    "thank you so much this is wonderful steering vectors move the residual stream"
).split()
M = 8  # target tokens per row
COLDNESS = 0.7


@dataclass
class Spec:
    """One job of a workload, in tokens."""

    prompt: str
    target: str
    prompt_len: int
    layer: int
    steps: int


def text_of(lm: LoadedModel, n: int, rng: np.random.Generator, target: bool = False) -> str:
    """A string of random words that encodes to exactly ``n`` tokens."""
    encode = lm.encode_target if target else lm.encode_prompt
    for _ in range(50):
        ids = encode(" ".join(rng.choice(WORDS, 2 * n + 8)))[:n]
        text = lm.tokenizer.decode(ids, skip_special_tokens=True)
        if len(encode(text)) == n:
            return text
    raise RuntimeError(f"cannot build a {n}-token text")


def uniform(lm: LoadedModel, n: int, steps: int) -> list[Spec]:
    rng = np.random.default_rng(0)
    layer = lm.n_layers // 2
    return [
        Spec(text_of(lm, 64 - M, rng), text_of(lm, M, rng, target=True), 64 - M, layer, steps)
        for _ in range(n)
    ]


def heterogeneous(lm: LoadedModel, n: int) -> list[Spec]:
    rng = np.random.default_rng(1)
    L = lm.n_layers
    layers = [round(L * k / 7) for k in range(1, 7)]
    out = []
    for _ in range(n):
        length = int(rng.integers(20, 201))
        out.append(
            Spec(
                text_of(lm, length, rng),
                text_of(lm, M, rng, target=True),
                length,
                int(rng.choice(layers)),
                int(rng.integers(4, 17)),
            )
        )
    return out


def flops(lm: LoadedModel, spec: Spec, engine: bool) -> float:
    p_layers = sum(p.numel() for p in lm.layers.parameters())
    T = spec.prompt_len + M
    above = (lm.n_layers - spec.layer) / lm.n_layers
    dv = 2 * lm.d_model * lm.vocab_size
    if engine:
        return 2 * (T * 2 * p_layers * above + M * dv)
    return T * 2 * p_layers + T * dv + T * 2 * p_layers * above + T * dv


def peak_gib() -> float:
    if DEVICE == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process RSS, KiB -> GiB


def reset_peak() -> None:
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()


def rates(done: int, work: float, secs: float) -> dict[str, float]:
    """Vector-steps/s, achieved TFLOP/s and peak memory of a timed run."""
    return {
        "vector_steps_per_s": done / secs,
        "tflops": work / secs / 1e12,
        "peak_gib": peak_gib(),
        "vector_steps": done,
        "seconds": secs,
    }


def seed_style(lm: LoadedModel, specs: list[Spec]) -> dict[str, Any]:
    """(a): one vector at a time, as the paper's code does it."""
    reset_peak()
    done, work = 0, 0.0
    per_job: list[tuple[int, int, float]] = []  # (tokens, steps, seconds)
    sync()
    start = time.perf_counter()
    for i, spec in enumerate(specs):
        job_start = time.perf_counter()
        prompt = lm.encode_prompt(spec.prompt)
        target = lm.encode_target(spec.target)
        ids = torch.tensor([prompt + target], device=lm.device)
        gen = torch.Generator().manual_seed(i)
        v = torch.randn(lm.d_model, generator=gen).to(lm.device).requires_grad_(True)
        opt = torch.optim.Adam([v], lr=0.1)

        def add(_m: Any, args: tuple, kwargs: dict, v: torch.Tensor = v) -> tuple:
            h = args[0] if args else kwargs["hidden_states"]
            h = h + v.to(h.dtype)
            return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})

        handle = lm.layers[spec.layer].register_forward_pre_hook(add, with_kwargs=True)
        try:
            for _ in range(spec.steps):
                opt.zero_grad()
                logits = lm.model(input_ids=ids).logits
                logprobs = torch.log_softmax(COLDNESS * logits.float(), dim=-1)
                loss = torch.zeros((), device=lm.device)
                for k, tok in enumerate(target):
                    loss = loss - logprobs[0, len(prompt) + k - 1, tok] / math.log(10)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    if v.norm() > 30.0:
                        v.mul_(30.0 / v.norm())
                done += 1
                work += flops(lm, spec, engine=False)
        finally:
            handle.remove()
        sync()
        per_job.append((len(prompt) + len(target), spec.steps, time.perf_counter() - job_start))
    secs = time.perf_counter() - start
    return {**rates(done, work, secs), "per_job": per_job}


def matched_seconds(seed: dict[str, Any], specs: list[Spec], steps: list[int]) -> float:
    """Seconds the seed-style loop would take for the engine's exact workload:
    its time per step, fitted as ``a + b * tokens`` on the jobs it ran."""
    tokens = np.array([t for t, _, _ in seed["per_job"]], dtype=float)
    per_step = np.array([s / n for _, n, s in seed["per_job"]])
    if len(set(tokens.tolist())) > 1:
        b, a = np.polyfit(tokens, per_step, 1)
    else:
        a, b = float(per_step.mean()), 0.0
    return float(sum(n * (a + b * (sp.prompt_len + M)) for sp, n in zip(specs, steps, strict=True)))


def engine(lm: LoadedModel, specs: list[Spec], rows: int) -> dict[str, Any]:
    jobs = [
        VectorJob.simple(
            f"j{i}",
            s.prompt,
            promote=[s.target],
            layer=s.layer,
            lr=0.1,
            norm_bound=30.0,
            seed=i,
            stop=StopRules(max_iters=s.steps, eps=None),
        )
        for i, s in enumerate(specs)
    ]
    warm = VectorJob.simple("w", specs[0].prompt, [specs[0].target], layer=specs[0].layer)
    optimize(lm, [dataclasses.replace(warm, stop=StopRules(max_iters=1))])
    reset_peak()
    stats = EngineStats()
    sync()
    start = time.perf_counter()
    results = optimize(lm, jobs, max_batch_jobs=rows, stats=stats)
    sync()
    secs = time.perf_counter() - start
    done = sum(r.iterations for r in results)
    steps = [r.iterations for r in results]
    work = sum(
        r.iterations * flops(lm, s, engine=True) for r, s in zip(results, specs, strict=True)
    )
    return {
        **rates(done, work, secs),
        "rows": rows,
        "jobs": len(jobs),
        "occupancy": stats.occupancy,
        "padding_waste": stats.padding_waste,
        "prefix_reuse": stats.prefix_reuse,
        "out_of_memory": stats.out_of_memory,
        "steps": steps,
    }


PLANS = {
    # shape: (rows for the engine, seed-style vectors, engine steps, heterogeneous
    # jobs per row: a study streams many more vectors than rows through an
    # actor; the CPU run keeps it short)
    "cpu": (8, 4, 8, 3),
    "smollm2-135m": (512, 8, 8, 8),
    "gemma-2-2b": (192, 4, 8, 8),
    "llama-3-8b": (64, 2, 8, 8),
}


def run_shape(name: str, lm: LoadedModel, report: dict, out: Path | None) -> None:
    rows, n_seed, steps, per_row = PLANS["cpu" if DEVICE == "cpu" else name]
    res: dict[str, Any] = {"model": lm.model_id, "device": str(lm.device), "dtype": str(lm.dtype)}
    report[name] = res
    for workload in ("uniform", "heterogeneous"):
        if workload == "uniform":
            eng_specs = uniform(lm, rows, steps)
        else:
            eng_specs = heterogeneous(lm, per_row * rows)
        # The seed-style loop runs an evenly spaced sample of the same jobs
        # (4 steps each: its time per step does not depend on the step).
        sample = eng_specs[:: max(1, len(eng_specs) // n_seed)][:n_seed]
        a = seed_style(lm, [dataclasses.replace(sp, steps=4) for sp in sample])
        b = engine(lm, eng_specs, rows)
        matched = matched_seconds(a, eng_specs, b.pop("steps"))
        a["matched_vector_steps_per_s"] = b["vector_steps"] / matched
        ratio = b["vector_steps_per_s"] / a["matched_vector_steps_per_s"]
        res[workload] = {"seed_style": a, "engine": b, "ratio": ratio}
        print(
            f"{name} {workload:13s} seed-style {a['matched_vector_steps_per_s']:9.2f} v-steps/s "
            f"on this workload ({a['vector_steps_per_s']:.2f} on its {len(sample)} jobs, "
            f"{a['tflops'] * 1e3:.1f} GFLOP/s)  engine {b['vector_steps_per_s']:9.2f} v-steps/s "
            f"({b['tflops'] * 1e3:.1f} GFLOP/s, {b['rows']} rows, {b['jobs']} jobs, occupancy "
            f"{b['occupancy']:.1%}, padding {b['padding_waste']:.1%})  ratio {ratio:.2f}x  "
            f"peak {a['peak_gib']:.2f}/{b['peak_gib']:.2f} GiB",
            flush=True,
        )
        if out is not None:
            out.write_text(json.dumps(report, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--shapes", default="", help="random-weight shapes (GPU); empty: real SmolLM2"
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny random Llama: checks the script"
    )
    args = parser.parse_args()
    device = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu"
    report: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(report), flush=True)
    if args.smoke:
        lm = load_model(ModelSpec("tiny-random-llama", device=DEVICE))
        run_shape("tiny-random-llama", lm, report, args.out)
        return
    if not args.shapes:
        lm = load_model(ModelSpec("smollm2-135m-instruct", device=DEVICE))
        run_shape("smollm2-135m-instruct", lm, report, args.out)
        return
    for name in args.shapes.split(","):
        lm = real_shape(name)
        try:
            run_shape(name, lm, report, args.out)
        except torch.OutOfMemoryError as exc:  # a finding, not a crash
            report[name] = {"oom": str(exc)[:300]}
            print(name, "out of memory", flush=True)
        del lm
        if DEVICE == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
