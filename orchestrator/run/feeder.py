"""The driver's side of the streaming protocol: every worker's inbox topped up,
every outbox drained.

For each ready worker of the steering pool the feeder keeps one ``drain``
long-poll in flight (it returns as soon as a vector is done, or after
``drain_wait_s``) and, while the ledger has pending assignments, tops the
worker up to ``depth`` assignments sent and not back (default: twice its
rows, enough to refill every row once). It never waits for a worker: ``put``
and ``drain`` are calls in flight, collected by :meth:`Feeder.poll`.

A worker that dies (a call comes back :class:`WorkerLost`) loses everything
it held; the driver hands that back to the ledger, which requeues it. Calls
carry the worker's incarnation (``epoch``), so the other calls of a dead
incarnation that fail afterwards are not taken for a second death.

The feeder also sums the workers' engine reports into the study's occupancy
(rows holding a job over rows, from the first assignment sent to the last
outcome) and evaluation share.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from orchestrator.run.ledger import Ledger
from orchestrator.run.pools import Done, Pool, WorkerLost
from workers.service.protocol import Assignment, EngineReport, VectorOutcome

log = logging.getLogger(__name__)


@dataclass
class Events:
    """What came back in one poll: outcomes per worker, and lost workers."""

    outcomes: list[tuple[int, list[VectorOutcome]]] = field(default_factory=list)
    lost: list[tuple[int, str]] = field(default_factory=list)


def _put(actor: Any, batch: list) -> Any:
    return actor.put.remote(batch)


def _drain(actor: Any, wait_s: float) -> Any:
    return actor.drain.remote(wait_s)


class Feeder:
    """See the module docstring."""

    def __init__(
        self, pool: Pool, ledger: Ledger, *, depth: int, drain_wait_s: float = 0.5
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.pool, self.ledger, self.depth = pool, ledger, depth
        self.drain_wait_s = drain_wait_s
        self.epoch: dict[int, int] = defaultdict(int)
        self.draining: set[int] = set()
        self.reports: dict[int, EngineReport] = {}
        self._retired = EngineReport()  # the counters of workers' earlier incarnations
        self.first_put: float | None = None
        self.last_outcome: float | None = None
        self.sent: dict[int, int] = defaultdict(int)  # assignments sent, per worker
        self.returned: dict[int, int] = defaultdict(int)  # outcomes back, per worker
        # Called on every batch as it is sent (Ledger.take): the driver stamps
        # the transfer screen's current threshold on the assignments.
        self.stamp: Callable[[list[Assignment]], list[Assignment]] | None = None

    def pump(self) -> None:
        """Start a drain on every ready worker that has none, and top up inboxes."""
        for key in self.pool.keys:
            tag = str(self.epoch[key])
            if key not in self.draining:
                self.pool.submit(key, _drain, self.drain_wait_s, "drain:" + tag)
                self.draining.add(key)
            room = self.depth - self.ledger.outstanding(key)
            if room > 0 and self.ledger.pending:
                batch = self.ledger.take(key, room, self.stamp)
                if batch:
                    self.pool.submit(key, _put, batch, "put:" + tag)
                    self.sent[key] += len(batch)
                    if self.first_put is None:
                        self.first_put = time.monotonic()

    def poll(self, timeout: float) -> Events:
        events = Events()
        for done in self.pool.poll(timeout):
            self._take(done, events)
        return events

    def _take(self, done: Done, events: Events) -> None:
        kind, _, epoch = done.tag.partition(":")
        key = done.key
        current = str(self.epoch[key]) == epoch
        if isinstance(done.value, WorkerLost):
            if current:  # the first call of this incarnation to fail: it is gone
                self.epoch[key] += 1
                self.draining.discard(key)
                old = self.reports.pop(key, None)
                if old is not None:
                    self._add(self._retired, old)
                events.lost.append((key, done.value.reason))
            return
        if kind != "drain":
            return  # a put's answer (the inbox depth)
        if current:
            self.draining.discard(key)
            self.reports[key] = done.value.report
        if done.value.outcomes:
            self.last_outcome = time.monotonic()
            self.returned[key] += len(done.value.outcomes)
            events.outcomes.append((key, done.value.outcomes))

    @staticmethod
    def _add(total: EngineReport, r: EngineReport) -> None:
        """Add every counter of ``r`` to ``total`` (``max_rows`` is a size, not a count)."""
        for f in fields(EngineReport):
            if f.name != "max_rows":
                setattr(total, f.name, getattr(total, f.name) + getattr(r, f.name))

    # ------------------------------------------------------------ the figures

    def log_counts(self) -> None:
        for key in sorted(set(self.sent) | set(self.returned)):
            log.info(
                "actor %d: %d assignments sent, %d outcomes back",
                key,
                self.sent[key],
                self.returned[key],
            )

    def totals(self) -> EngineReport:
        out = EngineReport(max_rows=sum(r.max_rows for r in self.reports.values()))
        self._add(out, self._retired)
        for r in self.reports.values():
            self._add(out, r)
        return out

    def occupancy(self) -> tuple[float, float]:
        """``(occupancy, evaluation share)`` of the study so far: rows holding a
        job over the rows of every worker, and time evaluating over workers'
        time, both from the first assignment sent to the last outcome."""
        if self.first_put is None or self.last_outcome is None or not self.reports:
            return 0.0, 0.0
        span = max(self.last_outcome - self.first_put, 1e-9)
        total = self.totals()
        rows = total.max_rows or 1
        return total.busy_row_s / (rows * span), total.eval_s / (len(self.reports) * span)
