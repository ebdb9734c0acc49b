"""Which trial, and which vector, is best: the one ranking that ``run``,
``best``, ``try --best``, ``export --best`` and the report all use.

The rule is :data:`RULE` (printed by ``steer-sweep best --help``). Trials
are ordered by :func:`trial_order` from their objective values alone; a
study's vectors by :func:`order_vectors`, which puts the vectors of a better
trial first and orders those of one trial by the objectives' own per-vector
values (``orchestrator.study.objectives``). :func:`rank_trials` and
:func:`rank_vectors` read both from a stored study.

May import: ``orchestrator.store``, ``orchestrator.study.objectives``,
numpy, pandas, pyarrow. Never torch, Ray or Optuna: ranking is arithmetic on
the stored values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.study.objectives import Objective, TransferColumns, per_vector_columns

if TYPE_CHECKING:
    import pandas as pd

    from orchestrator.store import StoredTrial, Study

RULE = (
    "Only COMPLETE trials are ranked. With one objective, trials are ordered by its value "
    "in its direction (maximize: highest first); ties go to the lower trial number, as "
    "Optuna's study.best_trial. With several objectives, the Pareto front comes first: "
    "the trials that no other trial dominates (Optuna's study.best_trials); every other "
    "trial follows, ordered by how many trials dominate it (fewer first). Inside each of "
    "these groups, trials are ordered by the first objective, then the next, then trial "
    "number. Vectors: all the vectors of a better trial come before those of a worse one; "
    "inside a trial, vectors are ordered by each objective's own per-vector value, in its "
    "direction (the objective's statistic, averaged over the vector's held-out rows of its "
    "metric, or its final norm for the norm objective), then by the lower final training "
    "loss, then by vector id. A vector without a value for an objective comes last."
)

VALUE = "objective_{}"
"""Column of a trial's value of objective i (``objective_0`` is ``trial_value``)."""
VECTOR_VALUE = "vector_objective_{}"
"""Column of a vector's own value of objective i (its per-vector value)."""


def objectives_of(config: Mapping[str, Any] | None) -> list[Objective]:
    """The objectives of a stored study config (the default objective when it names none)."""
    objs = (config or {}).get("objectives") or [{}]
    keys = ("metric", "statistic", "reduce", "direction")
    return [Objective(**{k: o[k] for k in keys if k in o}) for o in objs]


def describe(objectives: Sequence[Objective]) -> list[str]:
    """One line per objective: its trial and per-vector columns and what they hold."""
    out = []
    for i, o in enumerate(objectives):
        own = (
            "its final norm"
            if o.metric == "norm"
            else f"{o.statistic} {o.metric} averaged over its held-out rows"
        )
        out.append(
            f"{VALUE.format(i)} ({o.direction}): the trial's {o.reduce} over its vectors of "
            f"{VECTOR_VALUE.format(i)}, each vector's {own}"
        )
    return out


# ---------------------------------------------------------------- trials


@dataclass(frozen=True)
class TrialOrder:
    """Ranked trials, best first: ``numbers``, and per trial ``front`` (on the
    Pareto front; with one objective, only the best trial) and ``dominated_by``
    (how many ranked trials dominate it; 0 on the front)."""

    numbers: list[int]
    front: list[bool]
    dominated_by: list[int]


def trial_order(
    numbers: Sequence[int], values: Sequence[Sequence[float]], directions: Sequence[str]
) -> TrialOrder:
    """The :data:`RULE` on trials ``numbers`` with objective ``values`` (one
    row per trial, one column per direction). A trial with a missing or
    non-finite value is not ranked (Optuna never completes such a trial)."""
    k = len(directions)
    keep = [
        i
        for i, v in enumerate(values)
        if v is not None and len(v) == k and all(math.isfinite(x) for x in v)
    ]
    nums = np.array([numbers[i] for i in keep], np.int64)
    signs = np.array([1.0 if d == "maximize" else -1.0 for d in directions])
    better = np.array([values[i] for i in keep], np.float64).reshape(len(keep), k) * signs
    count = _dominated_by(better) if k > 1 else np.zeros(len(keep), np.int64)
    # np.lexsort sorts by its last key first: dominated_by, objective 0, 1, ..., number.
    order = np.lexsort((nums, *[-better[:, j] for j in reversed(range(k))], count))
    front = count[order] == 0
    if k == 1 and len(order):
        front = np.arange(len(order)) == 0
    return TrialOrder(
        [int(n) for n in nums[order]], [bool(f) for f in front], [int(c) for c in count[order]]
    )


