"""Vector tasks: one vector to optimize, then evaluate on held-out examples.

This is the unit the orchestrator schedules and the :class:`SteeringWorker`
runs. A batch of tasks (possibly from many trials) is optimized together and
evaluated together. A task that fails on its own (bad input, NaN loss, an
exception only its job triggers) comes back with ``error`` set; the others in
its batch are unaffected.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field

from workers.encoding import JobError, encode_job
from workers.examples import Example
from workers.jobs import Prompt, VectorJob, VectorResult
from workers.judges import ContainsAny, Judge, LacksAll
from workers.models import LoadedModel
from workers.optimizer import EngineStats, optimize
from workers.reentrant import ReentrantJob, optimize_reentrant
from workers.transfer import (
    Generation,
    SteeringVector,
    TransferRow,
    choice_flips,
    generations,
    judged,
    side_effect_kl,
    target_logprobs,
)

log = logging.getLogger(__name__)

# "surprisal": the worker returns its greedy generations (``VectorOutcome.generations``);
# the orchestrator has them scored by the surprisal model's own actors.
METRICS = ("target_logprob", "choice_flip", "judge", "side_effect_kl", "surprisal")


@dataclass(frozen=True)
class EvalSpec:
    """What to measure on every vector; fixed for a study."""

    examples: tuple[Example, ...] = ()
    metrics: tuple[str, ...] = ("target_logprob",)
    neutral_prompts: tuple[Prompt, ...] = ()
    judge_contains_any: tuple[str, ...] = ()
    judge_lacks_all: tuple[str, ...] = ()
    generation_tokens: int = 24
    coldness: float = 0.7
    log_base: float = 10.0
    max_kl: float = 0.1
    batch_size: int = 32
    max_targets: int | None = None  # score at most this many targets per held-out example


@dataclass(frozen=True)
class VectorTask:
    """``job`` is optimized (or ``reentrant`` when set, whose stage two is the vector)."""

    vector_id: str
    trial: int
    example_id: str
    job: VectorJob
    reentrant: ReentrantJob | None = None


@dataclass
class VectorOutcome:
    vector_id: str
    trial: int
    example_id: str
    result: VectorResult | None = None
    rows: list[TransferRow] = field(default_factory=list)
    generations: list[Generation] = field(default_factory=list)
    error: str | None = None
    optimize_s: float = 0.0
    evaluate_s: float = 0.0


def _optimize_isolated(
    lm: LoadedModel,
    tasks: Sequence[VectorTask],
    max_batch_jobs: int | None = None,
    stats: EngineStats | None = None,
) -> dict[str, VectorResult | str]:
    """Optimize ``tasks`` together; if the batch raises, retry each alone so one
    bad job cannot fail its neighbours. Returns a result or an error per vector id."""

    def run(group: Sequence[VectorTask]) -> list[VectorResult]:
        plain = [t for t in group if t.reentrant is None]
        reent = [t for t in group if t.reentrant is not None]
        out = (
            optimize(lm, [t.job for t in plain], max_batch_jobs=max_batch_jobs, stats=stats)
            if plain
            else []
        )
        if reent:
            out += [r.stage2 for r in optimize_reentrant(lm, [t.reentrant for t in reent])]  # type: ignore[misc]
        by_id = {r.job_id: r for r in out}
        return [
            by_id[t.job.job_id if t.reentrant is None else t.reentrant.stage2.job_id] for t in group
        ]

    try:
        results = run(tasks)
        return {t.vector_id: r for t, r in zip(tasks, results, strict=True)}
    except Exception as exc:  # noqa: BLE001 - isolate below, then report per job
        if len(tasks) == 1:
            log.warning("vector %s failed: %s", tasks[0].vector_id, exc)
            return {tasks[0].vector_id: f"{type(exc).__name__}: {exc}"}
        log.warning("a batch of %d failed (%s); retrying each job alone", len(tasks), exc)
        merged: dict[str, VectorResult | str] = {}
        for task in tasks:
            merged.update(_optimize_isolated(lm, [task], max_batch_jobs))
        return merged


def _evaluate(
    lm: LoadedModel,
    spec: EvalSpec,
    vectors: list[SteeringVector],
    cache: dict[tuple[str, float], list[float]] | None = None,
) -> tuple[list[TransferRow], list[Generation]]:
    rows: list[TransferRow] = []
    gens: list[Generation] = []
    if not vectors:
        return rows, gens
    examples = list(spec.examples)
    if spec.max_targets is not None:
        examples = [_first_targets(ex, spec.max_targets) for ex in examples]
    if "target_logprob" in spec.metrics:
        rows += target_logprobs(
            lm,
            vectors,
            examples,
            coldness=spec.coldness,
            log_base=spec.log_base,
            batch_size=spec.batch_size,
            unsteered_cache=cache,
        )
    if "choice_flip" in spec.metrics:
        rows += choice_flips(lm, vectors, examples, batch_size=spec.batch_size)
    if "judge" in spec.metrics or "surprisal" in spec.metrics:
        gens = generations(
            lm, vectors, examples, n_tokens=spec.generation_tokens, batch_size=spec.batch_size
        )
    if "judge" in spec.metrics:
        judges: list[Judge] = []
        if spec.judge_contains_any:
            judges.append(ContainsAny(spec.judge_contains_any))
        if spec.judge_lacks_all:
            judges.append(LacksAll(spec.judge_lacks_all))
        for judge in judges:
            rows += judged(gens, examples, judge)
    if "side_effect_kl" in spec.metrics and spec.neutral_prompts:
        rows += side_effect_kl(
            lm,
            vectors,
            list(spec.neutral_prompts),
            log_base=spec.log_base,
            max_kl=spec.max_kl,
            batch_size=spec.batch_size,
        )
    return rows, gens


def _first_targets(ex: Example, n: int) -> Example:
    """``ex`` with only its first ``n`` targets (promote first, then suppress)."""
    promote = ex.promote[:n]
    suppress = ex.suppress[: max(0, n - len(promote))]
    keep = list(range(len(promote))) + [len(ex.promote) + i for i in range(len(suppress))]
    thresholds = tuple(ex.thresholds[i] for i in keep) if ex.thresholds else ()
    return dataclasses.replace(ex, promote=promote, suppress=suppress, thresholds=thresholds)


def run_tasks(
    lm: LoadedModel,
    spec: EvalSpec,
    tasks: Sequence[VectorTask],
    cache: dict[tuple[str, float], list[float]] | None = None,
    max_batch_jobs: int | None = None,
    stats: EngineStats | None = None,
) -> list[VectorOutcome]:
    """Validate, optimize and evaluate a batch of tasks; one outcome per task, in order.

    At most ``max_batch_jobs`` vectors are optimized at once (continuous
    batching: a finished row takes the next task). ``cache`` keeps unsteered
    values between calls (see ``target_logprobs``); ``stats`` receives the
    engine's counters (steps, occupancy)."""
    outcomes = {t.vector_id: VectorOutcome(t.vector_id, t.trial, t.example_id) for t in tasks}
    valid = []
    for task in tasks:
        try:
            encode_job(lm, task.job if task.reentrant is None else task.reentrant.stage1)
            valid.append(task)
        except JobError as exc:
            outcomes[task.vector_id].error = str(exc)
    started = time.perf_counter()
    results = _optimize_isolated(lm, valid, max_batch_jobs, stats) if valid else {}
    opt_s = (time.perf_counter() - started) / max(len(valid), 1)
    vectors, jobs_by_id = [], {}
    for task in valid:
        res = results[task.vector_id]
        out = outcomes[task.vector_id]
        out.optimize_s = opt_s
        if isinstance(res, str):
            out.error = res
            continue
        out.result = res
        if res.stop_reason in ("nonfinite", "out_of_memory"):
            out.error = f"{res.stop_reason.replace('_', ' ')} after {res.iterations} steps"
            continue
        job = task.job if task.reentrant is None else task.reentrant.stage2
        jobs_by_id[task.vector_id] = job
        vectors.append(SteeringVector.from_result(task.vector_id, res, job))
    started = time.perf_counter()
    try:
        rows, gens = _evaluate(lm, spec, vectors, cache)
    except Exception as exc:  # noqa: BLE001 - an evaluation bug must not lose the vectors
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        for vec in vectors:
            outcomes[vec.vector_id].error = f"evaluation failed: {detail}"
        rows, gens = [], []
    eval_s = (time.perf_counter() - started) / max(len(vectors), 1)
    for row in rows:
        outcomes[row.vector_id].rows.append(row)
    for gen in gens:
        outcomes[gen.vector_id].generations.append(gen)
    for vec in vectors:
        outcomes[vec.vector_id].evaluate_s = eval_s
    return [outcomes[t.vector_id] for t in tasks]
