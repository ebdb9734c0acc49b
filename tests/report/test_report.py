"""The report against a synthetic store written with the real StoreWriter:
its numbers are recomputed here straight from the Parquet files with pandas."""

from __future__ import annotations

import html
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from orchestrator.report import SIZES_PX, build_report, load_report_data
from orchestrator.report import figures as F
from orchestrator.report.history import best_so_far, param_importances
from orchestrator.store import open_study
from report.direct import direct_top, direct_vectors, raw_table

KEYS = ["loss_kind", "norm_bound", "shots", "layer"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, study_factory):
    """One study and its report, shared by the read-only checks below."""
    tmp = tmp_path_factory.mktemp("report")
    b = study_factory(tmp / "store")
    return b, build_report(b.root, b.study, tmp / "out")


def test_summary_equals_a_direct_pandas_computation(built) -> None:
    b, res = built
    v = direct_vectors(b.root, b.study)
    assert b.uncommitted_trial not in set(v["trial"])  # the test data does have one
    tr = raw_table(b.root, "transfer", b.study)
    lp = tr[tr["metric"].str.startswith("target_logprob:")]
    own = (lp["steered"] - lp["unsteered"]).groupby(lp["vector_id"]).mean()  # the objective's
    v = v.assign(own=v["vector_id"].map(own))
    want = (
        v.groupby(KEYS, dropna=False)
        .agg(
            n_vectors=("vector_id", "size"),
            n_trials=("trial", "nunique"),
            transfer_success_mean=("success", "mean"),
            transfer_success_median=("success", "median"),
            transfer_success_q25=("success", lambda s: s.quantile(0.25)),
            transfer_success_q75=("success", lambda s: s.quantile(0.75)),
            transfer_success_max=("success", "max"),
            logprob_gain_mean=("gain", "mean"),
            final_loss_mean=("final_loss", "mean"),
            vector_objective_mean=("own", "mean"),
        )
        .reset_index()
        .sort_values(KEYS, na_position="last")
        .reset_index(drop=True)
    )
    got = pd.read_parquet(res.summary)
    assert set(got["study"]) == {b.study}
    got = got.drop(columns="study").sort_values(KEYS, na_position="last").reset_index(drop=True)
    assert list(got.columns) == list(want.columns)
    assert int(got["n_vectors"].sum()) == len(v)
    pd.testing.assert_frame_equal(got, want, check_dtype=False, check_exact=False, rtol=1e-12)


def test_every_figure_is_written_at_its_size_and_referenced(built) -> None:
    b, res = built
    # a single-objective study: every figure but the Pareto front
    assert set(res.figures) == set(SIZES_PX) - {"pareto_front", "transfer_vs_shots"}
    assert res.missing == {
        "pareto_front": "single-objective study: no Pareto front",
        "transfer_vs_shots": "every vector was trained on 1 example(s): no scaling with K to show",
    }
    page = res.html.read_text(encoding="utf-8")
    for name, path in res.figures.items():
        assert path.stat().st_size > 0
        h, w = mpimg.imread(path).shape[:2]
        assert (w, h) == SIZES_PX[name], name
        assert f'src="figures/{name}.png"' in page
    assert "single-objective study: no Pareto front" in page


def test_top_vectors_and_cosine_median_follow_the_store(built) -> None:
    b, res = built
    top = direct_top(b.root, b.study, 10)
    page = res.html.read_text(encoding="utf-8")
    table = page.split('<h2 id="top-vectors">Top 10 vectors</h2>')[1].split("<h2")[0]
    assert re.findall(r'<td><a href="#vector-([0-9a-f]{16})">\1</a></td>', table) == top
    assert f"vector <code>{top[0]}</code>" in page
    vecs = raw_table(b.root, "vectors", b.study).set_index("vector_id")
    m = np.stack([np.asarray(vecs.at[i, "vector"], np.float64) for i in top])
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    sim = m @ m.T
    layers = [int(vecs.at[i, "layer"]) for i in top]
    pairs = [(i, j) for i in range(len(top)) for j in range(i + 1, len(top))]
    same = [sim[i, j] for i, j in pairs if layers[i] == layers[j]]
    assert f"median cosine similarity within a layer: {np.median(same):.3f}" in page
    for layer in sorted(set(layers)):
        mine = [sim[i, j] for i, j in pairs if layers[i] == layers[j] == layer]
        if mine:
            assert f"layer {layer}: {np.median(mine):.3f} over {len(mine)} pair(s)" in page


