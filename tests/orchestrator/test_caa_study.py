"""``search.loss: caa``: a trial whose vectors are CAA contrasts (§2.1.3) of
their training sets instead of optimized vectors, through the real driver,
engine and store, so a study compares one-shot vectors with CAA across layers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sweep_helpers import run_in_process, tiny_config

from orchestrator.report import build_report
from orchestrator.run.expand import build_assignment
from orchestrator.run.preflight import PreflightError, prepare
from orchestrator.store import open_study
from orchestrator.study.params import TrialParams
from workers.analysis.caa import examples_caa
from workers.service.assignments import run_assignments
from workers.service.stream import StreamingEngine

NORM = 4.0


def _cfg(root: str, **kw):
    kw.setdefault("n_trials", 8)
    return tiny_config(
        root,
        name="caa",
        sampler={"name": "grid"},
        search={"layer": [1, 2], "loss": ["promote", "caa"], "norm": NORM, "shots": [1, 3],
                "lr": 0.1, "max_iters": 2},
        **kw,
    )  # fmt: skip


def test_caa_trials_store_the_contrast_of_their_training_sets(tiny_llama, tmp_path) -> None:
    cfg = _cfg(str(tmp_path / "store"))
    plan, summary = run_in_process(cfg, tiny_llama)
    assert summary.complete
    v = open_study(cfg.store.root, cfg.name).vectors.to_table().to_pandas()
    caa = v[v["loss_kind"] == "caa"]
    assert len(caa) == 8 and len(v) == 16  # 4 of 8 grid points are caa, 2 vectors each
    by_id = {ex.id: ex for ex in plan.train_pool}
    shots_seen = set()
    for _, row in caa.iterrows():
        examples = [by_id[i] for i in row["train_example_ids"]]
        want = examples_caa(tiny_llama, examples, int(row["layer"]))
        want = want * (NORM / np.linalg.norm(want))
        np.testing.assert_allclose(np.asarray(row["vector"]), want, rtol=1e-4, atol=1e-5)
        assert row["iterations"] == 0 and len(row["loss_history"]) == 1
        assert np.isfinite(row["final_loss"]) and row["final_norm"] == pytest.approx(NORM, 1e-4)
        shots_seen.add(len(examples))
    assert shots_seen == {1, 3}
    one = v[v["loss_kind"] == "promote"]
    assert (one["iterations"] > 0).all()  # the optimized half of the study was optimized
    page = build_report(cfg.store.root, cfg.name, tmp_path / "report").html.read_text()
    assert "no CAA skyline stored" not in page
    assert 'src="figures/caa_skyline.png"' in page


def test_both_protocols_give_the_same_caa_vector(tiny_llama, tmp_path) -> None:
    plan = prepare(_cfg(str(tmp_path / "store")), check_store_root=False)
    params = TrialParams.from_params({
        "layer": 2, "norm": NORM, "loss": "caa", "lr": 0.1, "max_iters": 2, "init_norm": 1.0,
        "coldness": 0.7, "tokens": "all", "intervention": "add", "clamp_coef": 1.0,
    })  # fmt: skip
    a = build_assignment("v", 0, plan.train[0], params, plan.space, study_seed=0, log_base=10.0)
    [batch] = run_assignments(tiny_llama, plan.evaluation, [a])
    engine = StreamingEngine(tiny_llama, plan.evaluation, max_rows=2)
    try:
        engine.put([a])
        got = []
        while not got:
            got = engine.drain(timeout=30).outcomes
    finally:
        engine.close()
    [stream] = got
    assert batch.error is None and stream.error is None
    assert batch.result is not None and stream.result is not None
    want = examples_caa(tiny_llama, [plan.train[0]], 2)
    want = want * (NORM / np.linalg.norm(want))
    np.testing.assert_allclose(batch.result.vector, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stream.result.vector, batch.result.vector, rtol=1e-5, atol=1e-6)
    assert batch.result.loss_history == pytest.approx(stream.result.loss_history, rel=1e-4)
    assert {r.metric for r in batch.rows} == {r.metric for r in stream.rows} != set()


def test_caa_needs_a_promote_target_on_every_training_example(tmp_path) -> None:
    path = tmp_path / "task.jsonl"
    rows = [
        {"prompt": f"Request {i}", "suppress": "I cannot", "split": s}
        for i, s in enumerate(["train", "train", "train", "transfer"])
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(str(tmp_path / "store"), task={"path": str(path)}, search__loss="caa", n_trials=4)
    with pytest.raises(PreflightError, match="includes caa but training example .* no promote"):
        prepare(cfg, check_store_root=False)
