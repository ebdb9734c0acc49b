"""The ledger of a run: which trial's assignments are where. No Ray, no GPU,
no Optuna.

Every assignment is in exactly one place: ``pending`` (waiting for a worker),
``running[worker]`` (sent to that worker), ``held`` (back, waiting for its
surprisal scores from the second pool), or its trial's ``outcomes``. A dead
worker's assignments go back to the front of ``pending``; one that has been
lost with its worker ``max_attempts`` times comes back as a failed outcome, so
an assignment that kills every worker it touches cannot stall the study.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from orchestrator.study.params import TrialParams
from workers.service.protocol import Assignment, VectorOutcome


@dataclass
class TrialWork:
    number: int
    assignments: list[Assignment]
    handle: Any = None  # the optimizer's trial object; opaque here
    params: TrialParams | None = None
    outcomes: dict[str, VectorOutcome] = field(default_factory=dict)
    pruned: bool = False
    reported: int = 0  # outcomes already reported as intermediate values
    intermediate: dict[int, float] = field(default_factory=dict)
    started: datetime | None = None
    asked_at: float | None = None  # time.monotonic() when the trial was asked
    dispatched_at: float | None = None  # ... when its first assignment was sent

    @property
    def ids(self) -> set[str]:
        return {a.vector_id for a in self.assignments}

    def ordered_outcomes(self) -> list[VectorOutcome]:
        return [
            self.outcomes[t.vector_id] for t in self.assignments if t.vector_id in self.outcomes
        ]


class Ledger:
    """Hands out assignments to workers and collects outcomes per trial."""

    def __init__(self, max_attempts: int = 3) -> None:
        self.pending: deque[Assignment] = deque()
        self.running: dict[Hashable, list[Assignment]] = {}
        self.trials: dict[int, TrialWork] = {}
        self.attempts: dict[str, int] = {}
        self.max_attempts = max_attempts
        # Outcomes back from a worker that still wait for a second pool (the
        # surprisal model's scores): not in their trial's outcomes yet.
        self.held: dict[str, VectorOutcome] = {}

    def add_trial(self, work: TrialWork) -> None:
        if work.number in self.trials:
            raise ValueError(f"trial {work.number} is already scheduled")
        self.trials[work.number] = work
        self.pending.extend(work.assignments)

    @property
    def n_running(self) -> int:
        return sum(len(v) for v in self.running.values())

    def busy(self, worker: Hashable) -> bool:
        return bool(self.running.get(worker))

    def outstanding(self, worker: Hashable) -> int:
        """Assignments sent to ``worker`` that have not come back."""
        return len(self.running.get(worker, ()))

    def take(
        self,
        worker: Hashable,
        max_assignments: int,
        stamp: Callable[[list[Assignment]], list[Assignment]] | None = None,
    ) -> list[Assignment]:
        """Up to ``max_assignments`` pending assignments, now sent to ``worker``
        (added to what it already holds: a streaming worker's inbox).
        ``stamp`` may replace them with copies that carry what is known only
        at sending time (the transfer screen's threshold)."""
        batch: list[Assignment] = []
        while self.pending and len(batch) < max_assignments:
            one = self.pending.popleft()
            if self.trials[one.trial].pruned:
                continue  # a pruned trial's unstarted assignments are simply dropped
            batch.append(one)
        if batch and stamp is not None:
            batch = stamp(batch)
        if batch:
            self.running.setdefault(worker, []).extend(batch)
            now = time.monotonic()
            for one in batch:
                work = self.trials[one.trial]
                if work.dispatched_at is None:
                    work.dispatched_at = now
        return batch

    def finish(
        self,
        worker: Hashable,
        outcomes: list[VectorOutcome],
        hold: Callable[[VectorOutcome], bool] | None = None,
    ) -> set[int]:
        """Record outcomes that came back from ``worker`` (any number of the
        assignments it holds); returns the trial numbers that changed.
        Outcomes for which ``hold`` is true wait in ``held`` for :meth:`release`.

        An outcome that comes back twice (its worker was thought lost and the
        assignment sent again) counts once: the first one wins.

        Raises:
            RuntimeError: an outcome names a vector the ledger never sent.
        """
        changed = set()
        for outcome in outcomes:
            vid = outcome.vector_id
            work = self.trials.get(outcome.trial)
            if work is None:
                continue  # its trial is done already: a late duplicate
            if vid not in work.ids:
                raise RuntimeError(
                    f"worker {worker!r} returned {vid!r}, which trial {outcome.trial} "
                    f"does not have (its vectors: {sorted(work.ids)[:5]})"
                )
            if vid in work.outcomes or vid in self.held:
                continue
            self._forget(worker, vid)
            if hold is not None and hold(outcome):
                self.held[vid] = outcome
                continue
            work.outcomes[vid] = outcome
            changed.add(outcome.trial)
        return changed

    def _forget(self, worker: Hashable, vid: str) -> None:
        """Take ``vid`` off the books of wherever it is: ``worker``, another
        worker it was sent to again, or the pending queue."""
        for holder in (worker, *[w for w in self.running if w != worker]):
            batch = self.running.get(holder)
            if batch:
                for i, one in enumerate(batch):
                    if one.vector_id == vid:
                        del batch[i]
                        if not batch:
                            del self.running[holder]
                        return
        for i, one in enumerate(self.pending):
            if one.vector_id == vid:
                del self.pending[i]
                return

    def release(self, vector_id: str, rows: list[Any], error: str | None = None) -> int:
        """A held outcome, with ``rows`` added (or ``error`` set), joins its
        trial's outcomes; returns the trial number."""
        outcome = self.held.pop(vector_id)
        outcome.rows.extend(rows)
        if error is not None:
            outcome.error = error
        self.trials[outcome.trial].outcomes[vector_id] = outcome
        return outcome.trial

    def lost(self, worker: Hashable, reason: str) -> set[int]:
        """A worker died with a batch: requeue it, or fail assignments out of attempts."""
        batch = self.running.pop(worker, [])
        changed = set()
        for one in reversed(batch):
            self.attempts[one.vector_id] = self.attempts.get(one.vector_id, 0) + 1
            if self.attempts[one.vector_id] >= self.max_attempts:
                error = f"worker lost {self.max_attempts} times while running this vector: {reason}"
                self.trials[one.trial].outcomes[one.vector_id] = VectorOutcome(
                    one.vector_id, one.trial, one.example_id, error=error
                )
                changed.add(one.trial)
            else:
                self.pending.appendleft(one)
        return changed

    def prune(self, number: int) -> None:
        self.trials[number].pruned = True

    def _running_for(self, number: int) -> bool:
        running = any(t.trial == number for batch in self.running.values() for t in batch)
        return running or any(o.trial == number for o in self.held.values())

    def ready(self) -> list[TrialWork]:
        """Trials with every outcome in, or pruned with nothing still running."""
        out = []
        for work in self.trials.values():
            complete = len(work.outcomes) == len(work.assignments)
            if complete or (work.pruned and not self._running_for(work.number)):
                out.append(work)
        return out

    def pop(self, number: int) -> TrialWork:
        work = self.trials.pop(number)
        remaining = [t for t in self.pending if t.trial != number]
        self.pending = deque(remaining)
        return work
