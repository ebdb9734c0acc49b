"""The report's generated text and per-vector sections, against stores written
with the real StoreWriter: one that keeps text (with markup in its prompts and
texts), and one of the older layout, with no generations table."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from orchestrator.report import build_report
from report.direct import direct_top, raw_table
from report.texts import MARKUP, UNJUDGED, generated_text

GEN_TITLE = "What the top 3 vectors make the model say</h2>"
GEN_HEAD = "<th>held-out example</th><th>prompt</th><th>unsteered</th><th>steered</th>"


@pytest.fixture(scope="module")
def with_text(tmp_path_factory: pytest.TempPathFactory, study_factory):
    """A study that kept its generations, and its report page."""
    tmp = tmp_path_factory.mktemp("report-text")
    b = study_factory(tmp / "store", generations=True)
    res = build_report(b.root, b.study, tmp / "out")
    return b, res.html.read_text(encoding="utf-8")


def _part(page: str, start: str, end: str) -> str:
    """The page from just after ``start`` up to the next ``end``."""
    assert start in page, start
    return page.split(start, 1)[1].split(end, 1)[0]


def _row(part: str, example: str) -> str:
    """The table row of one held-out example in ``part``."""
    rows = [r for r in part.split("<tr>") if r.startswith(f"<td>{example}</td>")]
    assert len(rows) == 1, example
    return rows[0]


def _verdict(root: Path, study: str, vid: str, example: str) -> str:
    """The judge verdict the store holds for (vector, example), as the page words it."""
    t = raw_table(root, "transfer", study)
    r = t[(t["vector_id"] == vid) & (t["eval_example_id"] == example)]
    r = r[r["metric"] == "judge:refusal"].iloc[0]
    yes = {1.0: "yes", 0.0: "no"}
    return f"refusal: unsteered {yes[r['unsteered']]}, steered {yes[r['steered']]}"


def test_generations_are_escaped_and_shown_with_judge_verdicts(with_text) -> None:
    b, page = with_text
    assert "<script" not in page  # neither a prompt's nor a text's markup got through
    assert html.escape(MARKUP) in page
    best = direct_top(b.root, b.study, 1)[0]
    part = _part(page, GEN_TITLE, "<h2").split("<h3>")[1]  # the first vector's
    assert part.startswith(f'#1 vector <a href="#vector-{best}">{best}</a>')
    for ex in ("eval-0", "eval-2"):
        row = _row(part, ex)
        texts = [html.escape(generated_text(best, ex, steered)) for steered in (False, True)]
        assert all(t in row for t in texts)
        assert row.index(texts[0]) < row.index(texts[1])  # unsteered, then steered
        assert _verdict(b.root, b.study, best, ex) in row
    assert "7 tokens, eos" in _row(part, "eval-0")
    unjudged = _row(part, UNJUDGED)
    assert "24 tokens, length (limit 24)" in unjudged
    assert "refusal:" not in unjudged  # no judge row stored, no verdict shown
    assert html.escape(generated_text(best, UNJUDGED, True)) in unjudged


def test_top_table_ids_link_to_their_vector_sections(with_text) -> None:
    b, page = with_text
    top = direct_top(b.root, b.study, 10)
    table = _part(page, '<h2 id="top-vectors">Top 10 vectors</h2>', "<h2")
    linked = re.findall(r'<td><a href="#vector-([0-9a-f]{16})">\1</a></td>', table)
    assert linked == top
    for vid in linked:
        assert page.count(f'id="vector-{vid}"') == 1
    assert len(re.findall(r'id="vector-', page)) == len(top)  # the top vectors only
    best = top[0]
    section = _part(page, f'<h3 id="vector-{best}">', "<h3")
    vec = raw_table(b.root, "vectors", b.study).set_index("vector_id").loc[best]
    facts = _part(section, "<tbody><tr>", "</tr>")
    assert f"<td class=num>{vec['layer']}</td>" in facts
    assert f"<td class=num>{vec['trial']}</td>" in facts
    assert f"<td>{vec['loss_kind']}</td>" in facts
    tr = raw_table(b.root, "transfer", b.study)
    counts = tr[tr["vector_id"] == best].groupby("metric").size()
    for metric, n in counts.items():
        assert f"<td>{metric}</td><td class=num>{n}</td>" in section
    assert html.escape(generated_text(best, "eval-0", True)) in section


def test_store_without_generations_says_it_kept_no_text(tmp_path: Path, study_factory) -> None:
    b = study_factory(tmp_path / "store")  # the older layout: no generations table
    assert not (b.root / "generations").exists()
    res = build_report(b.root, b.study, tmp_path / "out")
    page = res.html.read_text(encoding="utf-8")
    assert "This study kept no generated text" in page
    assert "evaluation.keep_generations" in page
    assert GEN_HEAD not in page  # no table of texts anywhere
    for vid in direct_top(b.root, b.study, 10):  # the per-vector sections are still there
        section = _part(page, f'<h3 id="vector-{vid}">', "<h3")
        assert "<th>metric</th><th>held-out rows</th>" in section
