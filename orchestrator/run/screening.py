"""The driver's side of the transfer screen (``pruner: transfer_screen``).

The worker stops a vector's evaluation at the first ``slice_size`` held-out
examples when its slice scores worse than the threshold sent with its
assignment (:mod:`workers.evaluation.screen`). The threshold comes from here:
the median slice score of every vector finished so far in the study (the
first slice of every vector, screened or not, so the history is unbiased),
moved ``margin`` towards worse, once ``n_startup_vectors`` have finished.

It is fixed when an assignment is sent to a worker, so its staleness is
bounded by the vectors running or waiting in workers' inboxes then; on
resume, the history is read back from the store.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from orchestrator.run.preflight import Plan
from orchestrator.store import Study
from workers.evaluation.screen import Screen
from workers.service.protocol import VectorOutcome


class _StoredRow(NamedTuple):
    vector_id: str
    metric: str
    steered: float
    unsteered: float
    success: bool


def slice_scores(
    outcomes: Sequence[VectorOutcome], screen: Screen, slice_ids: frozenset[str]
) -> list[float]:
    """The objective value of each finished vector on the screen's slice of
    held-out examples (its rows on other examples left out), as the worker
    scored it; failed vectors and vectors without a finite value have none."""
    out = []
    for o in outcomes:
        if o.error is None:
            on_slice = [r for r in o.rows if r.example_id in slice_ids]
            score = screen.scores(on_slice).get(o.vector_id)
            if score is not None and math.isfinite(score):
                out.append(score)
    return out


def stored_slice_scores(
    stored: Study, done: set[int], screen: Screen, slice_ids: frozenset[str]
) -> list[float]:
    """The slice scores of the vectors already in the store, of the trials in
    ``done`` (rows of a trial whose ``trials`` row is missing are not part of
    the study)."""
    import pyarrow.compute as pc

    table = stored.dataset("transfer").to_table(
        columns=["vector_id", "trial", "metric", "steered", "unsteered", "success"],
        filter=pc.field("eval_example_id").isin(sorted(slice_ids)),
    )
    rows = [
        _StoredRow(r["vector_id"], r["metric"], r["steered"], r["unsteered"], r["success"])
        for r in table.to_pylist()
        if r["trial"] in done
    ]
    return [s for s in screen.scores(rows).values() if math.isfinite(s)]


@dataclass
class ScreenHistory:
    """The slice scores so far, kept sorted: the threshold is asked for on
    every batch sent to a worker, so its median is read, not recomputed."""

    screen: Screen
    slice_ids: frozenset[str]
    margin: float
    n_startup: int
    scores: list[float] = field(default_factory=list)  # sorted, finite

    @classmethod
    def of(cls, plan: Plan) -> ScreenHistory | None:
        screen = plan.evaluation.screen
        if screen is None:
            return None
        p = plan.config.pruner
        ids = frozenset(ex.id for ex in plan.transfer[: screen.slice_size])
        return cls(screen, ids, p.margin, p.n_startup_vectors)

    def add(self, outcomes: Sequence[VectorOutcome]) -> None:
        for score in slice_scores(outcomes, self.screen, self.slice_ids):
            bisect.insort(self.scores, score)

    def resume(self, stored: Study, done: set[int]) -> None:
        self.scores = sorted(stored_slice_scores(stored, done, self.screen, self.slice_ids))

    def threshold(self) -> float | None:
        """The threshold for an assignment sent now; None before the startup."""
        n = len(self.scores)
        if n < max(1, self.n_startup):
            return None
        s = self.scores
        median = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
        return self.screen.moved(median, self.margin)
