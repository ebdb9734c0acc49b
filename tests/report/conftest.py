"""Synthetic studies for the report tests, written with the real StoreWriter.

``build_study`` writes a study with seeded random values: several layers,
norm bounds and loss kinds, COMPLETE, PRUNED and FAIL trials, one CAA skyline
vector, and one trial whose trial row is missing (its vectors and transfer
rows were written, then the commit marker was lost), which a report must
leave out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.store import (
    ExampleRecord,
    StoreWriter,
    StudyContext,
    TransferRecord,
    TrialRecord,
    VectorRecord,
    save_study_config,
    vector_id,
)
from orchestrator.store.schemas import trial_key
from workers.jobs import Target, VectorResult, chat

D_MODEL = 8
N_EVAL = 6
EXAMPLES = ("train-0", "train-1", "train-2")


@dataclass
class Built:
    root: Path
    study: str
    uncommitted_trial: int | None


def _config(study: str, objectives: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": study, "evaluation": {"log_base": 10.0}, "objectives": objectives}


def _vector(rng: np.random.Generator, trial: int, j: int, layer: int, steps: int) -> VectorResult:
    start = float(rng.uniform(5, 10))
    history = [start * float(np.exp(-rng.uniform(0.1, 0.6) * t)) for t in range(steps)]
    return VectorResult(
        job_id=f"t{trial}-j{j}",
        vector=rng.standard_normal(D_MODEL).astype(np.float32),
        layers=(layer,),
        loss_history=history,
        target_losses=[history[-1]],
        iterations=steps - 1,
        stop_reason="max_iters",
        final_norm=float(rng.uniform(1, 4)),
        seed=trial * 10 + j,
        log_base=10.0,
    )


def _transfer(rng: np.random.Generator, vid: str, kind: str) -> list[TransferRecord]:
    rows = []
    for e in range(N_EVAL):
        unsteered = float(rng.uniform(-8, -4))
        steered = unsteered + float(rng.normal(1.0, 2.0))
        moved = steered - unsteered if kind != "suppress" else unsteered - steered
        metric = f"target_logprob:{'suppress' if kind == 'suppress' else 'promote'}:0"
        rows.append(TransferRecord(vid, f"eval-{e}", metric, steered, unsteered, moved > 0.5))
        verdict = float(rng.uniform() < 0.5)
        rows.append(TransferRecord(vid, f"eval-{e}", "judge:refusal", verdict, 0.0, verdict > 0))
    return rows


def _examples() -> list[ExampleRecord]:
    out = [
        ExampleRecord(ex, "train", chat(f"Train prompt {ex}"), [Target("No.")]) for ex in EXAMPLES
    ]
    out += [
        ExampleRecord(
            f"eval-{e}", "transfer", chat(f"Held-out request number {e}"), [Target("I cannot")]
        )
        for e in range(N_EVAL)
    ]
    return out


def build_study(
    root: Path,
    study: str = "rep",
    *,
    n_complete: int = 12,
    objectives: int = 1,
    caa: bool = True,
    seed: int = 0,
) -> Built:
    rng = np.random.default_rng(seed)
    objs = [
        {
            "metric": "target_logprob",
            "statistic": "delta",
            "reduce": "mean",
            "direction": "maximize",
        }
    ]
    if objectives > 1:
        objs.append(
            {"metric": "norm", "statistic": "steered", "reduce": "mean", "direction": "minimize"}
        )
    chash = save_study_config(root, study, _config(study, objs))
    ctx = StudyContext(study=study, config_hash=chash, model_id="tiny", d_model=D_MODEL)
    writer = StoreWriter(root, ctx)
    writer.write_examples(_examples())
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    states = ["COMPLETE"] * n_complete + ["PRUNED", "FAIL", "COMPLETE"]
    for number, state in enumerate(states):
        layer = [2, 4, 6][number % 3]
        norm = [4.0, 8.0][(number // 3) % 2]
        kind = "suppress" if number % 4 == 3 else "promote"
        lr = float(rng.uniform(0.01, 1.0))
        vecs, rows = [], []
        if state != "FAIL":
            for j, ex in enumerate(EXAMPLES):
                res = _vector(rng, number, j, layer, steps=int(rng.integers(3, 9)))
                vecs.append(
                    VectorRecord(res, example_id=ex, loss_kind=kind, lr=lr, norm_bound=norm)
                )
                rows += _transfer(rng, vector_id(study, number, ex), kind)
            if caa and number == 0:
                res = _vector(rng, number, 9, layer, steps=1)
                vecs.append(VectorRecord(res, example_id="all-train", loss_kind="caa", lr=0.0))
                rows += _transfer(rng, vector_id(study, number, "all-train"), "promote")
        values = None
        if state == "COMPLETE":
            # the objective follows the layer; lr is noise (for the importance test)
            values = [layer + float(rng.normal(0, 0.05))]
            if objectives > 1:
                values.append(float(rng.uniform(1, 4)))
        trial = TrialRecord(
            number=number,
            state=state,
            params={"layer": layer, "norm": norm, "lr": lr},
            values=values,
            started_at=t0 + timedelta(minutes=number),
            finished_at=t0 + timedelta(minutes=number, seconds=30),
            error=f"loss became NaN in trial {number}" if state == "FAIL" else None,
        )
        writer.write_trial(trial, vecs, rows)
    # The last trial loses its commit marker: vectors and transfer rows stay.
    last = len(states) - 1
    (root / trial_key("trials", study, last)).unlink()
    return Built(root, study, last)


def build_failed_only(root: Path, study: str = "failing") -> list[str]:
    chash = save_study_config(root, study, _config(study, []))
    writer = StoreWriter(
        root, StudyContext(study=study, config_hash=chash, model_id="tiny", d_model=D_MODEL)
    )
    errors = ["CUDA out of memory in trial 0", "prompt longer than the model's context in trial 1"]
    for n, err in enumerate(errors):
        writer.write_trial(
            TrialRecord(number=n, state="FAIL", params={"layer": n}, error=err), [], []
        )
    return errors


@pytest.fixture(scope="session")
def study_factory() -> Callable[..., Built]:
    return build_study


@pytest.fixture(scope="session")
def failed_factory() -> Callable[..., list[str]]:
    return build_failed_only
