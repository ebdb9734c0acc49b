"""The protocol between the driver and a worker, as plain data and one
plain worker: no torch, no model. The driver (``orchestrator.run``) sends
:class:`Assignment` values and gets back :class:`VectorOutcome` values
through ``put`` and ``drain`` (:class:`Drained`, with the worker's
:class:`EngineReport`); :class:`BatchWorker` serves that contract over any
``fn(assignments) -> outcomes``, one batch at a time. The engine-backed worker
is ``workers.service.stream.StreamingEngine``; a process that only fakes a
worker (benchmarks of the driver on real Ray actors) imports this module alone.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from workers.evaluation.rows import Generation, TransferRow
from workers.jobs import VectorJob, VectorResult

if TYPE_CHECKING:
    from workers.analysis.caa import CAASpec
    from workers.engine.loop import EngineStats
    from workers.engine.reentrant import ReentrantJob


@dataclass(frozen=True)
class Assignment:
    """``job`` is optimized (or ``reentrant`` when set, whose stage two is the vector)."""

    vector_id: str
    trial: int
    example_id: str
    job: VectorJob
    reentrant: ReentrantJob | None = None
    # Every training example the vector is optimized on, ``example_id`` first
    # (empty: ``example_id`` alone, a one-shot vector).
    train_example_ids: tuple[str, ...] = ()
    # The transfer screen's threshold for this vector (None: evaluate in full);
    # see workers.evaluation.screen.
    screen_threshold: float | None = None
    # A CAA vector instead of an optimized one (resolved by with_caa on the
    # worker, which has the model).
    caa: CAASpec | None = None


@dataclass
class VectorOutcome:
    vector_id: str
    trial: int
    example_id: str
    result: VectorResult | None = None
    rows: list[TransferRow] = field(default_factory=list)
    generations: list[Generation] = field(default_factory=list)
    error: str | None = None
    optimize_s: float = 0.0
    evaluate_s: float = 0.0
    finished_at: float | None = None  # wall clock (time.time()) when the outcome was ready
    screened: bool = False  # evaluation stopped at the transfer screen's slice


@dataclass
class EngineReport:
    """Cumulative counters of one worker's engine (seconds are wall time).

    ``busy_row_s``: rows holding a job, times seconds. ``step_s``, ``eval_s``:
    time in optimizer steps and in held-out evaluation. ``max_rows``: the
    rows the engine may fill."""

    max_rows: int = 0
    busy_row_s: float = 0.0
    step_s: float = 0.0
    eval_s: float = 0.0
    steps: int = 0
    vector_steps: int = 0
    vectors: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass
class Drained:
    """What one ``drain`` returns: the outcomes since the last one, and the
    engine's counters now."""

    outcomes: list[VectorOutcome]
    report: EngineReport
    inbox: int = 0  # assignments still waiting in the inbox


@dataclass
class BatchWorker:
    """``put``/``drain`` over ``fn(assignments) -> outcomes``, one batch at a
    time on a background thread: the batch-per-call protocol, behind the
    streaming contract. A batch whose ``fn`` raises kills the worker as a
    crash would: its queue is lost and the next ``drain`` raises."""

    fn: Callable[[list[Assignment]], list[VectorOutcome]]
    max_rows: int = 1
    # The engine counters ``fn`` fills in, if it runs an engine; else rows are
    # taken as busy for the whole of each call.
    stats: EngineStats | None = None
    report: EngineReport = field(default_factory=EngineReport)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[list[Assignment]] = deque()
        self._outbox: list[VectorOutcome] = []
        self._dead: str | None = None
        self._thread: threading.Thread | None = None
        self.report.max_rows = self.max_rows
        self.calls = 0

    def put(self, assignments: Sequence[Assignment]) -> int:
        with self._cond:
            self._queue.append(list(assignments))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="batch", daemon=True)
                self._thread.start()
            self._cond.notify_all()
            return sum(len(b) for b in self._queue)

    def drain(self, timeout: float = 0.0) -> Drained:
        with self._cond:
            self._cond.wait_for(lambda: self._outbox or self._dead, timeout)
            if self._dead is not None:
                why, self._dead = self._dead, None
                raise RuntimeError(f"worker died: {why}")
            out, self._outbox = self._outbox, []
            return Drained(out, EngineReport(**asdict(self.report)), 0)

    def close(self) -> None:
        with self._cond:
            self._queue.clear()
            self._queue.append([])  # wakes the thread, which then exits
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue))
                batch = self._queue.popleft()
            if not batch:
                return
            t0 = time.perf_counter()
            try:
                self.calls += 1
                outcomes = self.fn(batch)
            except Exception as exc:  # noqa: BLE001 - a crash: everything queued is lost
                with self._cond:
                    self._queue.clear()
                    self._dead = repr(exc)
                    self._cond.notify_all()
                continue
            dt = time.perf_counter() - t0
            now = time.time()
            for o in outcomes:
                o.finished_at = now
            with self._cond:
                if self.stats is not None:
                    self.report.busy_row_s = self.stats.busy_row_s
                    self.report.step_s = self.stats.step_s
                    self.report.steps = self.stats.steps
                    self.report.vector_steps = self.stats.vector_steps
                    self.report.eval_s += sum(o.evaluate_s for o in outcomes)
                else:
                    self.report.busy_row_s += min(len(batch), self.max_rows) * dt
                    self.report.step_s += dt
                self.report.vectors += sum(o.error is None for o in outcomes)
                self.report.failed += sum(o.error is not None for o in outcomes)
                self._outbox.extend(outcomes)
                self._cond.notify_all()
