"""Two models, two pools: the steered model's generations are scored by a
second (base) model's actors, and land as ``surprisal`` transfer rows."""

from __future__ import annotations

import math

import pytest
from sweep_helpers import FakeWorker, audit, study_dict, tiny_config

from orchestrator.run.pools import local_batch_pool
from orchestrator.run.preflight import prepare
from orchestrator.run.runner import run_study
from orchestrator.run.surprisal import local_score_pool
from orchestrator.store import open_study
from orchestrator.study.config import ConfigError, parse_config
from orchestrator.study.objectives import Objective
from workers.evaluation.transfer import Generation, surprisal_per_token
from workers.service.protocol import Assignment, VectorOutcome

SURPRISAL = {"metrics": ["target_logprob", "surprisal"], "generation_tokens": 4}
BASE = {"name": "tiny-random-qwen2", "cpus_per_actor": 1, "max_batch_jobs": 2}


class GeneratingWorker(FakeWorker):
    """A fake steering worker that also returns generations, as the real one
    does when surprisal is asked for: a different steered text per vector, the
    same unsteered text per example."""

    def outcome(self, assignment: Assignment) -> VectorOutcome:
        out = super().outcome(assignment)
        out.generations = [
            Generation(
                assignment.vector_id, ex, f"steered {assignment.vector_id[:4]}", f"plain {ex}"
            )
            for ex in self.transfer_ids
        ]
        return out


def test_surprisal_needs_its_model_and_the_model_needs_the_metric(tmp_path) -> None:
    with pytest.raises(ConfigError, match="set surprisal_model"):
        tiny_config(str(tmp_path), evaluation=SURPRISAL)
    with pytest.raises(ConfigError, match="no surprisal"):
        tiny_config(str(tmp_path), surprisal_model=BASE)
    cfg = tiny_config(str(tmp_path), evaluation=SURPRISAL, surprisal_model={"name": "no-such"})
    with pytest.raises(Exception, match="surprisal_model.name"):
        prepare(cfg)


def test_driver_routes_generations_to_the_second_pool(tmp_path, tiny_llama) -> None:
    root = str(tmp_path / "store")
    objective = {"metric": "surprisal", "statistic": "steered", "direction": "minimize"}
    cfg = tiny_config(
        root,
        n_trials=5,
        evaluation=SURPRISAL,
        surprisal_model=BASE,
        objectives=[objective],
        task={"builtin": "fictitious", "max_transfer": 3},
    )
    plan = prepare(cfg)
    assert plan.surprisal_context, "the fictitious task has a surprisal context"
    context = list(plan.surprisal_context)
    calls: list[list[str]] = []

    def score(key: int, texts: list[str]) -> list[float]:
        calls.append(texts)
        return surprisal_per_token(tiny_llama, context, texts, log_base=10.0)

    worker = GeneratingWorker([e.id for e in plan.transfer])
    summary = run_study(
        cfg,
        pool=local_batch_pool(worker, 2),
        scorer=local_score_pool(score, 2),
        show_progress=False,
    )
    assert summary.states == {"COMPLETE": 5}
    audit(root, "tiny", 5, 2, Objective(**objective))
    rows = open_study(root, "tiny").transfer.to_table().to_pylist()
    mine = [r for r in rows if r["metric"] == "surprisal"]
    assert len(mine) == 5 * 2 * 3  # trials x vectors x held-out examples
    for r in mine:
        [steered] = surprisal_per_token(tiny_llama, context, [f"steered {r['vector_id'][:4]}"])
        assert math.isclose(r["steered"], steered / math.log2(10), rel_tol=1e-4)
        assert r["success"] == (r["steered"] <= r["unsteered"])
    unsteered = [t for batch in calls for t in batch if t.startswith("plain")]
    # Unsteered texts repeat in every vector's generations; once scored they
    # come from the cache (the first batches, on both actors at once, may
    # each score them).
    assert len(set(unsteered)) == 3 and len(unsteered) <= 3 * 2


def test_two_model_pools_on_ray(ray_cluster, tmp_path) -> None:
    root = str(tmp_path / "store")
    data = study_dict(root, "twopools", 3)
    data["model"] = {"name": "tiny-random-llama", "num_actors": 1, "max_batch_jobs": 2}
    data["surprisal_model"] = {"name": "tiny-random-qwen2", "num_actors": 1}
    data["task"] = {"builtin": "fictitious", "max_transfer": 2}
    data["search"]["loss"] = "suppress"
    data["evaluation"] = SURPRISAL
    cfg = parse_config(data)
    summary = run_study(cfg, show_progress=False)
    assert summary.states == {"COMPLETE": 3}
    audit(root, "twopools", 3, 2)
    rows = open_study(root, "twopools").transfer.to_table().to_pylist()
    surprisal = [r for r in rows if r["metric"] == "surprisal"]
    assert len(surprisal) == 3 * 2 * 2
    assert all(math.isfinite(r["steered"]) and r["steered"] > 0 for r in surprisal)
    assert not ray_cluster.util.list_named_actors(), "both pools shut down"
