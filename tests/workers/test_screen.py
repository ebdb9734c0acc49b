"""The transfer screen (``pruner: transfer_screen``) on the worker side: the
decision rule, and ``evaluate_screened`` on a tiny random model against a
full ``evaluate`` of the same vectors."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.study.objectives import Objective, per_vector
from workers.evaluation.evaluate import EvalCache, EvalSpec, evaluate, evaluate_screened
from workers.evaluation.screen import Screen, vector_scores
from workers.evaluation.transfer import TransferRow
from workers.examples import Example
from workers.jobs import chat
from workers.steering.vectors import SteeringVector

SLICE = 2
EXAMPLES = tuple(
    Example(
        f"t{i}",
        chat(f"Question number {i}: how do I do thing {i}?"),
        promote=(" Sure, here is how",),
        suppress=(" I cannot help",),
        split="transfer",
    )
    for i in range(5)
)
NEUTRAL = (chat("Tell me about the weather."), "The cat sat on the")


def _spec(**kw) -> EvalSpec:
    base = dict(
        examples=EXAMPLES,
        metrics=("target_logprob", "side_effect_kl"),
        neutral_prompts=NEUTRAL,
        keep_generations=3,
        generation_tokens=4,
        screen=Screen(SLICE, "target_logprob", "delta", "maximize"),
    )
    base.update(kw)
    return EvalSpec(**base)


@pytest.fixture(scope="module")
def vectors() -> list[SteeringVector]:
    rng = np.random.default_rng(3)
    return [
        SteeringVector(f"v{i}", (rng.normal(size=64) * (1 + 3 * i)).astype(np.float32), (i % 3,))
        for i in range(6)
    ]


@pytest.fixture(scope="module")
def full(tiny_llama, vectors):
    """Every vector evaluated in full, without a screen."""
    return evaluate(tiny_llama, _spec(screen=None), vectors)


def _key(r: TransferRow) -> tuple[str, str, str]:
    return (r.vector_id, r.example_id, r.metric)


def _close(a: list[TransferRow], b: list[TransferRow]) -> None:
    """The same rows (as a set of keys), values equal to float tolerance."""
    da, db = {_key(r): r for r in a}, {_key(r): r for r in b}
    assert len(da) == len(a) and len(db) == len(b)
    assert set(da) == set(db)
    for k, r in da.items():
        assert r.steered == pytest.approx(db[k].steered, rel=1e-4, abs=1e-5), k
        assert r.unsteered == pytest.approx(db[k].unsteered, rel=1e-4, abs=1e-5), k
        assert r.success == db[k].success or abs(r.steered - r.unsteered) < 1e-4, k


def _slice_scores(rows: list[TransferRow], screen: Screen) -> dict[str, float]:
    ids = {ex.id for ex in EXAMPLES[:SLICE]}
    return screen.scores([r for r in rows if r.example_id in ids])


# ------------------------------------------------------------------ the rule

scores = st.floats(allow_nan=True, allow_infinity=False, width=32)


@given(score=scores, threshold=st.one_of(st.none(), scores), maximize=st.booleans())
def test_skips_only_what_is_measured_worse(score, threshold, maximize) -> None:
    screen = Screen(1, direction="maximize" if maximize else "minimize")
    skipped = screen.skips(score, threshold)
    if threshold is None or math.isnan(score):
        assert not skipped
    elif maximize:
        assert skipped == (score < threshold)
    else:
        assert skipped == (score > threshold)


def test_threshold_is_the_median_moved_towards_worse() -> None:
    up, down = Screen(1, direction="maximize"), Screen(1, direction="minimize")
    assert up.threshold([0.0, 1.0, 0.5, math.nan], 0.25) == 0.25
    assert up.threshold([0.0, 1.0, 0.5, 0.75], 0.1) == pytest.approx(0.525)
    assert down.threshold([2.0, 4.0, 3.0], 0.5) == 3.5
    assert up.threshold([math.nan], 0.1) is None


@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(
                [
                    "target_logprob:promote:0",
                    "target_logprob:suppress:0",
                    "choice_flip:+",
                    "judge:contains_any",
                ]
            ),
            st.floats(-20, 5),
            st.floats(-20, 5),
            st.booleans(),
        ),
        max_size=30,
    ),  # fmt: skip
    family=st.sampled_from(["target_logprob", "target_logprob:promote", "choice_flip", "judge"]),
    statistic=st.sampled_from(["success", "steered", "delta"]),
)
def test_worker_score_is_the_objectives_per_vector_value(rows, family, statistic) -> None:
    """The screen's score and the objective Optuna sees are one computation
    in two homes (see workers/evaluation/screen.py): they must agree."""
    transfer = [TransferRow(v, "e", m, s, u, ok) for v, m, s, u, ok in rows]
    objective = Objective(metric=family, statistic=statistic)
    assert vector_scores(transfer, family, statistic) == per_vector(transfer, objective, {})


def test_a_screen_needs_a_held_out_metric() -> None:
    for metric in ("norm", "side_effect_kl", "surprisal"):
        with pytest.raises(ValueError, match="held-out metric"):
            Screen(2, metric)
    with pytest.raises(ValueError, match="slice_size"):
        Screen(0)


# ------------------------------------------------------ evaluate_screened


def test_without_thresholds_it_is_evaluate_row_for_row(tiny_llama, vectors, full) -> None:
    rows, gens, stopped = evaluate_screened(tiny_llama, _spec(), vectors, [None] * len(vectors))
    assert stopped == set()
    assert rows == full[0]
    assert gens == full[1]


def test_a_threshold_no_slice_is_below_evaluates_in_full(tiny_llama, vectors, full) -> None:
    low = [-math.inf] * len(vectors)
    rows, gens, stopped = evaluate_screened(tiny_llama, _spec(), vectors, low)
    assert stopped == set()
    _close(rows, full[0])
    assert Counter((g.vector_id, g.example_id) for g in gens) == Counter(
        (g.vector_id, g.example_id) for g in full[1]
    )


def test_screens_exactly_the_vectors_whose_slice_is_below(tiny_llama, vectors, full) -> None:
    """Thresholds just above and just below each vector's slice score (taken
    from the full evaluation): a vector is stopped iff its slice is below,
    never one at or above; stopped vectors keep exactly their slice's rows,
    the others all of their rows, generations and side-effect KL."""
    screen = _spec().screen
    assert screen is not None
    slice_score = _slice_scores(full[0], screen)
    spread = max(slice_score.values()) - min(slice_score.values())
    assert spread > 1e-3, "the vectors must differ on the slice for this test to mean anything"
    eps = 1e-3 * spread
    # v0, v2, v4 above their threshold; v1, v3 below; v5 has none.
    plan = {0: -eps, 1: +eps, 2: -eps, 3: +eps, 4: -eps}
    thresholds: list[float | None] = [
        slice_score[v.vector_id] + plan[i] if i in plan else None for i, v in enumerate(vectors)
    ]
    rows, gens, stopped = evaluate_screened(tiny_llama, _spec(), vectors, thresholds, EvalCache())
    assert stopped == {"v1", "v3"}
    slice_ids = {ex.id for ex in EXAMPLES[:SLICE]}
    for v in vectors:
        mine = [r for r in rows if r.vector_id == v.vector_id]
        theirs = [r for r in full[0] if r.vector_id == v.vector_id]
        if v.vector_id in stopped:
            expected = [r for r in theirs if r.example_id in slice_ids]
            assert not any(r.metric == "side_effect_kl" for r in mine)
            kept_texts = {g.example_id for g in gens if g.vector_id == v.vector_id}
            assert kept_texts == {ex.id for ex in EXAMPLES[:SLICE]}
        else:
            expected = theirs
            kept_texts = {g.example_id for g in gens if g.vector_id == v.vector_id}
            assert kept_texts == {ex.id for ex in EXAMPLES[:3]}  # keep_generations 3
        _close(mine, expected)


def test_minimize_screens_the_vectors_above(tiny_llama, vectors, full) -> None:
    screen = Screen(SLICE, "target_logprob:promote", "steered", "minimize")
    slice_score = _slice_scores(full[0], screen)
    median = float(np.median(list(slice_score.values())))
    rows, _, stopped = evaluate_screened(
        tiny_llama, _spec(screen=screen), vectors, [median] * len(vectors)
    )
    assert stopped == {vid for vid, s in slice_score.items() if s > median}
    assert stopped and len(stopped) < len(vectors)


def test_a_slice_as_long_as_the_examples_never_screens(tiny_llama, vectors, full) -> None:
    spec = _spec(screen=Screen(len(EXAMPLES), "target_logprob", "delta"))
    rows, _, stopped = evaluate_screened(tiny_llama, spec, vectors, [math.inf] * len(vectors))
    assert stopped == set()
    assert rows == full[0]
