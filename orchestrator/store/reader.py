"""Reading a study back: plain ``pyarrow.dataset``s, a joined pandas frame,
the matrix of all vectors at one layer, and the trials an orchestrator needs
to resume.

A ``Study`` is a snapshot: its datasets list the files that existed when they
were first used. Call ``refresh()`` to see later writes.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from orchestrator.store import schemas as S
from orchestrator.store.errors import NoSuchStudy, StoreError
from orchestrator.store.roots import StoreRoot, exists, list_folders, list_objects, resolve_root
from orchestrator.store.study_config import load_study_config

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredTrial:
    """A finished trial as stored: enough to re-tell Optuna on resume
    (``optuna.trial.create_trial`` + ``study.add_trial``)."""

    number: int
    state: str
    params: dict[str, Any]
    values: list[float] | None
    intermediate_values: dict[int, float]
    error: str | None
    distributions_json: str | None
    started_at: datetime | None
    finished_at: datetime | None


class Study:
    """Read access to one study under a root. Build it with ``open_study``."""

    def __init__(self, root: StoreRoot, study: str) -> None:
        self.root = root
        self.name = S.check_study_name(study)
        self._datasets: dict[str, ds.Dataset] = {}

    # ------------------------------------------------------------ datasets

    @property
    def trials(self) -> ds.Dataset:
        return self.dataset("trials")

    @property
    def vectors(self) -> ds.Dataset:
        return self.dataset("vectors")

    @property
    def transfer(self) -> ds.Dataset:
        return self.dataset("transfer")

    @property
    def generations(self) -> ds.Dataset:
        """Steered and unsteered texts per (vector, held-out example); empty
        for a study that kept none, or one written before schema version 2."""
        return self.dataset("generations")

    @property
    def examples(self) -> ds.Dataset:
        return self.dataset("examples")

    def refresh(self) -> None:
        """Forget the file lists, so the next access sees new writes."""
        self._datasets.clear()

    def files(self, table: str) -> list[str]:
        """Object keys (relative to the root) of one table of this study."""
        objs = list_objects(self.root, S.study_dir(table, self.name))
        return [o.key for o in objs if o.key.endswith(".parquet")]

    def dataset(self, table: str) -> ds.Dataset:
        """A ``pyarrow.dataset`` over one table of this study."""
        if table not in S.TABLES:
            raise ValueError(f"unknown table {table!r}; tables are {S.TABLES}")
        if table not in self._datasets:
            self._datasets[table] = self._open(table)
        return self._datasets[table]

    def _open(self, table: str) -> ds.Dataset:
        fs = self.root.filesystem
        paths = [self.root.path(k) for k in self.files(table)]
        fmt = ds.ParquetFileFormat()
        if not paths:
            return ds.FileSystemDataset([], _empty_schema(table), fmt, fs)
        factory = ds.FileSystemDatasetFactory(fs, paths, fmt, ds.FileSystemFactoryOptions())
        # Only trials has per-study columns (param_*), which may differ between
        # files; the other tables have one schema per SCHEMA_VERSION, so reading
        # one footer is enough.
        if table == "trials":
            try:
                schema = factory.inspect(promote_options="permissive", fragments=None)
            except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
                raise StoreError(
                    f"the trials of study {self.name!r} disagree on a parameter's type ({exc}); "
                    "a categorical parameter mixing numbers and strings should be all strings"
                ) from exc
        else:
            # Columns added since (e.g. vectors.train_example_ids in version
            # 2) come from the current schema, so files of either version read
            # alike, the older ones with nulls there.
            found = factory.inspect(fragments=1)
            schema = _with_current_columns(table, found)
        return factory.finish(schema)

    # ------------------------------------------------------------ helpers

    def config(self) -> dict[str, Any] | None:
        """The stored (redacted) study config, or None."""
        return load_study_config(self.root, self.name)

    def completed_trials(self) -> list[StoredTrial]:
        """Every stored trial (COMPLETE, PRUNED or FAIL), sorted by number."""
        cols = [
            "trial",
            "state",
            "values",
            "intermediate_values",
            "params_json",
            "distributions_json",
            "error",
            "started_at",
            "finished_at",
        ]
        # The fixed columns only: resuming must work even if param_* columns
        # of different trials cannot be unified.
        paths = [self.root.path(k) for k in self.files("trials")]
        core = ds.dataset(
            paths, schema=S.trials_schema(), format="parquet", filesystem=self.root.filesystem
        )
        rows = core.to_table(columns=cols).to_pylist()
        by_number: dict[int, StoredTrial] = {}
        for row in rows:
            n = int(row["trial"])
            if n in by_number:
                log.warning(
                    "trial %d of study %s is stored twice (an interrupted compaction?); "
                    "run compact to repair",
                    n,
                    self.name,
                )
            by_number[n] = StoredTrial(
                number=n,
                state=row["state"],
                params=json.loads(row["params_json"]),
                values=row["values"],
                intermediate_values={
                    int(iv["step"]): float(iv["value"]) for iv in row["intermediate_values"] or []
                },
                error=row["error"],
                distributions_json=row["distributions_json"],
                started_at=row["started_at"],
                finished_at=row["finished_at"],
            )
        return [by_number[n] for n in sorted(by_number)]

    def layer_matrix(self, layer: int) -> tuple[list[str], np.ndarray]:
        """All vectors at ``layer``: their ids and a ``(n, d_model)`` float32 matrix."""
        t = self.vectors.to_table(
            columns=["vector_id", "vector"], filter=pc.field("layer") == layer
        )
        return t["vector_id"].to_pylist(), fixed_list_to_numpy(t["vector"])

    def joined_frame(self, *, include_vectors: bool = False) -> pd.DataFrame:
        """One row per vector: the vector's columns, its trial's state, value
        and ``param_*`` columns (prefixed ``trial_`` where names clash), and a
        transfer summary: ``transfer_n`` (rows), ``transfer_success`` (mean
        success over all rows) and, per metric M, ``M_success``,
        ``M_steered`` and ``M_unsteered`` (means).

        ``include_vectors`` adds the ``vector`` column (numpy arrays).
        """
        skip = {"loss_history", "affine_a", "affine_b", "vector"}
        vcols = [n for n in self.vectors.schema.names if n not in skip]
        vt = self.vectors.to_table(columns=vcols + (["vector"] if include_vectors else []))
        frame = vt.drop_columns(["vector"]).to_pandas() if include_vectors else vt.to_pandas()
        if include_vectors:
            # One (d_model,) float32 array per row, sharing one matrix buffer.
            frame["vector"] = list(fixed_list_to_numpy(vt["vector"]))
        tcols = [n for n in self.trials.schema.names if n.startswith(S.PARAM_PREFIX)]
        trials = self.trials.to_table(
            columns=["trial", "state", "value", "duration_s", "error", *tcols]
        ).to_pandas()
        trials = trials.rename(
            columns={
                "state": "trial_state",
                "value": "trial_value",
                "duration_s": "trial_duration_s",
                "error": "trial_error",
            }
        ).drop_duplicates("trial", keep="last")
        frame = frame.merge(trials, on="trial", how="left")
        return frame.merge(self._transfer_summary(), on="vector_id", how="left")

    def _transfer_summary(self) -> pd.DataFrame:
        import pandas as pd

        t = self.transfer.to_table(
            columns=["vector_id", "metric", "steered", "unsteered", "success"]
        )
        t = t.set_column(4, "success", pc.cast(t["success"], pa.float64()))
        agg = t.group_by("vector_id").aggregate([("success", "mean"), ("metric", "count")])
        # Select by name: the position of the key columns differs between
        # pyarrow versions.
        overall = pa.table(
            {
                "vector_id": agg["vector_id"],
                "transfer_success": agg["success_mean"],
                "transfer_n": agg["metric_count"],
            }
        ).to_pandas()
        per = t.group_by(["vector_id", "metric"]).aggregate(
            [("success", "mean"), ("steered", "mean"), ("unsteered", "mean")]
        )
        per_df = per.to_pandas()
        if per_df.empty:
            return overall
        wide = per_df.pivot(
            index="vector_id",
            columns="metric",
            values=["success_mean", "steered_mean", "unsteered_mean"],
        )
        wide.columns = [f"{metric}_{stat.removesuffix('_mean')}" for stat, metric in wide.columns]
        return pd.merge(overall, wide.reset_index(), on="vector_id", how="left")


def open_study(
    root: str | os.PathLike[str] | StoreRoot, study: str, *, endpoint_url: str | None = None
) -> Study:
    """Open ``study``, which must be in the store under ``root`` (``file://``,
    a path, or ``s3://bucket/prefix``).

    Raises:
        NoSuchStudy: the root holds nothing of ``study``; the message lists
            the studies it does hold (what the command line prints).
        StoreNameError: ``study`` is not a valid study name.
    """
    st = study_at(root, study, endpoint_url=endpoint_url)
    if exists(st.root, S.config_key(st.name)) or any(st.files(t) for t in S.TABLES):
        return st
    others = list_studies(st.root)
    where = f"no study {study!r} under {st.root.uri}"
    if others:
        shown = ", ".join(others[:20]) + (
            f" (+{len(others) - 20} more)" if len(others) > 20 else ""
        )
        raise NoSuchStudy(f"{where}; the studies there are: {shown}")
    if not st.root.is_s3 and not os.path.isdir(st.root.path("")):
        raise NoSuchStudy(f"{where}: that folder does not exist; check the store root")
    raise NoSuchStudy(f"{where}; it holds no studies at all; check the store root")


def study_at(
    root: str | os.PathLike[str] | StoreRoot, study: str, *, endpoint_url: str | None = None
) -> Study:
    """``study`` under ``root``, whether or not anything of it is stored yet
    (for a run that is about to write it); readers use :func:`open_study`."""
    return Study(resolve_root(root, endpoint_url=endpoint_url), study)


def list_studies(
    root: str | os.PathLike[str] | StoreRoot, *, endpoint_url: str | None = None
) -> list[str]:
    """The names of the studies under ``root``: those with a stored config or
    any table file."""
    r = resolve_root(root, endpoint_url=endpoint_url)
    names = set(list_folders(r, "_studies"))
    for table in S.TABLES:
        names |= {f[len("study=") :] for f in list_folders(r, table) if f.startswith("study=")}
    return sorted(names)


def fixed_list_to_numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A ``fixed_size_list<float32>[d]`` column as a ``(n, d)`` float32 matrix."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(arr) == 0:
        width = arr.type.list_size if pa.types.is_fixed_size_list(arr.type) else 0
        return np.zeros((0, width), np.float32)
    flat = arr.flatten().to_numpy(zero_copy_only=False)  # flatten respects slicing offsets
    return np.asarray(flat, np.float32).reshape(len(arr), arr.type.list_size)


def _with_current_columns(table: str, found: pa.Schema) -> pa.Schema:
    """``found`` (a file's schema) plus any column of the current schema it lacks."""
    current = _empty_schema(table)
    if table == "vectors" and "vector" in found.names:
        current = current.set(current.get_field_index("vector"), found.field("vector"))
    missing = [f for f in current if f.name not in found.names]
    return pa.schema([*found, *missing], metadata=found.metadata) if missing else found


def _empty_schema(table: str) -> pa.Schema:
    if table == "trials":
        return S.trials_schema()
    if table == "vectors":
        schema = S.vectors_schema(1)
        i = schema.get_field_index("vector")
        return schema.set(i, pa.field("vector", pa.list_(pa.float32())))
    return {
        "transfer": S.TRANSFER_SCHEMA,
        "generations": S.GENERATIONS_SCHEMA,
        "examples": S.EXAMPLES_SCHEMA,
    }[table]
