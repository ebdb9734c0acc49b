"""The batched optimizer: batch invariance, Adam, norm bound, stopping rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from jobsets import PROMPTS, eight_jobs
from reference import reference_adam

from workers.engine.loop import optimize
from workers.jobs import (
    ScoredPrompt,
    StopRules,
    Target,
    VectorJob,
    chat,
)


def test_batched_vectors_equal_solo_vectors(tiny_llama) -> None:
    jobs = eight_jobs()
    batched = optimize(tiny_llama, jobs)
    solo = [optimize(tiny_llama, [job])[0] for job in jobs]
    for b, s in zip(batched, solo, strict=True):
        assert b.iterations == s.iterations == b.loss_history.__len__() - 1
        # Tolerance: rows differ from solo runs only through float32
        # reassociation in batched matmuls over padded shapes (~1e-7 relative
        # per op); Adam's g / sqrt(v) normalization can amplify that over a
        # dozen steps (measured: at most 6e-7 here), so allow 2e-5 of the norm.
        np.testing.assert_allclose(b.vector, s.vector, atol=2e-5 * max(1.0, s.final_norm))
        np.testing.assert_allclose(b.loss_history, s.loss_history, rtol=1e-4, atol=1e-5)
        if s.factors is not None:
            assert b.factors is not None
            np.testing.assert_allclose(b.factors[0], s.factors[0], atol=1e-4)
            np.testing.assert_allclose(b.factors[1], s.factors[1], atol=1e-4)
    # The rows really did differ: different stopping iterations and vectors.
    assert len({r.iterations for r in batched}) == 8
    assert len({round(float(np.linalg.norm(r.vector)), 3) for r in batched}) >= 7


def test_matches_an_independent_torch_adam_loop(tiny_llama) -> None:
    job = VectorJob.simple(
        "ref",
        chat("What is the capital of France?"),
        promote=["Paris is lovely."],
        layer=1,
        lr=0.3,
        norm_bound=1.5,
        init_norm=1.0,
        seed=11,
        stop=StopRules(max_iters=8, eps=None),
    )
    [ours] = optimize(tiny_llama, [job])
    expected = reference_adam(tiny_llama, job, 8)
    assert ours.iterations == 8
    np.testing.assert_allclose(ours.vector, expected, atol=1e-5)
    assert ours.final_norm == pytest.approx(1.5, rel=1e-5)  # the bound was hit


def test_norm_bound_holds_after_every_step(tiny_llama) -> None:
    jobs = [
        VectorJob.simple(
            f"n{i}",
            PROMPTS[i],
            promote=["Paris is lovely."],
            layer=i % 4,
            lr=1.0,
            norm_bound=bound,
            init_norm=init,
            seed=i,
            stop=StopRules(max_iters=12, eps=None),
        )
        for i, (bound, init) in enumerate([(0.5, 1.0), (2.0, 0.1), (3.0, 3.0), (1.0, 5.0)])
    ]
    for job, res in zip(jobs, optimize(tiny_llama, jobs), strict=True):
        assert len(res.norm_history) == res.iterations + 1 == 13
        assert max(res.norm_history) <= job.norm_bound * (1 + 1e-6)
        assert res.final_norm == pytest.approx(res.norm_history[-1], rel=1e-6)
    # lr=1 pushes every vector to its bound within a few steps.
    assert all(
        r.final_norm == pytest.approx(j.norm_bound, rel=1e-4)
        for j, r in zip(jobs, optimize(tiny_llama, jobs), strict=True)
    )


def _job(job_id: str, stop: StopRules, **kw) -> VectorJob:
    targets = kw.pop("targets", (Target("Paris is lovely.", "promote"),))
    return VectorJob(
        job_id=job_id,
        prompts=(ScoredPrompt(chat("What is the capital of France?"), targets),),
        layers=(1,),
        lr=kw.pop("lr", 0.1),
        seed=kw.pop("seed", 0),
        stop=stop,
        **kw,
    )


def test_each_stopping_rule_fires_with_its_reason(tiny_llama) -> None:
    [probe] = optimize(tiny_llama, [_job("probe", StopRules(max_iters=0))])
    start = probe.loss_history[0]
    jobs = [
        _job("max", StopRules(max_iters=3, eps=None)),
        _job("eps", StopRules(max_iters=50, eps=1e3)),
        # A tight bound with a large lr makes the vector overshoot on the sphere.
        _job("patience", StopRules(max_iters=60, eps=None, patience=1), lr=5.0, norm_bound=1.0),
        _job(
            "reached",
            StopRules(max_iters=50, targets_reached=True),
            targets=(Target("Paris is lovely.", "promote", threshold=start + 1.0),),
        ),
        _job("held", StopRules(max_iters=50, eps=None, hold_threshold=start + 1.0, hold_iters=4)),
        _job("nan", StopRules(max_iters=50), init_vector=np.full(64, np.nan, dtype=np.float32)),
    ]
    got = {r.job_id: r for r in optimize(tiny_llama, jobs)}
    assert (got["max"].stop_reason, got["max"].iterations) == ("max_iters", 3)
    assert (got["eps"].stop_reason, got["eps"].iterations) == ("converged", 1)
    patience = got["patience"]
    assert patience.stop_reason == "no_improvement"
    assert patience.loss_history[-1] >= min(patience.loss_history[:-1])
    assert (got["reached"].stop_reason, got["reached"].iterations) == ("targets_reached", 0)
    assert (got["held"].stop_reason, got["held"].iterations) == ("threshold_held", 3)
    assert got["nan"].stop_reason == "nonfinite"
    assert math.isnan(got["nan"].loss_history[-1])


def test_a_nonfinite_row_does_not_disturb_the_others(tiny_llama) -> None:
    good = [_job(f"g{i}", StopRules(max_iters=5, eps=None), seed=i) for i in range(3)]
    bad = _job("bad", StopRules(max_iters=5), init_vector=np.full(64, np.inf, dtype=np.float32))
    mixed = optimize(tiny_llama, [good[0], bad, good[1], good[2]])
    alone = optimize(tiny_llama, good)
    assert [r.stop_reason for r in mixed] == ["max_iters", "nonfinite", "max_iters", "max_iters"]
    for m, a in zip([mixed[0], mixed[2], mixed[3]], alone, strict=True):
        np.testing.assert_allclose(m.vector, a.vector, atol=2e-5)


def test_vectors_are_reproducible_from_their_record(tiny_llama) -> None:
    from workers.engine.adam import initial_params

    a = _job("a", StopRules(max_iters=3, eps=None), seed=5, init_norm=2.5)
    b = _job("b", StopRules(max_iters=3, eps=None), seed=6, init_norm=2.5)
    first, other = optimize(tiny_llama, [a, b])
    again, _ = optimize(tiny_llama, [a, b])
    [solo] = optimize(tiny_llama, [a])
    np.testing.assert_array_equal(first.vector, again.vector)  # bit for bit
    np.testing.assert_allclose(first.vector, solo.vector, atol=2e-5)
    assert not np.allclose(first.vector, other.vector)
    start = initial_params(a, 64, 0)[0]
    assert float(start.norm()) == pytest.approx(2.5, rel=1e-6)
    assert first.norm_history[0] == pytest.approx(2.5, rel=1e-6)


def test_progress_is_reported_per_job(tiny_llama) -> None:
    seen: list[tuple[int, int]] = []
    jobs = [_job(f"p{i}", StopRules(max_iters=1), seed=i) for i in range(5)]
    optimize(tiny_llama, jobs, max_batch_jobs=2, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(i, 5) for i in range(1, 6)]
