"""What predicts transfer: the AUC, the logistic fit, the correlations and
the signals, each against a direct computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchestrator.report import build_report, load_report_data
from orchestrator.report import predictors as P
from orchestrator.store import open_study
from report.conftest import build_study
from report.direct import direct_vectors, raw_table


def test_roc_auc_is_the_share_of_correctly_ordered_pairs() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 40)
    s = rng.integers(0, 5, 40).astype(float)  # many ties
    pairs = [(a, b) for a in s[y == 1] for b in s[y == 0]]
    want = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
    assert P.roc_auc(y, s) == pytest.approx(want)
    assert P.roc_auc(np.array([1, 1, 0, 0]), np.array([4.0, 3.0, 2.0, 1.0])) == 1.0


def test_the_predictor_finds_a_real_signal_and_not_a_shuffled_one() -> None:
    rng = np.random.default_rng(0)
    n = 80
    frame = pd.DataFrame({name: rng.normal(size=n) for name in P.SIGNALS})
    frame["transfer_success"] = 1 / (1 + np.exp(-3 * frame["final_norm"])) + rng.normal(0, 0.05, n)
    frame["vector_id"] = [f"v{i}" for i in range(n)]
    frame["logprob_gain"] = rng.normal(size=n)
    real = P.cross_validated_auc(frame)
    assert real.auc is not None and real.auc > 0.85 and real.n == n
    shuffled = frame.assign(transfer_success=rng.permutation(frame["transfer_success"].to_numpy()))
    noise = P.cross_validated_auc(shuffled)
    assert noise.auc is not None and 0.25 < noise.auc < 0.75
    few = P.cross_validated_auc(frame.head(P.MIN_VECTORS - 1))
    assert few.auc is None and "needs" in few.why
    # Success saturated (every vector 1.0): the gain is the outcome instead.
    sat = frame.assign(transfer_success=1.0, logprob_gain=frame["final_norm"] * 2)
    by_gain = P.cross_validated_auc(sat)
    assert by_gain.outcome == "logprob_gain" and by_gain.auc is not None and by_gain.auc > 0.85


def test_logistic_fit_recovers_the_direction_of_the_weights() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3))
    p = 1 / (1 + np.exp(-(0.5 + x @ np.array([2.0, -1.0, 0.0]))))
    y = (rng.uniform(size=400) < p).astype(int)
    w = P.fit_logistic(x, y, l2=1e-3)
    assert w[1] > 1.2 and w[2] < -0.6 and abs(w[3]) < 0.4 and 0.1 < w[0] < 1.0


def test_early_drop() -> None:
    assert P.early_drop([10.0, 5.0, 4.0, 2.0, 0.0]) == pytest.approx((10 - 4) / 10)
    assert np.isnan(P.early_drop([1.0, 1.0, 1.0])) and np.isnan(P.early_drop([2.0, 1.0]))


def test_the_reports_correlations_equal_a_direct_computation(tmp_path: Path) -> None:
    b = build_study(tmp_path / "store")
    res = build_report(b.root, b.study, tmp_path / "out")
    data = load_report_data(open_study(b.root, b.study), str(b.root))
    corr = P.correlations(P.signals(open_study(b.root, b.study), data)).set_index("signal")
    v = direct_vectors(b.root, b.study)
    v = v[v["loss_kind"] != "caa"]
    for name in ("final_loss", "final_norm", "layer"):
        want = v[[name, "success"]].corr(method="spearman").iloc[0, 1]
        assert corr.loc[name, "spearman"] == pytest.approx(want), name
        want = v[[name, "gain"]].corr(method="spearman").iloc[0, 1]
        assert corr.loc[name, "spearman_gain"] == pytest.approx(want), name
        assert corr.loc[name, "n_vectors"] == len(v)
    assert np.isnan(corr.loc["shots", "spearman"])  # every vector is one-shot here
    # The study has a CAA vector at layer 2 only: cos_caa is defined there alone.
    assert corr.loc["cos_caa", "n_vectors"] == int((v["layer"] == 2).sum())
    # cos_others: the mean cosine to the other vectors at the same layer, pair by pair.
    sig = P.signals(open_study(b.root, b.study), data).set_index("vector_id")
    raw = raw_table(b.root, "vectors", b.study)
    raw = raw[raw["vector_id"].isin(v["vector_id"])]
    unit = {r.vector_id: np.asarray(r.vector) / np.linalg.norm(r.vector) for r in raw.itertuples()}
    layer = dict(zip(raw["vector_id"], raw["layer"], strict=True))
    for vid in list(unit)[:6]:
        peers = [unit[p] @ unit[vid] for p in unit if p != vid and layer[p] == layer[vid]]
        assert sig.loc[vid, "cos_others"] == pytest.approx(np.mean(peers), abs=1e-6)
    # early_drop, read from the flat loss-history column, is early_drop of each history.
    for r in raw.itertuples():
        want = P.early_drop(list(r.loss_history))
        got = sig.loc[r.vector_id, "early_drop"]
        assert (np.isnan(got) and np.isnan(want)) or got == pytest.approx(want, abs=1e-12)
    page = res.html.read_text(encoding="utf-8")
    assert "What predicts transfer" in page and "ROC-AUC" in page
