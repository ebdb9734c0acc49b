"""Group commits (``store.group_trials``): several finished trials per object
per table, through the real driver and store with fake workers; a run killed
between a group's table writes and its ``trials`` object resumes to exactly
one copy of every trial in every table, also after ``compact``, for
``open_study`` and for DuckDB over the folder alike."""

from __future__ import annotations

from collections import Counter
from typing import Any

import duckdb
import pandas as pd
import pytest
from sweep_helpers import FakeWorker, audit, tiny_config

import orchestrator.store.writer as writer_module
from orchestrator.run.pools import local_batch_pool
from orchestrator.run.preflight import prepare
from orchestrator.run.runner import run_study
from orchestrator.store import compact, open_study

KEYS = {
    "trials": ["trial"],
    "vectors": ["vector_id"],
    "transfer": ["vector_id", "eval_example_id", "metric"],
    "generations": ["vector_id", "eval_example_id"],
}


class Crash(BaseException):
    """Stands for the driver process dying: nothing catches it."""


def _cfg(root: str, n: int, **kw: Any):
    return tiny_config(
        root,
        name="grouped",
        n_trials=n,
        store={"root": root, "group_trials": kw.pop("group_trials", 8), "group_ms": 5000.0},
        **kw,
    )


def _run(cfg, seed: int = 0):
    plan = prepare(cfg)
    worker = FakeWorker([e.id for e in plan.transfer], seed=seed, delay=0.002)
    pool = local_batch_pool(worker, 3)
    try:
        return run_study(cfg, pool=pool, show_progress=False)
    finally:
        pool.shutdown()


def crash_on_group(monkeypatch: pytest.MonkeyPatch, n: int) -> list[str]:
    """Make the ``n``-th group's ``trials`` object never land: the run dies
    after that group's other tables were written. Returns the keys written."""
    real = writer_module.put_with_retries
    seen: list[str] = []

    def put(root, key, data, policy, stats):  # type: ignore[no-untyped-def]
        if key.startswith("trials/") and "/compact-" in key:
            if sum(k.startswith("trials/") for k in seen) == n - 1:
                raise Crash(key)
        real(root, key, data, policy, stats)
        seen.append(key)

    monkeypatch.setattr(writer_module, "put_with_retries", put)
    return seen


def exactly_once(root: str, study: str, k: int) -> dict[str, pd.DataFrame]:
    """Every row once in every table, only rows of stored trials, every
    complete trial with its ``k`` vectors; DuckDB over the folder counts the
    same rows as ``open_study``."""
    st = open_study(root, study)
    done = {t.number: t.state for t in st.completed_trials()}
    frames = {}
    for table, key in KEYS.items():
        df = st.dataset(table).to_table().to_pandas()
        dup = df.duplicated(key)
        assert not dup.any(), f"{table}: {int(dup.sum())} rows twice"
        assert set(df["trial"]) <= set(done), f"{table}: rows of trials never committed"
        frames[table] = df
    per_trial = Counter(frames["vectors"]["trial"])
    for number, state in done.items():
        if state == "COMPLETE":
            assert per_trial[number] == k, (number, per_trial[number])
    for table in ("trials", "vectors", "transfer"):
        glob = f"{root}/{table}/*/*.parquet"
        con = duckdb.connect()
        rel = con.sql(
            f"SELECT count(*) FROM read_parquet('{glob}', hive_partitioning = true, "
            f"union_by_name = true) WHERE study = '{study}'"
        )
        assert rel is not None and rel.fetchall()[0][0] == len(frames[table]), table
    return frames


def test_group_commits_write_several_trials_per_object(tmp_path) -> None:
    root = str(tmp_path / "store")
    cfg = _cfg(root, 40)
    summary = _run(cfg)
    assert summary.complete and summary.told == 40
    audit(root, cfg.name, 40, 2, states={"COMPLETE": 40})
    exactly_once(root, cfg.name, 2)
    st = open_study(root, cfg.name)
    files = st.files("trials")
    assert all("/compact-" in f for f in files)
    # 8 a group, the last one flushed at the end: 5 groups, not 40 files
    assert len(files) <= 6, files
    assert len(st.files("vectors")) == len(files)


