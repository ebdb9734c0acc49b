"""Reentrant steering (paper §2.1.2, Algorithm 1; §5.1.3).

1. Optimize an invasive intervention at an early layer (a vector, or a rank-one
   matrix as in §5) that promotes or suppresses the targets on the prompt.
2. Record the next-token distributions under it, either along greedily
   decoded tokens (§5: 10 tokens, the default) or along the first target
   (Algorithm 1 steers on ``concat(x, y)``).
3. Optimize a vector at a later layer to minimize
   ``sum_k KL(p_k || P(. | prefix_k; v'))``.

Everything is batched: many stage-one jobs run together, then all decodes,
then all stage-two jobs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from workers.engine.loop import optimize
from workers.jobs import KLTerm, VectorJob, VectorResult
from workers.models import LoadedModel
from workers.steering.encoding import JobError, encode_job
from workers.steering.generate import greedy_decode, next_token_logprobs
from workers.steering.vectors import SteeringVector, VectorRows


@dataclass(frozen=True)
class ReentrantJob:
    """``stage1`` is a normal job on one prompt; ``stage2`` gives the later
    layer and the settings of the KL stage (its ``prompts`` are ignored)."""

    stage1: VectorJob
    stage2: VectorJob
    prefix: Literal["greedy", "target"] = "greedy"
    n_tokens: int = 10


@dataclass
class ReentrantResult:
    stage1: VectorResult
    stage2: VectorResult
    decoded: list[int]


def check_reentrant(jobs: Sequence[ReentrantJob]) -> None:
    """Raises ``JobError`` for a stage one without exactly one prompt, or no tokens."""
    for rj in jobs:
        if len(rj.stage1.prompts) != 1:
            raise JobError(
                f"job '{rj.stage1.job_id}': reentrant stage one needs exactly one prompt"
            )
        if rj.n_tokens < 1:
            raise JobError(f"job '{rj.stage1.job_id}': reentrant n_tokens must be >= 1")


def optimize_reentrant(lm: LoadedModel, jobs: Sequence[ReentrantJob]) -> list[ReentrantResult]:
    """Run Algorithm 1 for every job. See :class:`ReentrantJob`.

    Raises:
        JobError: a stage-one job does not have exactly one prompt, or a stage is malformed.
    """
    check_reentrant(jobs)
    stage1 = optimize(lm, [rj.stage1 for rj in jobs])
    stage2_jobs, decoded = stage_two(lm, jobs, stage1)
    stage2 = optimize(lm, stage2_jobs)
    return [ReentrantResult(s1, s2, d) for s1, s2, d in zip(stage1, stage2, decoded, strict=True)]


def stage_two(
    lm: LoadedModel, jobs: Sequence[ReentrantJob], stage1: Sequence[VectorResult]
) -> tuple[list[VectorJob], list[list[int]]]:
    """The stage-two jobs of ``jobs`` given their stage-one results: the teacher
    distributions under stage one along the decoded (or target) tokens become
    each stage two's KL term. Also returns the decoded tokens."""
    prompts = [lm.encode_prompt(rj.stage1.prompts[0].prompt) for rj in jobs]
    rows = VectorRows(
        lm,
        [
            SteeringVector.from_result(rj.stage1.job_id, r, rj.stage1)
            for rj, r in zip(jobs, stage1, strict=True)
        ],
    )
    steer = rows.rows(range(len(jobs)), [len(p) for p in prompts])

    greedy = [i for i, rj in enumerate(jobs) if rj.prefix == "greedy"]
    decoded: list[list[int]] = [[] for _ in jobs]
    if greedy:
        sub = rows.rows(greedy, [len(prompts[i]) for i in greedy])
        outs = greedy_decode(
            lm,
            [prompts[i] for i in greedy],
            max(jobs[i].n_tokens for i in greedy),
            sub,
            stop_at_eos=False,
        )
        for i, out in zip(greedy, outs, strict=True):
            decoded[i] = out[: jobs[i].n_tokens]
    for i, rj in enumerate(jobs):
        if rj.prefix == "target":
            encoded = encode_job(lm, rj.stage1)
            first = encoded.seqs[0]
            decoded[i] = first.ids[first.prompt_len :]

    seqs = [p + d for p, d in zip(prompts, decoded, strict=True)]
    # p_k is the distribution after the prompt and k-1 decoded tokens: positions
    # prompt_len - 1 .. prompt_len - 1 + n - 1 (Algorithm 1 also scores the
    # distribution after the last target token, so it has m + 1 positions).
    positions = [
        list(range(len(p) - 1, len(p) - 1 + len(d) + (1 if rj.prefix == "target" else 0)))
        for p, d, rj in zip(prompts, decoded, jobs, strict=True)
    ]
    teachers = next_token_logprobs(
        lm, seqs, positions, steer, coldness=[rj.stage1.loss.coldness for rj in jobs]
    )
    stage2_jobs = [
        dataclasses.replace(
            rj.stage2,
            prompts=(),
            kl_terms=(
                KLTerm(
                    input_ids=tuple(seq),
                    prompt_len=len(prompt),
                    positions=tuple(pos),
                    teacher_logprobs=teacher.cpu().numpy(),
                ),
            ),
        )
        for rj, seq, prompt, pos, teacher in zip(
            jobs, seqs, prompts, positions, teachers, strict=True
        )
    ]
    return stage2_jobs, decoded
