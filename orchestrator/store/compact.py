"""Merge per-trial files into larger files without changing any query result.

The design keeps the tables plain Parquet (no manifest a DuckDB or polars
reader would have to know about), and keeps "one copy of every trial" true:

1. ``compact`` writes a marker ``_studies/<study>/compacted`` before its first
   compacted file, then, per table, merges runs of ``trial-N.parquet`` files
   into ``compact-<lo>-<hi>-<tag>.parquet``. The footer lists the exact trial
   numbers inside (``steer_sweep.trials``). Only after the merged object is
   written are the per-trial objects deleted.
2. A later rewrite of trial N (a retried or resumed trial) first removes N's
   rows from any compacted file that holds them (rewriting that file, or
   deleting it when nothing is left), then writes ``trial-N.parquet``. Writers
   check the marker once per trial, so studies never compacted pay one stat.
3. If a per-trial file and a compacted file both hold trial N (``compact``
   died between writing the merged file and deleting the inputs), the next
   ``compact`` or rewrite of N drops N from the compacted file: the per-trial
   copy is never older than the compacted one.

Run ``compact`` when no sweep is writing to the study. While it runs, a
concurrent reader may briefly see the trials being merged twice (between
steps 1's write and delete); a crash there is repaired by running it again.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.store import schemas as S
from orchestrator.store.parquet_io import (
    put_with_retries,
    read_schema,
    read_table,
    to_parquet_bytes,
)
from orchestrator.store.retry import RetryPolicy, RetryStats, with_retries
from orchestrator.store.roots import (
    ObjectInfo,
    StoreRoot,
    delete_objects,
    list_objects,
    resolve_root,
)

DEFAULT_TARGET_BYTES = 128 * 1024 * 1024


@dataclass
class CompactReport:
    """Per table: how many per-trial files were merged into how many files."""

    merged_files: dict[str, int] = field(default_factory=dict)
    written_files: dict[str, int] = field(default_factory=dict)
    repaired_files: int = 0


def compact(
    root: str | os.PathLike[str] | StoreRoot,
    study: str,
    *,
    target_bytes: int = DEFAULT_TARGET_BYTES,
    endpoint_url: str | None = None,
    retry: RetryPolicy | None = None,
) -> CompactReport:
    """Merge the per-trial files of ``study`` into files of about
    ``target_bytes`` (input bytes) each. See the module docstring for why
    this never duplicates or loses a trial."""
    r = resolve_root(root, endpoint_url=endpoint_url)
    S.check_study_name(study)
    policy, stats = retry or RetryPolicy(), RetryStats()
    report = CompactReport()
    marker = S.compacted_marker_key(study)
    put_with_retries(r, marker, b"compaction has run on this study\n", policy, stats)
    for table in S.TRIAL_TABLES:
        folder = S.study_dir(table, study)
        per_trial = with_retries(
            partial(list_objects, r, folder, "trial-"),
            what=f"list {r.display(folder)}",
            policy=policy,
        )
        if not per_trial:
            continue
        numbers = {n for o in per_trial if (n := S.parse_trial_file(o.key)) is not None}
        report.repaired_files += drop_trials_from_compacted(r, table, study, numbers, policy, stats)
        chunks = _chunks(per_trial, target_bytes)
        for chunk in chunks:
            _merge(r, table, study, chunk, policy, stats)
        report.merged_files[table] = len(per_trial)
        report.written_files[table] = len(chunks)
    return report


def _chunks(objs: list[ObjectInfo], target_bytes: int) -> list[list[ObjectInfo]]:
    objs = sorted(objs, key=lambda o: S.parse_trial_file(o.key) or 0)
    out: list[list[ObjectInfo]] = [[]]
    size = 0
    for o in objs:
        if out[-1] and size + o.size > target_bytes:
            out.append([])
            size = 0
        out[-1].append(o)
        size += o.size
    return out


def _merge(
    r: StoreRoot,
    table: str,
    study: str,
    chunk: list[ObjectInfo],
    policy: RetryPolicy,
    stats: RetryStats,
) -> None:
    parts = [
        with_retries(partial(read_table, r, o.key), what=f"read {r.display(o.key)}", policy=policy)
        for o in chunk
    ]
    trials = sorted(n for o in chunk if (n := S.parse_trial_file(o.key)) is not None)
    meta = S.read_metadata(parts[0].schema)
    # Params can differ between trials (conditional search spaces): permissive
    # promotion adds the missing columns as nulls and widens int to float.
    merged = pa.concat_tables(
        [p.replace_schema_metadata(None) for p in parts], promote_options="permissive"
    )
    if table == "vectors":
        # Grouping rows by layer lets row-group statistics skip most of the
        # file when a reader asks for one layer (Study.layer_matrix).
        merged = merged.sort_by([("layer", "ascending"), ("trial", "ascending")])
    meta["trials"] = json.dumps(trials)
    key = S.compact_key(table, study, trials[0], trials[-1], uuid.uuid4().hex[:8])
    data = to_parquet_bytes(
        merged, {(S.META_PREFIX + k).encode(): v.encode() for k, v in meta.items()}
    )
    put_with_retries(r, key, data, policy, stats)
    with_retries(
        lambda: delete_objects(r, [o.key for o in chunk]),
        what=f"delete merged inputs under {r.display(S.study_dir(table, study))}",
        policy=policy,
        stats=stats,
    )


def drop_trials_from_compacted(
    r: StoreRoot,
    table: str,
    study: str,
    trials: set[int],
    policy: RetryPolicy,
    stats: RetryStats,
) -> int:
    """Remove the rows of ``trials`` from the compacted files of one table.

    Each affected file is replaced atomically under the same key (or deleted
    when no rows remain). Returns the number of files changed.
    """
    if not trials:
        return 0
    folder = S.study_dir(table, study)
    compacted = with_retries(
        lambda: list_objects(r, folder, "compact-"), what=f"list {r.display(folder)}", policy=policy
    )
    changed = 0
    for o in compacted:
        span = S.parse_compact_file(o.key)
        if span is None or not any(span[0] <= t <= span[1] for t in trials):
            continue  # the key's range alone rules this file out: no read needed
        schema = with_retries(
            partial(read_schema, r, o.key), what=f"read {r.display(o.key)}", policy=policy
        )
        meta = S.read_metadata(schema)
        inside = set(json.loads(meta.get("trials", "[]")))
        hit = inside & trials
        if not hit:
            continue
        old = with_retries(
            partial(read_table, r, o.key), what=f"read {r.display(o.key)}", policy=policy
        )
        keep = old.filter(pc.invert(pc.is_in(old["trial"], pa.array(sorted(hit), pa.int64()))))
        if keep.num_rows == 0:
            with_retries(
                partial(delete_objects, r, [o.key]),
                what=f"delete {r.display(o.key)}",
                policy=policy,
                stats=stats,
            )
        else:
            meta["trials"] = json.dumps(sorted(inside - hit))
            raw = {(S.META_PREFIX + k).encode(): v.encode() for k, v in meta.items()}
            data = to_parquet_bytes(keep.replace_schema_metadata(None), raw)
            put_with_retries(r, o.key, data, policy, stats)
        changed += 1
    return changed
