"""The read commands (``status``, ``best``, ``report``, ``compact``, ``export``)
on bad input: a misspelled study or root, counts that are not positive, ids the
study does not have, vectors that cannot be exported, an ``--out`` that is a
file. Each is one paragraph, exit 2, and writes nothing; ``export`` takes its
ids in the order docs/cli.md shows them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_checks import assert_one_paragraph
from store.factories import make_context, make_trial, write_study

from orchestrator.cli import main
from orchestrator.store import StoreWriter, save_study_config, vector_id

STUDY = "study-a"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A study with add vectors at layers 2-4, one affine vector per trial, and a
    trial at layer 1 (which llama.cpp cannot take)."""
    root = tmp_path / "store"
    ctx = make_context(STUDY)
    trials = [make_trial(ctx, n) for n in range(3)] + [make_trial(ctx, 3, layer=1)]
    write_study(StoreWriter(str(root), ctx), trials)
    save_study_config(str(root), STUDY, {"name": STUDY, "n_trials": 4})
    return root


def snapshot(root: Path) -> set[tuple[str, int]]:
    return {(str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*")}


def cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


READS = [
    ["status"],
    ["best"],
    ["report", "--out", "{tmp}/report"],
    ["compact"],
    ["export", "--best", "1", "--out", "{tmp}/out"],
]


@pytest.mark.parametrize("command", READS, ids=[c[0] for c in READS])
def test_a_misspelled_study_names_the_studies_there(
    tmp_path: Path, capsys: pytest.CaptureFixture, store: Path, command: list[str]
) -> None:
    before = snapshot(store)
    args = [a.format(tmp=tmp_path) for a in command]
    code, out, err = cli(capsys, args[0], "study-b", "--root", str(store), *args[1:])
    assert code == 2, (out, err)
    assert_one_paragraph(err, "no study 'study-b' under", "the studies there are: study-a")
    assert out == ""
    assert snapshot(store) == before
    assert not (tmp_path / "report").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", READS, ids=[c[0] for c in READS])
def test_a_misspelled_root_is_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture, command: list[str]
) -> None:
    root = tmp_path / "nowhere"
    args = [a.format(tmp=tmp_path) for a in command]
    code, _, err = cli(capsys, args[0], STUDY, "--root", str(root), *args[1:])
    assert code == 2
    assert_one_paragraph(err, f"no study '{STUDY}' under", "folder does not exist")
    assert not root.exists()
    assert not (tmp_path / "report").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["best", STUDY, "--top", "-1"],
        ["best", STUDY, "--top", "0"],
        ["status", STUDY, "--last", "-3"],
        ["report", STUDY, "--top", "0"],
        ["export", STUDY, "--best", "-2", "--out", "x"],
        ["status", STUDY, "--last", "many"],
    ],
    ids=lambda a: " ".join(a[2:4]),
)
def test_counts_must_be_positive(
    tmp_path: Path, capsys: pytest.CaptureFixture, store: Path, argv: list[str]
) -> None:
    before = snapshot(store)
    code, out, err = cli(capsys, *argv[:2], "--root", str(store), *argv[2:])
    assert code == 2
    assert_one_paragraph(err, argv[2])
    assert "at least 1" in err or "whole number" in err
    assert snapshot(store) == before


def _ids(root: Path) -> dict[str, str]:
    """vector id -> its kind: add, affine or low (an add vector at layer 1)."""
    from orchestrator.store import open_study

    frame = open_study(str(root), STUDY).joined_frame()
    out = {}
    for row in frame.itertuples():
        out[row.vector_id] = "low" if row.layer == 1 else str(row.intervention)
    return out


def test_export_takes_ids_after_the_options_in_the_readme_order(
    tmp_path: Path, capsys: pytest.CaptureFixture, store: Path
) -> None:
    add = [v for v, kind in _ids(store).items() if kind == "add"]
    out = tmp_path / "out"
    code, stdout, err = cli(
        capsys, "export", STUDY, "--root", str(store), add[0], add[1], "--out", str(out)
    )
    assert code == 0, err
    from safetensors.numpy import load_file

    (path,) = out.glob("*.safetensors")
    assert sorted(load_file(str(path))) == sorted(add[:2])
    assert str(path) in stdout


@pytest.mark.parametrize("why", ["unknown id", "affine to gguf", "layer 1 to gguf"])
def test_export_refuses_before_writing_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture, store: Path, why: str
) -> None:
    ids = _ids(store)
    add = next(v for v, k in ids.items() if k == "add")
    bad = {
        "unknown id": ("0123456789abcdef", "safetensors", "has no vector with this id"),
        "affine to gguf": (
            next(v for v, k in ids.items() if k == "affine"),
            "gguf",
            "'affine' intervention",
        ),
        "layer 1 to gguf": (next(v for v, k in ids.items() if k == "low"), "gguf", "layer 1"),
    }[why]
    out = tmp_path / "out"
    code, _, err = cli(
        capsys, "export", STUDY, add, bad[0], "--root", str(store), "--format", bad[1],
        "--out", str(out),
    )  # fmt: skip
    assert code == 2
    assert_one_paragraph(err, bad[0], bad[2])
    assert not out.exists()


def test_export_to_an_out_that_is_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture, store: Path
) -> None:
    add = next(v for v, k in _ids(store).items() if k == "add")
    out = tmp_path / "taken"
    out.write_text("not a folder")
    for fmt in ("safetensors", "gguf"):
        code, _, err = cli(
            capsys, "export", STUDY, add, "--root", str(store), "--format", fmt, "--out", str(out)
        )
        assert code == 2
        assert_one_paragraph(err, "is a file")
        assert out.read_text() == "not a folder"


def test_export_best_skips_and_names_vectors_gguf_cannot_take(
    tmp_path: Path, capsys: pytest.CaptureFixture, store: Path
) -> None:
    from orchestrator.ranking import rank_vectors
    from orchestrator.store import open_study

    # The order is the ranking's (tested on its own in test_ranking); this
    # test is about what --best skips along it.
    ranked = list(rank_vectors(open_study(str(store), STUDY))["vector_id"])
    kinds = _ids(store)
    n = len([v for v in ranked if kinds[v] == "add"])
    out = tmp_path / "gguf"
    code, stdout, err = cli(
        capsys, "export", STUDY, "--root", str(store), "--best", str(n), "--format", "gguf",
        "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    written = sorted(p.stem for p in out.glob("*.gguf"))
    assert written == sorted(v for v in ranked if kinds[v] == "add")
    skipped = [
        line.split()[1].rstrip(":") for line in err.splitlines() if line.startswith("skipped")
    ]
    last = ranked.index(max(written, key=ranked.index))
    assert skipped == [v for v in ranked[:last] if kinds[v] != "add"]
    assert skipped  # the fixture ranks some non-exportable vector above an exportable one
    assert vector_id(STUDY, 3, "train-0") not in written  # layer 1: no llama.cpp slot