def test_best_vector_rows_show_five_examples_with_prompts(built) -> None:
    b, res = built
    page = res.html.read_text(encoding="utf-8")
    section = page.split("transfer examples: steered vs unsteered</h2>")[1].split("<h2>")[0]
    shown = set(re.findall(r"<td>(eval-\d+)</td>", section))
    assert len(shown) == 5
    for ex in shown:
        assert f"Held-out request number {ex.split('-')[1]}" in section


def test_importance_ranks_the_parameter_the_objective_follows(
    tmp_path: Path, study_factory
) -> None:
    b = study_factory(tmp_path / "store", caa=False)
    data = load_report_data(open_study(b.root, b.study), str(b.root))
    imp, why = param_importances(data.trials, "maximize")
    assert why == ""
    assert set(imp) == {"layer", "norm", "lr"}
    assert imp["layer"] == max(imp.values())
    few, why_few = param_importances(data.trials.head(5), "maximize")
    assert few == {} and "at least" in why_few


def test_multi_objective_study_draws_a_pareto_front(tmp_path: Path, study_factory) -> None:
    b = study_factory(tmp_path / "store", objectives=2, caa=False)
    res = build_report(b.root, b.study, tmp_path / "out")
    assert "pareto_front" in res.figures
    assert res.missing["caa_skyline"] == "no CAA skyline stored"
    assert "no CAA skyline stored" in res.html.read_text(encoding="utf-8")


def test_best_so_far_is_the_running_extreme() -> None:
    vals = np.random.default_rng(4).normal(size=30)
    assert np.array_equal(best_so_far(vals, "maximize"), np.maximum.accumulate(vals))
    assert np.array_equal(best_so_far(vals, "minimize"), np.minimum.accumulate(vals))


def test_figures_label_both_axes(tmp_path: Path, study_factory) -> None:
    b = study_factory(tmp_path / "store", objectives=2)
    data = load_report_data(open_study(b.root, b.study), str(b.root))
    from orchestrator.report.data import summary_frame

    figs = [
        F.transfer_heatmap(summary_frame(data.vectors), data.unit),
        F.vector_success(data),
        F.optuna_history(data),
        F.pareto_front(data),
        F.caa_skyline(data),
    ]
    labels = []
    for fig in figs:
        assert not isinstance(fig, str), fig
        plots = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
        assert all(ax.get_ylabel() for ax in plots + bars), fig
        assert plots[-1].get_xlabel(), fig  # stacked panels share the bottom one's
        labels += [ax.get_ylabel() for ax in plots + bars]
    units = " ".join(labels)
    assert "(probability)" in units and "(hartleys)" in units


def test_empty_study_says_nothing_is_stored(tmp_path: Path) -> None:
    from orchestrator.store import NoSuchStudy, save_study_config

    (tmp_path / "store").mkdir()
    with pytest.raises(NoSuchStudy, match="no study 'nothing-here'"):  # a typo is not empty
        build_report(tmp_path / "store", "nothing-here", tmp_path / "out")
    save_study_config(tmp_path / "store", "nothing-here", {"name": "nothing-here"})
    res = build_report(tmp_path / "store", "nothing-here", tmp_path / "out")
    page = res.html.read_text(encoding="utf-8")
    assert html.escape("No finished trials are stored for study 'nothing-here'") in page
    assert res.figures == {}
    assert set(res.missing) == set(SIZES_PX)
    assert len(pd.read_parquet(res.summary)) == 0


def test_failed_only_study_lists_the_errors(tmp_path: Path, failed_factory) -> None:
    errors = failed_factory(tmp_path / "store")
    res = build_report(tmp_path / "store", "failing", tmp_path / "out")
    page = res.html.read_text(encoding="utf-8")
    assert f"All {len(errors)} stored trials failed" in page
    for err in errors:
        assert html.escape(err) in page
    assert res.figures == {}
    assert len(pd.read_parquet(res.summary)) == 0


def test_cosine_medians_count_same_layer_pairs_only() -> None:
    rng = np.random.default_rng(4)
    m = rng.normal(size=(7, 16))
    layers = [2, 2, 5, 2, 5, 9, 5]
    fig, within, pooled = F.cosine_similarity([str(i) for i in range(7)], m, layers)
    u = m / np.linalg.norm(m, axis=1, keepdims=True)
    sim = u @ u.T
    pairs = {
        layer: [
            sim[i, j] for i in range(7) for j in range(i + 1, 7) if layers[i] == layers[j] == layer
        ]
        for layer in (2, 5)
    }
    assert within == {k: (pytest.approx(float(np.median(p))), len(p)) for k, p in pairs.items()}
    assert pooled == pytest.approx(float(np.median(pairs[2] + pairs[5])))
    _, none, nan = F.cosine_similarity(["a", "b"], m[:2], [1, 2])
    assert none == {} and np.isnan(nan)
