"""Reduce a trial's transfer rows to the numbers Optuna sees.

Two steps, both named in the study config:
1. per vector: the mean, over its rows of one metric family, of a statistic
   (``success`` as 0/1, the ``steered`` value, or ``delta`` = steered - unsteered);
   the pseudo-metric ``norm`` is the vector's final norm;
2. across the trial's vectors: ``mean``, ``median``, ``max`` or ``min``.

A metric family is a prefix: ``target_logprob`` matches
``target_logprob:promote:0`` and its siblings; ``choice_flip:+`` matches
only the added-vector flips.

A vector's value is computed in two shapes that share ``_matches`` and
``statistic_of``: ``per_vector`` over a trial's rows, on the driver before it
tells Optuna, and ``per_vector_columns`` over a whole study's rows as arrays,
for the ranking that the read commands use (``orchestrator.ranking``).
Both sum a vector's values in row order, then divide by its row count.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

Statistic = Literal["success", "steered", "delta"]
Reduce = Literal["mean", "median", "max", "min"]
Direction = Literal["maximize", "minimize"]


class Row(Protocol):
    vector_id: str
    metric: str
    steered: float
    unsteered: float
    success: bool


@dataclass(frozen=True)
class Objective:
    metric: str = "target_logprob"
    statistic: Statistic = "success"
    reduce: Reduce = "mean"
    direction: Direction = "maximize"

    @property
    def label(self) -> str:
        return f"{self.reduce}_{self.statistic}_{self.metric}".replace(":", "_")


def _matches(metric: str, family: str) -> bool:
    return metric == family or metric.startswith(family + ":")


def statistic_of(statistic: Statistic, steered: Any, unsteered: Any, success: Any) -> Any:
    """The statistic of one row, or of arrays of rows elementwise: ``success``
    as 1.0/0.0, the ``steered`` value, or ``delta`` = steered - unsteered."""
    if statistic == "success":
        return success * 1.0
    if statistic == "steered":
        return steered
    return steered - unsteered


def per_vector(
    rows: Iterable[Row], objective: Objective, norms: Mapping[str, float]
) -> dict[str, float]:
    """The objective's per-vector value for every vector that has one."""
    if objective.metric == "norm":
        return dict(norms)
    values: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if _matches(row.metric, objective.metric):
            value = statistic_of(objective.statistic, row.steered, row.unsteered, bool(row.success))
            values[row.vector_id].append(value)
    return {vid: _sequential_sum(v) / len(v) for vid, v in values.items() if v}


def _sequential_sum(values: list[float]) -> float:
    # Left to right, as np.bincount adds (Python 3.12's sum() compensates).
    total = 0.0
    for v in values:
        total += v
    return total


@dataclass(frozen=True)
class TransferColumns:
    """A study's transfer rows as arrays, ``n`` rows, dictionary-coded:
    ``vector`` (n,) int indices into ``vector_ids``, ``metric`` (n,) int
    indices into ``metric_names``; ``steered``, ``unsteered`` (n,) float64
    (NaN where null); ``success`` (n,) bool (null as false)."""

    vector_ids: list[str]
    vector: np.ndarray
    metric_names: list[str]
    metric: np.ndarray
    steered: np.ndarray
    unsteered: np.ndarray
    success: np.ndarray


def per_vector_columns(columns: TransferColumns, objective: Objective) -> np.ndarray:
    """:func:`per_vector` over arrays: ``(len(vector_ids),)`` float64, NaN
    for a vector with no row of the objective's metric. (The ``norm``
    pseudo-metric is the vectors table's ``final_norm``; the caller reads it.)"""
    if objective.metric == "norm":
        raise ValueError("the norm objective is a vector's final_norm, not a transfer metric")
    family = np.array([_matches(m, objective.metric) for m in columns.metric_names], bool)
    keep = family[columns.metric] if len(columns.metric) else np.zeros(0, bool)
    values = statistic_of(
        objective.statistic,
        columns.steered[keep],
        columns.unsteered[keep],
        columns.success[keep],
    )
    n = len(columns.vector_ids)
    codes = columns.vector[keep]
    counts = np.bincount(codes, minlength=n)
    sums = np.bincount(codes, weights=np.asarray(values, np.float64), minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def reduce_values(values: Sequence[float], how: Reduce) -> float:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan
    if how == "mean":
        return sum(finite) / len(finite)
    if how == "median":
        return float(statistics.median(finite))
    return max(finite) if how == "max" else min(finite)


def trial_value(rows: Iterable[Row], objective: Objective, norms: Mapping[str, float]) -> float:
    """One objective value for a trial; NaN when no vector has a value."""
    return reduce_values(list(per_vector(rows, objective, norms).values()), objective.reduce)
