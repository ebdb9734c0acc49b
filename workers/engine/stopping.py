"""The stopping rules of one row (:class:`workers.jobs.StopRules`), fed one
loss per evaluation. The engine decides on a :meth:`RowState.snapshot`, so a
step that fails (out of memory) leaves the row as it was."""

from __future__ import annotations

import copy
import math

from workers.jobs import VectorJob


class RowState:
    """Per-job bookkeeping for the stopping rules."""

    def __init__(self, job: VectorJob) -> None:
        self.job = job
        self.history: list[float] = []
        self.best = math.inf
        self.since_best = 0
        self.held = 0
        self.reason: str | None = None
        self.target_losses: list[float] = []
        self.norms: list[float] = []

    def snapshot(self) -> RowState:
        """A copy whose lists are its own; the job is shared, not copied."""
        out = copy.copy(self)
        out.history, out.norms = list(self.history), list(self.norms)
        return out

    def observe(self, loss: float, term_losses: list[float], thresholds: list[float]) -> None:
        rules, t = self.job.stop, len(self.history)
        self.history.append(loss)
        if math.isfinite(loss):
            self.target_losses = term_losses
        if loss < self.best:
            self.best, self.since_best = loss, 0
        else:
            self.since_best += 1
        held = rules.hold_threshold is not None and loss <= rules.hold_threshold
        self.held = self.held + 1 if held else 0
        reached = [x <= th for x, th in zip(term_losses, thresholds, strict=True) if th == th]
        if not math.isfinite(loss):
            self.reason = "nonfinite"
        elif rules.targets_reached and reached and all(reached):
            self.reason = "targets_reached"
        elif rules.hold_threshold is not None and self.held >= max(rules.hold_iters, 1):
            self.reason = "threshold_held"
        elif rules.eps is not None and t >= 1 and abs(loss - self.history[-2]) < rules.eps:
            self.reason = "converged"
        elif rules.patience is not None and self.since_best >= rules.patience:
            self.reason = "no_improvement"
        elif t >= rules.max_iters:
            self.reason = "max_iters"
