"""A trial expands into assignments: one per training example, each a vector
job built from the trial's :class:`~orchestrator.study.params.TrialParams`."""

from __future__ import annotations

import hashlib

from orchestrator.study.config import SearchSpace
from orchestrator.study.params import TrialParams
from workers.engine.reentrant import ReentrantJob
from workers.examples import Example
from workers.jobs import Intervention, LossSettings, ScoredPrompt, StopRules, Target, VectorJob
from workers.service.assignments import Assignment


def _targets(example: Example, loss: str, log_base: float) -> tuple[Target, ...]:
    scored = example.scored_prompt(log_base).targets
    promote = tuple(t for t in scored if t.kind == "promote")
    suppress = tuple(t for t in scored if t.kind == "suppress")
    chosen = {"promote": promote, "suppress": suppress}.get(loss, promote + suppress)
    if not chosen:
        raise ValueError(f"example '{example.id}' has no targets for loss '{loss}'")
    return chosen


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
) -> Assignment:
    """The assignment for one training example under one trial's params."""
    intervention = Intervention(params.intervention, clamp_coef=params.clamp_coef)
    loss = params.loss
    targets = _targets(example, "mixed" if loss == "reentrant" else loss, log_base)
    settings = LossSettings(coldness=params.coldness, log_base=log_base)
    stop = StopRules(
        max_iters=params.max_iters,
        targets_reached=any(t.threshold is not None for t in targets),
    )
    job = VectorJob(
        job_id=vector_id,
        prompts=(ScoredPrompt(example.prompt, targets),),
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
    return Assignment(vector_id, trial, example.id, job, reentrant)
