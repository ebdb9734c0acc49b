"""A trial expands into assignments: one per vector, each a vector job built
from the trial's :class:`~orchestrator.study.params.TrialParams`.

A trial makes ``vectors_per_trial`` vectors. Vector ``j`` is anchored on
training example ``j`` (its ``example_id`` and its id, as in the one-shot
studies). With ``shots`` K > 1 it is optimized on K examples jointly: its
anchor and K-1 more from the train split (:func:`training_sets`), drawn
without replacement by a rule seeded with the study seed and the trial
number, so the same trial always gets the same sets, and stored with the
vector (``vectors.train_example_ids``). The rule takes, for each vector in
turn, the examples used least so far in the trial (another vector's anchor
counts as used once), ties broken by the seeded permutation: the sets are
disjoint whenever the split holds ``vectors_per_trial * K`` examples, and
overlap as little as the split allows otherwise. The loss is the sum over
every target of every example, each weighted 1/K (``shots_loss: mean``) or
1 (``sum``).

A trial with ``loss: caa`` optimizes nothing: each vector is the CAA contrast
(§2.1.3) of its training set at the trial's layer, scaled to the trial's
norm when one is set, and is evaluated like an optimized vector. With K = 1
that is a one-shot CAA vector of the anchor example; with K = the whole train
split, the CAA skyline.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np

from orchestrator.study.config import SearchSpace
from orchestrator.study.params import TrialParams
from workers.analysis.caa import CAASpec
from workers.engine.reentrant import ReentrantJob
from workers.examples import Example
from workers.jobs import Intervention, LossSettings, ScoredPrompt, StopRules, Target, VectorJob
from workers.service.protocol import Assignment


def _targets(example: Example, loss: str, log_base: float) -> tuple[Target, ...]:
    scored = example.scored_prompt(log_base).targets
    promote = tuple(t for t in scored if t.kind == "promote")
    suppress = tuple(t for t in scored if t.kind == "suppress")
    chosen = {"promote": promote, "suppress": suppress}.get(loss, promote + suppress)
    if not chosen:
        raise ValueError(f"example '{example.id}' has no targets for loss '{loss}'")
    return chosen


def training_sets(
    anchors: Sequence[Example],
    pool: Sequence[Example],
    shots: int,
    *,
    study_seed: int,
    trial: int,
) -> list[list[Example]]:
    """For each anchor, its training set: the anchor first, then ``shots - 1``
    other examples of ``pool`` (see the module docstring for the rule)."""
    if shots == 1:
        return [[a] for a in anchors]
    if shots > len(pool):
        raise ValueError(f"shots {shots} but the train split has only {len(pool)} examples")
    digest = hashlib.sha256(f"{study_seed}:{trial}:shots".encode()).digest()
    rank = {ex.id: int(r) for ex, r in zip(pool, np.random.default_rng(
        int.from_bytes(digest[:8], "little")).permutation(len(pool)), strict=True)}  # fmt: skip
    used = {ex.id: 0 for ex in pool}
    for a in anchors:
        used[a.id] = used.get(a.id, 0) + 1
    out = []
    for a in anchors:
        others = sorted(
            (ex for ex in pool if ex.id != a.id), key=lambda e: (used[e.id], rank[e.id])
        )
        chosen = others[: shots - 1]
        for ex in chosen:
            used[ex.id] += 1
        out.append([a, *chosen])
    return out


def job_seed(study_seed: int, trial: int, example_id: str) -> int:
    digest = hashlib.sha256(f"{study_seed}:{trial}:{example_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def build_assignment(
    vector_id: str,
    trial: int,
    example: Example,
    params: TrialParams,
    space: SearchSpace,
    *,
    study_seed: int,
    log_base: float,
    also: Sequence[Example] = (),
    shots_loss: str = "mean",
) -> Assignment:
    """The assignment for one vector under one trial's params: optimized on
    ``example`` and, for a K-shot vector, the examples ``also``."""
    intervention = Intervention(params.intervention, clamp_coef=params.clamp_coef)
    loss = params.loss
    # reentrant and caa vectors are scored (and reentrant ones trained) on every target
    kind = "mixed" if loss in ("reentrant", "caa") else loss
    examples = [example, *also]
    weight = 1.0 / len(examples) if shots_loss == "mean" and also else 1.0
    prompts = tuple(
        ScoredPrompt(ex.prompt, _weighted(_targets(ex, kind, log_base), weight)) for ex in examples
    )
    stop = StopRules(
        max_iters=params.max_iters,
        targets_reached=any(t.threshold is not None for p in prompts for t in p.targets),
    )
    settings = LossSettings(coldness=params.coldness, log_base=log_base)
    job = VectorJob(
        job_id=vector_id,
        prompts=prompts,
        layers=(params.layer,),
        lr=params.lr,
        norm_bound=params.norm,
        init_norm=params.init_norm,
        seed=job_seed(study_seed, trial, example.id),
        intervention=intervention,
        tokens=params.tokens,
        loss=settings,
        stop=stop,
    )
    reentrant = None
    if loss == "reentrant":
        # §5: an invasive rank-one stage at an early layer, then the vector.
        stage1 = VectorJob(
            job_id=vector_id + ":stage1",
            prompts=job.prompts,
            layers=(space.reentrant_layer,),
            lr=job.lr,
            seed=job.seed + 1,
            intervention=Intervention("affine", rank=1),
            loss=settings,
            stop=stop,
        )
        stage2 = VectorJob(
            job_id=vector_id,
            layers=job.layers,
            lr=job.lr,
            norm_bound=job.norm_bound,
            init_norm=job.init_norm,
            seed=job.seed,
            intervention=intervention,
            tokens=params.tokens,
            loss=settings,
            stop=StopRules(max_iters=job.stop.max_iters),
        )
        reentrant = ReentrantJob(stage1, stage2, n_tokens=space.reentrant_tokens)
    caa = CAASpec(tuple(examples), space.caa_reduce) if loss == "caa" else None
    return Assignment(
        vector_id, trial, example.id, job, reentrant, tuple(e.id for e in examples), caa=caa
    )


def _weighted(targets: tuple[Target, ...], weight: float) -> tuple[Target, ...]:
    if weight == 1.0:
        return targets  # one-shot: the very same targets
    # The stopping rules compare a term's weighted loss with its threshold, so
    # the threshold is weighted too: a target counts as reached at the same
    # raw loss whatever K is.
    return tuple(
        dataclasses.replace(
            t,
            weight=t.weight * weight,
            threshold=None if t.threshold is None else t.threshold * weight,
        )
        for t in targets
    )
