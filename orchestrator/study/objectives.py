"""Reduce a trial's transfer rows to the numbers Optuna sees.

Two steps, both named in the study config:
1. per vector: the mean, over its rows of one metric family, of a statistic
   (``success`` as 0/1, the ``steered`` value, or ``delta`` = steered - unsteered);
   the pseudo-metric ``norm`` is the vector's final norm;
2. across the trial's vectors: ``mean``, ``median``, ``max`` or ``min``.

A metric family is a prefix: ``target_logprob`` matches
``target_logprob:promote:0`` and its siblings; ``choice_flip:+`` matches
only the added-vector flips.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

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


def per_vector(
    rows: Iterable[Row], objective: Objective, norms: Mapping[str, float]
) -> dict[str, float]:
    """The objective's per-vector value for every vector that has one."""
    if objective.metric == "norm":
        return dict(norms)
    values: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if not _matches(row.metric, objective.metric):
            continue
        if objective.statistic == "success":
            values[row.vector_id].append(1.0 if row.success else 0.0)
        elif objective.statistic == "steered":
            values[row.vector_id].append(row.steered)
        else:
            values[row.vector_id].append(row.steered - row.unsteered)
    return {vid: sum(v) / len(v) for vid, v in values.items() if v}


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
