"""The streaming engine (``workers.service.stream``): assignments put at
different times give the vectors the same jobs give in one batch; outcomes
come out one by one, while other rows keep stepping; reentrant assignments run
as two engine jobs; the batch worker keeps the old contract."""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pytest
from jobsets import eight_jobs

from workers.engine.loop import optimize
from workers.engine.reentrant import ReentrantJob, optimize_reentrant
from workers.evaluation.evaluate import EvalCache, EvalSpec
from workers.evaluation.screen import Screen
from workers.examples import Example
from workers.jobs import ScoredPrompt, StopRules, Target, VectorJob, chat
from workers.service.assignments import run_assignments
from workers.service.protocol import Assignment, BatchWorker, VectorOutcome
from workers.service.stream import StreamingEngine

HELD_OUT = (
    Example("h1", chat("Say hi."), promote=("I cannot",), split="transfer"),
    Example("h2", chat("Name a colour."), promote=("Sure",), suppress=("No",), split="transfer"),
)
SPEC = EvalSpec(examples=HELD_OUT, metrics=("target_logprob",))


def assignments(jobs: list[VectorJob]) -> list[Assignment]:
    return [Assignment(j.job_id, i, f"ex{i}", j) for i, j in enumerate(jobs)]


def collect(engine: StreamingEngine, n: int, timeout: float = 240) -> list[VectorOutcome]:
    out: list[VectorOutcome] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < deadline, f"{len(out)} of {n} outcomes"
        out += engine.drain(0.5).outcomes
    return out


def test_streamed_vectors_equal_the_same_jobs_in_one_batch(tiny_llama) -> None:
    jobs = eight_jobs()
    batch = {r.job_id: r for r in optimize(tiny_llama, jobs, max_batch_jobs=3)}
    engine = StreamingEngine(tiny_llama, EvalSpec(metrics=()), max_rows=3)
    try:
        work = assignments(jobs)
        engine.put(work[:3])
        first = collect(engine, 1)  # the rest arrive while those run
        engine.put(work[3:5])
        engine.put(work[5:])
        got = first + collect(engine, len(jobs) - len(first))
    finally:
        engine.close()
    assert sorted(o.vector_id for o in got) == sorted(j.job_id for j in jobs)
    for o in got:
        assert o.error is None and o.result is not None
        ref = batch[o.vector_id]
        np.testing.assert_allclose(
            o.result.vector, ref.vector, atol=2e-5 * max(1.0, ref.final_norm)
        )
        np.testing.assert_allclose(o.result.loss_history, ref.loss_history, rtol=1e-4, atol=1e-5)
        if ref.factors is not None:
            assert o.result.factors is not None
            for a, b in zip(o.result.factors, ref.factors, strict=True):
                np.testing.assert_allclose(a, b, atol=2e-5)
    assert engine.report.vectors == len(jobs) and engine.report.busy_row_s > 0


def test_transfer_rows_equal_those_of_the_batch_path(tiny_llama) -> None:
    jobs = eight_jobs()[:4]
    batch = run_assignments(tiny_llama, SPEC, assignments(jobs), EvalCache(), max_batch_jobs=2)
    engine = StreamingEngine(tiny_llama, SPEC, max_rows=2, eval_batch=1)
    try:
        engine.put(assignments(jobs))
        streamed = {o.vector_id: o for o in collect(engine, len(jobs))}
    finally:
        engine.close()
    for b in batch:
        rows = {(r.example_id, r.metric): r for r in streamed[b.vector_id].rows}
        assert len(rows) == len(b.rows) == 3  # h1: one target, h2: two
        for r in b.rows:
            s = rows[(r.example_id, r.metric)]
            assert s.steered == pytest.approx(r.steered, abs=2e-4)
            assert s.unsteered == pytest.approx(r.unsteered, abs=1e-6)
            assert s.success == r.success


def test_a_short_vector_comes_out_while_a_long_one_keeps_its_row(tiny_llama) -> None:
    """Evaluation runs between the long job's steps: the short job's outcome,
    with its transfer rows, is out long before the long job stops."""
    prompt = (ScoredPrompt(chat("Tell me a joke."), (Target("I cannot help", "promote"),)),)
    long = VectorJob("long", prompt, layers=(1,), lr=0.01, stop=StopRules(max_iters=60, eps=None))
    short = dataclasses.replace(long, job_id="short", stop=StopRules(max_iters=1, eps=None))
    engine = StreamingEngine(tiny_llama, SPEC, max_rows=2)
    try:
        engine.put(assignments([long, short]))
        [first] = collect(engine, 1)
        steps_then = engine.stats.steps
        [last] = collect(engine, 1)
    finally:
        engine.close()
    assert first.vector_id == "short" and first.rows, "evaluated while the long row ran"
    assert last.vector_id == "long" and last.result is not None
    assert last.result.iterations == 60 and engine.stats.steps - steps_then > 20
    assert first.finished_at is not None and last.finished_at is not None
    assert first.finished_at < last.finished_at


