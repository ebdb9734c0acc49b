"""The driver: owns the Optuna study (ask/tell), the ledger and the store.

Per trial: ask params -> K assignments (one per training example) -> workers
optimize and evaluate them -> each finished vector is reported as an
intermediate value (a pruner may stop the trial; its vectors are kept) ->
objectives -> the store (trials row last, as the commit marker) -> tell.
Results reach the store before Optuna hears of them, so a killed driver
loses nothing that was told, and a rerun resumes from the store.

With a surprisal model, a vector's outcome is held until the second pool has
scored its generations (:mod:`orchestrator.run.surprisal`). The loop hands out work
before it asks: ``in_flight`` keeps a spare trial per worker, so a worker that
finishes gets queued assignments at once, and the next ``ask`` (the expensive step:
TPE rebuilds its model from every trial) happens after that.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from orchestrator.ranking import trial_order
from orchestrator.run.committer import Committer, TrialRows
from orchestrator.run.expand import build_assignment, training_sets
from orchestrator.run.feeder import Feeder
from orchestrator.run.ledger import Ledger, TrialWork
from orchestrator.run.pools import Pool
from orchestrator.run.preflight import Plan
from orchestrator.run.screening import ScreenHistory
from orchestrator.run.surprisal import Scoring, needs_scores
from orchestrator.store import (
    GenerationRecord,
    StoredTrial,
    StoreWriter,
    Study,
    StudyLease,
    TransferRecord,
    TrialRecord,
    VectorRecord,
    study_at,
    vector_id,
)
from orchestrator.study.objectives import Objective, trial_value
from orchestrator.study.optuna_study import STORE_TRIAL, create_study, distributions_json, retell
from orchestrator.study.params import TrialParams
from orchestrator.study.space import distributions, fixed_params
from workers.service.protocol import Assignment

log = logging.getLogger(__name__)

# At most this many asks, or this many seconds of asking, per pass of the loop.
ASKS_PER_PASS = 8
ASK_PASS_S = 0.002


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
    # ask/tell latency: mean and mean of the last 100, in milliseconds
    latency_ms: dict[str, float] = field(default_factory=dict)
    # After the run, from the store: trials it held at the start or was told
    # to hold that it does not have (never counted), and those put back.
    lost: list[int] = field(default_factory=list)
    rewritten: list[int] = field(default_factory=list)
    stored: int = 0  # trials in the store at the end
    stored_numbers: set[int] = field(default_factory=set)
    # rows holding a job over the workers' rows, and the share of the workers'
    # time spent on held-out evaluation, from the first assignment to the last outcome
    occupancy: float = 0.0
    eval_share: float = 0.0
    # time.monotonic() of every tell of this run, in order (trials/s over a window)
    tell_times: list[float] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every trial of the study is in the store."""
        return not self.lost and self.stored >= self.n_trials


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
        scoring: Scoring | None = None,
        lease: StudyLease | None = None,
    ) -> None:
        cfg = plan.config
        self.plan, self.cfg, self.pool, self.writer = plan, cfg, pool, writer
        self.objectives = [Objective(**o.model_dump()) for o in cfg.objectives]
        self.dists = distributions(plan.space)
        self.dists_json = distributions_json(self.dists)
        self.fixed = fixed_params(plan.space)
        self.ledger = Ledger()
        self.scoring = scoring  # the surprisal model's pool, if the study has one
        self.progress = progress
        # Store writes run on a few threads so the loop keeps feeding workers;
        # Optuna is only told (on this thread) once a trial's write is done.
        self.committer = Committer(
            writer,
            give_up_after_s=cfg.store.give_up_after_s,
            group_trials=cfg.store.group_trials,
            group_s=cfg.store.group_ms / 1000,
        )
        self.lease = lease
        per_trial = cfg.vectors_per_trial
        n_workers = max(1, pool.size)  # all asked for, ready or not
        # Each worker holds up to `depth` assignments: its rows and one refill.
        rows = cfg.model.max_batch_jobs
        depth = cfg.model.inbox_depth or (2 * rows if cfg.model.engine == "stream" else rows)
        self.feeder = Feeder(pool, self.ledger, depth=depth)
        # Enough trials to fill every inbox, plus one spare trial per worker
        # so a worker never waits on the driver's next ask.
        slots = n_workers * depth
        self.in_flight = cfg.trials_in_flight or max(1, math.ceil(slots / per_trial)) + n_workers
        self.screening = ScreenHistory.of(plan)  # pruner transfer_screen, else None
        if self.screening is not None:
            self.feeder.stamp = self._stamp_threshold

    # ------------------------------------------------------------- numbering
    def _numbers(self, study: Study, done: set[int]) -> list[int]:
        """Store numbers for new trials: gaps first (trials a killed driver left
        half-written, whose objects are then overwritten), then upward."""
        seen = set(done)
        for table in ("vectors", "transfer"):
            column = study.dataset(table).to_table(columns=["trial"]).column("trial")
            seen |= set(column.to_pylist())
        top = max(seen, default=-1)
        self.committer.fresh_above = top  # numbers above: never in any object of the store
        gaps = [n for n in range(top + 1) if n not in done]
        return gaps + list(range(top + 1, top + 1 + self.cfg.n_trials))

    # ------------------------------------------------------------------ run
    def run(self) -> RunSummary:
        try:
            return self._run()
        finally:
            self.committer.close()

    def _run(self) -> RunSummary:
        cfg = self.cfg
        stored_study = study_at(self.writer.root, cfg.name)
        stored = stored_study.completed_trials()
        done = {t.number for t in stored}
        summary = RunSummary(cfg.name, self.plan.store_uri, cfg.n_trials, resumed=len(done))
        for t in stored:
            summary.states[t.state] = summary.states.get(t.state, 0) + 1
        study = create_study(cfg, self.plan.space)
        retell(study, stored)
        if self.screening is not None and done:
            self.screening.resume(stored_study, done)
        numbers = iter(self._numbers(stored_study, done))
        to_ask = max(0, cfg.n_trials - len(done))
        if done:
            log.info(
                "resuming %s: %d of %d trials already in the store",
                cfg.name,
                len(done),
                cfg.n_trials,
            )
        timing = {"ask": 0.0, "tell": 0.0, "write": 0.0, "wait": 0.0}
        timing |= {"optimize": 0.0, "evaluate": 0.0}
        self.told: set[int] = set()  # store numbers of the trials told this run
        # seconds from a trial's last vector being done (on its worker) to its tell
        self.finish_to_tell_s: list[float] = []
        self.ask_s: list[float] = []  # seconds per ask, in ask order
        self.tell_s: list[float] = []  # seconds per tell, in tell order
        self.ask_to_dispatch_s: list[float] = []  # a trial's ask to its first assignment sent
        self._figures_at = 0.0  # when the progress figures were last summed
        while to_ask or self.ledger.trials or self.committer.pending:
            if self.lease is not None and self.lease.lost:
                raise self.lease.lost_error()
            # One pass: outcomes first, then inboxes topped up (each worker
            # holds its rows' next assignments already, so it never waits on
            # this loop), then writes and tells, then a few asks (below).
            # Trials waiting for their store write count as in flight, so a
            # store slower than the workers cannot build an unbounded backlog
            # of finished, unsaved work that a killed driver would lose (a
            # group commit's buffer does not count: it holds at most a group).
            want_ask = bool(to_ask) and self._open_trials() < self.in_flight
            t0 = time.perf_counter()
            events = self.feeder.poll(timeout=self._poll_timeout(want_ask))
            timing["wait"] += time.perf_counter() - t0
            changed: set[int] = set()
            for key, reason in events.lost:
                changed |= self.ledger.lost(key, reason)
            for key, outcomes in events.outcomes:
                hold = None
                if self.scoring is not None:
                    hold = needs_scores
                    self.scoring.add([o for o in outcomes if needs_scores(o)])
                changed |= self.ledger.finish(key, outcomes, hold)
                if self.screening is not None:
                    self.screening.add(outcomes)
                # Worker-side seconds, per vector: their sums split the wait.
                timing["optimize"] += sum(o.optimize_s for o in outcomes)
                timing["evaluate"] += sum(o.evaluate_s for o in outcomes)
            if self.scoring is not None:
                for vid, rows, error in self.scoring.collect():
                    changed.add(self.ledger.release(vid, rows, error))
                self.scoring.dispatch()
            # Report (and maybe prune) before topping inboxes up, so a pruned
            # trial's unsent vectors are never sent; every inbox holds a
            # refill already, so no row waits for this.
            for number in sorted(changed):
                self._report(self.ledger.trials[number])
            self.feeder.pump()
            if changed:
                for work in self.ledger.ready():
                    self.ledger.pop(work.number)
                    if work.asked_at is not None and work.dispatched_at is not None:
                        self.ask_to_dispatch_s.append(work.dispatched_at - work.asked_at)
                    self.committer.submit(self._records(work))
            self._flush(study, summary, timing, block=not to_ask and not self.ledger.trials)
            if want_ask:
                # A few asks per pass (ASKS_PER_PASS, or ASK_PASS_S of asking,
                # whichever comes first): the pass's fixed cost (poll, pump,
                # flush) is shared, and outcomes wait at most that long.
                spent = 0.0
                for _ in range(ASKS_PER_PASS):
                    t0 = time.perf_counter()
                    asked_at = time.monotonic()
                    trial = study.ask(self.dists)
                    self._start(trial, next(numbers), asked_at)
                    elapsed = time.perf_counter() - t0
                    timing["ask"] += elapsed
                    self.ask_s.append(elapsed)
                    to_ask -= 1
                    spent += elapsed
                    full = self._open_trials() >= self.in_flight
                    if not to_ask or full or spent >= ASK_PASS_S:
                        break
                self.feeder.pump()
        self.feeder.log_counts()
        timing["write"] = self.committer.write_s
        summary.occupancy, summary.eval_share = self.feeder.occupancy()
        summary.seconds = timing
        summary.latency_ms = _latency_ms({"ask": self.ask_s, "tell": self.tell_s})
        summary.latency_ms |= _percentiles_ms("finish_to_tell", self.finish_to_tell_s)
        summary.latency_ms |= _percentiles_ms("ask_to_dispatch", self.ask_to_dispatch_s)
        self._check_store(summary, done | self.told)
        return summary

    def _open_trials(self) -> int:
        """Trials in flight: running, or finished and waiting for their store
        write (a group commit's buffer excepted; see the loop)."""
        return len(self.ledger.trials) + self.committer.unsaved

    def _check_store(self, summary: RunSummary, expected: set[int]) -> None:
        """The summary is read from the store, not from what was told: a trial
        the store lost is rewritten from its kept rows, or reported lost."""
        verified = self.committer.verify(expected)
        summary.rewritten, summary.lost = verified.rewritten, verified.lost
        stored = verified.trials
        summary.stored = len(stored)
        summary.stored_numbers = {t.number for t in stored}
        summary.best = _best(stored, [o.direction for o in self.objectives])
        summary.states = {}
        for t in stored:
            summary.states[t.state] = summary.states.get(t.state, 0) + 1

    def _stamp_threshold(self, batch: list[Assignment]) -> list[Assignment]:
        """The screen's threshold, fixed when an assignment is sent to a
        worker, from every vector finished by then (so it lags by the
        vectors still running and those waiting in workers' inboxes)."""
        assert self.screening is not None
        threshold = self.screening.threshold()
        if threshold is None:
            return batch
        return [replace(a, screen_threshold=threshold) for a in batch]

    def _poll_timeout(self, want_ask: bool) -> float:
        """How long the pass may block on the workers: not at all while there
        is a trial to ask; briefly while a write is pending (its tell should
        not wait for the next batch to finish); else until a batch finishes."""
        if want_ask:
            return 0.0
        if self.committer.pending or (self.scoring is not None and self.scoring.busy):
            return 0.02
        return 0.5

    def _start(self, trial: optuna.trial.Trial, number: int, asked_at: float) -> None:
        trial.set_user_attr(STORE_TRIAL, number)
        params = TrialParams.from_params({**self.fixed, **trial.params})
        sets = training_sets(
            self.plan.train,
            self.plan.train_pool,
            params.shots,
            study_seed=self.cfg.seed,
            trial=number,
        )
        assignments = [
            build_assignment(
                vector_id(self.cfg.name, number, ex.id),
                number,
                ex,
                params,
                self.plan.space,
                study_seed=self.cfg.seed,
                log_base=self.cfg.evaluation.log_base,
                also=also,
                shots_loss=self.plan.space.shots_loss,
            )
            for ex, *also in sets
        ]
        work = TrialWork(number, assignments, trial, params, started=_now(), asked_at=asked_at)
        self.ledger.add_trial(work)

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
            if len(outcomes) < len(work.assignments) and work.handle.should_prune():
                log.info("pruning trial %d after %d vectors", work.number, len(outcomes))
                self.ledger.prune(work.number)

    def _values(self, outcomes: list) -> list[float]:
        rows = [r for o in outcomes for r in o.rows]
        norms = {o.vector_id: o.result.final_norm for o in outcomes if o.result is not None}
        return [trial_value(rows, obj, norms) for obj in self.objectives]

    def _records(self, work: TrialWork) -> TrialRows:
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
            params=work.params.as_dict() if work.params is not None else {},
            values=values,
            intermediate_values=dict(work.intermediate),
            started_at=work.started,
            finished_at=_now(),
            error=error,
            distributions_json=self.dists_json,
        )
        vectors: list[VectorRecord] = []
        transfer: list[TransferRecord] = []
        texts: list[GenerationRecord] | None = [] if self.plan.evaluation.keeps_text else None
        p = work.params
        assert p is not None  # set by _start for every trial the driver runs
        for a, o in ((a, work.outcomes.get(a.vector_id)) for a in work.assignments):
            if o is None or o.result is None:
                continue
            vectors.append(
                VectorRecord(
                    o.result,
                    a.example_id,
                    loss_kind=p.loss,
                    lr=p.lr,
                    norm_bound=p.norm,
                    intervention=p.intervention,
                    dtype=self.plan.model_spec.dtype,
                    train_example_ids=a.train_example_ids or (a.example_id,),
                    screened=o.screened,
                )
            )
            transfer += [
                TransferRecord(
                    r.vector_id, r.example_id, r.metric, r.steered, r.unsteered, r.success
                )
                for r in o.rows
            ]
            if texts is not None:
                texts += [
                    GenerationRecord(
                        g.vector_id,
                        g.example_id,
                        g.steered,
                        g.unsteered,
                        g.steered_tokens,
                        g.unsteered_tokens,
                        g.steered_stop,
                        g.unsteered_stop,
                        g.max_tokens,
                    )
                    for g in o.generations
                ]
        return TrialRows(work, record, vectors, transfer, texts)

    def _flush(
        self, study: optuna.Study, summary: RunSummary, timing: dict[str, float], block: bool
    ) -> None:
        """Tell Optuna about the trials whose write landed (``block``: wait a
        little for one, when nothing else is left to do)."""
        for item in self.committer.stored(block=block):
            work, record = item.work, item.record
            t0 = time.perf_counter()
            if record.error:
                work.handle.set_user_attr("error", record.error[:1000])
            if record.state == "COMPLETE":
                study.tell(work.handle, record.values)
            else:
                study.tell(work.handle, state=getattr(TrialState, record.state))
            elapsed = time.perf_counter() - t0
            timing["tell"] += elapsed
            self.tell_s.append(elapsed)
            last = [o.finished_at for o in work.outcomes.values() if o.finished_at is not None]
            if last:
                self.finish_to_tell_s.append(max(0.0, time.time() - max(last)))
            self.told.add(record.number)
            summary.tell_times.append(time.monotonic())
            summary.told += 1
            summary.vectors += len(item.vectors)
            summary.states[record.state] = summary.states.get(record.state, 0) + 1
            if self.progress:
                # Occupancy sums every worker's report: a few times a second is plenty.
                now = time.monotonic()
                if now - self._figures_at >= 0.25:
                    summary.occupancy, summary.eval_share = self.feeder.occupancy()
                    self._figures_at = now
                self.progress(summary, record.number)


def _latency_ms(series: dict[str, list[float]]) -> dict[str, float]:
    out = {}
    for name, values in series.items():
        if values:
            out[f"{name}_mean"] = 1000 * sum(values) / len(values)
            tail = values[-100:]
            out[f"{name}_last100"] = 1000 * sum(tail) / len(tail)
    return out


def _percentiles_ms(name: str, values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values) * 1000
    return {
        f"{name}_p50": float(np.percentile(arr, 50)),
        f"{name}_p99": float(np.percentile(arr, 99)),
        f"{name}_max": float(arr.max()),
    }


def _best(trials: list[StoredTrial], directions: list[str]) -> list[dict[str, Any]]:
    """The stored trials on the Pareto front (with one objective, the best
    trial), best first by the one ranking (``orchestrator.ranking``)."""
    complete = {t.number: t for t in trials if t.state == "COMPLETE"}
    numbers = list(complete)
    order = trial_order(numbers, [complete[n].values or [] for n in numbers], directions)
    return [
        {"store_trial": n, "values": complete[n].values, "params": complete[n].params}
        for n, front in zip(order.numbers, order.front, strict=True)
        if front
    ]
