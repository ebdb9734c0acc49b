"""A resident engine per worker: assignments stream in, outcomes stream out.

:class:`StreamingEngine` runs one engine loop for the worker's whole life, on
a background thread (the Ray actor is a threaded actor, so ``put`` and
``drain`` are answered while the loop runs; the model is used by the loop
thread alone). ``put(assignments)`` adds to its inbox without waiting; the
loop admits assignments as rows free up (continuous batching across calls,
:class:`workers.engine.loop.Engine`); each finished vector is evaluated on
the held-out examples and its outcome goes to the outbox, which
``drain(timeout)`` empties, waiting up to ``timeout`` for a first outcome.

Why a drained outbox rather than a Ray streaming generator: a generator's
results belong to one call, while here work arrives in many calls and
finishes in another order; the driver keeps one ``drain`` long-poll in
flight per worker and learns of a vector the moment it is done. A worker
that dies loses its inbox and outbox with it, so the driver requeues
everything it sent that has not come back.

Evaluation never empties the batch: a vector that finishes is evaluated
between optimizer steps, a few at a time (``eval_batch``), while the other
rows go on; only when no row is left to step does the loop evaluate all
that is waiting. Prefix states, unsteered values and unsteered generations
are kept across evaluations (:class:`workers.evaluation.evaluate.EvalCache`).
Reentrant assignments run as two engine jobs: when stage one stops, its
teacher distributions are computed and stage two joins the batch.

:class:`BatchWorker` offers the same ``put``/``drain`` contract for a
function that takes a whole batch (fakes in tests, and the batch-per-call
protocol the streaming benchmark compares against): one batch at a time, its
outcomes all at once.

Occupancy is counted in time: ``busy_row_s`` sums, over the loop's life,
rows holding a job times seconds; the driver divides it by rows times the
study's span (first assignment to last outcome).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from workers.engine.loop import Engine, EngineStats, optimize
from workers.engine.reentrant import check_reentrant, stage_two
from workers.evaluation.evaluate import EvalCache, EvalSpec
from workers.jobs import VectorJob, VectorResult
from workers.models import LoadedModel
from workers.service.assignments import evaluate_into, with_caa
from workers.service.protocol import (  # re-exported: the protocol's names
    Assignment,
    Drained,
    EngineReport,
    VectorOutcome,
)
from workers.steering.encoding import JobError, encode_job
from workers.steering.vectors import SteeringVector

log = logging.getLogger(__name__)


@dataclass
class _Live:
    """An assignment inside the worker, from admission to its outcome."""

    assignment: Assignment
    outcome: VectorOutcome
    optimize_s: float = 0.0
    stage: int = 1  # for reentrant assignments: the stage in the engine


@dataclass
class _Finished:
    live: _Live
    result: VectorResult
    job: VectorJob  # the job whose vector is evaluated (stage two for reentrant)


class StreamingEngine:
    """See the module docstring."""

    def __init__(
        self,
        lm: LoadedModel,
        evaluation: EvalSpec,
        *,
        max_rows: int,
        token_budget: int | None = None,
        eval_batch: int = 4,
        on_report: Callable[[EngineReport], None] | None = None,
        cache: EvalCache | None = None,
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self.lm, self.evaluation = lm, evaluation
        self.stats = EngineStats()
        self.engine = Engine(lm, max_rows=max_rows, token_budget=token_budget, stats=self.stats)
        self.cache = cache if cache is not None else EvalCache()
        self.eval_batch = max(1, eval_batch)
        self.on_report = on_report
        self.report = EngineReport(max_rows=max_rows)
        self._cond = threading.Condition()
        self._inbox: deque[Assignment] = deque()
        self._outbox: list[VectorOutcome] = []
        self._live: dict[str, _Live] = {}  # engine job id -> assignment
        self._evaluate: deque[_Finished] = deque()
        self._held: set[str] = set()  # vector ids admitted and not yet out
        self._thread: threading.Thread | None = None
        self._closed = False
        self._error: BaseException | None = None

    # ------------------------------------------------------------ the contract

    def put(self, assignments: Sequence[Assignment]) -> int:
        """Queue assignments; returns how many wait in the inbox now."""
        with self._cond:
            self._raise_if_dead()
            self._inbox.extend(assignments)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
                self._thread.start()
            self._cond.notify_all()
            return len(self._inbox)

    def drain(self, timeout: float = 0.0) -> Drained:
        """The outcomes finished since the last call; waits up to ``timeout``
        seconds for the first one."""
        with self._cond:
            self._cond.wait_for(lambda: self._outbox or self._error or self._closed, timeout)
            self._raise_if_dead()
            out, self._outbox = self._outbox, []
            return Drained(out, EngineReport(**asdict(self.report)), len(self._inbox))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def busy(self) -> bool:
        with self._cond:
            return bool(self._inbox or self._live or self._evaluate or self._outbox)

    # ------------------------------------------------------------ the loop

    def _raise_if_dead(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"the engine loop stopped: {self._error!r}") from self._error

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - reported to the next put/drain
            log.error("engine loop failed: %s", "".join(traceback.format_exception(exc)))
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def _loop(self) -> None:
        mark = time.perf_counter()
        while True:
            with self._cond:
                while not (self._inbox or not self.engine.idle or self._evaluate or self._closed):
                    self._cond.wait(timeout=1.0)
                    mark = self._account(mark)
                if self._closed:
                    return
                new = list(self._inbox)
                self._inbox.clear()
            if new:
                self._admit(new)
            if not self.engine.idle:
                self._step()
                mark = self._account(mark, step=True)
            if self._evaluate:
                # Between steps, a few; when no row is left to step, all.
                n = len(self._evaluate) if self.engine.idle else self.eval_batch
                self._evaluate_some(n)
                mark = self._account(mark, evaluating=True)

    def _account(self, mark: float, *, step: bool = False, evaluating: bool = False) -> float:
        """Add the time since ``mark`` to the counters; returns the new mark."""
        now = time.perf_counter()
        dt = now - mark
        rows = len(self.engine.running)
        self.report.busy_row_s += rows * dt
        if step:
            self.report.step_s += dt
        if evaluating:
            self.report.eval_s += dt
        self.report.steps = self.stats.steps
        self.report.vector_steps = self.stats.vector_steps
        return now

    def _admit(self, assignments: list[Assignment]) -> None:
        encoded = []
        for a in assignments:
            if a.vector_id in self._held:
                continue  # sent again (the driver thought this worker lost): one outcome
            self._held.add(a.vector_id)
            live = _Live(a, VectorOutcome(a.vector_id, a.trial, a.example_id))
            try:
                a = live.assignment = with_caa(self.lm, a)
                if a.reentrant is not None:
                    check_reentrant([a.reentrant])
                    enc = encode_job(self.lm, a.reentrant.stage1)
                else:
                    enc = encode_job(self.lm, a.job)
            except JobError as exc:
                live.outcome.error = str(exc)
                self._emit([live.outcome])
                continue
            self._live[enc.job.job_id] = live
            encoded.append(enc)
        if encoded:
            self.engine.add(encoded)

    def _step(self) -> None:
        running = list(self.engine.running)
        t0 = time.perf_counter()
        try:
            results = self.engine.step()
        except Exception as exc:  # noqa: BLE001 - isolate the rows of this step
            log.warning("a step of %d rows failed (%s); running each alone", len(running), exc)
            self._isolate(running)
            return
        dt = time.perf_counter() - t0
        for job_id in running:
            self._live[job_id].optimize_s += dt / max(len(running), 1)
        for res in results:
            self._finished(res)

    def _isolate(self, job_ids: list[str]) -> None:
        """Run each job of a failed step alone; a job that fails alone fails."""
        for enc in self.engine.evict(job_ids):
            live = self._live[enc.job.job_id]
            t0 = time.perf_counter()
            try:
                [res] = optimize(self.lm, [enc.job], stats=self.stats)
            except Exception as exc:  # noqa: BLE001 - this job's own error
                del self._live[enc.job.job_id]
                live.outcome.error = f"{type(exc).__name__}: {exc}"
                self._emit([live.outcome])
                continue
            live.optimize_s += time.perf_counter() - t0
            self._finished(res)

    def _finished(self, res: VectorResult) -> None:
        live = self._live.pop(res.job_id)
        a, out = live.assignment, live.outcome
        if a.reentrant is not None and live.stage == 1:
            try:
                [stage2], _ = stage_two(self.lm, [a.reentrant], [res])
                enc = encode_job(self.lm, stage2)
            except Exception as exc:  # noqa: BLE001 - this assignment's own error
                out.error = f"{type(exc).__name__}: {exc}"
                self._emit([out])
                return
            live.stage = 2
            self._live[enc.job.job_id] = live
            self.engine.add([enc])
            return
        out.result = res
        out.optimize_s = live.optimize_s
        if res.stop_reason in ("nonfinite", "out_of_memory"):
            out.error = f"{res.stop_reason.replace('_', ' ')} after {res.iterations} steps"
            self._emit([out])
            return
        job = a.job if a.reentrant is None else a.reentrant.stage2
        self._evaluate.append(_Finished(live, res, job))

    def _evaluate_some(self, n: int) -> None:
        batch = [self._evaluate.popleft() for _ in range(min(n, len(self._evaluate)))]
        vectors = [
            SteeringVector.from_result(f.live.assignment.vector_id, f.result, f.job) for f in batch
        ]
        outcomes = [f.live.outcome for f in batch]
        thresholds = [f.live.assignment.screen_threshold for f in batch]
        evaluate_into(self.lm, self.evaluation, vectors, thresholds, outcomes, self.cache)
        self._emit(outcomes)

    def _emit(self, outcomes: list[VectorOutcome]) -> None:
        now = time.time()
        for o in outcomes:
            o.finished_at = now
        self._held.difference_update(o.vector_id for o in outcomes)
        with self._cond:
            self.report.vectors += sum(o.error is None for o in outcomes)
            self.report.failed += sum(o.error is not None for o in outcomes)
            self._outbox.extend(outcomes)
            self._cond.notify_all()
        if self.on_report is not None:
            self.on_report(self.report)
