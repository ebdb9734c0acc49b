"""``compact`` changes files, never query results; rewrites after it never
duplicate; and the tables stay plain Parquet for DuckDB and polars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import polars as pl
import pyarrow.parquet as pq

from orchestrator.store import StoreWriter, compact, open_study

from .conftest import S3Env
from .factories import make_context, make_trial, standard_trials, write_study


def _query(sql: str) -> list[tuple[Any, ...]]:
    rel = duckdb.sql(sql)
    assert rel is not None
    return rel.fetchall()


def _snapshot(root: Any, study: str) -> dict[str, Any]:
    """Every query result that must survive compaction, in a comparable form."""
    st = open_study(root, study)
    keys = {
        "trials": ["trial"],
        "vectors": ["vector_id"],
        "transfer": ["vector_id", "eval_example_id", "metric"],
        "generations": ["vector_id", "eval_example_id"],
        "examples": ["example_id"],
    }
    out: dict[str, Any] = {}
    for table, by in keys.items():
        df = st.dataset(table).to_table().to_pandas()
        df = df.sort_values(by).reset_index(drop=True)
        out[table] = df[sorted(df.columns)].map(_hashable).to_dict("records")
    frame = st.joined_frame(include_vectors=True).sort_values("vector_id")
    out["joined"] = frame[sorted(frame.columns)].map(_hashable).to_dict("records")
    out["completed"] = st.completed_trials()
    ids, mat = st.layer_matrix(2)
    out["layer2"] = sorted(zip(ids, map(tuple, mat), strict=True))
    return out


def _hashable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return repr(x.tolist())
    if isinstance(x, (list, dict)):
        return repr(x)
    return "nan" if isinstance(x, float) and x != x else x


def _duckdb_summary(root: Path, study: str) -> list[tuple[Any, ...]]:
    return _query(
        f"""
        SELECT v.layer, t.state, count(*) AS n, round(avg(x.success::INT), 6) AS success
        FROM read_parquet('{root}/vectors/*/*.parquet', hive_partitioning = true) v
        JOIN read_parquet('{root}/trials/*/*.parquet', hive_partitioning = true,
                          union_by_name = true) t USING (study, trial)
        JOIN read_parquet('{root}/transfer/*/*.parquet', hive_partitioning = true) x
          USING (vector_id)
        WHERE v.study = '{study}'
        GROUP BY ALL ORDER BY ALL
        """
    )


def _polars_summary(root: Path) -> pd.DataFrame:
    lf = pl.scan_parquet(f"{root}/vectors/*/*.parquet", hive_partitioning=True)
    out = (
        lf.group_by("study", "layer")
        .agg(pl.len().alias("n"), pl.col("final_loss").mean().alias("loss"))
        .sort("study", "layer")
        .collect()
    )
    return out.to_pandas()


def test_compact_keeps_every_query_result(tmp_path: Path) -> None:
    ctx = make_context()
    trials = standard_trials(ctx) + [make_trial(ctx, n, texts=True) for n in range(4, 12)]
    write_study(StoreWriter(tmp_path, ctx), trials)
    before = _snapshot(tmp_path, ctx.study)
    assert len(before["generations"]) == 9 * 3 * 2  # trials 3-11, 3 vectors, 2 examples
    duck_before, polars_before = _duckdb_summary(tmp_path, ctx.study), _polars_summary(tmp_path)
    assert duck_before and len(polars_before)

    # A small target size makes several merged files per table.
    report = compact(tmp_path, ctx.study, target_bytes=40_000)
    assert report.merged_files["vectors"] == 12 and 1 < report.written_files["vectors"] < 12
    assert report.merged_files["generations"] == 9
    st = open_study(tmp_path, ctx.study)
    assert all("compact-" in k for k in st.files("vectors"))
    assert _snapshot(tmp_path, ctx.study) == before
    assert _duckdb_summary(tmp_path, ctx.study) == duck_before
    pd.testing.assert_frame_equal(_polars_summary(tmp_path), polars_before)

    # Compacting again (nothing new) changes nothing either.
    compact(tmp_path, ctx.study)
    assert _snapshot(tmp_path, ctx.study) == before


def test_rewrite_after_compaction_does_not_duplicate(tmp_path: Path) -> None:
    ctx = make_context()
    w = StoreWriter(tmp_path, ctx)
    write_study(w, [make_trial(ctx, n) for n in range(5)])
    compact(tmp_path, ctx.study)
    redo = make_trial(ctx, 2, seed=9)
    w.write_trial(redo.trial, redo.vectors, redo.transfer)  # a resumed run redoes trial 2
    st = open_study(tmp_path, ctx.study)
    trials = st.trials.to_table(columns=["trial", "value"]).to_pylist()
    assert sorted(r["trial"] for r in trials) == [0, 1, 2, 3, 4]
    assert [r["value"] for r in trials if r["trial"] == 2] == redo.trial.values
    assert st.vectors.count_rows() == 15
    assert st.transfer.count_rows() == 5 * len(redo.transfer)
    # The compacted file no longer claims trial 2.
    for key in st.files("trials"):
        meta = pq.read_schema(tmp_path / key).metadata
        if "compact-" in key:
            assert meta[b"steer_sweep.trials"] == b"[0, 1, 3, 4]"
    # Compacting again folds the rewrite back in, still one copy each.
    before = _snapshot(tmp_path, ctx.study)
    compact(tmp_path, ctx.study)
    assert _snapshot(tmp_path, ctx.study) == before


def test_rewrite_of_only_trial_in_compacted_file_removes_that_file(tmp_path: Path) -> None:
    ctx = make_context()
    w = StoreWriter(tmp_path, ctx)
    write_study(w, [make_trial(ctx, 0)])
    compact(tmp_path, ctx.study)
    again = make_trial(ctx, 0, seed=3)
    w.write_trial(again.trial, again.vectors, again.transfer)
    st = open_study(tmp_path, ctx.study)
    assert st.files("vectors") == ["vectors/study=study-a/trial-00000000.parquet"]
    assert st.vectors.count_rows() == 3


def test_interrupted_compaction_is_repaired(tmp_path: Path) -> None:
    """``compact`` died after writing a merged file but before deleting its
    inputs: the next run leaves exactly one copy of every trial."""
    ctx = make_context()
    write_study(StoreWriter(tmp_path, ctx), [make_trial(ctx, n) for n in range(4)])
    before = _snapshot(tmp_path, ctx.study)
    saved = {p: p.read_bytes() for p in tmp_path.glob("*/study=study-a/trial-00000001.parquet")}
    compact(tmp_path, ctx.study)
    for path, data in saved.items():  # the state a crash would have left
        path.write_bytes(data)
    assert open_study(tmp_path, ctx.study).trials.count_rows() == 5  # duplicated for now
    report = compact(tmp_path, ctx.study)
    assert report.repaired_files == 3
    assert _snapshot(tmp_path, ctx.study) == before


def test_compact_on_s3_keeps_results(s3: S3Env) -> None:
    ctx = make_context()
    write_study(StoreWriter(s3.root, ctx), standard_trials(ctx))
    before = _snapshot(s3.root, ctx.study)
    compact(s3.root, ctx.study)
    keys = [o["Key"] for o in s3.client.list_objects_v2(Bucket=s3.bucket)["Contents"]]
    assert not [k for k in keys if "/trial-" in k]
    assert _snapshot(s3.root, ctx.study) == before


def test_duckdb_and_polars_read_the_store_as_plain_parquet(tmp_path: Path) -> None:
    ctx = make_context()
    other = make_context(study="study-b")
    write_study(StoreWriter(tmp_path, ctx), standard_trials(ctx))
    write_study(StoreWriter(tmp_path, other), [make_trial(other, 0)])
    # DuckDB over the folder: partition column, fixed-size vectors, params.
    rows = _query(
        f"""
        SELECT study, count(*) AS n, max(len(vector)) AS d
        FROM read_parquet('{tmp_path}/vectors/*/*.parquet', hive_partitioning = true)
        GROUP BY study ORDER BY study
        """
    )
    assert rows == [("study-a", 9, 16), ("study-b", 3, 16)]
    # DuckDB over the pyarrow dataset (works for s3:// roots too).
    con = duckdb.connect()
    con.register("trials", open_study(tmp_path, ctx.study).trials)
    states = con.sql("SELECT state, count(*) FROM trials GROUP BY 1 ORDER BY 1").fetchall()
    assert states == [("COMPLETE", 2), ("FAIL", 1), ("PRUNED", 1)]
    # polars: vectors come back as a fixed-width Array column.
    df = pl.read_parquet(f"{tmp_path}/vectors/study=study-a/*.parquet")
    assert df.schema["vector"] == pl.Array(pl.Float32, 16)
    assert df["vector"].to_numpy().shape == (9, 16)
