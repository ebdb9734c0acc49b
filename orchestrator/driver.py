"""The driver: owns the Optuna study (ask/tell), the scheduler and the store.

Per trial: ask params -> K vector tasks (one per training example) -> workers
optimize and evaluate them -> each finished vector is reported as an
intermediate value (a pruner may stop the trial; its vectors are kept) ->
objectives -> the store (trials row last, as the commit marker) -> tell.
Results reach the store before Optuna hears of them, so a killed driver
loses nothing that was told, and a rerun resumes from the store.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import optuna
from optuna.trial import TrialState

from orchestrator.objectives import Objective, trial_value
from orchestrator.pool import Pool, WorkerLost
from orchestrator.preflight import Plan
from orchestrator.scheduler import Scheduler, TrialWork
from orchestrator.search import STORE_TRIAL, create_study, distributions_json, retell
from orchestrator.space import build_task, distributions, fixed_params
from orchestrator.store import (
    StoreWriteError,
    StoreWriter,
    Study,
    TransferRecord,
    TrialRecord,
    VectorRecord,
    open_study,
    vector_id,
)

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    study: str
    store: str
    n_trials: int
    resumed: int
    told: int = 0
    states: dict[str, int] = field(default_factory=dict)
    vectors: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    best: list[dict[str, Any]] = field(default_factory=list)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Driver:
    """Runs one study to its requested number of trials; see the module docstring."""

    def __init__(
        self,
        plan: Plan,
        pool: Pool,
        writer: StoreWriter,
        *,
        progress: Callable[[RunSummary, int], None] | None = None,
    ) -> None:
        cfg = plan.config
        self.plan, self.cfg, self.pool, self.writer = plan, cfg, pool, writer
        self.objectives = [Objective(**o.model_dump()) for o in cfg.objectives]
        self.dists = distributions(plan.space)
        self.fixed = fixed_params(plan.space)
        self.scheduler = Scheduler()
        self.progress = progress
        # Store writes run on a few threads so the loop keeps feeding workers;
        # Optuna is only told (on this thread) once a trial's write is done.
        self.writer_threads = cf.ThreadPoolExecutor(max_workers=4, thread_name_prefix="store-write")
        self.writes: dict[cf.Future, tuple[TrialWork, TrialRecord, list, list]] = {}
        per_trial = cfg.vectors_per_trial
        slots = len(pool.keys) * cfg.model.max_batch_jobs
        # Enough trials that every worker has a full batch, plus one spare
        # trial per worker so a finishing worker never waits on the driver.
        self.in_flight = cfg.trials_in_flight or max(1, math.ceil(slots / per_trial)) + len(
            pool.keys
        )

    # ------------------------------------------------------------- numbering
    def _numbers(self, study: Study, done: set[int]) -> list[int]:
        """Store numbers for new trials: gaps first (trials a killed driver left
        half-written, whose objects are then overwritten), then upward."""
        seen = set(done)
        for table in ("vectors", "transfer"):
            column = study.dataset(table).to_table(columns=["trial"]).column("trial")
            seen |= set(column.to_pylist())
        top = max(seen, default=-1)
        gaps = [n for n in range(top + 1) if n not in done]
        return gaps + list(range(top + 1, top + 1 + self.cfg.n_trials))

    # ------------------------------------------------------------------ run
    def run(self) -> RunSummary:
        try:
            return self._run()
        finally:
            self.writer_threads.shutdown(wait=True)

    def _run(self) -> RunSummary:
        cfg = self.cfg
        stored_study = open_study(self.writer.root, cfg.name)
        stored = stored_study.completed_trials()
        done = {t.number for t in stored}
        summary = RunSummary(cfg.name, self.plan.store_uri, cfg.n_trials, resumed=len(done))
        for t in stored:
            summary.states[t.state] = summary.states.get(t.state, 0) + 1
        study = create_study(cfg, self.plan.space)
        retell(study, stored)
        numbers = iter(self._numbers(stored_study, done))
        to_ask = max(0, cfg.n_trials - len(done))
        if done:
            log.info(
                "resuming %s: %d of %d trials already in the store",
                cfg.name,
                len(done),
                cfg.n_trials,
            )
        timing = {"ask_tell": 0.0, "write": 0.0, "wait": 0.0, "optimize": 0.0, "evaluate": 0.0}
        self.latencies: list[float] = []  # ask + tell seconds per trial, in tell order
        while to_ask or self.scheduler.trials or self.writes:
            while to_ask and len(self.scheduler.trials) < self.in_flight:
                t0 = time.perf_counter()
                trial = study.ask(self.dists)
                timing["ask_tell"] += time.perf_counter() - t0
                self._start(trial, next(numbers))
                self.scheduler.trials[trial.user_attrs[STORE_TRIAL]].ask_s = (
                    time.perf_counter() - t0
                )
                to_ask -= 1
            for key in self.pool.keys:
                if not self.scheduler.busy(key):
                    batch = self.scheduler.take(key, cfg.model.max_batch_jobs)
                    if batch:
                        self.pool.submit(key, batch)
            t0 = time.perf_counter()
            finished = self.pool.poll(timeout=0.2)
            timing["wait"] += time.perf_counter() - t0
            for key, result in finished:
                if isinstance(result, WorkerLost):
                    changed = self.scheduler.lost(key, result.reason)
                else:
                    changed = self.scheduler.finish(key, result)
                    # Worker-side seconds, per vector: their sums split the wait.
                    timing["optimize"] += sum(o.optimize_s for o in result)
                    timing["evaluate"] += sum(o.evaluate_s for o in result)
                for number in changed:
                    self._report(self.scheduler.trials[number])
            for work in self.scheduler.ready():
                self.scheduler.pop(work.number)
                self._submit_write(self._records(work))
            self._flush(study, summary, timing)
        tail = self.latencies[-100:]
        if tail:
            timing["ask_tell_last100_s"] = sum(tail) / len(tail)
        summary.seconds = timing
        summary.best = _best(study)
        return summary

    def _start(self, trial: optuna.trial.Trial, number: int) -> None:
        trial.set_user_attr(STORE_TRIAL, number)
        params = {**self.fixed, **trial.params}
        tasks = [
            build_task(
                vector_id(self.cfg.name, number, ex.id),
                number,
                ex,
                params,
                self.plan.space,
                study_seed=self.cfg.seed,
                log_base=self.cfg.evaluation.log_base,
            )
            for ex in self.plan.train
        ]
        self.scheduler.add_trial(TrialWork(number, tasks, trial, params, started=_now()))

    def _report(self, work: TrialWork) -> None:
        """Intermediate value after each finished vector; may prune the trial."""
        if len(self.objectives) > 1 or work.pruned:
            return
        outcomes = work.ordered_outcomes()
        if len(outcomes) <= work.reported or any(o.error for o in outcomes):
            return
        work.reported = len(outcomes)
        value = self._values(outcomes)[0]
        if math.isfinite(value):
            work.handle.report(value, step=len(outcomes) - 1)
            work.intermediate[len(outcomes) - 1] = value
            if len(outcomes) < len(work.tasks) and work.handle.should_prune():
                log.info("pruning trial %d after %d vectors", work.number, len(outcomes))
                self.scheduler.prune(work.number)

    def _values(self, outcomes: list) -> list[float]:
        rows = [r for o in outcomes for r in o.rows]
        norms = {o.vector_id: o.result.final_norm for o in outcomes if o.result is not None}
        return [trial_value(rows, obj, norms) for obj in self.objectives]

    def _records(self, work: TrialWork) -> tuple[TrialWork, TrialRecord, list, list]:
        outcomes = work.ordered_outcomes()
        errors = sorted({o.error for o in outcomes if o.error})
        values: list[float] | None = None
        error = None
        if work.pruned:
            state = "PRUNED"
        elif errors:
            state, error = (
                "FAIL",
                "; ".join(errors[:3]) + (f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""),
            )
        else:
            values = self._values(outcomes)
            bad = [
                o.label
                for o, v in zip(self.objectives, values, strict=True)
                if not math.isfinite(v)
            ]
            state = "COMPLETE" if not bad else "FAIL"
            if bad:
                error, values = f"objective(s) {', '.join(bad)} had no finite value", None
        record = TrialRecord(
            number=work.number,
            state=state,
            params=work.params,
            values=values,
            intermediate_values=dict(work.intermediate),
            started_at=work.started,
            finished_at=_now(),
            error=error,
            distributions_json=distributions_json(self.dists),
        )
        vectors, transfer = [], []
        for task, o in ((t, work.outcomes.get(t.vector_id)) for t in work.tasks):
            if o is None or o.result is None:
                continue
            vectors.append(
                VectorRecord(
                    o.result,
                    task.example_id,
                    loss_kind=str(work.params["loss"]),
                    lr=float(work.params["lr"]),
                    norm_bound=work.params.get("norm"),
                    intervention=str(work.params["intervention"]),
                    dtype=self.plan.model_spec.dtype,
                )
            )
            transfer += [
                TransferRecord(
                    r.vector_id, r.example_id, r.metric, r.steered, r.unsteered, r.success
                )
                for r in o.rows
            ]
        return work, record, vectors, transfer

    def _submit_write(self, item: tuple[TrialWork, TrialRecord, list, list]) -> None:
        _, record, vectors, transfer = item
        self.writes[self.writer_threads.submit(self._write, record, vectors, transfer)] = item

    def _write(self, record: TrialRecord, vectors: list, transfer: list) -> float:
        t0 = time.perf_counter()
        self.writer.write_trial(record, vectors, transfer)
        return time.perf_counter() - t0

    def _flush(self, study: optuna.Study, summary: RunSummary, timing: dict[str, float]) -> None:
        """Tell Optuna about trials whose write finished. A failed write keeps
        the trial pending and is tried again: nothing is told unwritten."""
        done = [f for f in self.writes if f.done()]
        if not done and not self.scheduler.trials and self.writes:
            cf.wait(list(self.writes), timeout=0.5, return_when=cf.FIRST_COMPLETED)
            done = [f for f in self.writes if f.done()]
        for fut in done:
            work, record, vectors, transfer = item = self.writes.pop(fut)
            try:
                timing["write"] += fut.result()
            except StoreWriteError as exc:
                log.error("could not write trial %d yet (%s); will retry", record.number, exc)
                time.sleep(1.0)
                self._submit_write(item)
                continue
            t0 = time.perf_counter()
            if record.error:
                work.handle.set_user_attr("error", record.error[:1000])
            if record.state == "COMPLETE":
                study.tell(work.handle, record.values)
            else:
                study.tell(work.handle, state=getattr(TrialState, record.state))
            timing["ask_tell"] += time.perf_counter() - t0
            self.latencies.append(work.ask_s + time.perf_counter() - t0)
            summary.told += 1
            summary.vectors += len(vectors)
            summary.states[record.state] = summary.states.get(record.state, 0) + 1
            if self.progress:
                self.progress(summary, record.number)


def _best(study: optuna.Study) -> list[dict[str, Any]]:
    try:
        best = study.best_trials
    except ValueError:
        return []
    return [
        {"store_trial": t.user_attrs.get(STORE_TRIAL), "values": t.values, "params": t.params}
        for t in best
    ]
