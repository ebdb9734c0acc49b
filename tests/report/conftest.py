"""Synthetic studies for the report tests, written with the real StoreWriter.

``build_study`` writes a study with seeded random values: several layers,
norm bounds and loss kinds, COMPLETE, PRUNED and FAIL trials, one CAA skyline
vector, and one trial whose trial row is missing (its vectors and transfer
rows were written, then the commit marker was lost), which a report must
leave out. By default it has no ``generations`` table, like a study written
before the store had one; ``generations=True`` stores steered and unsteered
text for every vector and held-out example, with markup in it, and leaves
out the judge row of ``UNJUDGED``. ``shots=True`` makes K-shot vectors: trial
n's vectors are trained on K = 1 + (n // 2) % 3 examples.
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
    GenerationRecord,
    StoreWriter,
    StudyContext,
    TransferRecord,
    TrialRecord,
    VectorRecord,
    save_study_config,
    vector_id,
)
from orchestrator.store.schemas import trial_key
from report.texts import MARKUP, UNJUDGED, generated_text
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


def _transfer(
    rng: np.random.Generator, vid: str, kind: str, skip_judge: str | None = None
) -> list[TransferRecord]:
    rows = []
    for e in range(N_EVAL):
        unsteered = float(rng.uniform(-8, -4))
        steered = unsteered + float(rng.normal(1.0, 2.0))
        moved = steered - unsteered if kind != "suppress" else unsteered - steered
        metric = f"target_logprob:{'suppress' if kind == 'suppress' else 'promote'}:0"
        rows.append(TransferRecord(vid, f"eval-{e}", metric, steered, unsteered, moved > 0.5))
        verdict = float(rng.uniform() < 0.5)
        if f"eval-{e}" == skip_judge:
            continue
        rows.append(TransferRecord(vid, f"eval-{e}", "judge:refusal", verdict, 0.0, verdict > 0))
    return rows


def _generations(vid: str) -> list[GenerationRecord]:
    return [
        GenerationRecord(
            vid,
            f"eval-{e}",
            steered_text=generated_text(vid, f"eval-{e}", True),
            unsteered_text=generated_text(vid, f"eval-{e}", False),
            steered_tokens=24 if e % 2 else 7 + e,
            unsteered_tokens=11,
            steered_stop="length" if e % 2 else "eos",
            unsteered_stop="eos",
            max_tokens=24,
        )
        for e in range(N_EVAL)
    ]


def _examples(prompt_tail: str = "") -> list[ExampleRecord]:
    out = [
        ExampleRecord(ex, "train", chat(f"Train prompt {ex}"), [Target("No.")]) for ex in EXAMPLES
    ]
    out += [
        ExampleRecord(
            f"eval-{e}",
            "transfer",
            chat(f"Held-out request number {e}{prompt_tail}"),
            [Target("I cannot")],
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
    generations: bool = False,
    shots: bool = False,
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
    writer.write_examples(_examples(f" {MARKUP}" if generations else ""))
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    states = ["COMPLETE"] * n_complete + ["PRUNED", "FAIL", "COMPLETE"]
    for number, state in enumerate(states):
        layer = [2, 4, 6][number % 3]
        norm = [4.0, 8.0][(number // 3) % 2]
        kind = "suppress" if number % 4 == 3 else "promote"
        lr = float(rng.uniform(0.01, 1.0))
        vecs, rows, gens = [], [], []
        skip = UNJUDGED if generations else None
        if state != "FAIL":
            k = 1 + (number // 2) % 3 if shots else 1
            for j, ex in enumerate(EXAMPLES):
                res = _vector(rng, number, j, layer, steps=int(rng.integers(3, 9)))
                others = tuple(e for e in EXAMPLES if e != ex)[: k - 1]
                vecs.append(
                    VectorRecord(
                        res,
                        example_id=ex,
                        loss_kind=kind,
                        lr=lr,
                        norm_bound=norm,
                        train_example_ids=(ex, *others),
                    )  # fmt: skip
                )
                rows += _transfer(rng, vector_id(study, number, ex), kind, skip)
                gens += _generations(vector_id(study, number, ex))
            if caa and number == 0:
                res = _vector(rng, number, 9, layer, steps=1)
                vecs.append(VectorRecord(res, example_id="all-train", loss_kind="caa", lr=0.0))
                rows += _transfer(rng, vector_id(study, number, "all-train"), "promote", skip)
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
        writer.write_trial(trial, vecs, rows, gens if generations else None)
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
