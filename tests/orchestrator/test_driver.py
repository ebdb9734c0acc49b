"""The driver with in-process fake workers: counts, resume, pruning, samplers."""

from __future__ import annotations

import pytest
from sweep_helpers import FakeWorker, audit, tiny_config

from orchestrator.run.pools import local_batch_pool
from orchestrator.run.preflight import prepare
from orchestrator.run.runner import run_study
from orchestrator.store import open_study


def fake_pool(cfg, lose_first=0, n=3, seed=0):
    plan = prepare(cfg)
    worker = FakeWorker([e.id for e in plan.transfer], lose_first=lose_first, seed=seed)
    return local_batch_pool(worker, n), worker


def test_all_trials_told_once_with_lost_workers(tmp_path) -> None:
    cfg = tiny_config(str(tmp_path / "store"), n_trials=12)
    pool, worker = fake_pool(cfg, lose_first=2)
    summary = run_study(cfg, pool=pool, show_progress=False)
    assert summary.told == 12 and summary.states == {"COMPLETE": 12}
    audit(str(tmp_path / "store"), "tiny", 12, 2)
    assert worker.lost == 2 and worker.calls > 2  # lost batches went back to the queue


def test_resume_after_a_crash_between_objects(tmp_path) -> None:
    root = str(tmp_path / "store")
    cfg = tiny_config(root, n_trials=8)
    pool, _ = fake_pool(cfg)
    import orchestrator.store.writer as writer_mod

    real_put = writer_mod.put_with_retries
    count = {"n": 0}

    def crashing_put(r, key, data, retry, stats):
        real_put(r, key, data, retry, stats)
        if key.startswith("vectors/"):
            count["n"] += 1
            if count["n"] == 4:  # the 4th trial's vectors land, its trials row never does
                raise KeyboardInterrupt("driver killed")

    writer_mod.put_with_retries = crashing_put
    try:
        with pytest.raises(KeyboardInterrupt):
            run_study(cfg, pool=pool, show_progress=False)
    finally:
        writer_mod.put_with_retries = real_put
    study = open_study(root, "tiny")
    done = {t.number for t in study.completed_trials()}
    written = set(study.vectors.to_table(columns=["trial"]).column("trial").to_pylist())
    assert 1 <= len(done) < 8
    assert written - done, "the crash left a trial with vectors but no trials row"
    pool, _ = fake_pool(cfg, seed=1)
    summary = run_study(cfg, pool=pool, show_progress=False)
    assert summary.resumed == len(done) and summary.told == 8 - len(done)
    audit(root, "tiny", 8, 2)
    # A third run has nothing left to do.
    pool, _ = fake_pool(cfg)
    again = run_study(cfg, pool=pool, show_progress=False)
    assert again.told == 0 and again.resumed == 8


def test_grid_sampler_covers_the_exact_grid(tmp_path) -> None:
    root = str(tmp_path / "store")
    cfg = tiny_config(
        root, n_trials=6, sampler={"name": "grid"}, search__layer=[0, 1, 3], search__norm=[2.0, 8.0]
    )
    pool, _ = fake_pool(cfg)
    run_study(cfg, pool=pool, show_progress=False)
    trials = audit(root, "tiny", 6, 2)["trials"]
    combos = {(t.params["layer"], t.params["norm"]) for t in trials}
    assert combos == {(layer, norm) for layer in (0, 1, 3) for norm in (2.0, 8.0)}
    with pytest.raises(Exception, match="grid has only 6 points"):
        prepare(
            tiny_config(
                root,
                n_trials=7,
                sampler={"name": "grid"},
                search__layer=[0, 1, 3],
                search__norm=[2.0, 8.0],
            )
        )


def test_multi_objective_stores_a_pareto_front(tmp_path) -> None:
    root = str(tmp_path / "store")
    objectives = [
        {"metric": "target_logprob", "statistic": "success", "direction": "maximize"},
        {"metric": "norm", "statistic": "steered", "direction": "minimize"},
    ]
    cfg = tiny_config(root, n_trials=8, objectives=objectives, sampler={"name": "nsga2"})
    pool, _ = fake_pool(cfg)
    summary = run_study(cfg, pool=pool, show_progress=False)
    trials = audit(root, "tiny", 8, 2)["trials"]
    assert all(t.values is not None and len(t.values) == 2 for t in trials)
    front = summary.best
    assert front and all(len(b["values"]) == 2 for b in front)
    # No stored trial dominates a front member.
    for b in front:
        for t in trials:
            assert not (t.values[0] > b["values"][0] and t.values[1] < b["values"][1])


def test_pruned_trials_keep_their_vectors(tmp_path) -> None:
    root = str(tmp_path / "store")
    cfg = tiny_config(
        root,
        n_trials=10,
        vectors_per_trial=4,
        pruner={"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
        sampler={"name": "random"},
        model__max_batch_jobs=1,
        trials_in_flight=1,
    )
    pool, _ = fake_pool(cfg, n=1)
    summary = run_study(cfg, pool=pool, show_progress=False)
    s = open_study(root, "tiny")
    pruned = [t for t in s.completed_trials() if t.state == "PRUNED"]
    assert summary.states.get("PRUNED", 0) == len(pruned) > 0
    vectors = s.vectors.to_table(columns=["trial"]).column("trial").to_pylist()
    for t in pruned:
        n = vectors.count(t.number)
        assert 1 <= n < 4, "a pruned trial keeps the vectors it finished, and stops early"
