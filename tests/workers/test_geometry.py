"""Cosine matrix, mode connectivity, ROC-AUC and the dot-product classifier."""

from __future__ import annotations

import numpy as np
import pytest

from workers.analysis.geometry import (
    cosine_matrix,
    dot_product_auc,
    geodesic,
    median_off_diagonal,
    mode_connectivity,
    model_loss_fn,
    roc_auc,
)
from workers.jobs import StopRules, VectorJob, chat


def test_cosine_matrix_and_median() -> None:
    v = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    m = cosine_matrix(v)
    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(m, [[1, 0, s], [0, 1, s], [s, s, 1]], atol=1e-12)
    assert median_off_diagonal(m) == pytest.approx(s)  # off-diagonal: 0, 0, s, s, s, s


def test_geodesic_keeps_the_endpoints_norms() -> None:
    v1, v2 = np.array([3.0, 0.0]), np.array([0.0, 5.0])
    pts = geodesic(v1, v2, 20)
    assert pts.shape == (20, 2)
    np.testing.assert_allclose(pts[0], v1)
    np.testing.assert_allclose(pts[-1], v2)
    np.testing.assert_allclose(np.linalg.norm(pts, axis=1), np.linspace(3, 5, 20))


def test_every_pair_is_connected_for_a_loss_convex_along_the_path() -> None:
    rng = np.random.default_rng(0)
    c = rng.normal(size=16)
    c /= np.linalg.norm(c)

    def convex(points):  # -w.c is convex in the arc angle between points near c
        return [-float(p @ c) for p in points]

    vecs = [10 * (c + 0.6 * rng.normal(size=16) / 4) for _ in range(6)]
    vecs = [v / np.linalg.norm(v) * 10 for v in vecs]
    results = [mode_connectivity(convex, a, b) for i, a in enumerate(vecs) for b in vecs[i + 1 :]]
    assert len(results) == 15
    assert all(r.connected for r in results)
    assert all(len(r.losses) == 20 for r in results)

    def concave(points):
        return [float(p @ c) for p in points]

    barrier = mode_connectivity(concave, vecs[0], vecs[1])
    assert not barrier.connected and barrier.barrier > 0


def test_mode_connectivity_with_the_model_loss(tiny_llama) -> None:
    template = VectorJob.simple(
        "t",
        chat("What is the capital of France?"),
        suppress=[" I cannot"],
        layer=1,
        stop=StopRules(max_iters=0),
    )
    fn = model_loss_fn(tiny_llama, template)
    rng = np.random.default_rng(1)
    v1, v2 = rng.normal(size=64) * 3, rng.normal(size=64) * 3
    res = mode_connectivity(fn, v1, v2, n_points=5)
    # Endpoint losses equal the loss of each vector evaluated alone.
    [alone] = fn(np.array([v1]))
    assert res.losses[0] == pytest.approx(alone, rel=1e-5)
    assert isinstance(res.connected, bool)


def test_roc_auc_against_a_hand_computation() -> None:
    # Pairs (pos > neg): 3>1, 3>2, 3=3 (half), 5>all three, 2>1, 2=2 (half) -> 7/9.
    assert roc_auc([3.0, 5.0, 2.0], [1.0, 2.0, 3.0]) == pytest.approx(7 / 9)
    assert roc_auc([1.0], [0.0]) == 1.0 and roc_auc([0.0], [1.0]) == 0.0
    with pytest.raises(ValueError):
        roc_auc([], [1.0])


def test_dot_product_classifier(tiny_llama) -> None:
    import torch

    from workers.analysis.caa import activations, caa_vector

    pos = [chat("Thank you so much!"), chat("This is wonderful!"), chat("Hello world")]
    neg = [chat("I cannot help with that."), chat("The lazy dog."), chat("Option B")]
    v = caa_vector(tiny_llama, pos, neg, 2, reduce="mean")
    auc = dot_product_auc(tiny_llama, v, 2, pos, neg)
    sp = (activations(tiny_llama, pos, 2, "mean") @ torch.as_tensor(v)).tolist()
    sn = (activations(tiny_llama, neg, 2, "mean") @ torch.as_tensor(v)).tolist()
    assert auc == pytest.approx(roc_auc(sp, sn))
    assert auc == 1.0  # CAA on its own prompts separates them (mean-reduced)
