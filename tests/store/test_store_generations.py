"""The ``generations`` table: stored exactly once like the other per-trial
tables, readable by every reader, and absent without harm from a store that
an earlier schema version wrote."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest

from orchestrator.store import (
    GENERATIONS_SCHEMA,
    GenerationRecord,
    StoreWriter,
    compact,
    open_study,
)

from .factories import make_context, make_trial

OLD_STORE = Path(__file__).parent / "data" / "schema_v1"
"""Written by the code at schema version 1 (before ``generations`` existed):
study ``old-study``, trials 0-2, two vectors each, d_model 8."""


def _texts(root: Path, study: str) -> dict[tuple[str, str], str]:
    rows = open_study(root, study).generations.to_table().to_pylist()
    assert len(rows) == len({(r["vector_id"], r["eval_example_id"]) for r in rows})
    return {(r["vector_id"], r["eval_example_id"]): r["steered_text"] for r in rows}


def test_a_version_1_store_opens_reads_and_takes_new_trials(tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(OLD_STORE, root)
    meta = pq.read_schema(root / "trials/study=old-study/trial-00000000.parquet").metadata
    assert meta[b"steer_sweep.schema_version"] == b"1"  # really the old layout
    st = open_study(root, "old-study")
    assert [t.number for t in st.completed_trials()] == [0, 1, 2]
    assert st.generations.count_rows() == 0
    assert st.generations.schema.equals(GENERATIONS_SCHEMA)
    frame = st.joined_frame()
    assert len(frame) == 6 and frame["transfer_n"].eq(4).all()
    assert frame["train_example_ids"].isna().all()  # a column version 1 did not have
    groups = st.examples.to_table(columns=["example_id", "example_group"])  # nor this one (v4)
    assert groups.num_rows > 0 and groups["example_group"].null_count == groups.num_rows

    # A resumed run writes new trials, with text, into the old store.
    ctx = make_context("old-study", d_model=8)
    new = make_trial(ctx, 3, k=2, n_eval=2, texts=True)
    StoreWriter(root, ctx).write_trial(*new.args())
    assert new.generations is not None
    want = {(g.vector_id, g.eval_example_id): g.steered_text for g in new.generations}
    assert _texts(root, "old-study") == want
    frame = open_study(root, "old-study").joined_frame().set_index("trial")
    assert frame.shape[0] == 8 and frame.loc[[0, 1, 2], "train_example_ids"].isna().all()
    assert [list(x) for x in frame.loc[3, "train_example_ids"]] == [["train-0"], ["train-1"]]

    # Compaction merges old and new files; every table reads the same after.
    before = {
        t: open_study(root, "old-study").dataset(t).count_rows() for t in ("vectors", "transfer")
    }
    compact(root, "old-study")
    st = open_study(root, "old-study")
    assert {t: st.dataset(t).count_rows() for t in ("vectors", "transfer")} == before
    assert _texts(root, "old-study") == want
    assert all("compact-" in k for k in st.files("generations"))


def test_generations_read_the_same_through_duckdb_and_polars(tmp_path: Path) -> None:
    ctx = make_context()
    w = StoreWriter(tmp_path, ctx)
    for n in range(3):
        w.write_trial(*make_trial(ctx, n, texts=True).args())
    want = _texts(tmp_path, ctx.study)
    rel = duckdb.sql(
        f"SELECT vector_id, eval_example_id, steered_text FROM read_parquet("
        f"'{tmp_path}/generations/*/*.parquet', hive_partitioning = true) "
        f"WHERE study = '{ctx.study}'"
    )
    assert rel is not None
    assert {(a, b): c for a, b, c in rel.fetchall()} == want
    lf = pl.scan_parquet(f"{tmp_path}/generations/*/*.parquet", hive_partitioning=True)
    got = lf.filter(pl.col("study") == ctx.study).collect().to_dicts()
    assert {(r["vector_id"], r["eval_example_id"]): r["steered_text"] for r in got} == want
    assert len(want) == 3 * 3 * 2


def test_a_rewritten_trial_replaces_its_text_and_none_writes_no_object(tmp_path: Path) -> None:
    ctx = make_context()
    w = StoreWriter(tmp_path, ctx)
    first = make_trial(ctx, 0, texts=True)
    w.write_trial(*first.args())
    compact(tmp_path, ctx.study)  # the rewrite must also reach into compacted files
    w.write_trial(first.trial, first.vectors, first.transfer, [])
    assert _texts(tmp_path, ctx.study) == {}
    w.write_trial(*make_trial(ctx, 1).args())  # generations None: no object at all
    assert not any(
        "trial-00000001" in k for k in open_study(tmp_path, ctx.study).files("generations")
    )


def test_generation_rows_must_name_the_trials_vectors(tmp_path: Path) -> None:
    ctx = make_context()
    t = make_trial(ctx, 0, texts=True)
    stray = GenerationRecord("0123456789abcdef", "eval-0", "a", "b", 1, 1, "eos", "eos", 4)
    with pytest.raises(ValueError, match="generation rows name vectors"):
        StoreWriter(tmp_path, ctx).write_trial(t.trial, t.vectors, t.transfer, [stray])
    assert not list(tmp_path.rglob("*.parquet"))  # nothing written
    with pytest.raises(ValueError, match="steered_stop"):
        GenerationRecord("v", "e", "a", "b", 1, 1, "stopped", "eos", 4)