def _dominated_by(better: np.ndarray, chunk: int = 512) -> np.ndarray:
    """For each row of ``better`` ``(n, k)`` (larger is better), how many rows
    dominate it: at least as good on every objective and better on one."""
    n = len(better)
    out = np.zeros(n, np.int64)
    for start in range(0, n, chunk):
        mine = better[start : start + chunk, None, :]  # (c, 1, k)
        others = better[None, :, :]  # (1, n, k)
        dominates = np.all(others >= mine, axis=2) & np.any(others > mine, axis=2)  # (c, n)
        out[start : start + chunk] = dominates.sum(axis=1)
    return out


# ---------------------------------------------------------------- vectors


def order_vectors(
    frame: pd.DataFrame, order: TrialOrder, objectives: Sequence[Objective]
) -> pd.DataFrame:
    """``frame`` (one row per vector: ``trial``, ``vector_id``, ``final_loss``
    and ``vector_objective_i`` for every objective) best first by the
    :data:`RULE`, with ``rank`` (from 1), ``trial_rank`` (from 1; NA for a
    trial that is not ranked, whose vectors follow those of ranked trials
    in trial order) and ``front``. The index is reset."""
    import pandas as pd

    place = {n: i for i, n in enumerate(order.numbers)}
    trial_rank = frame["trial"].astype("int64").map(place).astype("float64")
    keys: dict[str, Any] = {
        "_trial_rank": trial_rank.fillna(len(place)),
        "_trial": frame["trial"].astype("int64"),
    }
    for i, o in enumerate(objectives):
        v = frame[VECTOR_VALUE.format(i)].astype("float64")
        keys[f"_v{i}"] = -v if o.direction == "maximize" else v
    keys["_loss"] = frame["final_loss"].astype("float64")
    keys["_id"] = frame["vector_id"].astype(str)
    key_frame = pd.DataFrame(keys, index=frame.index)
    sorted_index = key_frame.sort_values(list(keys), na_position="last", kind="mergesort").index
    out = frame.loc[sorted_index].reset_index(drop=True)
    ranks = trial_rank.loc[sorted_index].to_numpy()
    out["rank"] = np.arange(1, len(out) + 1)
    out["trial_rank"] = pd.array(
        [None if np.isnan(r) else int(r) + 1 for r in ranks], dtype="Int64"
    )
    front = {n: f for n, f in zip(order.numbers, order.front, strict=True)}
    out["front"] = [bool(front.get(int(t), False)) for t in out["trial"]]
    return out


def with_trial_values(
    frame: pd.DataFrame, trials: Sequence[StoredTrial], n_objectives: int
) -> pd.DataFrame:
    """``frame`` (one row per vector, with ``trial``) with its trial's stored
    values as ``objective_i`` (NaN for a trial without values)."""
    values = {t.number: t.values or [] for t in trials}
    out = frame.copy()
    for i in range(n_objectives):
        out[VALUE.format(i)] = [
            values[n][i] if len(values.get(n, [])) > i else np.nan
            for n in frame["trial"].astype("int64")
        ]
    return out


def with_vector_values(
    study: Study, frame: pd.DataFrame, objectives: Sequence[Objective]
) -> pd.DataFrame:
    """``frame`` (one row per vector: ``vector_id`` and ``final_norm``) with
    each objective's own per-vector value of the stored study as
    ``vector_objective_i`` (NaN where the vector has no row of its metric)."""
    ids = [str(v) for v in frame["vector_id"]]
    families = [o.metric for o in objectives if o.metric != "norm"]
    columns = _transfer_columns(study, ids, families) if families else None
    out = frame.copy()
    for i, o in enumerate(objectives):
        if o.metric == "norm":
            out[VECTOR_VALUE.format(i)] = frame["final_norm"].astype("float64").to_numpy()
        else:
            assert columns is not None
            out[VECTOR_VALUE.format(i)] = per_vector_columns(columns, o)
    return out