def test_reentrant_assignments_stream_as_two_engine_jobs(tiny_llama) -> None:
    base = eight_jobs()[0]
    stage1 = dataclasses.replace(base, job_id="r1:stage1", stop=StopRules(max_iters=3, eps=None))
    stage2 = VectorJob("r1", layers=(3,), lr=0.1, stop=StopRules(max_iters=4, eps=None))
    rj = ReentrantJob(stage1, stage2, n_tokens=3)
    [ref] = optimize_reentrant(tiny_llama, [rj])
    engine = StreamingEngine(tiny_llama, EvalSpec(metrics=()), max_rows=2)
    try:
        engine.put([Assignment("r1", 0, "ex", stage2, rj), *assignments(eight_jobs()[1:3])])
        got = {o.vector_id: o for o in collect(engine, 3)}
    finally:
        engine.close()
    out = got["r1"]
    assert out.error is None and out.result is not None
    np.testing.assert_allclose(out.result.vector, ref.stage2.vector, atol=2e-5)
    assert out.result.layers == (3,)


def test_a_bad_assignment_fails_alone_and_a_duplicate_counts_once(tiny_llama) -> None:
    bad = dataclasses.replace(eight_jobs()[0], job_id="bad", layers=(99,))
    good = assignments(eight_jobs()[1:3])
    engine = StreamingEngine(tiny_llama, EvalSpec(metrics=()), max_rows=2)
    try:
        engine.put([Assignment("bad", 0, "e", bad), *good])
        engine.put(good[:1])  # sent again while it runs: one outcome
        got = collect(engine, 3)
        time.sleep(0.3)
        assert engine.drain(0.2).outcomes == []
    finally:
        engine.close()
    errors = {o.vector_id: o.error for o in got}
    assert set(errors) == {"bad", "job1", "job2"}
    assert errors["bad"] and "out of range" in errors["bad"]
    assert errors["job1"] is None and errors["job2"] is None


def test_the_batch_worker_returns_whole_batches_and_dies_like_a_process() -> None:
    calls: list[int] = []

    def fn(batch: list[Assignment]) -> list[VectorOutcome]:
        calls.append(len(batch))
        if len(calls) == 2:
            raise RuntimeError("boom")
        return [VectorOutcome(a.vector_id, a.trial, a.example_id) for a in batch]

    worker = BatchWorker(fn, max_rows=2)
    work = assignments(eight_jobs()[:4])
    worker.put(work[:2])
    got = worker.drain(5).outcomes
    assert [o.vector_id for o in got] == ["job0", "job1"]
    worker.put(work[2:])
    with pytest.raises(RuntimeError, match="boom"):
        worker.drain(5)
    worker.put(work[2:])  # a fresh start, as a restarted actor
    assert [o.vector_id for o in worker.drain(5).outcomes] == ["job2", "job3"]
    worker.close()


def test_both_paths_apply_the_transfer_screen(tiny_llama) -> None:
    """A threshold no slice can reach screens a vector, one every slice
    reaches does not, and no threshold leaves it alone, whichever protocol
    runs it: the screened vectors keep exactly their slice's rows."""
    spec = dataclasses.replace(SPEC, screen=Screen(1, "target_logprob", "delta"))
    jobs = eight_jobs()[:3]
    work = [
        dataclasses.replace(a, screen_threshold=t)
        for a, t in zip(assignments(jobs), [math.inf, -math.inf, None], strict=True)
    ]
    batch = run_assignments(tiny_llama, spec, work, EvalCache(), max_batch_jobs=2)
    engine = StreamingEngine(tiny_llama, spec, max_rows=2)
    try:
        engine.put(work)
        streamed = collect(engine, len(work))
    finally:
        engine.close()
    for outcomes in (batch, streamed):
        by_id = {o.vector_id: o for o in outcomes}
        screened, low, none = (by_id[a.vector_id] for a in work)
        assert (screened.screened, low.screened, none.screened) == (True, False, False)
        assert {r.example_id for r in screened.rows} == {HELD_OUT[0].id}
        assert len(low.rows) == len(none.rows) == 3
