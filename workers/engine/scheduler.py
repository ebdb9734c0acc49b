"""Continuous-batching bookkeeping: which jobs run in the next optimizer step.

Plain Python, no torch, so it is testable without a model (the same split as
an inference server's scheduler and its model runner).

The size of a batch is what it holds in memory per block: every sequence is
padded to the longest one, so ``cost = n_sequences * longest`` tokens. A job
is admitted while the running batch, with it, stays within ``token_budget``
and ``max_rows`` jobs.

Choosing among waiting jobs:

- **Least waste.** A job's ``depth`` is the number of blocks its rows run
  (from its steering layer to the top). Every row is padded to the batch's
  longest sequence, so a batch computes ``longest * sum(n_seqs * depth)``
  block-token positions. The scheduler admits the waiting job whose useful
  work (``n_seqs * length * depth``) leaves the least of that unused: jobs of
  similar length batch together (length bucketing), and padding in deep jobs
  counts for more than in shallow ones.
- **No starvation.** Each later arrival admitted ahead of a job counts
  against it; once ``max_wait`` jobs have overtaken it, it goes first, and
  nothing else is admitted ahead of it until it fits.
- **Determinism.** Ties break by arrival order, and arrival order within one
  ``add`` call is a permutation drawn from ``seed``. The same requests and
  seed give the same admissions, run after run.

Out of memory: :meth:`Scheduler.shrink` halves the budget and pauses the most
recently admitted jobs until the batch fits again. A paused job keeps its
place at the front of the queue (and, in the engine, its optimizer state), so
nothing is lost and nothing repeats.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Request:
    """One job as the scheduler sees it.

    ``n_seqs`` sequences, the longest ``length`` tokens; ``depth`` blocks
    from its first steered layer to the top.
    """

    key: str
    n_seqs: int
    length: int
    depth: int = 1

    @property
    def tokens(self) -> int:
        return self.n_seqs * self.length


@dataclass
class _Waiting:
    request: Request
    order: int  # arrival rank; lower goes first on ties
    passed_over: int = 0


def _waste(r: Request, deep_seqs: int, longest: int) -> int:
    """Block-token positions computed but unused if ``r`` joins a batch whose rows
    hold ``deep_seqs`` = sum of sequences x depth, the longest ``longest``."""
    total = max(longest, r.length) * (deep_seqs + r.n_seqs * r.depth)
    return total - longest * deep_seqs - r.tokens * r.depth


class SchedulerError(ValueError):
    pass


class Scheduler:
    """Admits waiting jobs into the running batch under a token budget."""

    def __init__(
        self,
        *,
        token_budget: int | None = None,
        max_rows: int | None = None,
        max_wait: int = 64,
        seed: int = 0,
    ) -> None:
        if token_budget is not None and token_budget < 1:
            raise SchedulerError(f"token_budget must be >= 1, got {token_budget}")
        if max_rows is not None and max_rows < 1:
            raise SchedulerError(f"max_rows must be >= 1, got {max_rows}")
        self.token_budget = token_budget
        self.max_rows = max_rows
        self.max_wait = max_wait
        self._rng = random.Random(seed)
        self._arrivals = 0
        self.waiting: list[_Waiting] = []
        self.running: list[Request] = []  # in admission order
        self.oom_count = 0

    # -- queue -------------------------------------------------------------
    def add(self, requests: Iterable[Request]) -> None:
        batch = list(requests)
        known = {w.request.key for w in self.waiting} | {r.key for r in self.running}
        for r in batch:
            if r.key in known:
                raise SchedulerError(f"job '{r.key}' is already scheduled")
            if r.n_seqs < 1 or r.length < 1:
                raise SchedulerError(f"job '{r.key}' has no tokens")
            if r.depth < 1:
                raise SchedulerError(f"job '{r.key}' runs no blocks")
            known.add(r.key)
        self._rng.shuffle(batch)
        for r in batch:
            self.waiting.append(_Waiting(r, self._arrivals))
            self._arrivals += 1

    def finish(self, key: str) -> None:
        for i, r in enumerate(self.running):
            if r.key == key:
                del self.running[i]
                return
        raise SchedulerError(f"job '{key}' is not running")

    def remove(self, key: str) -> None:
        """Forget a job, running or waiting (it is run elsewhere)."""
        self.running = [r for r in self.running if r.key != key]
        self.waiting = [w for w in self.waiting if w.request.key != key]

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    # -- cost --------------------------------------------------------------
    @staticmethod
    def cost(requests: Iterable[Request]) -> int:
        """Padded tokens of a batch: sequences times the longest sequence."""
        rs = list(requests)
        if not rs:
            return 0
        return sum(r.n_seqs for r in rs) * max(r.length for r in rs)

    def _fits(self, r: Request, seqs: int, longest: int) -> bool:
        """Whether ``r`` may join a batch of ``seqs`` sequences, the longest ``longest``."""
        if self.max_rows is not None and len(self.running) >= self.max_rows:
            return False
        if not self.running:
            return True  # a job alone always runs; the engine handles a real OOM
        if self.token_budget is None:
            return True
        return (seqs + r.n_seqs) * max(longest, r.length) <= self.token_budget

    # -- admission ---------------------------------------------------------
    @staticmethod
    def work(requests: Iterable[Request]) -> int:
        """Block-token positions a batch computes: longest x sum of sequences x depth."""
        rs = list(requests)
        if not rs:
            return 0
        return max(r.length for r in rs) * sum(r.n_seqs * r.depth for r in rs)

    def admit(self) -> list[Request]:
        """Move waiting jobs into the batch while they fit; returns the admitted ones."""
        admitted: list[Request] = []
        while self.waiting:
            seqs = sum(r.n_seqs for r in self.running)
            longest = max((r.length for r in self.running), default=0)
            deep_seqs = sum(r.n_seqs * r.depth for r in self.running)
            overdue = [w for w in self.waiting if w.passed_over >= self.max_wait]
            if overdue:
                # An overdue job holds the door: nothing else goes ahead of it.
                pick = min(overdue, key=lambda w: w.order)
                if not self._fits(pick.request, seqs, longest):
                    break
            else:
                fitting = [w for w in self.waiting if self._fits(w.request, seqs, longest)]
                if not fitting:
                    break
                pick = min(fitting, key=lambda w: (_waste(w.request, deep_seqs, longest), w.order))
            self.waiting.remove(pick)
            self.running.append(pick.request)
            admitted.append(pick.request)
            for w in self.waiting:
                if w.order < pick.order:
                    w.passed_over += 1  # overtaken by a later arrival
        return admitted

    # -- out of memory -----------------------------------------------------
    def shrink(self) -> list[Request]:
        """Halve the budget after an out-of-memory error; pause jobs until the batch fits.

        Paused jobs go back to the front of the queue, overdue, in their
        admission order. Returns them. With one job running there is nothing
        to split: the caller must fail that job.
        """
        self.oom_count += 1
        current = max(self.cost(self.running), 1)
        self.token_budget = max(current // 2, 1)
        rows = max(len(self.running) // 2, 1)
        self.max_rows = rows if self.max_rows is None else min(self.max_rows, rows)
        paused: list[Request] = []
        while len(self.running) > 1 and (
            len(self.running) > self.max_rows or self.cost(self.running) > self.token_budget
        ):
            paused.insert(0, self.running.pop())
        first = min((w.order for w in self.waiting), default=0)
        for i, r in enumerate(paused):
            self.waiting.append(_Waiting(r, first - len(paused) + i, passed_over=self.max_wait))
        return paused
