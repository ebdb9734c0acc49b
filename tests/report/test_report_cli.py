"""``steer-sweep report`` through the real command line entry point."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from orchestrator.cli import main


def test_report_subcommand_writes_the_report(tmp_path: Path, study_factory, capsys) -> None:
    b = study_factory(tmp_path / "store", caa=False)
    out = tmp_path / "out"
    rc = main(["-q", "report", b.study, "--root", str(b.root), "--out", str(out), "--top", "4"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert f"wrote {out / 'report.html'}" in printed
    assert "caa_skyline: no CAA skyline stored" in printed
    page = (out / "report.html").read_text(encoding="utf-8")
    assert '<h2 id="top-vectors">Top 4 vectors</h2>' in page
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures and all(f'src="figures/{name}"' in page for name in figures)
    assert len(pd.read_parquet(out / "summary.parquet")) > 0


def test_embed_inlines_every_figure(tmp_path: Path, study_factory) -> None:
    b = study_factory(tmp_path / "store", caa=False)
    out = tmp_path / "out"
    assert main(["-q", "report", b.study, "--root", str(b.root), "--out", str(out), "--embed"]) == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    n_figures = len(list((out / "figures").glob("*.png")))
    assert n_figures > 0
    assert page.count('src="data:image/png;base64,') == n_figures
    assert 'src="figures/' not in page


def test_report_help_and_bad_input(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["report", "--help"])
    assert exc.value.code == 0
    assert "summary.parquet" in capsys.readouterr().out
    assert main(["report", "bad/name", "--root", str(tmp_path)]) == 2
    assert main(["report", "study-x"]) == 2  # neither --root nor --config
    assert main(["report", "study-x", "--root", str(tmp_path), "--top", "0"]) == 2
