"""Assignments: one vector to optimize, then evaluate on held-out examples.

An :class:`Assignment` is the unit the orchestrator schedules and the
:class:`workers.service.actor.SteeringWorker` runs; it comes back as a
:class:`VectorOutcome`. A batch of assignments (possibly from many trials) is
optimized together and evaluated together. An assignment that fails on its
own (bad input, NaN loss, an exception only its job triggers) comes back with
``error`` set; the others in its batch are unaffected.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from collections.abc import Sequence

from workers.analysis.caa import caa_job
from workers.engine.loop import EngineStats, optimize
from workers.engine.reentrant import optimize_reentrant
from workers.evaluation.evaluate import EvalCache, EvalSpec, evaluate_screened
from workers.jobs import VectorResult
from workers.models import LoadedModel
from workers.service.protocol import Assignment, VectorOutcome  # re-exported
from workers.steering.encoding import JobError, encode_job
from workers.steering.vectors import SteeringVector

log = logging.getLogger(__name__)


def with_caa(lm: LoadedModel, a: Assignment) -> Assignment:
    """``a`` ready for the engine: a CAA assignment's job gets its CAA vector
    and no steps (:func:`workers.analysis.caa.caa_job`); others unchanged."""
    if a.caa is None:
        return a
    try:
        job = caa_job(lm, a.job, a.caa)
    except Exception as exc:  # noqa: BLE001 - this assignment's own failure, not the batch's
        raise JobError(f"job {a.vector_id}: CAA vector: {type(exc).__name__}: {exc}") from None
    return dataclasses.replace(a, job=job, caa=None)


def _optimize_isolated(
    lm: LoadedModel,
    assignments: Sequence[Assignment],
    max_batch_jobs: int | None = None,
    stats: EngineStats | None = None,
) -> dict[str, VectorResult | str]:
    """Optimize ``assignments`` together; if the batch raises, retry each alone so
    one bad job cannot fail its neighbours. Returns a result or an error per vector id."""

    def run(group: Sequence[Assignment]) -> list[VectorResult]:
        plain = [a for a in group if a.reentrant is None]
        reent = [a for a in group if a.reentrant is not None]
        out = (
            optimize(lm, [a.job for a in plain], max_batch_jobs=max_batch_jobs, stats=stats)
            if plain
            else []
        )
        if reent:
            out += [r.stage2 for r in optimize_reentrant(lm, [a.reentrant for a in reent])]  # type: ignore[misc]
        by_id = {r.job_id: r for r in out}
        return [
            by_id[a.job.job_id if a.reentrant is None else a.reentrant.stage2.job_id] for a in group
        ]

    try:
        results = run(assignments)
        return {a.vector_id: r for a, r in zip(assignments, results, strict=True)}
    except Exception as exc:  # noqa: BLE001 - isolate below, then report per job
        if len(assignments) == 1:
            log.warning("vector %s failed: %s", assignments[0].vector_id, exc)
            return {assignments[0].vector_id: f"{type(exc).__name__}: {exc}"}
        log.warning("a batch of %d failed (%s); retrying each job alone", len(assignments), exc)
        merged: dict[str, VectorResult | str] = {}
        for one in assignments:
            merged.update(_optimize_isolated(lm, [one], max_batch_jobs, stats))
        return merged


def run_assignments(
    lm: LoadedModel,
    spec: EvalSpec,
    assignments: Sequence[Assignment],
    cache: EvalCache | None = None,
    max_batch_jobs: int | None = None,
    stats: EngineStats | None = None,
) -> list[VectorOutcome]:
    """Validate, optimize and evaluate a batch; one outcome per assignment, in order.

    At most ``max_batch_jobs`` vectors are optimized at once (continuous
    batching: a finished row takes the next assignment). ``cache`` keeps
    what evaluation can reuse between calls (:class:`EvalCache`); ``stats``
    receives the engine's counters (steps, occupancy)."""
    outcomes = {a.vector_id: VectorOutcome(a.vector_id, a.trial, a.example_id) for a in assignments}
    by_id = {a.vector_id: a for a in assignments}
    valid = []
    for a in assignments:
        try:
            a = with_caa(lm, a)
            encode_job(lm, a.job if a.reentrant is None else a.reentrant.stage1)
            valid.append(a)
        except JobError as exc:
            outcomes[a.vector_id].error = str(exc)
    started = time.perf_counter()
    results = _optimize_isolated(lm, valid, max_batch_jobs, stats) if valid else {}
    opt_s = (time.perf_counter() - started) / max(len(valid), 1)
    vectors = []
    for a in valid:
        res = results[a.vector_id]
        out = outcomes[a.vector_id]
        out.optimize_s = opt_s
        if isinstance(res, str):
            out.error = res
            continue
        out.result = res
        if res.stop_reason in ("nonfinite", "out_of_memory"):
            out.error = f"{res.stop_reason.replace('_', ' ')} after {res.iterations} steps"
            continue
        job = a.job if a.reentrant is None else a.reentrant.stage2
        vectors.append(SteeringVector.from_result(a.vector_id, res, job))
    thresholds = [by_id[v.vector_id].screen_threshold for v in vectors]
    evaluate_into(lm, spec, vectors, thresholds, [outcomes[v.vector_id] for v in vectors], cache)
    return [outcomes[a.vector_id] for a in assignments]


def evaluate_into(
    lm: LoadedModel,
    spec: EvalSpec,
    vectors: list[SteeringVector],
    thresholds: list[float | None],
    outcomes: list[VectorOutcome],
    cache: EvalCache | None = None,
) -> None:
    """Evaluate ``vectors`` (the transfer screen applied) into their
    ``outcomes`` (same order): rows, generations, the screened mark and each
    one's share of the evaluation time. An exception in evaluation marks every
    outcome failed and keeps its optimized vector."""
    started = time.perf_counter()
    by_id = {o.vector_id: o for o in outcomes}
    try:
        rows, gens, stopped = evaluate_screened(lm, spec, vectors, thresholds, cache)
    except Exception as exc:  # noqa: BLE001 - an evaluation bug must not lose the vectors
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        for o in outcomes:
            o.error = f"evaluation failed: {detail}"
        rows, gens, stopped = [], [], set()
    for row in rows:
        by_id[row.vector_id].rows.append(row)
    for gen in gens:
        by_id[gen.vector_id].generations.append(gen)
    eval_s = (time.perf_counter() - started) / max(len(vectors), 1)
    for o in outcomes:
        o.evaluate_s = eval_s
        o.screened = o.vector_id in stopped
