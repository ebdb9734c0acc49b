"""Shared pieces for orchestrator tests: study configs, a fake worker, a store audit."""

from __future__ import annotations

import random
import threading
import time
import zlib
from typing import Any

import numpy as np

from orchestrator.config import StudyConfig, parse_config
from orchestrator.objectives import Objective, trial_value
from orchestrator.store import open_study
from workers.jobs import VectorResult
from workers.tasks import VectorOutcome, VectorTask
from workers.transfer import TransferRow


def tiny_config(root: str, **overrides: Any) -> StudyConfig:
    data: dict[str, Any] = {
        "name": "tiny",
        "n_trials": 6,
        "vectors_per_trial": 2,
        "model": {"name": "tiny-random-llama", "max_batch_jobs": 4, "cpus_per_actor": 1},
        "task": {"builtin": "refusal", "max_transfer": 4},
        "search": {"layer": {"low": 0, "high": 3}, "norm": [2.0, 8.0], "lr": 0.1, "max_iters": 2},
        "store": {"root": root},
        "ray": {"num_cpus": 2},
    }
    for key, value in overrides.items():
        node = data
        parts = key.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return parse_config(data)


class FakeWorker:
    """Returns plausible outcomes without a model: success depends on the layer
    (so a sampler has signal), completion times are random, and the first
    ``lose_first`` batches are lost as if their worker died (fewer than the
    scheduler's 3 attempts, so every task still completes)."""

    def __init__(
        self, transfer_ids: list[str], lose_first: int = 0, seed: int = 0, delay: float = 0.005
    ) -> None:
        self.transfer_ids = transfer_ids
        self.lose_first = lose_first
        self.rng = random.Random(seed)
        self.delay = delay
        self.calls = 0
        self.lost = 0
        self.lock = threading.Lock()

    def __call__(self, key: int, tasks: list[VectorTask]) -> list[VectorOutcome]:
        with self.lock:  # workers are threads: count atomically
            self.calls += 1
            lose = self.calls <= self.lose_first
            self.lost += lose
        time.sleep(self.rng.uniform(0, self.delay))
        if lose:
            raise RuntimeError("simulated worker death")
        return [self.outcome(t) for t in tasks]

    def outcome(self, task: VectorTask) -> VectorOutcome:
        seed = zlib.crc32(task.vector_id.encode())
        vec = np.random.default_rng(seed).normal(size=64).astype(np.float32)
        layer = task.job.layers[0]
        result = VectorResult(
            job_id=task.vector_id,
            vector=vec,
            layers=(layer,),
            loss_history=[3.0, 2.0],
            target_losses=[2.0],
            iterations=1,
            stop_reason="max_iters",
            final_norm=float(np.linalg.norm(vec)),
            seed=task.job.seed,
            log_base=10.0,
        )
        rows = []
        for i, ex in enumerate(self.transfer_ids):
            ok = (seed + i) % 4 < layer  # higher layers succeed more often
            rows.append(
                TransferRow(
                    task.vector_id, ex, "target_logprob:promote:0", -1.0 if ok else -5.0, -3.0, ok
                )
            )
        return VectorOutcome(task.vector_id, task.trial, task.example_id, result=result, rows=rows)


def audit(root: str, study: str, n_trials: int, k: int, objective: Objective | None = None) -> dict:
    """Exactly the expected trials and vectors, no duplicate ids, and every
    complete trial's objective recomputed from its stored transfer rows."""
    objective = objective or Objective()
    s = open_study(root, study)
    trials = s.completed_trials()
    assert sorted(t.number for t in trials) == list(range(n_trials)), [t.number for t in trials]
    vectors = s.vectors.to_table(columns=["vector_id", "trial", "final_norm"]).to_pylist()
    ids = [v["vector_id"] for v in vectors]
    assert len(ids) == len(set(ids)), "duplicate vector ids"
    by_trial: dict[int, list[dict]] = {}
    for v in vectors:
        by_trial.setdefault(v["trial"], []).append(v)
    assert set(by_trial) <= {t.number for t in trials}, "vectors of a trial that never finished"
    transfer = s.transfer.to_table().to_pylist()
    for t in trials:
        if t.state == "COMPLETE":
            assert len(by_trial.get(t.number, [])) == k
            mine = {v["vector_id"] for v in by_trial[t.number]}
            rows = [
                TransferRow(
                    r["vector_id"],
                    r["eval_example_id"],
                    r["metric"],
                    r["steered"],
                    r["unsteered"],
                    r["success"],
                )
                for r in transfer
                if r["vector_id"] in mine
            ]
            norms = {v["vector_id"]: v["final_norm"] for v in by_trial[t.number]}
            assert t.values is not None
            assert t.values[0] == trial_value(rows, objective, norms)
    return {"trials": trials, "vectors": vectors}
