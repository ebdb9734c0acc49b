"""Streaming workers against one batch per call, as whole studies, in one run.

Usage (repo root):
    python bench/stream_bench.py                      # both protocols, 2 rounds, alternating
    python bench/stream_bench.py --rounds 2 --quickstart   # and the quickstart, both ways
    python bench/stream_bench.py --engine-check --rounds 3  # the worker-level check alone
    python bench/stream_bench.py --layer-mix --rounds 3     # mixed steering layers, equal work

The study: the heterogeneous workload of ``bench/engine_bench.py`` on the real
SmolLM2-135M-Instruct (float32, CPU): 4 training prompts of 20, 80, 140 and
200 tokens with 8-token targets, trials that differ in layer (4, 9, 13, 17,
21, 26) and step count (4, 8, 12, 16), 4 vectors per trial (so a batch of 8
rows holds two trials' vectors, as in the quickstart), 12 trials (48
vectors), each scored on 8 held-out prompts (teacher-forced target
log-probability).
It runs through the real driver, sampler and Parquet store, with one
``SteeringWorker`` (8 rows) in this process:

- ``batch``: one batch of up to 8 assignments per call, all outcomes at its
  end (``model.engine: batch``);
- ``stream``: one resident engine, its inbox topped up to 16, each outcome
  out when its vector is done and evaluated (``model.engine: stream``).

The random sampler with one seed gives both the same trials, so the same jobs.
Figures per run: the study's wall time (driver start to the last tell),
occupancy (rows holding a job over rows, first assignment to last outcome),
the share of time in evaluation, and the delay from a trial's last vector
being done to its tell (p50, p99, max). ``--quickstart`` also times
``steer-sweep run examples/quickstart.yaml`` (local Ray) with each engine.
The load average is taken before and after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench")]

from engine_bench import M, text_of  # noqa: E402

from orchestrator.run.pools import LocalPool  # noqa: E402
from orchestrator.run.runner import run_study  # noqa: E402
from orchestrator.study.config import parse_config  # noqa: E402
from workers.models import LoadedModel, ModelSpec, load_model  # noqa: E402
from workers.service.actor import SteeringWorker  # noqa: E402

SPEC = ModelSpec("smollm2-135m-instruct", dtype="float32", device="cpu")
ROWS = 8


def write_task(lm: LoadedModel, path: Path) -> None:
    rng = np.random.default_rng(1)
    rows = []
    for i, n in enumerate(np.linspace(20, 200, 4).astype(int)):
        rows.append({"id": f"train-{i}", "prompt": text_of(lm, int(n), rng),
                     "promote": text_of(lm, M, rng, target=True), "split": "train"})  # fmt: skip
    for i in range(8):
        rows.append({"id": f"held-{i}", "prompt": text_of(lm, int(rng.integers(30, 60)), rng),
                     "promote": text_of(lm, M, rng, target=True), "split": "transfer"})  # fmt: skip
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps({**r, "prompt_format": "raw"}) + "\n")


def study(name: str, engine: str, task: Path, root: Path) -> Any:
    return parse_config(
        {
            "name": name,
            "n_trials": 12,
            "vectors_per_trial": 4,
            "model": {
                "name": SPEC.name,
                "dtype": SPEC.dtype,
                "device": SPEC.device,
                "max_batch_jobs": ROWS,
                "engine": engine,
            },  # fmt: skip
            "task": {"path": str(task)},
            "search": {
                "layer": [4, 9, 13, 17, 21, 26],
                "max_iters": [4, 8, 12, 16],
                "lr": 0.1,
                "norm": 30.0,
            },  # fmt: skip
            "sampler": {"name": "random", "seed": 0},
            "evaluation": {"metrics": ["target_logprob"], "batch_size": 16},
            "store": {"root": str(root)},
        }
    )


def load() -> float:
    return os.getloadavg()[0]


def one_run(engine: str, round_: int, task: Path, root: Path) -> dict[str, Any]:
    cfg = study(f"stream-bench-{engine}-{round_}", engine, task, root)
    worker = SteeringWorker(
        SPEC, _evaluation(cfg), label="bench", max_batch_jobs=ROWS, streaming=engine == "stream"
    )
    before = load()
    t0 = time.perf_counter()
    summary = run_study(cfg, pool=LocalPool([worker]), show_progress=False)
    wall = time.perf_counter() - t0
    out = {
        "engine": engine,
        "round": round_,
        "wall_s": wall,
        "trials": summary.stored,
        "states": summary.states,
        "vectors": summary.vectors,
        "occupancy": summary.occupancy,
        "eval_share": summary.eval_share,
        "finish_to_tell_ms": {k: v for k, v in summary.latency_ms.items() if "finish" in k},
        "seconds": summary.seconds,
        "load_before": before,
        "load_after": load(),
    }
    print(
        f"{engine:6s} round {round_}: {wall:6.1f} s, occupancy {summary.occupancy:.1%}, "
        f"eval share {summary.eval_share:.1%}, finish->tell p50 "
        f"{out['finish_to_tell_ms'].get('finish_to_tell_p50', float('nan')):.0f} ms p99 "
        f"{out['finish_to_tell_ms'].get('finish_to_tell_p99', float('nan')):.0f} ms "
        f"max {out['finish_to_tell_ms'].get('finish_to_tell_max', float('nan')):.0f} ms  "
        f"(load {before:.2f} -> {out['load_after']:.2f})",
        flush=True,
    )
    return out


def _evaluation(cfg: Any) -> Any:
    from orchestrator.run.preflight import prepare

    return prepare(cfg, check_store_root=False).evaluation


def quickstart(engine: str, round_: int, root: Path) -> dict[str, Any]:
    """``steer-sweep run examples/quickstart.yaml`` on a local Ray, one engine."""
    name = f"qs-{engine}-{round_}"
    cmd = [sys.executable, "-m", "orchestrator.cli", "-q", "run", "examples/quickstart.yaml",
           f"name={name}", f"store.root={root}", f"model.engine={engine}",
           "ray.address=local"]  # fmt: skip
    before = load()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"quickstart failed:\n{proc.stdout}\n{proc.stderr}")
    times = re.search(r"time \(s\): (.*?); occupancy ([\d.]+)%, evaluation share ([\d.]+)%",
                      proc.stdout)  # fmt: skip
    seconds = {}
    if times:
        for part in times.group(1).split(", "):
            k, v = part.rsplit(" ", 1)
            seconds[k] = float(v)
    out = {
        "engine": engine,
        "round": round_,
        "command_wall_s": wall,
        "study_s": seconds.get("total", float("nan")) - seconds.get("setup_and_model_load", 0.0),
        "seconds": seconds,
        "occupancy": float(times.group(2)) / 100 if times else None,
        "eval_share": float(times.group(3)) / 100 if times else None,
        "load_before": before,
        "load_after": load(),
    }
    print(
        f"quickstart {engine:6s} round {round_}: command {wall:6.1f} s, study "
        f"{out['study_s']:6.1f} s, occupancy {out['occupancy']}, (load {before:.2f} -> "
        f"{out['load_after']:.2f})",
        flush=True,
    )
    return out


def engine_check(rounds: int) -> list[dict[str, Any]]:
    """The quickstart's assignments (6 trials x 4 refusal prompts, layers 6-18,
    8 steps, 16 held-out requests) straight through the worker code, no
    driver: three batches of 8 (``run_assignments``) against one streaming
    engine kept topped up to 16, alternating. Counts the optimizer's steps and
    their seconds, so the two can be told apart from the evaluation, and per
    step how many distinct steering layers its rows start at (each layer
    between the lowest and the highest runs on part of the batch)."""
    import collections

    import workers.engine.loop as loop_mod
    from orchestrator.datasets import builtin_task
    from orchestrator.run.expand import build_assignment
    from orchestrator.study.config import SearchSpace
    from orchestrator.study.params import TrialParams
    from workers.evaluation.evaluate import EvalCache, EvalSpec
    from workers.service.assignments import run_assignments
    from workers.service.stream import StreamingEngine

    lm = load_model(SPEC)
    task = builtin_task("refusal")
    spec = EvalSpec(examples=task.transfer[:16], metrics=("target_logprob",), max_targets=1)
    rng = np.random.default_rng(0)
    work = []
    for t in range(6):
        params = TrialParams.from_params(
            {
                "layer": int(rng.integers(6, 19)),
                "norm": 16.0,
                "loss": "promote",
                "lr": 0.5,
                "max_iters": 8,
                "init_norm": 1.0,
                "coldness": 0.7,
                "tokens": "all",
                "intervention": "add",
                "clamp_coef": 1.0,
            }  # fmt: skip
        )
        work += [
            build_assignment(
                f"t{t}-{ex.id}", t, ex, params, SearchSpace(), study_seed=0, log_base=10.0
            )  # fmt: skip
            for ex in task.train[:4]
        ]

    def batch() -> Any:
        from workers.engine.loop import EngineStats

        stats, cache = EngineStats(), EvalCache()
        for k in range(0, len(work), ROWS):
            run_assignments(lm, spec, work[k : k + ROWS], cache, max_batch_jobs=ROWS, stats=stats)
        return stats

    def stream() -> Any:
        engine = StreamingEngine(lm, spec, max_rows=ROWS)
        engine.put(work[: 2 * ROWS])
        done, sent = 0, 2 * ROWS
        while done < len(work):
            got = engine.drain(1.0).outcomes
            done += len(got)
            if got and sent < len(work):
                engine.put(work[sent : sent + len(got)])
                sent += len(got)
        engine.close()
        return engine.stats

    seen: list[int] = []
    real_resume = loop_mod.resume

    def counting(lm_: Any, prefix: Any, row_layer: Any) -> Any:
        seen.append(len(set(row_layer)))
        return real_resume(lm_, prefix, row_layer)

    loop_mod.resume = counting  # type: ignore[assignment]
    out = []
    for r in range(rounds):
        for name, fn in (("batch", batch), ("stream", stream)):
            before, w0, c0 = load(), time.perf_counter(), time.process_time()
            seen.clear()
            stats = fn()
            row = {
                "engine": name, "round": r, "wall_s": time.perf_counter() - w0,
                "cpu_s": time.process_time() - c0, "steps": stats.steps,
                "vector_steps": stats.vector_steps, "step_s": stats.step_s,
                "rows_per_step": stats.vector_steps / max(stats.steps, 1),
                "load_before": before, "load_after": load(),
                "distinct_layers_per_step": dict(sorted(collections.Counter(seen).items())),
            }  # fmt: skip
            print(
                f"engine check {name:6s} round {r}: wall {row['wall_s']:5.1f} s, cpu "
                f"{row['cpu_s']:5.1f} s, steps {stats.steps} x {row['rows_per_step']:.1f} rows "
                f"in {stats.step_s:5.1f} s (load {before:.2f}); distinct layers per step "
                f"{row['distinct_layers_per_step']}",
                flush=True,
            )
            out.append(row)
    return out


def layer_mix(rounds: int) -> list[dict[str, Any]]:
    """Does mixing steering layers in one batch cost time at equal work? Eight
    4-step jobs at layers (6 x4, 18 x4) against (6, 10, 14, 18 x2): both run
    the same block-rows (each row computes only its own layers and up), the
    second with more partial-batch blocks. Alternating, ``rounds`` times."""
    from workers.engine.loop import EngineStats, optimize
    from workers.jobs import StopRules, VectorJob, chat

    lm = load_model(SPEC)
    prompts = [chat("Write a short poem about the sea and the sky, please, in four lines."),
               chat("What should I pack for a weekend camping trip in the mountains?")]  # fmt: skip

    def jobs(layers: list[int]) -> list[VectorJob]:
        return [VectorJob.simple(f"j{i}", prompts[i % 2], promote=["I cannot help with that."],
                                 layer=layer, lr=0.3, norm_bound=8.0, seed=i,
                                 stop=StopRules(max_iters=4, eps=None))
                for i, layer in enumerate(layers)]  # fmt: skip

    out = []
    for r in range(rounds):
        for name, layers in (("2 layers", [6] * 4 + [18] * 4), ("4 layers", [6, 10, 14, 18] * 2)):
            before, stats = load(), EngineStats()
            optimize(lm, jobs(layers), stats=stats)
            out.append({"round": r, "mix": name, "layers": layers, "steps": stats.steps,
                        "step_s": stats.step_s, "load_before": before})  # fmt: skip
            print(f"layer mix {name} round {r}: {stats.step_s:.1f} s for {stats.steps} steps "
                  f"(load {before:.2f})", flush=True)  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quickstart", action="store_true", help="also time the quickstart, both ways")
    ap.add_argument(
        "--engine-check",
        action="store_true",
        help="only the worker-level check (no driver), --rounds rounds; JSON beside --out",
    )
    ap.add_argument(
        "--layer-mix",
        action="store_true",
        help="only the layer-mixing check, --rounds rounds; JSON beside --out",
    )
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "stream_cpu.json")
    args = ap.parse_args()
    import torch

    torch.manual_seed(0)
    for flag, check, suffix in ((args.layer_mix, layer_mix, "_layer_mix"),
                                (args.engine_check, engine_check, "_engine_check")):  # fmt: skip
        if flag:
            path = args.out.with_name(args.out.stem + suffix + ".json")
            command = " ".join(["python", "bench/stream_bench.py", *sys.argv[1:]])
            runs = check(args.rounds)
            path.write_text(json.dumps({"machine": platform.platform(), "runs": runs,
                                        "command": command}, indent=2))  # fmt: skip
            print(f"wrote {path}")
            return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lm = load_model(SPEC)
        task = work / "task.jsonl"
        write_task(lm, task)
        del lm
        runs, quick = [], []
        for r in range(args.rounds):
            for engine in ("batch", "stream"):  # alternating, as a pair per round
                runs.append(one_run(engine, r, task, work / "store"))
        if args.quickstart:
            for r in range(args.rounds):
                for engine in ("batch", "stream"):
                    quick.append(quickstart(engine, r, work / "qs-store"))
    pairs = [
        (b, s)
        for b in runs
        for s in runs
        if b["engine"] == "batch" and s["engine"] == "stream" and b["round"] == s["round"]
    ]
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
        "torch_threads": __import__("torch").get_num_threads(),
        "workload": "12 trials x 4 vectors; prompts 20/80/140/200 tokens, 8-token targets; layers "
        "4/9/13/17/21/26; 4-16 steps; 8 held-out prompts; 8 rows; SmolLM2-135M fp32 CPU",
        "runs": runs,
        "speedup_stream_over_batch": [b["wall_s"] / s["wall_s"] for b, s in pairs],
        "quickstart": quick,
        "command": " ".join(["python", "bench/stream_bench.py", *sys.argv[1:]]),
    }
    for b, s in pairs:
        print(f"round {b['round']}: stream {b['wall_s'] / s['wall_s']:.2f}x faster than batch")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
