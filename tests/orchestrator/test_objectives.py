"""Objective reductions against hand computations."""

from __future__ import annotations

import math

import pytest

from orchestrator.study.objectives import Objective, per_vector, trial_value
from workers.evaluation.transfer import TransferRow

ROWS = [
    TransferRow("a", "x1", "target_logprob:promote:0", -1.0, -3.0, True),
    TransferRow("a", "x2", "target_logprob:promote:0", -4.0, -3.5, False),
    TransferRow("a", "x2", "target_logprob:suppress:0", -2.0, -1.0, True),
    TransferRow("b", "x1", "target_logprob:promote:0", -2.0, -3.0, True),
    TransferRow("b", "x2", "target_logprob:promote:0", -2.5, -3.5, True),
    TransferRow("c", "x1", "target_logprob:promote:0", -5.0, -3.0, False),
    TransferRow("a", "n0", "side_effect_kl", 0.3, 0.0, False),
    TransferRow("b", "n0", "side_effect_kl", 0.1, 0.0, True),
    TransferRow("a", "x3", "choice_flip:+", -1.0, 2.0, True),
    TransferRow("a", "x3", "choice_flip:-", 1.0, 2.0, False),
]


def test_mean_success_per_vector_then_across_vectors() -> None:
    obj = Objective()
    assert per_vector(ROWS, obj, {}) == {"a": pytest.approx(2 / 3), "b": 1.0, "c": 0.0}
    assert trial_value(ROWS, obj, {}) == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert trial_value(ROWS, Objective(reduce="median"), {}) == pytest.approx(2 / 3)
    assert trial_value(ROWS, Objective(reduce="max"), {}) == 1.0


def test_other_statistics_metrics_and_norm() -> None:
    delta = Objective(metric="target_logprob:promote", statistic="delta", reduce="min")
    # a: (2 + -0.5)/2 = 0.75, b: (1 + 1)/2 = 1, c: -2 -> min -2
    assert trial_value(ROWS, delta, {}) == pytest.approx(-2.0)
    kl = Objective(metric="side_effect_kl", statistic="steered", direction="minimize")
    assert trial_value(ROWS, kl, {}) == pytest.approx(0.2)
    assert trial_value(ROWS, Objective(metric="choice_flip:+"), {}) == 1.0
    assert (
        trial_value(ROWS, Objective(metric="norm", statistic="steered"), {"a": 3.0, "b": 5.0})
        == 4.0
    )
    assert math.isnan(trial_value(ROWS, Objective(metric="judge:refusal"), {}))