def test_killed_between_a_groups_tables_and_its_trials_row(tmp_path, monkeypatch) -> None:
    root = str(tmp_path / "store")
    cfg = _cfg(root, 40)
    written = crash_on_group(monkeypatch, 3)
    with pytest.raises(Crash):
        _run(cfg)
    monkeypatch.undo()
    # The third group's data objects landed, its trials object did not.
    orphans = [k for k in written if "/compact-" in k and not k.startswith("trials/")]
    assert len(orphans) >= 3 * 3 - 1
    st = open_study(root, cfg.name)
    stored = {t.number for t in st.completed_trials()}
    assert len(stored) == 16  # two groups of 8
    raw = st.vectors.to_table(columns=["trial"]).column("trial").to_pylist()
    assert set(raw) - stored, "the orphan group's vectors are in the store before the resume"

    summary = _run(cfg, seed=1)
    assert summary.complete
    audit(root, cfg.name, 40, 2, states={"COMPLETE": 40})
    before = exactly_once(root, cfg.name, 2)
    compact(root, cfg.name)
    after = exactly_once(root, cfg.name, 2)
    for table, key in KEYS.items():
        a = before[table].sort_values(key).reset_index(drop=True)
        b = after[table].sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(a[sorted(a.columns)], b[sorted(b.columns)])


def _comparable(root: str, study: str) -> tuple[list, pd.DataFrame]:
    st = open_study(root, study)
    trials = [
        (t.number, t.state, t.params, t.values, t.intermediate_values, t.error)
        for t in st.completed_trials()
    ]
    frame = st.joined_frame()
    # Times differ, and so does the config's hash: the two stores have different roots.
    drop = [c for c in frame.columns if c.endswith(("_at", "duration_s", "config_hash"))]
    frame = frame.drop(columns=drop).sort_values("vector_id").reset_index(drop=True)
    return trials, frame[sorted(frame.columns)]


def test_a_resumed_group_study_equals_an_uninterrupted_one(tmp_path, monkeypatch) -> None:
    """500 trials (fixed settings, outcomes a function of the vector id):
    killed mid-study and resumed, the store reads as a run never killed."""
    fixed = {"layer": 2, "norm": 4.0, "lr": 0.1, "max_iters": 2}
    whole = _cfg(str(tmp_path / "a"), 500, search=fixed, group_trials=16)
    _run(whole)
    broken = _cfg(str(tmp_path / "b"), 500, search=fixed, group_trials=16)
    crash_on_group(monkeypatch, 12)
    with pytest.raises(Crash):
        _run(broken)
    monkeypatch.undo()
    assert 0 < len(open_study(broken.store.root, broken.name).completed_trials()) < 500
    _run(broken, seed=3)
    exactly_once(broken.store.root, broken.name, 2)
    trials_a, frame_a = _comparable(whole.store.root, whole.name)
    trials_b, frame_b = _comparable(broken.store.root, broken.name)
    assert len(trials_a) == 500
    assert trials_b == trials_a
    pd.testing.assert_frame_equal(frame_b, frame_a)


def test_a_group_is_written_after_group_ms_even_when_it_is_not_full(tmp_path) -> None:
    """Trials finishing slower than ``group_ms`` apart go out in groups of
    what has finished (the buffer never fills: group_trials > n_trials), so
    the store holds finished trials while the study runs, not only at its end."""
    from sweep_helpers import StudyThread, wait_for_trials

    root = str(tmp_path / "store")
    cfg = tiny_config(root, name="timed", n_trials=10, vectors_per_trial=1, trials_in_flight=1,
                      store={"root": root, "group_trials": 64, "group_ms": 100.0})  # fmt: skip
    plan = prepare(cfg)
    pool = local_batch_pool(FakeWorker([e.id for e in plan.transfer], delay=0.0), 1)
    run = StudyThread(cfg, pool=pool)
    # Each trial takes at least 0.3 s on the worker: longer than group_ms.
    real = FakeWorker.__call__

    def slow(self, key, assignments):
        import time

        time.sleep(0.3)
        return real(self, key, assignments)

    FakeWorker.__call__ = slow  # type: ignore[method-assign]
    try:
        run.start()
        seen = wait_for_trials(root, "timed", 3, timeout=60)
        summary = run.result(timeout=120)
    finally:
        FakeWorker.__call__ = real  # type: ignore[method-assign]
        pool.shutdown()
    assert 3 <= seen < 10 and summary.stored == 10
    audit(root, "timed", 10, 1)
    assert len(open_study(root, "timed").files("trials")) >= 3
