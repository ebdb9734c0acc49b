"""The report on a large study: what is drawn is binned or sampled, and says
so; the tables stay exact.

- A norm searched as a continuous range gives one norm bound per trial: the
  heatmap draws them in bins (log-spaced for a log range), each cell the mean
  over exactly the vectors in it, and its caption gives the edges;
  summary.parquet keeps every value.
- Past ``MAX_BARS`` vectors the per-vector figure draws evenly spaced ranks,
  the best and the worst among them, with the median over every vector.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sweep_helpers import FakeWorker, tiny_config

from orchestrator.report import build_report
from orchestrator.report import figures as F
from orchestrator.report.data import (
    NORM_BINS,
    SUMMARY_KEYS,
    heatmap_cells,
    load_report_data,
    summary_frame,
)
from orchestrator.run.pools import local_batch_pool
from orchestrator.run.preflight import prepare
from orchestrator.run.runner import run_study
from orchestrator.store import open_study


def _vectors(n_norms: int, seed: int = 0) -> pd.DataFrame:
    """Vectors of two loss kinds at 3 layers; norms log-uniform in [1, 30]
    (``n_norms`` distinct values), plus unbounded (NaN) vectors; some vectors
    without a log-probability gain (no target_logprob rows)."""
    rng = np.random.default_rng(seed)
    norms = np.exp(rng.uniform(np.log(1.0), np.log(30.0), n_norms))
    rows = []
    for i in range(600):
        rows.append(
            {
                "vector_id": f"v{i}",
                "trial": i // 3,
                "loss_kind": ["promote", "suppress"][i % 2],
                "norm_bound": float("nan") if i % 25 == 0 else float(norms[i % n_norms]),
                "shots": 1,
                "layer": int(rng.integers(0, 3)),
                "transfer_success": float(rng.uniform()),
                "logprob_gain": float("nan") if i % 7 == 0 else float(rng.normal()),
                "final_loss": float(rng.uniform(0, 3)),
                "vector_objective_0": float(rng.normal()),
            }
        )
    return pd.DataFrame(rows)


def test_few_norm_bounds_are_drawn_as_they_are() -> None:
    v = _vectors(n_norms=5)
    summary = summary_frame(v)
    cells, note = heatmap_cells(v, summary, log=True)
    assert note == ""
    pd.testing.assert_frame_equal(cells, summary)


@pytest.mark.parametrize("log", [True, False])
def test_a_continuous_norm_is_binned_and_each_cell_is_the_mean_of_its_vectors(log: bool) -> None:
    v = _vectors(n_norms=200)
    cells, note = heatmap_cells(v, summary_frame(v), log=log)
    finite = v["norm_bound"].dropna()
    lo, hi = finite.min(), finite.max()
    edges = np.geomspace(lo, hi, NORM_BINS + 1) if log else np.linspace(lo, hi, NORM_BINS + 1)
    assert ("log-spaced" if log else "evenly spaced") in note
    assert all(f"{e:.3g}" in note for e in edges), note
    # Each vector's bin, computed here from the vectors themselves.
    bins = np.clip(np.searchsorted(edges, v["norm_bound"], side="right") - 1, 0, NORM_BINS - 1)
    labels = sorted({x for x in cells["norm_bound"] if isinstance(x, str)})
    assert len(labels) == NORM_BINS
    order = [f"[{edges[i]:.3g}, {edges[i + 1]:.3g}" for i in range(NORM_BINS)]
    label_of = {i: next(x for x in labels if x.startswith(order[i])) for i in range(NORM_BINS)}
    pairs = zip(bins, v["norm_bound"], strict=True)
    v = v.assign(cell=[label_of[b] if np.isfinite(n) else n for b, n in pairs])
    for r in cells.itertuples(index=False):
        mine = v[
            (v["loss_kind"] == r.loss_kind)
            & (v["layer"] == r.layer)
            & (v["cell"].isna() if not isinstance(r.norm_bound, str) else v["cell"] == r.norm_bound)
        ]
        assert r.n_vectors == len(mine)
        assert r.transfer_success_mean == pytest.approx(mine["transfer_success"].mean(), rel=1e-12)
        assert r.logprob_gain_mean == pytest.approx(mine["logprob_gain"].mean(), rel=1e-12)
    assert int(cells["n_vectors"].sum()) == len(v)
    # The unbounded vectors keep their own row.
    assert cells["norm_bound"].isna().any()


def test_the_per_vector_figure_draws_evenly_spaced_ranks() -> None:
    assert list(F.drawn_ranks(300)) == list(range(300))
    drawn = F.drawn_ranks(10_000)
    assert len(drawn) == F.MAX_BARS and drawn[0] == 0 and drawn[-1] == 9_999
    assert np.all(np.diff(drawn) > 0)


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A study of 1,200 vectors (120 trials) whose norm and lr are searched as
    log ranges, written through the real driver and store by fake workers."""
    root = tmp_path_factory.mktemp("large") / "store"
    cfg = tiny_config(
        str(root),
        name="large",
        n_trials=120,
        vectors_per_trial=10,
        task__max_transfer=8,
        search__norm={"low": 1.0, "high": 30.0, "log": True},
        search__lr={"low": 0.01, "high": 1.0, "log": True},
        sampler={"name": "random", "seed": 0},
        store__group_trials=16,
    )
    plan = prepare(cfg)
    pool = local_batch_pool(FakeWorker([e.id for e in plan.transfer], delay=0.0), 2)
    try:
        run_study(cfg, pool=pool, show_progress=False)
    finally:
        pool.shutdown()
    return root, "large"


def test_a_large_report_bins_and_samples_what_it_draws_and_keeps_its_tables(
    large: tuple[Path, str], tmp_path: Path
) -> None:
    root, name = large
    res = build_report(root, name, tmp_path / "out")
    html = res.html.read_text()
    assert "distinct norm bounds; they are drawn in 8 log-spaced bins with edges" in html
    assert f"{F.MAX_BARS} of the 1200 vectors are drawn, evenly spaced in rank order" in html
    # The table is exact: one summary row per stored norm bound, layer, kind and K.
    study = open_study(root, name)
    data = load_report_data(study, study.root.uri)
    v = data.vectors
    summary = pd.read_parquet(res.summary)
    assert summary["norm_bound"].nunique() == v["norm_bound"].nunique() == 120
    assert int(summary["n_vectors"].sum()) == len(v) == 1200
    assert len(summary) == v.groupby(SUMMARY_KEYS, dropna=False).ngroups
    # The figure draws MAX_BARS bars per panel, the best vector first.
    fig = F.vector_success(data)
    assert not isinstance(fig, str)
    ax = fig.axes[0]
    assert len(ax.patches) == F.MAX_BARS
    first = min(ax.patches, key=lambda p: p.get_x())
    assert first.get_height() == pytest.approx(data.one_shot[data.lead.column].iloc[0])
