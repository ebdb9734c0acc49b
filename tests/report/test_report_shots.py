"""The transfer-vs-K figure and its table, against a direct pandas
computation from the Parquet files of a study with K-shot vectors."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd

from orchestrator.report import SIZES_PX, build_report, load_report_data
from orchestrator.report.data import scaling_frame
from orchestrator.store import open_study
from report.conftest import build_study
from report.direct import direct_vectors


def test_transfer_vs_k_equals_a_direct_computation(tmp_path: Path) -> None:
    b = build_study(tmp_path / "store", shots=True)
    res = build_report(b.root, b.study, tmp_path / "out")
    v = direct_vectors(b.root, b.study)
    v = v[v["loss_kind"] != "caa"]
    assert sorted(v["shots"].unique()) == [1, 2, 3]
    g, gain = v.groupby(["layer", "shots"])["success"], v.groupby(["layer", "shots"])["gain"]
    want = pd.DataFrame(
        {
            "n_vectors": g.size(),
            "median": g.median(),
            "q25": g.quantile(0.25),
            "q75": g.quantile(0.75),
            "gain_median": gain.median(),
            "gain_q25": gain.quantile(0.25),
            "gain_q75": gain.quantile(0.75),
        }
    ).reset_index()
    data = load_report_data(open_study(b.root, b.study), str(b.root))
    pd.testing.assert_frame_equal(scaling_frame(data.one_shot), want, check_dtype=False)
    # The figure is drawn at its size, the page shows it with its table, and
    # summary.parquet carries K.
    h, w = mpimg.imread(res.figures["transfer_vs_shots"]).shape[:2]
    assert (w, h) == SIZES_PX["transfer_vs_shots"]
    page = res.html.read_text(encoding="utf-8")
    assert 'src="figures/transfer_vs_shots.png"' in page
    assert sorted(pd.read_parquet(res.summary)["shots"].unique()) == [1, 2, 3]
