"""The headline study: thousands of one-shot vectors through the
real driver, sampler, streaming engine and Parquet store, on one accelerator.

Usage (repo root):
    PYTHONPATH=. python bench/headline_study.py --shape gemma-2-2b \\
        --vectors 2000,10000 --budget-s 300 --out bench/results/headline.json
    PYTHONPATH=. python bench/headline_study.py --smoke --out /tmp/headline.json

Each stage is one study of N vectors (``--vectors``, run in order): ``N /
V`` trials of V vectors (``--per-trial``), TPE over layer and norm bound,
``--steps`` optimizer steps per vector (no early stop: eps off, no
thresholds), each vector scored on ``--held-out`` prompts (teacher-forced
target log-probability), on random weights of a real shape in bfloat16
(losses in float32; speed does not depend on weight values). The pool is a
``LocalPool`` of one ``StreamingEngine`` in this process (no Ray); the store
is a local folder. A stage after the first runs only when the rate measured
so far says it fits in what is left of ``--budget-s``.

The JSON (written after every stage) holds, per stage: wall seconds from
``run_study`` to its return, vectors/s, the engine's own split (optimizer
steps, evaluation, idle), the driver and store time (wall minus the engine's
busy time), occupancy, mean optimizer steps per vector (from the store), and
useful TFLOP/s: the FLOPs of the optimizer steps and held-out scoring the
study did (orchestrator.run.estimate's formulas at each vector's own layer
and step count) over the wall time.

``--smoke`` runs the same code on the CPU with a tiny random Llama and a
few dozen vectors, to check the script before device time is spent on it.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_core_check import DEVICE, SHAPES, real_shape  # noqa: E402

from orchestrator.run.estimate import OPTIMIZE_PASSES, SCORE_PASSES, pass_flop  # noqa: E402
from orchestrator.run.pools import LocalPool  # noqa: E402
from orchestrator.run.preflight import prepare  # noqa: E402
from orchestrator.run.runner import run_study  # noqa: E402
from orchestrator.store import open_study  # noqa: E402
from orchestrator.study.config import parse_config  # noqa: E402
from workers.models import LoadedModel  # noqa: E402
from workers.models.tiny import tiny_model, tiny_tokenizer  # noqa: E402
from workers.service.stream import StreamingEngine  # noqa: E402

WORDS = (
    "the quick brown fox jumps over a lazy dog while paris is lovely in spring and "
    "thank you so much this is wonderful steering vectors move the residual stream"
).split()


def model_folder(lm: LoadedModel, where: Path) -> Path:
    """What ``prepare`` reads of a model (config and tokenizer, no weights)."""
    lm.model.config.save_pretrained(where)
    lm.tokenizer.save_pretrained(where)
    return where


def task_file(lm: LoadedModel, path: Path, n_train: int, n_held: int, prompt: int, m: int) -> Path:
    """Raw prompts of ``prompt`` tokens with one ``m``-token target each."""
    rng = np.random.default_rng(0)

    def text(n: int) -> str:
        ids = lm.encode_prompt(" ".join(rng.choice(WORDS, 4 * n)))[:n]
        return str(lm.tokenizer.decode(ids))

    rows = [
        {
            "id": f"{split}-{i}",
            "prompt": text(prompt),
            "prompt_format": "raw",
            "promote": " " + text(m).strip(),
            "split": split,
        }
        for split, n in (("train", n_train), ("transfer", n_held))
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def study_config(args: argparse.Namespace, name: str, model: Path, task: Path, root: Path,
                 n_layers: int, vectors: int) -> Any:  # fmt: skip
    lo, hi = max(1, n_layers // 4), max(1, (3 * n_layers) // 4)
    return parse_config({
        "name": name,
        "n_trials": vectors // args.per_trial,
        "vectors_per_trial": args.per_trial,
        "trials_in_flight": max(2, 2 * args.rows // args.per_trial + 1),
        "model": {"name": str(model), "dtype": "bfloat16" if DEVICE == "cuda" else "float32",
                  "device": DEVICE, "max_batch_jobs": args.rows},
        "task": {"path": str(task)},
        "search": {"layer": {"low": lo, "high": hi}, "norm": {"low": 4.0, "high": 64.0, "log": True},
                   "lr": 0.5, "max_iters": args.steps, "loss": "promote"},
        "evaluation": {"metrics": ["target_logprob"], "keep_generations": 0,
                       "batch_size": args.eval_batch},
        "objectives": [{"metric": "target_logprob", "statistic": "delta"}],
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 8, "ask_ahead": 8},
        "store": {"root": str(root), "group_trials": 8, "group_ms": 500},
        "ray": {"address": "local"},
    })  # fmt: skip


def useful_flop(lm: LoadedModel, vectors: Any, transfer: Any, prompt: int, m: int) -> float:
    """FLOPs of the steps and held-out scoring the study did: per vector-step
    6 P (L - l) T + 6 d V m, per held-out score 2 P (L - l) T + 2 d V m
    (orchestrator/run/estimate.py), at each vector's layer and step count."""
    cfg = lm.model.config
    d, vocab, n_layers = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    p = sum(x.numel() for x in lm.layers[0].parameters())
    t = prompt + m
    above = n_layers - vectors["layer"].to_numpy(float)
    steps = vectors["iterations"].to_numpy(float)
    scored = transfer.groupby("vector_id").size().reindex(vectors["vector_id"]).fillna(0).to_numpy()
    opt = steps * pass_flop(OPTIMIZE_PASSES, p, above, t, d * vocab, m)
    ev = scored * pass_flop(SCORE_PASSES, p, above, t, d * vocab, m)
    return float(np.sum(opt) + np.sum(ev))


