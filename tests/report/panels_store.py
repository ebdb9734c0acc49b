"""A synthetic study with the paper's evaluation metrics, written with the
real StoreWriter, for the report's paper-style panels.

Held-out examples ``eval-0`` .. ``eval-15`` fall in groups ``harmful`` (8)
and ``benign`` (7), interleaved, harmful first, and ``neutral`` (eval-15, no
answer choices, so no choice_flip rows); the training examples are
``benign``, so the groups' order among the held-out examples differs from
their order in the whole table. Vectors of trials 0..8 sit at layers 2, 4, 6
with loss kinds promote, suppress, mixed and reentrant and norm bounds 15 and
30; trial 0 also stores a CAA skyline vector; trial 9 failed and trial 10 lost
its commit marker (its rows must not count).

Seeded draws make the rates differ by group, sign and layer: choice flips
(``FLIP_P``), the judges' steered verdicts and the steered surprisal.
The unsteered verdicts are fixed per example. Some vectors miss a few rows
(``_skipped``), so the denominators differ between vectors.

``groups=False`` writes the examples without groups (``example_group`` null).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

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
TRAIN = ("train-0", "train-1")
EVAL_GROUPS = ["harmful", "benign"] * 7 + ["harmful", "neutral"]
EVAL = tuple(f"eval-{i}" for i in range(len(EVAL_GROUPS)))
CHOICES = EVAL[:-1]  # the neutral example has no answer choices
FLIP_P = {("+", "benign"): 0.8, ("-", "benign"): 0.15, ("+", "harmful"): 0.3,
          ("-", "harmful"): 0.65}  # fmt: skip
KINDS = ("promote", "suppress", "mixed", "reentrant")
LAYERS = (2, 4, 6)
UNSTEERED_YES = {"lacks_all": {"eval-0", "eval-5"}, "contains_any": set(EVAL) - {"eval-2"}}
N_COMMITTED = 9


def _result(rng: np.random.Generator, trial: int, j: int, layer: int) -> VectorResult:
    history = [float(x) for x in np.sort(rng.uniform(0.1, 5.0, 4))[::-1]]
    return VectorResult(
        job_id=f"t{trial}-j{j}",
        vector=rng.standard_normal(D_MODEL).astype(np.float32),
        layers=(layer,),
        loss_history=history,
        target_losses=[history[-1]],
        iterations=3,
        stop_reason="max_iters",
        final_norm=float(rng.uniform(1, 4)),
        seed=trial * 10 + j,
        log_base=10.0,
    )


def _skipped(trial: int, j: int) -> set[str]:
    """Held-out examples a vector has no rows for (a screened vector, say)."""
    return {"eval-3", "eval-6"} if (trial + j) % 3 == 2 else set()


def _rows(
    rng: np.random.Generator,
    vid: str,
    layer: int,
    kind: str,
    skip: set[str],
    *,
    flips: bool,
    judges: Sequence[str],
    surprisal: bool,
) -> list[TransferRecord]:
    rows = []
    for e, (ex, group) in enumerate(zip(EVAL, EVAL_GROUPS, strict=True)):
        if ex in skip:
            continue
        u = float(rng.uniform(-8, -4))
        s = u + float(rng.normal(0.5, 2.0))
        rows.append(TransferRecord(vid, ex, "target_logprob:promote:0", s, u, s > u))
        if flips and ex in CHOICES:
            for sign in ("+", "-"):
                p = FLIP_P[(sign, group)] + 0.04 * (layer - 4)
                m0 = float(rng.uniform(0.5, 3.0))
                m = -m0 if rng.uniform() < p else m0 * 1.5
                rows.append(TransferRecord(vid, ex, f"choice_flip:{sign}", m, m0, m < 0))
        for name in judges:
            p = 0.2 + 0.1 * layer if name != "contains_any" else 0.95 - 0.1 * layer
            yes = float(rng.uniform() < p)
            base = float(ex in UNSTEERED_YES.get(name, {"eval-1"}))
            rows.append(TransferRecord(vid, ex, f"judge:{name}", yes, base, yes > 0))
        if surprisal:
            steered = float(
                rng.normal(2.0 + 0.3 * (KINDS + ("caa",)).index(kind) + 0.05 * layer, 0.4)
            )
            if e == 4 and kind == "mixed":
                steered = float("nan")  # an empty generation has no score
            base = 1.5 + 0.1 * e
            rows.append(TransferRecord(vid, ex, "surprisal", steered, base, steered <= base))
    return rows


def build_panel_study(
    root: Path,
    study: str = "paper",
    *,
    flips: bool = True,
    judges: Sequence[str] = ("lacks_all", "contains_any"),
    surprisal: bool = True,
    groups: bool = True,
    seed: int = 1,
) -> str:
    """Write the study; returns its name."""
    rng = np.random.default_rng(seed)
    config = {"name": study, "evaluation": {"log_base": 10.0}, "objectives": []}
    ctx = StudyContext(study, save_study_config(root, study, config), "tiny", D_MODEL)
    writer = StoreWriter(root, ctx)
    train_group = "benign" if groups else ""
    examples = [
        ExampleRecord(ex, "train", chat(f"Train {ex}"), [Target("Yes")], train_group)
        for ex in TRAIN
    ]
    examples += [
        ExampleRecord(ex, "transfer", chat(f"Held-out {ex}"), [Target("A")], g if groups else "")
        for ex, g in zip(EVAL, EVAL_GROUPS, strict=True)
    ]
    writer.write_examples(examples)
    for n in range(N_COMMITTED + 2):
        layer, kind, norm = LAYERS[n % 3], KINDS[n % 4], (15.0, 30.0)[(n // 3) % 2]
        state = "FAIL" if n == N_COMMITTED else "COMPLETE"
        vecs, rows = [], []
        sources = [] if state == "FAIL" else [(j, ex, kind) for j, ex in enumerate(TRAIN)]
        if n == 0:
            sources.append((2, "all-train", "caa"))
        for j, ex, k in sources:
            res = _result(rng, n, j, layer)
            vecs.append(VectorRecord(res, ex, k, lr=0.1, norm_bound=None if k == "caa" else norm))
            vid = vector_id(study, n, ex)
            rows += _rows(rng, vid, layer, k, _skipped(n, j), flips=flips, judges=judges,
                          surprisal=surprisal)  # fmt: skip
        values = [float(layer)] if state == "COMPLETE" else None
        trial = TrialRecord(
            n, state, {"layer": layer}, values, error="boom" if values is None else None
        )
        writer.write_trial(trial, vecs, rows)
    (root / trial_key("trials", study, N_COMMITTED + 1)).unlink()  # the lost commit marker
    return study
