"""The paper-style panels (§3 flip rates by group and sign, §4 judge success
by layer, §5 retraction rate and surprisal) against a direct pandas
computation from the Parquet files of a study written with the real
StoreWriter (``report.panels_store``), and their sections in the HTML."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from orchestrator.report import SIZES_PX, build_report, load_report_data
from orchestrator.report import figures as F
from orchestrator.report import panel_sections as PS
from orchestrator.report import panels as P
from orchestrator.store import open_study
from report.direct import (
    direct_flip_rates,
    direct_judge_by_layer,
    direct_retraction,
    direct_top,
    direct_vectors,
    raw_table,
)
from report.panels_store import build_panel_study

TOP = 5
FLIP_COLS = ["+harmful", "-harmful", "+benign", "-benign"]  # held-out order, + then -


class Paper:
    def __init__(self, root: Path, study: str, out: Path, top: int = TOP) -> None:
        self.root, self.study = root, study
        self.res = build_report(root, study, out, top=top)
        self.st = open_study(root, study)
        self.data = load_report_data(self.st, str(root))
        self.page = self.res.html.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def paper(tmp_path_factory: pytest.TempPathFactory) -> Paper:
    tmp = tmp_path_factory.mktemp("panels")
    return Paper(tmp / "store", build_panel_study(tmp / "store"), tmp / "out")


def _section(page: str, title: str) -> str:
    return page.split(f"<h2>{html.escape(title)}</h2>")[1].split("<h2")[0]


def _cells(section: str) -> list[list[str]]:
    """The text of every body cell of the section's first table, row by row."""
    body = section.split("<tbody>")[1].split("</tbody>")[0]
    rows = re.findall(r"<tr>(.*?)</tr>", body)
    return [
        [html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", r)]
        for r in rows
    ]


def _text(x: Any) -> str:
    if isinstance(x, float | np.floating):
        return "" if math.isnan(x) else f"{float(x):.4g}"
    return str(x)


def _flip_vectors(p: Paper) -> pd.DataFrame:
    v = direct_vectors(p.root, p.study)
    return v[v["loss_kind"] != "caa"].set_index("vector_id")


def test_flip_rates_by_group_and_sign_equal_a_direct_computation(paper: Paper) -> None:
    want = direct_flip_rates(paper.root, paper.study)
    top = direct_top(paper.root, paper.study, TOP)
    v = _flip_vectors(paper)
    assert len(want) == len(v) == 18  # the uncommitted trial's vectors are not there
    ft = P.flip_table(paper.st, paper.data, TOP)
    got = ft.frame
    assert list(got.columns) == ["rank", "vector_id", "layer", "norm_bound", "n_examples",
                                 *FLIP_COLS]  # fmt: skip
    assert list(got["vector_id"]) == [*top, P.MEDIAN_ROW]
    assert list(got["rank"].head(TOP)) == [1, 2, 3, 4, 5]
    best = got.head(TOP).set_index("vector_id")
    pd.testing.assert_frame_equal(best[FLIP_COLS], want.loc[top, FLIP_COLS], check_names=False)
    assert list(best["layer"]) == list(v.loc[top, "layer"])
    assert list(best["norm_bound"]) == list(v.loc[top, "norm_bound"])
    tr = raw_table(paper.root, "transfer", paper.study)
    flips = tr[tr["metric"].str.startswith("choice_flip:")]
    n_ex = flips.groupby("vector_id")["eval_example_id"].nunique()
    assert list(best["n_examples"]) == list(n_ex.loc[top])
    assert set(n_ex.loc[top]) == {13, 15}  # vectors with and without skipped rows are shown
    median = got.iloc[-1][FLIP_COLS].astype(float)
    pd.testing.assert_series_equal(median, want[FLIP_COLS].median(), check_names=False)
    assert ft.n_vectors == 18
    assert ft.per_group.to_dict() == {"harmful": 8, "benign": 7}
    # The rates differ by group and sign, and are not all 0 or 1.
    means = want[FLIP_COLS].mean()
    assert means["+benign"] > means["+harmful"] + 0.2 and means["-harmful"] > means["-benign"] + 0.2
    assert ((want > 0) & (want < 1)).to_numpy().mean() > 0.5


def test_flip_rates_without_groups_pool_every_example(tmp_path: Path) -> None:
    study = build_panel_study(tmp_path / "store", groups=False, judges=(), surprisal=False)
    p = Paper(tmp_path / "store", study, tmp_path / "out")
    assert raw_table(p.root, "examples", study)["example_group"].isna().all()
    ft = P.flip_table(p.st, p.data, TOP)
    want = direct_flip_rates(p.root, study)
    assert list(want.columns) == ["+ungrouped", "-ungrouped"]
    best = ft.frame.head(TOP).set_index("vector_id")[list(want.columns)]
    top = direct_top(p.root, study, TOP)
    pd.testing.assert_frame_equal(best, want.loc[top], check_names=False)
    assert ft.per_group.to_dict() == {"ungrouped": 15}
    assert "No held-out example has a group" in _section(p.page, PS.FLIP_TITLE)


def test_judge_success_by_layer_equals_a_direct_computation(paper: Paper) -> None:
    want = direct_judge_by_layer(paper.root, paper.study)
    got = P.judge_by_layer(paper.st, paper.data)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    assert set(got["metric"]) == {"judge:lacks_all", "judge:contains_any"}
    assert list(got["n_vectors"]) == [6] * 6
    # best > median > unsteered differ per layer for lacks_all, and the
    # unsteered rate depends on which examples the vectors saw
    fig = F.attack_success(got)
    assert not isinstance(fig, str)
    assert all(ax.get_ylabel() for ax in fig.axes) and fig.axes[-1].get_xlabel() == "layer"
    lacks = got[got["metric"] == "judge:lacks_all"]
    assert (lacks["best"] > lacks["median"]).all()
    assert lacks["unsteered"].nunique() > 1 and lacks["median"].nunique() == 3


def test_retraction_and_surprisal_equal_a_direct_computation(paper: Paper) -> None:
    want = direct_retraction(paper.root, paper.study)
    got = P.retraction_table(paper.st, paper.data)
    cols = ["loss_kind", "layer", "n_vectors", "judge:contains_any steered",
            "judge:contains_any unsteered", "judge:lacks_all steered",
            "judge:lacks_all unsteered", "surprisal steered", "surprisal unsteered"]  # fmt: skip
    assert list(got.columns) == cols
    pd.testing.assert_frame_equal(got, want[cols], check_dtype=False)
    assert "caa" in set(got["loss_kind"]) and int(got["n_vectors"].sum()) == 19
    assert got["surprisal steered"].notna().all()  # the NaN score is skipped, not spread


def test_the_page_shows_each_panel_with_its_numbers(paper: Paper) -> None:
    flips = _cells(_section(paper.page, PS.FLIP_TITLE))
    want = direct_flip_rates(paper.root, paper.study)
    top = direct_top(paper.root, paper.study, TOP)
    assert [r[1] for r in flips] == [*top, "median"]
    for row, vid in zip(flips, top, strict=False):
        assert row[5:] == [_text(x) for x in want.loc[vid, FLIP_COLS]]
    assert flips[-1][5:] == [_text(x) for x in want[FLIP_COLS].median()]
    head = _section(paper.page, PS.FLIP_TITLE).split("<tbody>")[0]
    assert all(f"<th>{c}</th>" in head for c in FLIP_COLS)

    judge = _section(paper.page, PS.JUDGE_TITLE)
    assert 'src="figures/attack_success.png"' in judge
    expect = direct_judge_by_layer(paper.root, paper.study)
    assert _cells(judge) == [[_text(x) for x in r] for r in expect.itertuples(index=False)]
    h, w = mpimg.imread(paper.res.figures["attack_success"]).shape[:2]
    assert (w, h) == SIZES_PX["attack_success"]

    retraction = _cells(_section(paper.page, PS.RETRACTION_TITLE))
    expect = direct_retraction(paper.root, paper.study)
    cols = ["loss_kind", "layer", "n_vectors", "judge:contains_any steered",
            "judge:contains_any unsteered", "judge:lacks_all steered",
            "judge:lacks_all unsteered", "surprisal steered", "surprisal unsteered"]  # fmt: skip
    assert retraction == [[_text(x) for x in r] for r in expect[cols].itertuples(index=False)]
    assert "surprisal steered (hartleys per token)" in _section(paper.page, PS.RETRACTION_TITLE)


def test_panels_without_their_metrics_say_not_measured(tmp_path: Path) -> None:
    study = build_panel_study(tmp_path / "store", flips=False, judges=(), surprisal=False)
    p = Paper(tmp_path / "store", study, tmp_path / "out")
    assert P.flip_table(p.st, p.data, TOP).frame.empty
    assert P.judge_by_layer(p.st, p.data).empty and P.retraction_table(p.st, p.data).empty
    for title in (PS.FLIP_TITLE, PS.JUDGE_TITLE, PS.RETRACTION_TITLE):
        section = _section(p.page, title)
        assert '<p class="missing">not measured in this study' in section
        assert "<table>" not in section
    assert "attack_success" in p.res.missing and "attack_success" not in p.res.figures


@pytest.mark.parametrize(
    ("judges", "surprisal", "shown"),
    [
        (("contains_any",), False, False),  # no retraction judge, no surprisal
        (("lacks_all",), False, True),
        ((), True, True),
        (("llm",), True, True),
    ],
)
def test_retraction_panel_needs_surprisal_or_the_lacks_all_judge(
    tmp_path: Path, judges: tuple[str, ...], surprisal: bool, shown: bool
) -> None:
    root = tmp_path / "store"
    study = build_panel_study(root, flips=False, judges=judges, surprisal=surprisal)
    p = Paper(root, study, tmp_path / "out")
    got = P.retraction_table(p.st, p.data)
    section = _section(p.page, PS.RETRACTION_TITLE)
    assert got.empty is not shown
    assert ("not measured in this study" in section) is not shown
    if shown:
        want = direct_retraction(root, study)
        pd.testing.assert_frame_equal(got, want[list(got.columns)], check_dtype=False)
        assert [c.endswith(" steered") for c in got.columns].count(True) == len(judges) + surprisal
    # the judge panel follows the judges alone
    assert ("attack_success" in p.res.figures) is bool(judges)


def test_a_study_with_only_a_generic_judge_gets_the_judge_panel_only(
    tmp_path: Path, study_factory
) -> None:
    b = study_factory(tmp_path / "store")  # judge:refusal rows, no flips, no surprisal
    res = build_report(b.root, b.study, tmp_path / "out")
    page = res.html.read_text(encoding="utf-8")
    assert "not measured in this study" in _section(page, PS.FLIP_TITLE)
    assert "not measured in this study" in _section(page, PS.RETRACTION_TITLE)
    judge = _cells(_section(page, PS.JUDGE_TITLE))
    assert {r[0] for r in judge} == {"judge:refusal"} and len(judge) == 3
