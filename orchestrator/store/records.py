"""The rows the orchestrator hands to the store, and their Arrow tables.

``VectorRecord`` wraps the ``workers.jobs.VectorResult`` a worker returned with
what the result does not know itself (trial, training example, loss kind, lr).
The store only reads attributes of it, so it never imports the worker code (or
torch) at run time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from orchestrator.store import schemas as S

if TYPE_CHECKING:
    from workers.jobs import Prompt, Target, VectorResult

ParamValue = bool | int | float | str | None


@dataclass(frozen=True)
class StudyContext:
    """What every row of a study shares. ``d_model`` is the vector width."""

    study: str
    config_hash: str
    model_id: str
    d_model: int
    model_revision: str = ""

    def __post_init__(self) -> None:
        S.check_study_name(self.study)
        if self.d_model <= 0:
            raise ValueError(f"d_model must be positive, got {self.d_model}")


@dataclass(frozen=True)
class TrialRecord:
    """One finished Optuna trial.

    ``values`` are the objective values (None for PRUNED/FAIL trials that never
    reported); ``intermediate_values`` maps step to value, as Optuna's pruners
    saw them. ``distributions_json`` is optional, e.g. Optuna's
    ``distribution_to_json`` per parameter, for an exact re-tell on resume.
    """

    number: int
    state: str
    params: Mapping[str, ParamValue]
    values: Sequence[float] | None = None
    intermediate_values: Mapping[int, float] = field(default_factory=dict)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    distributions_json: str | None = None

    def __post_init__(self) -> None:
        if self.state not in S.TRIAL_STATES:
            raise ValueError(f"trial state must be one of {S.TRIAL_STATES}, got {self.state!r}")
        if self.number < 0:
            raise ValueError(f"trial number must be >= 0, got {self.number}")
        if self.state == "COMPLETE" and not self.values:
            raise ValueError("a COMPLETE trial needs its objective values")


@dataclass(frozen=True)
class VectorRecord:
    """A worker's ``VectorResult`` plus the context the store records with it.

    ``dtype`` defaults to the dtype of ``result.vector``; pass the training
    dtype (e.g. ``"bfloat16"``) when the worker upcast before returning.
    """

    result: VectorResult
    example_id: str
    loss_kind: str
    lr: float
    norm_bound: float | None = None
    intervention: str = "add"
    dtype: str | None = None
    train_example_ids: Sequence[str] = ()  # a K-shot vector's examples; () = example_id alone
    screened: bool = False  # evaluation stopped at the transfer screen's slice


@dataclass(frozen=True)
class TransferRecord:
    """One transfer measurement of a vector on one held-out example.

    ``vector_id`` comes from ``schemas.vector_id(study, trial, example_id)``.
    """

    vector_id: str
    eval_example_id: str
    metric: str
    steered: float | None
    unsteered: float | None
    success: bool | None


@dataclass(frozen=True)
class GenerationRecord:
    """A vector's continuation of one held-out prompt, beside the unsteered
    model's (see ``schemas.GENERATIONS_SCHEMA``)."""

    vector_id: str
    eval_example_id: str
    steered_text: str
    unsteered_text: str
    steered_tokens: int
    unsteered_tokens: int
    steered_stop: str
    unsteered_stop: str
    max_tokens: int

    def __post_init__(self) -> None:
        for name in ("steered_stop", "unsteered_stop"):
            if getattr(self, name) not in ("eos", "length"):
                raise ValueError(f"{name} must be 'eos' or 'length', got {getattr(self, name)!r}")


@dataclass(frozen=True)
class ExampleRecord:
    """A training or held-out example, so results are self-describing."""

    example_id: str
    split: str
    prompt: Prompt
    targets: Sequence[Target] = ()
    group: str = ""  # stored as examples.example_group, null when empty


# ---------------------------------------------------------------- tables


def _utc(ts: datetime | None) -> datetime | None:
    if ts is None:
        return None
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def trials_table(ctx: StudyContext, trial: TrialRecord, n_vectors: int) -> pa.Table:
    """The ``trials`` row of one trial (``n_vectors``: how many vectors it made)."""
    return trials_table_many(ctx, [(trial, n_vectors)])


def trials_table_many(ctx: StudyContext, trials: Sequence[tuple[TrialRecord, int]]) -> pa.Table:
    """The ``trials`` rows of several trials, as one table.

    Trials whose parameters have the same names and types share one schema
    and are built in one call; should a group mix schemas (a conditional
    parameter, or one value an int in one trial and a float in another), the
    parts are concatenated with Arrow's permissive promotion, as one trial's
    tables always were."""
    parts: dict[tuple, list[dict[str, Any]]] = {}
    code = S.code_version()
    for trial, n_vectors in trials:
        params = dict(trial.params)
        types = tuple((k, S.param_type(v)) for k, v in params.items())  # fails early
        values = [float(v) for v in trial.values] if trial.values else None
        start, end = _utc(trial.started_at), _utc(trial.finished_at)
        row: dict[str, Any] = {
            "trial": trial.number,
            "state": trial.state,
            "value": values[0] if values else None,
            "values": values,
            "intermediate_values": [
                {"step": int(k), "value": float(v)}
                for k, v in sorted(trial.intermediate_values.items())
            ],
            "params_json": json.dumps(params, sort_keys=True, allow_nan=True),
            "distributions_json": trial.distributions_json,
            "started_at": start,
            "finished_at": end,
            "duration_s": (end - start).total_seconds() if start and end else None,
            "n_vectors": n_vectors,
            "error": trial.error,
            "code_version": code,
            "config_hash": ctx.config_hash,
        }
        for name, v in params.items():
            row[S.PARAM_PREFIX + name] = v
        parts.setdefault(types, []).append(row)
    tables = [
        pa.Table.from_pylist(rows, schema=S.trials_schema(dict(types)))
        for types, rows in parts.items()
    ]
    if not tables:
        return S.trials_schema().empty_table()
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="permissive")


