"""The transfer screen against full evaluation, on the quickstart study, in one run.

Usage (repo root):
    python bench/screen_bench.py                 # 2 rounds, alternating off / on
    python bench/screen_bench.py --rounds 1 --slice 4 --margin 0.5

The study: ``examples/quickstart.yaml`` (the real SmolLM2-135M-Instruct,
float32, CPU; 6 trials of 4 vectors, each vector scored on 16 held-out
requests), with the random sampler so both variants run the same trials and
optimize the same vectors, through the real driver and Parquet store on one
in-process ``SteeringWorker``:

- ``off``: every vector evaluated on all 16 held-out examples;
- ``on``: ``pruner: {name: transfer_screen, slice_size, margin,
  n_startup_vectors: 4}``.

Figures per run: wall time, the workers' evaluation seconds, vectors
screened. Per round, against the ``off`` run's full evaluation: how many of
the top vectors (by held-out mean delta) the screen kept in full, and whether
any screened vector would have scored above the threshold's median (a
vector the screen should not have stopped). The load average is taken before
and after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from orchestrator.run.pools import LocalPool  # noqa: E402
from orchestrator.run.preflight import prepare  # noqa: E402
from orchestrator.run.runner import run_study  # noqa: E402
from orchestrator.store import open_study  # noqa: E402
from orchestrator.study.config import load_config  # noqa: E402
from workers.models import ModelSpec  # noqa: E402
from workers.service.actor import SteeringWorker  # noqa: E402

SPEC = ModelSpec("smollm2-135m-instruct", dtype="float32", device="cpu")


def load() -> float:
    return os.getloadavg()[0]


def config(variant: str, round_: int, root: Path, slice_size: int, margin: float) -> Any:
    overrides = [
        f"name=screen-bench-{variant}-{round_}",
        f"store.root={root}",
        "sampler.name=random",
        "ray.address=local",
    ]
    if variant == "on":
        overrides += [
            "pruner.name=transfer_screen",
            f"pruner.slice_size={slice_size}",
            f"pruner.margin={margin}",
            "pruner.n_startup_vectors=4",
        ]
    return load_config(REPO / "examples" / "quickstart.yaml", overrides)


def vector_delta(root: Path, name: str) -> dict[str, float]:
    """Per vector: the mean steered - unsteered over its stored transfer rows."""
    t = open_study(str(root), name).transfer.to_table().to_pandas()
    return (t["steered"] - t["unsteered"]).groupby(t["vector_id"]).mean().to_dict()


def one_run(variant: str, round_: int, root: Path, slice_size: int, margin: float) -> dict:
    cfg = config(variant, round_, root, slice_size, margin)
    plan = prepare(cfg, check_store_root=False)
    worker = SteeringWorker(SPEC, plan.evaluation, label="bench", max_batch_jobs=8, streaming=True)
    before = load()
    t0 = time.perf_counter()
    summary = run_study(cfg, pool=LocalPool([worker]), show_progress=False)
    wall = time.perf_counter() - t0
    vectors = open_study(str(root), cfg.name).vectors.to_table(columns=["example_id", "trial",
                                                                        "screened"])  # fmt: skip
    screened = sum(bool(x) for x in vectors.column("screened").to_pylist())
    out = {
        "variant": variant,
        "round": round_,
        "name": cfg.name,
        "wall_s": wall,
        "evaluate_s": summary.seconds.get("evaluate"),
        "optimize_s": summary.seconds.get("optimize"),
        "vectors": vectors.num_rows,
        "screened": screened,
        "load_before": before,
        "load_after": load(),
    }
    print(
        f"{variant:3s} round {round_}: {wall:6.1f} s, evaluate {out['evaluate_s']:.1f} s, "
        f"optimize {out['optimize_s']:.1f} s, {screened}/{vectors.num_rows} screened "
        f"(load {before:.2f} -> {out['load_after']:.2f})",
        flush=True,
    )
    return out


def compare(root: Path, off: dict, on: dict, top: int) -> dict:
    """The screen's decisions against the full evaluation of the same vectors
    (same trial, same training example: vector ids differ by study name)."""
    full = vector_delta(root, off["name"])
    key = {}
    for name, run in (("off", off), ("on", on)):
        t = open_study(str(root), run["name"]).vectors.to_table(
            columns=["vector_id", "trial", "example_id", "screened"]
        )
        for r in t.to_pylist():
            key.setdefault((r["trial"], r["example_id"]), {})[name] = r
    pairs = [v for v in key.values() if "off" in v and "on" in v]
    ranked = sorted(pairs, key=lambda v: full[v["off"]["vector_id"]], reverse=True)
    kept_top = sum(not v["on"]["screened"] for v in ranked[:top])
    return {
        "top": top,
        "top_kept_in_full": kept_top,
        "screened_ranks": [i + 1 for i, v in enumerate(ranked) if v["on"]["screened"]],
        "vectors_compared": len(pairs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--slice", type=int, default=4)
    ap.add_argument("--margin", type=float, default=0.5)
    ap.add_argument("--top", type=int, default=4)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "screen_cpu.json")
    args = ap.parse_args()
    runs, comparisons = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        for r in range(args.rounds):
            order = ["off", "on"] if r % 2 == 0 else ["on", "off"]
            done = {v: one_run(v, r, root, args.slice, args.margin) for v in order}
            runs += [done["off"], done["on"]]
            c = compare(root, done["off"], done["on"], args.top)
            c["round"] = r
            c["evaluate_ratio_on_off"] = done["on"]["evaluate_s"] / done["off"]["evaluate_s"]
            c["wall_ratio_on_off"] = done["on"]["wall_s"] / done["off"]["wall_s"]
            comparisons.append(c)
            print(
                f"round {r}: evaluate on/off {c['evaluate_ratio_on_off']:.2f}, wall on/off "
                f"{c['wall_ratio_on_off']:.2f}; top {args.top} kept in full: "
                f"{c['top_kept_in_full']}; ranks screened: {c['screened_ranks']}",
                flush=True,
            )
    result = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "settings": {"slice_size": args.slice, "margin": args.margin, "n_startup_vectors": 4},
        "runs": runs,
        "comparisons": comparisons,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
