"""One-call GPU check of the core optimizer: correctness on CUDA, then throughput.

Usage (on a GPU machine, from the repo root):
    PYTHONPATH=. python bench/gpu_core_check.py --out results.json [--quick]

1. Batch invariance on CUDA (float32, tiny model): the 8 heterogeneous jobs of
   tests/jobsets.py, batched against solo; prints the max |diff|.
2. Throughput in bfloat16 with float32 losses on random-weight models of real
   shapes (speed does not depend on weight values): T=64 tokens per row
   (56 prompt + 8 target), one layer at L/2, for several batch sizes. Prints
   vector-steps/s, achieved TFLOP/s (FLOPs written out below) and peak memory.

FLOPs per optimizer step, per row, counted as 2 * multiply-adds:
  forward  = T * 2 * P_layers + m * 2 * d * V         (all blocks; lm_head at m positions)
  backward = T * 2 * P_layers * (L - l) / L + m * 2 * d * V
             (input gradients only, weights are frozen; blocks >= l)
where P_layers is the parameter count of the decoder blocks; attention's
T^2 terms are left out (under 3% at T=64).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import torch

from workers.engine.loop import optimize
from workers.jobs import StopRules, VectorJob
from workers.models import LoadedModel
from workers.models.tiny import tiny_model, tiny_tokenizer

SHAPES = {
    "smollm2-135m": dict(
        family="llama",
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
    "gemma-2-2b": dict(
        family="gemma2",
        hidden_size=2304,
        intermediate_size=9216,
        num_hidden_layers=26,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        vocab_size=256000,
        tie_word_embeddings=True,
    ),
    "llama-3-8b": dict(
        family="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        tie_word_embeddings=False,
    ),
}


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def invariance() -> float:
    spec = importlib.util.spec_from_file_location("t", "tests/jobsets.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    lm = tiny_model("llama", device=DEVICE)
    jobs = mod.eight_jobs()
    batched = optimize(lm, jobs)
    solo = [optimize(lm, [j])[0] for j in jobs]
    return max(float(np.abs(b.vector - s.vector).max()) for b, s in zip(batched, solo, strict=True))


def real_shape(name: str) -> LoadedModel:
    import transformers as tf

    cfg = dict(SHAPES[name])
    family = cfg.pop("family")
    config_cls = {"llama": tf.LlamaConfig, "gemma2": tf.Gemma2Config}[family]
    config = config_cls(max_position_embeddings=4096, **cfg)
    with torch.device(DEVICE):
        model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return LoadedModel(model, tiny_tokenizer(), model_id=f"random-{name}")


def uniform_jobs(lm: LoadedModel, n: int, steps: int) -> list[VectorJob]:
    words = "the quick brown fox jumps over lazy dog paris is lovely thank you".split()
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        prompt = " ".join(rng.choice(words, 80))
        ids = lm.encode_prompt(prompt)[:56]
        text = lm.tokenizer.decode(ids)
        target = lm.tokenizer.decode(lm.encode_prompt(" ".join(rng.choice(words, 12)))[:8])
        out.append(
            VectorJob.simple(
                f"u{i}",
                text,
                promote=[target],
                layer=lm.n_layers // 2,
                lr=0.1,
                seed=i,
                stop=StopRules(max_iters=steps, eps=None),
            )
        )
    return out


def flops_per_row_step(lm: LoadedModel, T: int, m: int, layer: int) -> float:
    p_layers = sum(p.numel() for p in lm.layers.parameters())
    head = 2 * lm.d_model * lm.vocab_size * m
    fwd = T * 2 * p_layers + head
    bwd = T * 2 * p_layers * (lm.n_layers - layer) / lm.n_layers + head
    return fwd + bwd


def throughput(lm: LoadedModel, batch: int, steps: int) -> dict:
    jobs = uniform_jobs(lm, batch, steps)
    optimize(lm, uniform_jobs(lm, batch, 2))  # warm-up
    sync()
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    optimize(lm, jobs)
    sync()
    secs = time.perf_counter() - start
    # steps backward passes plus steps + 1 forwards; count steps full steps.
    vps = batch * steps / secs
    flops = flops_per_row_step(lm, 64, 8, lm.n_layers // 2)
    return {
        "batch": batch,
        "vector_steps_per_s": vps,
        "tflops": vps * flops / 1e12,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "seconds": secs,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a CPU dry run")
    args = parser.parse_args()
    name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu"
    report: dict = {"device": name, "torch": torch.__version__}
    report["invariance_max_abs_diff_fp32"] = invariance()
    print(
        "batch invariance on CUDA, max |diff|:", report["invariance_max_abs_diff_fp32"], flush=True
    )
    plans = {"smollm2-135m": [1, 8, 64, 256, 512], "gemma-2-2b": [1, 16, 64, 128]}
    if args.quick:
        plans = {"smollm2-135m": [1, 2]}
    steps = 2 if args.quick else 8
    for name, sizes in plans.items():
        lm = real_shape(name)
        rows = []
        for b in sizes:
            try:
                row = throughput(lm, b, steps)
            except torch.OutOfMemoryError:  # a finding, not a crash
                row = {"batch": b, "oom": True}
                torch.cuda.empty_cache()
            rows.append(row)
            print(name, json.dumps(row), flush=True)
            args.out.write_text(json.dumps({**report, name: rows}, indent=1))
        report[name] = rows
        del lm
        torch.cuda.empty_cache()
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
