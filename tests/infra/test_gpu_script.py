"""bench/gpu_all.sh, the one device call of the GPU figures, run here with
``--smoke`` (tiny models on the CPU): every stage writes its JSON, the
headline study runs every vector's steps with no early stop and scores every
held-out prompt, and it needs neither Ray nor boto3 (the GPU machine has
neither)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_all_smoke_writes_every_stage(tmp_path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", "bench/gpu_all.sh", "--smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "smoke.txt").read_text().strip().endswith("ok")
    engine = json.loads((tmp_path / "engine.json").read_text())
    for workload in ("uniform", "heterogeneous"):
        res = engine["tiny-random-llama"][workload]
        assert res["ratio"] > 0 and res["engine"]["vector_steps_per_s"] > 0
    stages = json.loads((tmp_path / "headline.json").read_text())["stages"]
    assert [s["vectors"] for s in stages] == [16, 32]
    for s in stages:
        assert s["complete"] and s["mean_steps_per_vector"] == 3.0  # --steps, no early stop
        assert s["held_out_scores"] == s["vectors"] * 4  # every vector on every held-out prompt
        assert s["useful_flop"] > 0 and set(s["split_s"]) == {"optimize", "evaluate",
                                                              "driver_and_store"}  # fmt: skip


def test_the_headline_study_needs_no_ray_and_no_boto3(tmp_path) -> None:
    out = tmp_path / "h.json"
    code = (
        "import runpy, sys\n"
        "for m in ('ray', 'boto3', 'botocore'): sys.modules[m] = None\n"
        f"sys.argv = ['headline_study.py', '--smoke', '--out', {str(out)!r}]\n"
        "runpy.run_path('bench/headline_study.py', run_name='__main__')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert all(s["complete"] for s in json.loads(out.read_text())["stages"])
