"""Geometry of a set of vectors (paper §3.3, §4.3, §5.3).

- cosine-similarity matrix and its median off-diagonal value;
- linear mode connectivity along the norm-preserving geodesic;
- dot-product classifiers scored by ROC-AUC.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from workers.analysis.caa import activations
from workers.jobs import Prompt, StopRules, VectorJob
from workers.models import LoadedModel


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """``(n, n)`` cosine similarities of the rows of ``vectors`` ``(n, d)``."""
    v = np.asarray(vectors, dtype=np.float64)
    unit = v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-30, None)
    return unit @ unit.T


def median_off_diagonal(matrix: np.ndarray) -> float:
    """Median of the entries off the diagonal (§3.3 reports 0.031 for norm-15 vectors)."""
    n = matrix.shape[0]
    if n < 2:
        return float("nan")
    return float(np.median(matrix[~np.eye(n, dtype=bool)]))


def geodesic(v1: np.ndarray, v2: np.ndarray, n_points: int = 20) -> np.ndarray:
    """``(n_points, d)`` points from ``v1`` to ``v2`` (both included): linear
    interpolation, each rescaled to the interpolated norm of the endpoints."""
    t = np.linspace(0.0, 1.0, n_points)[:, None]
    mix = (1 - t) * v1[None] + t * v2[None]
    target = (1 - t) * np.linalg.norm(v1) + t * np.linalg.norm(v2)
    return mix / np.clip(np.linalg.norm(mix, axis=1, keepdims=True), 1e-30, None) * target


@dataclass(frozen=True)
class Connectivity:
    losses: list[float]
    connected: bool
    barrier: float  # max interior loss minus the larger endpoint loss


def mode_connectivity(
    loss_fn: Callable[[np.ndarray], Sequence[float]],
    v1: np.ndarray,
    v2: np.ndarray,
    n_points: int = 20,
    tol: float = 1e-6,
) -> Connectivity:
    """§4.3: evaluate ``loss_fn`` on ``n_points`` geodesic points between two vectors.

    The pair is linearly mode connected when no interior point has a loss above
    both endpoints ("a path on which the loss does not increase", §4.3). The
    paper's setup paragraph says "lower than the loss at the endpoints"; we
    follow the definition in its first paragraph, the usual one, under which
    every pair is connected for a loss that is convex along the path.
    """
    points = geodesic(np.asarray(v1, np.float64), np.asarray(v2, np.float64), n_points)
    losses = [float(x) for x in loss_fn(points)]
    barrier = max(losses[1:-1], default=-np.inf) - max(losses[0], losses[-1])
    return Connectivity(losses, bool(barrier <= tol), float(barrier))


def model_loss_fn(lm: LoadedModel, template: VectorJob) -> Callable[[np.ndarray], list[float]]:
    """A loss function for :func:`mode_connectivity`: the loss of ``template``'s
    prompts and targets at each given vector (no optimization steps)."""
    from workers.engine.loop import optimize

    def fn(points: np.ndarray) -> list[float]:
        jobs = [
            dataclasses.replace(
                template,
                job_id=f"mc{i}",
                init_vector=p.astype(np.float32),
                norm_bound=None,
                stop=StopRules(max_iters=0),
            )
            for i, p in enumerate(points)
        ]
        return [r.loss_history[0] for r in optimize(lm, jobs)]

    return fn


def roc_auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties 1/2."""
    pos = np.asarray(positive, dtype=np.float64)[:, None]
    neg = np.asarray(negative, dtype=np.float64)[None, :]
    if pos.size == 0 or neg.size == 0:
        raise ValueError("ROC-AUC needs at least one score in each set")
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def dot_product_auc(
    lm: LoadedModel,
    vector: np.ndarray,
    layer: int,
    positive: Sequence[Prompt],
    negative: Sequence[Prompt],
    reduce: Literal["last", "mean"] = "mean",
) -> float:
    """§3.3/§5.3 classifier: score each prompt by the mean dot product of its
    activations entering ``layer`` with ``vector``; ROC-AUC of positive vs negative."""
    v = np.asarray(vector, dtype=np.float32)
    pos = activations(lm, positive, layer, reduce).numpy() @ v
    neg = activations(lm, negative, layer, reduce).numpy() @ v
    return roc_auc(pos.tolist(), neg.tolist())
