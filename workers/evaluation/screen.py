"""The transfer screen: evaluate a vector on a first slice of the held-out
examples, and stop there when the slice scores it below its threshold.

A study opts in with ``pruner: {name: transfer_screen}``. The orchestrator
sends each vector's threshold with its assignment (None: evaluate in full);
the worker scores every vector of an evaluation batch on the first
``slice_size`` held-out examples with the study's objective (its metric
family and statistic, the same per-vector value the objective reduces), and
evaluates only the vectors at or above their threshold on the remaining
examples. A screened vector keeps its slice's rows and is marked
(``vectors.screened``).

The per-vector score here is the one ``orchestrator.study.objectives``
computes for Optuna; it has two homes because workers never import the
orchestrator and the report (which reads objectives) never imports torch.
tests/workers/test_screen.py checks that the two agree.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

Statistic = Literal["success", "steered", "delta"]
Direction = Literal["maximize", "minimize"]

SCREENABLE = ("target_logprob", "choice_flip", "judge")
"""Metric families measured per held-out example, so a slice of the examples
gives a partial value (side-effect KL is on neutral prompts, surprisal is
scored after the worker, norm does not depend on evaluation)."""


class Row(Protocol):
    @property
    def vector_id(self) -> str: ...
    @property
    def metric(self) -> str: ...
    @property
    def steered(self) -> float: ...
    @property
    def unsteered(self) -> float: ...
    @property
    def success(self) -> bool: ...


def matches(metric: str, family: str) -> bool:
    """``target_logprob`` matches ``target_logprob:promote:0`` and itself."""
    return metric == family or metric.startswith(family + ":")


def vector_scores(rows: Iterable[Row], metric: str, statistic: Statistic) -> dict[str, float]:
    """Per vector, the mean over its rows of the ``metric`` family of the
    statistic: ``success`` as 0/1, the ``steered`` value, or ``delta`` =
    steered - unsteered. Vectors without such a row are absent."""
    values: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if not matches(row.metric, metric):
            continue
        if statistic == "success":
            values[row.vector_id].append(1.0 if row.success else 0.0)
        elif statistic == "steered":
            values[row.vector_id].append(row.steered)
        else:
            values[row.vector_id].append(row.steered - row.unsteered)
    return {vid: sum(v) / len(v) for vid, v in values.items() if v}


@dataclass(frozen=True)
class Screen:
    """How the worker screens: the slice size and the objective it scores."""

    slice_size: int
    metric: str = "target_logprob"
    statistic: Statistic = "success"
    direction: Direction = "maximize"

    def __post_init__(self) -> None:
        if self.slice_size < 1:
            raise ValueError(f"slice_size must be at least 1, got {self.slice_size}")
        if not any(matches(self.metric, family) for family in SCREENABLE):
            raise ValueError(
                f"the transfer screen scores a held-out metric ({', '.join(SCREENABLE)}), "
                f"not {self.metric!r}"
            )

    def scores(self, rows: Iterable[Row]) -> dict[str, float]:
        return vector_scores(rows, self.metric, self.statistic)

    def skips(self, score: float | None, threshold: float | None) -> bool:
        """Whether a vector whose slice scored ``score`` stops at the slice:
        strictly worse than ``threshold`` in the objective's direction. No
        threshold, or no finite score (the slice had no row of the metric),
        never skips: the screen stops only what it has measured as worse."""
        if threshold is None or score is None or not math.isfinite(score):
            return False
        return score < threshold if self.direction == "maximize" else score > threshold

    def threshold(self, slice_scores: Iterable[float], margin: float) -> float | None:
        """The median of ``slice_scores`` moved ``margin`` towards worse;
        None when there is no finite score."""
        finite = [s for s in slice_scores if math.isfinite(s)]
        if not finite:
            return None
        return self.moved(statistics.median(finite), margin)

    def moved(self, median: float, margin: float) -> float:
        """``median`` moved ``margin`` towards worse (down when maximizing)."""
        return median - margin if self.direction == "maximize" else median + margin