def vectors_table(ctx: StudyContext, trial: int, vectors: Sequence[VectorRecord]) -> pa.Table:
    """A ``vectors`` table of one trial; every vector must be ``(d_model,)``."""
    return vectors_table_many(ctx, [(trial, vectors)])


def vectors_table_many(
    ctx: StudyContext, trials: Sequence[tuple[int, Sequence[VectorRecord]]]
) -> pa.Table:
    """The ``vectors`` rows of several trials, as one table (one Arrow array
    per column, not one per trial and column)."""
    d = ctx.d_model
    cols: dict[str, list[Any]] = {f.name: [] for f in S.vectors_schema(d)}
    mats = []
    for trial, vectors in trials:
        first = len(cols["vector_id"])
        for rec in vectors:
            r = rec.result
            vec = np.asarray(r.vector)
            if vec.shape != (d,):
                raise ValueError(f"vector of job {r.job_id} has shape {vec.shape}, expected ({d},)")
            mats.append(vec.astype(np.float32, copy=False))
            history = [float(x) for x in r.loss_history]
            a, b = (None, None) if r.factors is None else r.factors
            _append(
                cols,
                vector_id=S.vector_id(ctx.study, trial, rec.example_id),
                trial=trial,
                job_id=r.job_id,
                example_id=rec.example_id,
                model_id=ctx.model_id,
                model_revision=ctx.model_revision,
                config_hash=ctx.config_hash,
                layer=int(r.layers[0]),
                layers=[int(x) for x in r.layers],
                intervention=rec.intervention,
                norm_bound=None if rec.norm_bound is None else float(rec.norm_bound),
                loss_kind=rec.loss_kind,
                lr=float(rec.lr),
                seed=int(r.seed),
                log_base=float(r.log_base),
                initial_loss=history[0] if history else None,
                final_loss=history[-1] if history else None,
                loss_history=history,
                target_losses=[float(x) for x in r.target_losses],
                iterations=int(r.iterations),
                stop_reason=r.stop_reason,
                final_norm=_float_or_none(r.final_norm),
                dtype=rec.dtype or str(vec.dtype),
                affine_rank=None if a is None else int(np.asarray(a).shape[0]),
                affine_a=None if a is None else np.asarray(a, np.float32).ravel(),
                affine_b=None if b is None else np.asarray(b, np.float32).ravel(),
                train_example_ids=list(rec.train_example_ids or (rec.example_id,)),
                screened=bool(rec.screened),
            )
        ids = cols["vector_id"][first:]
        if len(set(ids)) != len(ids):
            raise ValueError(f"trial {trial} has two vectors for the same training example")
    schema = S.vectors_schema(d)
    flat = np.stack(mats).reshape(-1) if mats else np.zeros(0, np.float32)
    arrays = []
    for f in schema:
        if f.name == "vector":
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), d))
        else:
            arrays.append(pa.array(cols[f.name], type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def transfer_table(trial: int, rows: Sequence[TransferRecord]) -> pa.Table:
    return transfer_table_many([(trial, rows)])


def transfer_table_many(trials: Sequence[tuple[int, Sequence[TransferRecord]]]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "vector_id": r.vector_id,
                "trial": trial,
                "eval_example_id": r.eval_example_id,
                "metric": r.metric,
                "steered": _float_or_none(r.steered),
                "unsteered": _float_or_none(r.unsteered),
                "success": None if r.success is None else bool(r.success),
            }
            for trial, rows in trials
            for r in rows
        ],
        schema=S.TRANSFER_SCHEMA,
    )


def generations_table(trial: int, rows: Sequence[GenerationRecord]) -> pa.Table:
    return generations_table_many([(trial, rows)])


def generations_table_many(
    trials: Sequence[tuple[int, Sequence[GenerationRecord]]],
) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "vector_id": r.vector_id,
                "trial": trial,
                "eval_example_id": r.eval_example_id,
                "steered_text": r.steered_text,
                "unsteered_text": r.unsteered_text,
                "steered_tokens": int(r.steered_tokens),
                "unsteered_tokens": int(r.unsteered_tokens),
                "steered_stop": r.steered_stop,
                "unsteered_stop": r.unsteered_stop,
                "max_tokens": int(r.max_tokens),
            }
            for trial, rows in trials
            for r in rows
        ],
        schema=S.GENERATIONS_SCHEMA,
    )


def examples_table(rows: Sequence[ExampleRecord]) -> pa.Table:
    out = []
    for r in rows:
        chat = None if isinstance(r.prompt, str) else [list(m) for m in r.prompt]
        out.append(
            {
                "example_id": r.example_id,
                "split": r.split,
                "prompt": r.prompt if isinstance(r.prompt, str) else json.dumps(chat),
                "chat": None if chat is None else [{"role": m[0], "content": m[1]} for m in chat],
                "targets": [
                    {"text": t.text, "kind": t.kind, "threshold": t.threshold, "weight": t.weight}
                    for t in r.targets
                ],
                "example_group": r.group or None,
            }
        )
    return pa.Table.from_pylist(out, schema=S.EXAMPLES_SCHEMA)


def _append(cols: dict[str, list[Any]], **values: Any) -> None:
    for k, v in values.items():
        cols[k].append(v)


def _float_or_none(x: float | None) -> float | None:
    # NaN stays NaN (a non-finite loss is a result worth keeping), None is null.
    return None if x is None else float(x)
