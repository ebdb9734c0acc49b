"""K-shot vectors: ``shots: 1`` is the one-shot study unchanged; a K-shot
vector is the optimum of the mean (or summed) loss over its K prompts; the
training sets are seeded, disjoint where the split allows, and stored."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
from reference import reference_adam
from sweep_helpers import audit, run_in_process, tiny_config

from orchestrator.datasets import builtin_task
from orchestrator.run.expand import build_assignment, training_sets
from orchestrator.run.preflight import PreflightError, prepare
from orchestrator.run.runner import identity_hash
from orchestrator.store import open_study, redact
from orchestrator.study.config import SearchSpace
from orchestrator.study.params import TrialParams
from workers.engine.loop import optimize

PARAMS = {"layer": 1, "norm": 2.0, "loss": "promote", "lr": 0.3, "max_iters": 6,
          "init_norm": 1.0, "coldness": 0.7, "tokens": "all", "intervention": "add",
          "clamp_coef": 1.0}  # fmt: skip


@pytest.mark.parametrize("how", ["mean", "sum"])
def test_a_k_shot_vector_is_the_optimum_of_its_combined_loss(tiny_llama: Any, how: str) -> None:
    train = builtin_task("refusal").train
    params = TrialParams.from_params({**PARAMS, "shots": 3})
    a = build_assignment("v", 0, train[0], params, SearchSpace(), study_seed=0, log_base=10.0,
                         also=train[1:3], shots_loss=how)  # fmt: skip
    assert a.train_example_ids == tuple(e.id for e in train[:3])
    assert len(a.job.prompts) == 3
    w = {t.weight for p in a.job.prompts for t in p.targets}
    assert w == ({1 / 3} if how == "mean" else {1.0})
    [ours] = optimize(tiny_llama, [a.job])
    expected = reference_adam(tiny_llama, a.job, 6)
    assert ours.iterations == 6
    np.testing.assert_allclose(ours.vector, expected, atol=2e-5)


def test_one_shot_assignments_are_what_they_were(tiny_llama: Any) -> None:
    """With no extra examples the job has the anchor's own prompt and targets,
    untouched weights and thresholds, as before K-shot existed."""
    train = builtin_task("refusal").train
    params = TrialParams.from_params(PARAMS)  # a trial stored before `shots`: K = 1
    assert params.shots == 1
    assert training_sets(train[:3], train, 1, study_seed=0, trial=5) == [[e] for e in train[:3]]
    a = build_assignment("v", 0, train[0], params, SearchSpace(), study_seed=0, log_base=10.0)
    [prompt] = a.job.prompts
    assert prompt.prompt == train[0].prompt
    want = tuple(t for t in train[0].scored_prompt(10.0).targets if t.kind == "promote")
    assert prompt.targets == want


def test_training_sets_are_seeded_disjoint_where_possible_and_start_at_the_anchor() -> None:
    pool = builtin_task("refusal").train
    assert len(pool) >= 9
    anchors = pool[:3]
    sets = training_sets(anchors, pool[:9], 3, study_seed=1, trial=7)
    ids = [[e.id for e in s] for s in sets]
    assert [s[0] for s in ids] == [a.id for a in anchors]
    assert all(len(set(s)) == 3 for s in ids)
    flat = [i for s in ids for i in s]
    assert len(flat) == len(set(flat)) == 9  # disjoint: 3 x 3 fits in 9
    again = training_sets(anchors, pool[:9], 3, study_seed=1, trial=7)
    assert [[e.id for e in s] for s in again] == ids
    others = {tuple(e.id for e in s) for t in range(8)
              for s in training_sets(anchors, pool[:9], 3, study_seed=1, trial=t)}  # fmt: skip
    assert len(others) > 3, "the draw should depend on the trial"
    # Too few examples for disjoint sets: every example used as evenly as possible.
    tight = training_sets(anchors, pool[:5], 3, study_seed=1, trial=7)
    use = Counter(e.id for s in tight for e in s)
    assert sum(use.values()) == 9 and max(use.values()) - min(use.values()) <= 1
    assert all(len({e.id for e in s}) == 3 for s in tight)  # without replacement


def test_a_k_shot_study_stores_each_vectors_training_set(tmp_path: Any, tiny_llama: Any) -> None:
    root = str(tmp_path / "store")
    cfg = tiny_config(
        root,
        n_trials=2,
        vectors_per_trial=2,
        sampler={"name": "grid", "seed": 0},
        trials_in_flight=1,
        search={"layer": 1, "norm": 4.0, "lr": 0.3, "max_iters": 2, "shots": [1, 3]},
    )
    plan, _ = run_in_process(cfg, tiny_llama)
    assert len(plan.train) == 2 and len(plan.train_pool) > 2
    audit(root, "tiny", 2, 2)
    st = open_study(root, "tiny")
    shots = {t.number: t.params["shots"] for t in st.completed_trials()}
    assert sorted(shots.values()) == [1, 3]
    stored_examples = set(st.examples.to_table(columns=["example_id"]).column(0).to_pylist())
    for v in st.vectors.to_table(columns=["trial", "example_id", "train_example_ids"]).to_pylist():
        ids = v["train_example_ids"]
        assert len(ids) == shots[v["trial"]] == len(set(ids)) and ids[0] == v["example_id"]
        assert set(ids) <= stored_examples
        want = training_sets(plan.train, plan.train_pool, shots[v["trial"]],
                             study_seed=cfg.seed, trial=v["trial"])  # fmt: skip
        assert ids in [[e.id for e in s] for s in want]


def test_a_one_shot_config_keeps_its_identity_and_too_many_shots_is_refused(tmp_path: Any) -> None:
    plain = tiny_config(str(tmp_path))
    spelled = tiny_config(str(tmp_path), search={**plain.search.model_dump(), "shots": 1})
    assert identity_hash(redact(plain.model_dump(mode="json"))) == identity_hash(
        redact(spelled.model_dump(mode="json"))
    )
    old = redact(plain.model_dump(mode="json"))
    old["search"] = {k: v for k, v in old["search"].items() if k not in ("shots", "shots_loss")}
    assert identity_hash(old) == identity_hash(redact(plain.model_dump(mode="json")))
    assert len(prepare(plain, check_store_root=False).train_pool) == plain.vectors_per_trial
    n = len(builtin_task("refusal").train)
    with pytest.raises(PreflightError, match=f"search.shots goes up to {n + 1}"):
        prepare(tiny_config(str(tmp_path), search={"layer": 1, "shots": n + 1}),
                check_store_root=False)  # fmt: skip


def test_a_k_shot_threshold_is_weighted_with_its_loss(tiny_llama: Any) -> None:
    """The stopping rule compares each term's weighted loss with its
    threshold, so a K-shot vector on K copies of one example stops at the same
    step as the one-shot vector on it (thresholds weighted like the losses)."""
    from workers.examples import Example
    from workers.jobs import chat

    ex = Example("t0", chat("Tell me a joke about cats."), promote=("Sure",), thresholds=(-4.58,))
    twin = Example("t1", ex.prompt, promote=ex.promote, thresholds=ex.thresholds)
    params = TrialParams.from_params({**PARAMS, "max_iters": 40, "lr": 0.2, "norm": 8.0})
    one = build_assignment("a", 0, ex, params, SearchSpace(), study_seed=0, log_base=10.0)
    two = build_assignment("a", 0, ex, params, SearchSpace(), study_seed=0, log_base=10.0,
                           also=[twin])  # fmt: skip
    [goal] = [t.threshold for t in one.job.prompts[0].targets]
    assert goal is not None
    assert [t.threshold for p in two.job.prompts for t in p.targets] == [goal / 2, goal / 2]
    [r1], [r2] = optimize(tiny_llama, [one.job]), optimize(tiny_llama, [two.job])
    assert r1.stop_reason == r2.stop_reason == "targets_reached"
    assert r1.iterations == r2.iterations < 40