def _transfer_columns(study: Study, ids: list[str], families: list[str]) -> TransferColumns:
    """The transfer rows of the metric ``families`` as :class:`TransferColumns`
    over the vector ids ``ids`` (rows of other vectors dropped)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    match = None
    for fam in families:
        one = (pc.field("metric") == fam) | pc.starts_with(pc.field("metric"), fam + ":")
        match = one if match is None else match | one
    table = study.transfer.to_table(
        columns=["vector_id", "metric", "steered", "unsteered", "success"], filter=match
    )
    index = pc.index_in(table["vector_id"], value_set=pa.array(ids, pa.string()))
    known = pc.is_valid(index)
    table, index = table.filter(known), pc.drop_null(index)
    metric = pc.dictionary_encode(table["metric"]).combine_chunks()

    def floats(name: str) -> np.ndarray:
        col = pc.cast(table[name], pa.float64())
        return col.to_numpy(zero_copy_only=False).astype(np.float64)

    success = pc.fill_null(table["success"], False).to_numpy(zero_copy_only=False)
    return TransferColumns(
        vector_ids=ids,
        vector=index.to_numpy(zero_copy_only=False).astype(np.int64),
        metric_names=[str(m) for m in metric.dictionary.to_pylist()],
        metric=metric.indices.to_numpy(zero_copy_only=False).astype(np.int64),
        steered=floats("steered"),
        unsteered=floats("unsteered"),
        success=np.asarray(success, bool),
    )


# ---------------------------------------------------------------- a stored study


def stored_trial_order(study: Study, objectives: Sequence[Objective] | None = None) -> TrialOrder:
    """:func:`trial_order` of the study's stored COMPLETE trials."""
    objectives = objectives if objectives is not None else objectives_of(study.config())
    done = [t for t in study.completed_trials() if t.state == "COMPLETE"]
    return trial_order(
        [t.number for t in done],
        [t.values or [] for t in done],
        [o.direction for o in objectives],
    )


def rank_trials(study: Study) -> pd.DataFrame:
    """The study's COMPLETE trials, best first by the :data:`RULE`: ``trial_rank``
    (from 1), ``trial``, ``front``, ``dominated_by``, ``objective_i`` per
    objective and ``params`` (a dict)."""
    import pandas as pd

    objectives = objectives_of(study.config())
    order = stored_trial_order(study, objectives)
    by_number = {t.number: t for t in study.completed_trials()}
    rows = []
    for rank, (n, front, count) in enumerate(
        zip(order.numbers, order.front, order.dominated_by, strict=True), start=1
    ):
        t = by_number[n]
        values = {VALUE.format(i): v for i, v in enumerate(t.values or [])}
        rows.append(
            {"trial_rank": rank, "trial": n, "front": front, "dominated_by": count, **values}
            | {"params": t.params}
        )
    cols = ["trial_rank", "trial", "front", "dominated_by"]
    cols += [VALUE.format(i) for i in range(len(objectives))] + ["params"]
    return pd.DataFrame(rows, columns=cols)


def rank_vectors(study: Study, *, complete_only: bool = True) -> pd.DataFrame:
    """The study's vectors best first by the :data:`RULE`: the vectors table's
    columns (without the vector itself, its loss history and affine
    factors), ``trial_state``, ``objective_i`` (the trial's values),
    ``vector_objective_i`` (the vector's own), ``rank``, ``trial_rank`` and
    ``front``. ``complete_only``: only the vectors of COMPLETE trials (what
    ``best`` lists); else every vector of a stored trial, the unranked ones
    (PRUNED, FAIL) after the ranked ones."""
    objectives = objectives_of(study.config())
    skip = {"loss_history", "affine_a", "affine_b", "vector"}
    cols = [n for n in study.vectors.schema.names if n not in skip]
    frame = study.vectors.to_table(columns=cols).to_pandas()
    trials = study.completed_trials()
    states = {t.number: t.state for t in trials}
    frame["trial_state"] = frame["trial"].map(states)
    wanted = ("COMPLETE",) if complete_only else ("COMPLETE", "PRUNED", "FAIL")
    frame = frame[frame["trial_state"].isin(wanted)].drop_duplicates("vector_id", keep="last")
    frame = with_trial_values(frame, trials, len(objectives))
    frame = with_vector_values(study, frame, objectives)
    return order_vectors(frame, stored_trial_order(study, objectives), objectives)