def stage(
    args: argparse.Namespace, lm: LoadedModel, folder: Path, task: Path, vectors: int
) -> dict:
    root = Path(tempfile.mkdtemp(prefix="headline-store-"))
    name = f"headline-{vectors}"
    cfg = study_config(args, name, folder, task, root, lm.n_layers, vectors)
    plan = prepare(cfg)
    engine = StreamingEngine(lm, plan.evaluation, max_rows=args.rows, eval_batch=args.eval_rows)
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    started = time.perf_counter()
    summary = run_study(cfg, pool=LocalPool([engine]), show_progress=False)
    wall = time.perf_counter() - started
    report = engine.drain(timeout=0).report
    engine.close()
    study = open_study(str(root), name)
    vec = study.vectors.to_table(columns=["vector_id", "layer", "iterations"]).to_pandas()
    tr = study.transfer.to_table(columns=["vector_id"]).to_pandas()
    flop = useful_flop(lm, vec, tr, args.prompt_tokens, args.target_tokens)
    busy = report.step_s + report.eval_s
    out = {
        "vectors": int(len(vec)),
        "trials": summary.stored,
        "complete": summary.complete,
        "wall_s": wall,
        "vectors_per_s": len(vec) / wall,
        "vector_steps_per_s": float(vec["iterations"].sum()) / wall,
        "engine_vector_steps_per_s": report.vector_steps / max(report.step_s, 1e-9),
        "split_s": {
            "optimize": report.step_s,
            "evaluate": report.eval_s,
            "driver_and_store": max(0.0, wall - busy),
        },
        "occupancy": summary.occupancy,
        "eval_share": summary.eval_share,
        "mean_steps_per_vector": float(vec["iterations"].mean()),
        "held_out_scores": int(len(tr)),
        "useful_tflops": flop / wall / 1e12,
        "useful_flop": flop,
        "driver_latency_ms": summary.latency_ms,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else None,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "store_files": sum(1 for _ in root.rglob("*.parquet")),
    }
    shutil.rmtree(root, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="gemma-2-2b", choices=sorted(SHAPES))
    parser.add_argument("--vectors", default="2000,10000", help="vectors per stage, in order")
    parser.add_argument("--per-trial", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--held-out", type=int, default=32)
    parser.add_argument("--rows", type=int, default=192, help="the engine's rows")
    parser.add_argument("--eval-rows", type=int, default=16, help="vectors evaluated between steps")
    parser.add_argument("--eval-batch", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=56)
    parser.add_argument("--target-tokens", type=int, default=8)
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, few vectors")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    t0 = time.perf_counter()
    if args.smoke:
        args.vectors, args.per_trial, args.steps, args.held_out = "16,32", 4, 3, 4
        args.rows, args.eval_rows, args.eval_batch, args.prompt_tokens = 4, 2, 16, 24
        lm = tiny_model("llama", n_layers=4)
        lm.tokenizer = tiny_tokenizer()
        shape = "tiny-llama"
    else:
        lm = real_shape(args.shape)
        shape = args.shape
    report: dict[str, Any] = {
        "shape": shape,
        "device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu",
        "torch": torch.__version__,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "stages": [],
    }
    work = Path(tempfile.mkdtemp(prefix="headline-"))
    folder = model_folder(lm, work / "model")
    task = task_file(lm, work / "task.jsonl", args.per_trial, args.held_out,
                     args.prompt_tokens, args.target_tokens)  # fmt: skip
    rate = None
    for n in (int(x) for x in args.vectors.split(",")):
        left = args.budget_s - (time.perf_counter() - t0)
        if rate is not None and n / rate > 0.9 * left:
            print(f"skip {n} vectors: {n / rate:.0f} s at {rate:.1f} vectors/s, {left:.0f} s left",
                  flush=True)  # fmt: skip
            report["stages"].append(
                {"vectors": n, "skipped": f"needs {n / rate:.0f} s, {left:.0f} left"}
            )
            continue
        res = stage(args, lm, folder, task, n)
        rate = res["vectors_per_s"]
        report["stages"].append(res)
        args.out.write_text(json.dumps(report, indent=1))
        print(
            f"{n} vectors: {res['wall_s']:.1f} s, {rate:.1f} vectors/s, "
            f"{res['vector_steps_per_s']:.0f} vector-steps/s, split "
            + ", ".join(f"{k} {v:.1f} s" for k, v in res["split_s"].items())
            + f", occupancy {res['occupancy']:.0%}, useful {res['useful_tflops']:.1f} TFLOP/s, "
            f"{res['mean_steps_per_vector']:.1f} steps/vector",
            flush=True,
        )
    args.out.write_text(json.dumps(report, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
