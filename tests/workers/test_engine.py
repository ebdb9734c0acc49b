"""The engine: continuous batching, prefix reuse and out-of-memory splitting.

Every check compares against solo runs of the same jobs, which carry no
batching, no joins and no splits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from jobsets import eight_jobs

from workers.engine.loop import EngineStats, optimize
from workers.jobs import VectorJob, VectorResult
from workers.models.tiny import TINY_FAMILIES, tiny_model


def assert_same(got: list[VectorResult], want: list[VectorResult]) -> None:
    for b, s in zip(got, want, strict=True):
        assert b.job_id == s.job_id
        assert b.iterations == s.iterations
        assert b.stop_reason == s.stop_reason
        # Same float32 reassociation tolerance as the batch-invariance test.
        np.testing.assert_allclose(b.vector, s.vector, atol=2e-5 * max(1.0, s.final_norm))
        np.testing.assert_allclose(b.loss_history, s.loss_history, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def solo(tiny_llama) -> list[VectorResult]:
    return [optimize(tiny_llama, [job])[0] for job in eight_jobs()]


def test_jobs_joining_mid_run_equal_solo_runs(tiny_llama, solo) -> None:
    stats = EngineStats()
    got = optimize(tiny_llama, eight_jobs(), max_batch_jobs=3, stats=stats)
    assert_same(got, solo)
    # Jobs really joined mid-run: three rows served 8 jobs of 7..14 steps
    # in fewer steps than running them three at a time in lockstep would take.
    total = sum(r.iterations + 1 for r in solo)
    assert stats.vector_steps == total
    assert stats.steps < sum(sorted((r.iterations + 1 for r in solo), reverse=True)[::3])
    assert stats.occupancy > 0.8
    assert stats.prefix_reuse


def test_prefix_reuse_equals_full_forward_passes(tiny_llama, solo) -> None:
    stats = EngineStats()
    got = optimize(tiny_llama, eight_jobs(), prefix_reuse=False, stats=stats)
    assert not stats.prefix_reuse
    assert_same(got, solo)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_prefix_reuse_works_for_every_tiny_family(family: str) -> None:
    lm = tiny_model(family)
    jobs = eight_jobs()[:4]  # layers 0..3, add, varied tokens and losses
    stats = EngineStats()
    got = optimize(lm, jobs, stats=stats)
    want = [optimize(lm, [job], prefix_reuse=False)[0] for job in jobs]
    assert stats.prefix_reuse, f"{family}: prefix reuse fell back"
    assert_same(got, want)


def test_out_of_memory_splits_the_batch_and_loses_nothing(tiny_llama, solo) -> None:
    calls: list[list[str]] = []

    def oom_above_two(ids: list[str]) -> None:
        calls.append(ids)
        if len(ids) > 2:
            raise torch.OutOfMemoryError("injected: more than two rows")

    finished: list[int] = []
    stats = EngineStats()
    got = optimize(
        tiny_llama,
        eight_jobs(),
        fault=oom_above_two,
        stats=stats,
        progress=lambda done, total: finished.append(done),
    )
    assert_same(got, solo)
    assert finished == list(range(1, 9))  # every job finished exactly once
    assert stats.out_of_memory == 2  # 8 rows, then 4, then 2 fit
    assert max(len(c) for c in calls[2:]) == 2
    assert stats.vector_steps == sum(r.iterations + 1 for r in solo)  # no step repeated


def test_out_of_memory_mid_run_keeps_paused_jobs_state(tiny_llama, solo) -> None:
    seen = {"steps": 0}

    def oom_at_step_five(ids: list[str]) -> None:
        seen["steps"] += 1
        if seen["steps"] == 5:
            raise torch.OutOfMemoryError("injected once")

    stats = EngineStats()
    got = optimize(tiny_llama, eight_jobs(), fault=oom_at_step_five, stats=stats)
    assert stats.out_of_memory == 1 and stats.paused == 4
    # Paused jobs resumed where they were: had they restarted, their loss
    # histories would be longer than the solo runs'.
    assert_same(got, solo)


def test_a_job_that_runs_out_of_memory_alone_stops_with_that_reason(tiny_llama, solo) -> None:
    def oom_with_job3(ids: list[str]) -> None:
        if "job3" in ids:
            raise torch.OutOfMemoryError("injected: job3 never fits")

    got = optimize(tiny_llama, eight_jobs(), fault=oom_with_job3)
    by_id = {r.job_id: r for r in got}
    assert by_id["job3"].stop_reason == "out_of_memory"
    assert by_id["job3"].iterations == 0
    assert_same([r for r in got if r.job_id != "job3"], [r for r in solo if r.job_id != "job3"])


def test_other_errors_are_not_swallowed(tiny_llama) -> None:
    def broken(ids: list[str]) -> None:
        raise ValueError("not an out-of-memory error")

    job: VectorJob = eight_jobs()[0]
    with pytest.raises(ValueError, match="not an out-of-memory"):
        optimize(tiny_llama, [job], fault=broken)


def test_the_one_by_one_retry_keeps_its_engine_counters(tiny_llama) -> None:
    """A batch that raises is retried job by job; the counters of those runs
    are kept (they used to be dropped)."""
    import dataclasses

    from workers.engine.reentrant import ReentrantJob
    from workers.evaluation.evaluate import EvalSpec
    from workers.service.assignments import Assignment, run_assignments

    job = eight_jobs()[0]
    solo = EngineStats()
    optimize(tiny_llama, [job], stats=solo)
    # Stage one with two prompts passes encoding but makes the reentrant run raise.
    bad = dataclasses.replace(job, job_id="bad", prompts=job.prompts * 2)
    broken = ReentrantJob(bad, dataclasses.replace(job, job_id="bad2"))
    stats = EngineStats()
    out = run_assignments(
        tiny_llama,
        EvalSpec(metrics=()),
        [Assignment("a", 0, "e", job), Assignment("b", 0, "e", bad, broken)],
        stats=stats,
    )
    assert out[0].error is None and out[1].error and "exactly one prompt" in out[1].error
    # once in the failed batch, once alone
    assert stats.vector_steps == 2 * solo.vector_steps > 0
