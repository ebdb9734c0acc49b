"""What predicts transfer: cheap per-vector signals from the store, their rank
correlation with transfer success, and a cross-validated predictor.

Signals (one row per optimized vector, CAA skyline rows left out):

- ``final_loss``: the training loss on the vector's own examples at the end;
- ``loss_ratio``: final over initial training loss;
- ``early_drop``: the share of the whole loss drop reached by half of the
  steps (1: all of it early, 0: none of it), the loss curve's shape;
- ``final_norm``, ``layer``, ``shots`` (K);
- ``cos_caa``: cosine similarity to the study's CAA vector at the same layer
  (NaN without one);
- ``cos_others``: mean cosine similarity to the study's other vectors at the
  same layer.

:func:`correlations` gives Spearman's rank correlation of each signal with
transfer success and with the target log-probability gain (transfer success
is a share of thresholded rows and often saturates at 1 for a strong vector;
the gain keeps ranking them). :func:`cross_validated_auc` fits an
L2-regularized logistic regression on the standardized signals to tell
vectors above the study's median outcome from the rest, and scores it by
ROC-AUC on held-out folds; the outcome is transfer success, or the gain when
success is the same for every vector. The model is fitted by Newton's method in numpy: five to eight
features need no scikit-learn (which the project would otherwise have to
install everywhere the report runs); the AUC is the Mann-Whitney statistic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from orchestrator.report.data import CAA_KIND, ReportData

if TYPE_CHECKING:
    import pandas as pd

    from orchestrator.store import Study

SIGNALS = (
    "final_loss", "loss_ratio", "early_drop", "final_norm", "layer", "shots", "cos_caa",
    "cos_others",
)  # fmt: skip
MIN_VECTORS = 12  # fewer and a 5-fold cross-validated AUC says nothing


@dataclass(frozen=True)
class Prediction:
    """A cross-validated predictor's result: ROC-AUC on held-out folds (None
    when it could not be fitted, with ``why``), the vectors and the signals used."""

    auc: float | None
    n: int
    features: tuple[str, ...]
    why: str = ""
    outcome: str = "transfer_success"


def signals(st: Study, data: ReportData) -> pd.DataFrame:
    """The signals of every one-shot (or K-shot) vector of ``data``, with its
    ``vector_id`` and ``transfer_success``."""
    v = data.vectors
    caa = v[v["loss_kind"] == CAA_KIND]
    own = v[v["loss_kind"] != CAA_KIND].reset_index(drop=True)
    keep = ["vector_id", "transfer_success", "logprob_gain", "vector_objective_0", "final_loss",
            "final_norm", "layer", "shots"]  # fmt: skip
    out = own[keep]
    out = out.copy()
    out["loss_ratio"] = own["final_loss"] / own["initial_loss"].where(own["initial_loss"] != 0)
    drops = _early_drops(st)
    out["early_drop"] = [drops.get(str(x), float("nan")) for x in own["vector_id"]]
    # Per layer (read one layer at a time: memory bounded by the largest
    # layer, not the study), the sum of its vectors' unit rows: a vector's
    # mean cosine to the others there is (its row . sum - its row . itself)
    # / (m - 1), one pass over the vectors instead of one per pair.
    caa_at = {int(r.layer): str(r.vector_id) for r in caa.itertuples()}
    cos_caa: dict[str, float] = {}
    cos_others: dict[str, float] = {}
    for layer, ids in out.groupby("layer")["vector_id"]:
        got, mat = st.layer_matrix(int(layer))
        unit = _unit_rows(mat)
        row = {vid: i for i, vid in enumerate(got)}
        members = [row[str(v)] for v in ids if str(v) in row]
        total, m = unit[members].sum(axis=0), len(members)
        c = caa_at.get(int(layer))
        for vid in ids:
            i = row.get(str(vid))
            if i is None:
                continue
            if c in row:
                cos_caa[str(vid)] = float(unit[i] @ unit[row[c]])
            if m > 1:
                cos_others[str(vid)] = float((unit[i] @ total - unit[i] @ unit[i]) / (m - 1))
    nan = float("nan")
    own_ids = [str(x) for x in out["vector_id"]]
    cos_caa_col = [cos_caa.get(v, nan) for v in own_ids]
    cos_others_col = [cos_others.get(v, nan) for v in own_ids]
    out["cos_caa"] = cos_caa_col
    out["cos_others"] = cos_others_col
    return out[["vector_id", "transfer_success", "logprob_gain", "vector_objective_0", *SIGNALS]]


def _early_drops(st: Study) -> dict[str, float]:
    """:func:`early_drop` of every stored vector, from the ``loss_history``
    column's flat values and offsets (no Python list per vector)."""
    t = st.vectors.to_table(columns=["vector_id", "loss_history"])
    hist = t["loss_history"].combine_chunks()
    offsets = hist.offsets.to_numpy()  # into hist.values, whatever the array's slice
    values = hist.values.to_numpy(zero_copy_only=False).astype(float)
    ids = t["vector_id"].to_pylist()
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    ok = lengths >= 3
    first = np.where(ok, values[np.where(ok, starts, 0)], np.nan)
    last = np.where(ok, values[np.where(ok, starts + lengths - 1, 0)], np.nan)
    mid = np.where(ok, values[np.where(ok, starts + lengths // 2, 0)], np.nan)
    total = first - last
    with np.errstate(invalid="ignore", divide="ignore"):
        drop = np.where(ok & (total > 0), (first - mid) / np.where(total > 0, total, 1.0), np.nan)
    return dict(zip(ids, drop.tolist(), strict=True))


def early_drop(history: list[float]) -> float:
    """The share of the loss drop from the first to the last step that half the
    steps reached; NaN for a curve with fewer than 3 points or no drop."""
    if len(history) < 3:
        return float("nan")
    total = history[0] - history[-1]
    if not total > 0:
        return float("nan")
    return float((history[0] - history[len(history) // 2]) / total)


def _unit_rows(mat: np.ndarray) -> np.ndarray:
    if mat.size == 0:
        return mat
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    return mat / np.where(norms > 0, norms, 1.0)


OUTCOMES = {
    "spearman": "transfer_success",
    "spearman_gain": "logprob_gain",
    "spearman_objective": "vector_objective_0",
}
"""Correlation column: the outcome it ranks the signals against."""


def correlations(sig: pd.DataFrame) -> pd.DataFrame:
    """Per signal: the vectors it is defined for and Spearman's rank
    correlation with transfer success (``spearman``), with the log-prob gain
    (``spearman_gain``) and with the vector's own value of the first
    objective (``spearman_objective``); NaN where either side is constant. A
    column that is NaN for every signal (its outcome is constant or missing:
    transfer success at 1 for every vector, say) is left out."""
    import pandas as pd

    rows = []
    for name in SIGNALS:
        d = sig[[name, "transfer_success"]].dropna()
        row: dict[str, object] = {"signal": name, "n_vectors": len(d)}
        for col, outcome in OUTCOMES.items():
            row[col] = spearman(sig[name], sig[outcome])
        rows.append(row)
    frame = pd.DataFrame(rows)
    empty = [c for c in OUTCOMES if frame[c].isna().all()]
    return frame.drop(columns=empty)


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Spearman's rho over the rows where both are defined: Pearson's
    correlation of the ranks (ties share their mean rank); NaN for fewer than
    3 rows or a constant side."""
    import pandas as pd

    d = pd.DataFrame({"a": a, "b": b}).dropna()
    if len(d) < 3 or d["a"].nunique() < 2 or d["b"].nunique() < 2:
        return float("nan")
    return float(d["a"].rank().corr(d["b"].rank()))


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """The probability that a random positive scores above a random negative
    (ties count one half): the Mann-Whitney form of the ROC-AUC."""
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if not n_pos or not n_neg:
        return float("nan")
    # From the positives' ranks among all scores (ties get their mean rank),
    # in O(n log n) time and O(n) memory: the pairwise form needs n_pos x n_neg.
    order = np.argsort(score, kind="stable")
    ranked = score[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    ends = np.r_[starts[1:], len(ranked)]
    mean_rank = (starts + ends + 1) / 2.0  # ranks from 1; a tie group shares its mean
    ranks = np.empty(len(score))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 50) -> np.ndarray:
    """Weights (intercept first) of an L2-regularized logistic regression,
    by Newton's method; the intercept is not penalized."""
    xb = np.hstack([np.ones((len(x), 1)), x])
    w = np.zeros(xb.shape[1])
    penalty = np.full(xb.shape[1], l2)
    penalty[0] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(xb @ w, -30, 30)))
        grad = xb.T @ (p - y) + penalty * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(penalty) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return w


def cross_validated_auc(sig: pd.DataFrame, folds: int = 5, seed: int = 0) -> Prediction:
    """Out-of-fold ROC-AUC of a logistic regression telling the vectors above
    the median transfer success from the others (folds stratified by class,
    drawn with ``seed``)."""
    usable = [n for n in SIGNALS if sig[n].notna().all() and sig[n].nunique() > 1]
    n = len(sig)
    outcome = "transfer_success"
    if sig[outcome].nunique() < 2 and sig["logprob_gain"].notna().all():
        outcome = "logprob_gain"  # success saturated: rank by how far targets moved
    if n < MIN_VECTORS:
        why = f"{n} vectors; the predictor needs {MIN_VECTORS}"
        return Prediction(None, n, tuple(usable), why, outcome)
    y = (sig[outcome] > sig[outcome].median()).to_numpy(int)
    if y.sum() < folds or (1 - y).sum() < folds:
        why = f"too few vectors above or below the median {outcome}"
        return Prediction(None, n, tuple(usable), why, outcome)
    if not usable:
        return Prediction(None, n, (), "no signal varies across the vectors", outcome)
    x = sig[usable].to_numpy(float)
    rng = np.random.default_rng(seed)
    fold = np.empty(n, int)
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == cls))
        fold[idx] = np.arange(len(idx)) % folds
    score = np.empty(n)
    for f in range(folds):
        test, train = fold == f, fold != f
        mu, sd = x[train].mean(0), x[train].std(0)
        sd = np.where(sd > 0, sd, 1.0)
        w = fit_logistic((x[train] - mu) / sd, y[train])
        score[test] = np.hstack([np.ones((test.sum(), 1)), (x[test] - mu) / sd]) @ w
    return Prediction(roc_auc(y, score), n, tuple(usable), outcome=outcome)
