"""The result store on a local folder (``file://`` and plain paths)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from orchestrator.store import (
    StoreConfigError,
    StoreWriter,
    TrialRecord,
    check_store,
    cleanup,
    open_study,
    resolve_root,
)

from .factories import (
    D_MODEL,
    check_round_trip,
    make_context,
    make_examples,
    make_trial,
    standard_trials,
    write_study,
)


def test_round_trip_every_table_file_uri(tmp_path: Path) -> None:
    ctx = make_context()
    trials = standard_trials(ctx)
    root = f"file://{tmp_path}/store"
    check_store(root)
    write_study(StoreWriter(root, ctx), trials)
    check_round_trip(open_study(root, ctx.study), ctx, trials)
    # A plain path names the same root.
    check_round_trip(open_study(tmp_path / "store", ctx.study), ctx, trials)


def test_layout_is_hive_partitioned_one_object_per_table_per_trial(tmp_path: Path) -> None:
    ctx = make_context()
    w = StoreWriter(tmp_path, ctx)
    report = w.write_trial(*make_trial(ctx, 7).args())
    assert report.keys == (
        "transfer/study=study-a/trial-00000007.parquet",
        "vectors/study=study-a/trial-00000007.parquet",
        "trials/study=study-a/trial-00000007.parquet",  # the commit marker, last
    )
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == sorted(report.keys)  # no temp files left behind
    # A file found alone explains itself.
    meta = pq.read_schema(tmp_path / report.keys[1]).metadata
    assert meta[b"steer_sweep.study"] == b"study-a"
    assert meta[b"steer_sweep.trials"] == b"[7]"


def test_retried_trial_write_leaves_exactly_one_copy(tmp_path: Path) -> None:
    ctx = make_context()
    w = StoreWriter(tmp_path, ctx)
    first = make_trial(ctx, 4, seed=1)
    w.write_trial(*first.args())
    w.write_trial(*make_trial(ctx, 5).args())
    retry = make_trial(ctx, 4, seed=2)  # same trial, new numbers (a rerun)
    w.write_trial(*retry.args())
    st = open_study(tmp_path, ctx.study)
    trials = st.trials.to_table().to_pylist()
    assert sorted(r["trial"] for r in trials) == [4, 5]
    assert [r["value"] for r in trials if r["trial"] == 4] == list(retry.trial.values or [])
    vt = st.vectors.to_table()
    assert vt.num_rows == 6
    ids, mat = st.layer_matrix(retry.vectors[0].result.layers[0])
    got = dict(zip(ids, mat, strict=True))
    for v in retry.vectors:
        vid = w.vector_id(4, v.example_id)
        if v.result.layers[0] == retry.vectors[0].result.layers[0]:
            assert np.array_equal(got[vid], v.result.vector)
    assert st.transfer.count_rows() == 2 * len(retry.transfer)


def test_layer_matrix_and_joined_frame(tmp_path: Path) -> None:
    ctx = make_context()
    trials = [make_trial(ctx, n, layer=3 if n < 2 else 9) for n in range(3)]
    write_study(StoreWriter(tmp_path, ctx), trials)
    st = open_study(tmp_path, ctx.study)
    ids, mat = st.layer_matrix(9)
    assert mat.shape == (3, D_MODEL) and mat.dtype == np.float32
    want = {vid: v.result.vector for vid, v in trials[2].ids(ctx.study)}
    for i, row in zip(ids, mat, strict=True):
        assert np.array_equal(row, want[i])
    assert st.layer_matrix(42)[1].shape == (0, D_MODEL)

    frame = st.joined_frame()
    assert len(frame) == 9 and frame["vector_id"].is_unique
    row = frame.set_index("vector_id").loc[trials[0].ids(ctx.study)[0][0]]
    rows = [x for x in trials[0].transfer if x.vector_id == row.name]
    assert row["transfer_n"] == len(rows)
    assert row["transfer_success"] == pytest.approx(np.mean([x.success for x in rows]))
    lp = [x for x in rows if x.metric == "target_logprob"]
    assert row["target_logprob_steered"] == pytest.approx(np.mean([x.steered for x in lp]))
    assert row["target_logprob_unsteered"] == pytest.approx(np.mean([x.unsteered for x in lp]))
    assert row["trial_state"] == "COMPLETE" and row["param_layer"] == 3
    assert [row["trial_value"]] == trials[0].trial.values
    with_vecs = st.joined_frame(include_vectors=True).set_index("vector_id")
    for vid, v in [x for t in trials for x in t.ids(ctx.study)]:
        assert np.array_equal(with_vecs.loc[vid, "vector"], v.result.vector)


def test_empty_study_reads_as_empty_tables(tmp_path: Path) -> None:
    from orchestrator.store import NoSuchStudy, save_study_config

    with pytest.raises(NoSuchStudy, match="no study 'nothing-here'"):  # a typo is not empty
        open_study(tmp_path, "nothing-here")
    save_study_config(tmp_path, "nothing-here", {"name": "nothing-here"})  # begun, no trial yet
    st = open_study(tmp_path, "nothing-here")
    assert st.completed_trials() == []
    assert st.vectors.count_rows() == 0
    assert st.joined_frame().empty


def test_bad_records_raise_before_anything_is_written(tmp_path: Path) -> None:
    ctx = make_context()
    w = StoreWriter(tmp_path, ctx)
    bad = make_trial(ctx, 1)
    bad.vectors[0].result.vector = np.zeros(D_MODEL + 1, np.float32)
    with pytest.raises(ValueError, match="shape"):
        w.write_trial(*bad.args())
    with pytest.raises(ValueError, match="COMPLETE trial needs"):
        TrialRecord(number=1, state="COMPLETE", params={})
    with pytest.raises(ValueError, match="state"):
        TrialRecord(number=1, state="RUNNING", params={})
    stray = make_trial(ctx, 2)
    with pytest.raises(ValueError, match="did not produce"):
        w.write_trial(stray.trial, stray.vectors[:1], stray.transfer)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_check_store_local(tmp_path: Path) -> None:
    res = check_store(tmp_path / "new" / "root")
    assert res.uri == f"file://{tmp_path}/new/root"
    assert not (tmp_path / "new").exists()  # checked, not created: run creates it
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreConfigError, match="file is a file, not a writable folder"):
        check_store(blocker / "root")
    with pytest.raises(StoreConfigError, match="scheme"):
        resolve_root("gs://bucket/x")
    with pytest.raises(StoreConfigError, match="credentials in the store URI"):
        resolve_root("s3://AKIA:secret@bucket/x")


def test_cleanup_removes_stale_temp_files(tmp_path: Path) -> None:
    ctx = make_context()
    StoreWriter(tmp_path, ctx).write_trial(*make_trial(ctx, 0).args())
    folder = tmp_path / "vectors" / "study=study-a"
    stale = folder / ".trial-00000009.parquet.tmp-deadbeef"
    stale.write_bytes(b"partial")
    assert cleanup(tmp_path, older_than_s=3600).removed_temp_files == 0
    assert cleanup(tmp_path, older_than_s=0).removed_temp_files == 1
    assert not stale.exists() and open_study(tmp_path, ctx.study).vectors.count_rows() == 3


def test_store_does_not_import_torch_or_pickle() -> None:
    code = (
        "import sys, orchestrator.store, orchestrator.store.export;"
        "bad = [m for m in ('torch', 'pickle', 'cloudpickle') if m in sys.modules];"
        "print(bad)"
    )
    # pickle may be pulled in by the standard library; torch must never be.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "torch" not in out.stdout
    src = Path(__file__).parents[2] / "orchestrator" / "store"
    for path in src.glob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "cloudpickle" not in text, path


def test_mixed_type_parameter_gives_a_clear_error(tmp_path: Path) -> None:
    from orchestrator.store import StoreError

    ctx = make_context()
    w = StoreWriter(tmp_path, ctx)
    w.write_trial(*make_trial(ctx, 0, params={"norm": 4}).args())
    w.write_trial(*make_trial(ctx, 1, params={"norm": "none"}).args())
    st = open_study(tmp_path, ctx.study)
    with pytest.raises(StoreError, match="should be all strings"):
        st.trials.to_table()
    # Resuming needs only the fixed columns, so it still works.
    assert [t.params for t in st.completed_trials()] == [{"norm": 4}, {"norm": "none"}]


def test_a_group_reads_back_as_its_trials_written_one_by_one(tmp_path: Path) -> None:
    """A group's tables are built at once over its trials (``StoreWriter._tables``):
    the rows read back equal those of the same trials written one per object,
    with a conditional parameter, an int/float parameter, a trial that keeps
    text beside ones that keep none, and a trial without vectors in one group."""
    ctx = make_context()
    trials = standard_trials(ctx)
    one, group = f"{tmp_path}/one", f"{tmp_path}/group"
    write_study(StoreWriter(one, ctx), trials)
    writer = StoreWriter(group, ctx)
    writer.write_examples(make_examples())
    writer.write_group([t.args() for t in trials], tag="g0", fresh=True)
    study = open_study(group, ctx.study)
    check_round_trip(study, ctx, trials)
    assert len(study.files("trials")) == 1
    ignore = {"code_version"}

    def rows(root: str, table: str) -> list[dict]:
        out = getattr(open_study(root, ctx.study), table).to_table().to_pylist()
        return sorted(
            ({k: v for k, v in r.items() if k not in ignore} for r in out),
            key=lambda r: json.dumps(r, sort_keys=True, default=str),
        )

    for table in ("trials", "vectors", "transfer", "generations"):
        assert rows(group, table) == rows(one, table), table
