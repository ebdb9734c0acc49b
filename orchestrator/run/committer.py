"""The commit path: finished trials to the store, off the driver's thread.

The driver hands each finished trial's rows to :meth:`Committer.submit`; a few
writer threads write them (``StoreWriter.write_trial``: vectors, transfer, the
``trials`` row last); :meth:`Committer.stored` returns the trials whose write
landed, and only those are told to Optuna. Nothing is told unstored.

When the store fails (``StoreWriteError``, after the writer's own retries):

- the trial waits, with every other failed trial, for one shared exponential
  backoff (1 s doubling to ``max_delay_s``); each backoff is one log line,
  whatever the number of trials waiting;
- a *transient* error (connection refused, timeouts, 5xx) is waited out;
- a *permanent* one (missing bucket, access denied, bad credentials) that
  lasts ``give_up_after_s`` stops the study: :class:`StoreUnavailable`, a
  paragraph naming the store, the error and the fix, and the trials not stored.

The rows of stored trials are kept (up to ``retain_bytes``) so that
:meth:`Committer.rewrite` can put back a trial the store lost after it was
written (a bucket emptied and recreated); :meth:`Committer.verify` compares
the store with what was told, at the end of a run.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from orchestrator.store import (
    GenerationRecord,
    StoredTrial,
    StoreWriteError,
    StoreWriter,
    TransferRecord,
    TrialRecord,
    VectorRecord,
    study_at,
)
from orchestrator.store.retry import OUTAGES

log = logging.getLogger(__name__)


class StoreUnavailable(RuntimeError):
    """The store refused writes for longer than the study waits; the message says why."""


@dataclass
class TrialRows:
    """A finished trial's rows, as they go to the store; ``work`` is the
    driver's own bookkeeping (its Optuna handle), carried along."""

    work: Any
    record: TrialRecord
    vectors: list[VectorRecord]
    transfer: list[TransferRecord]
    generations: list[GenerationRecord] | None = None  # None: the study keeps no text

    @property
    def number(self) -> int:
        return self.record.number

    def nbytes(self) -> int:
        """Roughly what keeping these rows costs in memory."""
        vec = sum(v.result.vector.nbytes for v in self.vectors)
        text = sum(
            len(g.steered_text) + len(g.unsteered_text) + 100 for g in self.generations or ()
        )
        return vec + 200 * len(self.transfer) + text + 1000


@dataclass
class _Batch:
    """Trials written together: one trial's objects (``tag`` None), or a
    group commit (one object per table, named with ``tag``)."""

    rows: list[TrialRows]
    tag: str | None = None


@dataclass
class Verified:
    """The store at the end of a run: its trials, those put back, those lost."""

    trials: list[StoredTrial]
    rewritten: list[int]
    lost: list[int]


class _Backoff:
    """One backoff for every write that failed during an outage."""

    def __init__(self, base_s: float, max_s: float) -> None:
        self.base_s, self.max_s = base_s, max_s
        self.since: float | None = None  # when the outage began
        self.permanent_since: float | None = None  # permanent errors without a break
        self.failures = 0
        self.next_try = 0.0
        self.last_failure = -1.0
        self.error = ""

    def failed(self, exc: StoreWriteError, submitted: float, waiting: int, now: float) -> None:
        """Record a failed write that was submitted at ``submitted``. A write sent
        before the last failure was seen does not back off further (it failed
        for the same reason, at the same time)."""
        if self.since is None:
            self.since = now
        permanent = bool(getattr(exc, "permanent", False))
        if not permanent:
            self.permanent_since = None
        elif self.permanent_since is None:
            self.permanent_since = now
        self.error = str(exc)
        if submitted < self.last_failure:
            return
        self.failures += 1
        self.last_failure = now
        delay = min(self.max_s, self.base_s * 2 ** (self.failures - 1))
        self.next_try = now + delay
        OUTAGES.failed(
            "trial write",
            f"{'permanent' if permanent else 'transient'} error, {waiting} finished trial(s) "
            f"waiting: {self.error}",
            f"retried in {delay:.0f} s, until store.give_up_after_s",
        )

    def recovered(self, now: float) -> None:
        if self.since is not None:
            OUTAGES.succeeded("trial write")
        self.since = self.permanent_since = None
        self.failures = 0
        self.next_try = 0.0

    @property
    def failing(self) -> bool:
        return self.since is not None


class Committer:
    """Writes finished trials; see the module docstring."""

    def __init__(
        self,
        writer: StoreWriter,
        *,
        threads: int = 4,
        give_up_after_s: float = 120.0,
        retain_bytes: int = 256 * 2**20,
        base_delay_s: float = 1.0,
        max_delay_s: float = 60.0,
        group_trials: int = 1,
        group_s: float = 0.2,
    ) -> None:
        self.writer = writer
        # Group commits: one group write in flight at a time (a group that
        # replaces earlier rows rewrites shared files, which must not race).
        threads = 1 if group_trials > 1 else threads
        self.group_trials, self.group_s = group_trials, group_s
        self.fresh_above = -1  # trial numbers above this were never written (set by the driver)
        self._buffer: list[TrialRows] = []
        self._buffer_since = 0.0
        self.pool = cf.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="store-write")
        self.give_up_after_s = give_up_after_s
        self.retain_bytes = retain_bytes
        self.backoff = _Backoff(base_delay_s, max_delay_s)
        self.writes: dict[cf.Future, tuple[_Batch, float]] = {}
        self.waiting: list[_Batch] = []
        self.retained: OrderedDict[int, TrialRows] = OrderedDict()
        self._retained_bytes = 0
        self.write_s = 0.0  # seconds spent in successful writes, summed over threads

    # ------------------------------------------------------------ the loop

    @property
    def pending(self) -> int:
        """Trials finished but not yet stored (buffered for a group, being
        written, or waiting to retry)."""
        batches = [b for b, _ in self.writes.values()] + self.waiting
        return len(self._buffer) + sum(len(b.rows) for b in batches)

    @property
    def unsaved(self) -> int:
        """What the driver bounds with its trials in flight: trials being
        written or waiting to retry, and buffered ones beyond one group (a
        group fills without holding up asks; while the store fails, the
        buffer grows, and then counts, as any unsaved trial does)."""
        return self.pending - min(len(self._buffer), self.group_trials)

    def submit(self, rows: TrialRows) -> None:
        if self.group_trials > 1:
            if not self._buffer:
                self._buffer_since = time.monotonic()
            self._buffer.append(rows)
            self._flush_group(force=False)
            return
        batch = _Batch([rows])
        if self.backoff.failing:
            self.waiting.append(batch)  # the next try takes it along
        else:
            self._send(batch)

    def _flush_group(self, force: bool) -> None:
        """Send the buffered trials as one group when there are ``group_trials``
        of them, the oldest waited ``group_s``, or ``force``; one group write at
        a time, and none while the store is failing."""
        if not self._buffer or self.writes or self.waiting or self.backoff.failing:
            return
        full = len(self._buffer) >= self.group_trials
        old = time.monotonic() - self._buffer_since >= self.group_s
        if full or old or force:
            rows, self._buffer = (
                self._buffer[: self.group_trials],
                self._buffer[self.group_trials :],
            )
            self._buffer_since = time.monotonic()
            self._send(_Batch(rows, uuid.uuid4().hex[:8]))

    def stored(self, *, block: bool = False) -> list[TrialRows]:
        """Trials whose write landed since the last call (``block``: wait a
        little for one when nothing else is to be done).

        Raises:
            StoreUnavailable: a permanent store error lasted ``give_up_after_s``.
        """
        now = time.monotonic()
        if self.waiting and now >= self.backoff.next_try and not self.writes:
            waiting, self.waiting = self.waiting, []
            if self.group_trials > 1:  # one group at a time, the oldest first
                self._send(waiting[0])
                self.waiting = waiting[1:]
            else:
                for batch in waiting:
                    self._send(batch)
        self._flush_group(force=block)
        if not self.writes:
            self._check_give_up(now)
            if block and self.waiting:
                time.sleep(min(0.5, max(0.0, self.backoff.next_try - now)))
            return []
        done = [f for f in self.writes if f.done()]
        if not done and block:
            cf.wait(list(self.writes), timeout=0.5, return_when=cf.FIRST_COMPLETED)
            done = [f for f in self.writes if f.done()]
        out = []
        for fut in done:
            batch, submitted = self.writes.pop(fut)
            try:
                self.write_s += fut.result()
            except StoreWriteError as exc:
                self.waiting.append(batch)  # retried whole: the same group, the same keys
                self.backoff.failed(exc, submitted, self.pending, time.monotonic())
                continue
            if self.backoff.failing:
                self.backoff.recovered(time.monotonic())
            for rows in batch.rows:
                self._retain(rows)
            out.extend(batch.rows)
        self._flush_group(force=block)
        self._check_give_up(time.monotonic())
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    # ------------------------------------------------------------ the end

    def verify(self, expected: set[int]) -> Verified:
        """Compare the store with ``expected`` (every trial number the run
        started from or told); rewrite the missing ones whose rows are kept.

        Lost trials are neither in the store nor kept; a rerun of the study
        runs them again."""
        trials = self.stored_trials()
        missing = sorted(expected - {t.number for t in trials})
        if not missing:
            return Verified(trials, [], [])
        log.error(
            "the store lost %d trial(s) that were written: %s%s",
            len(missing),
            ", ".join(map(str, missing[:20])),
            " ..." if len(missing) > 20 else "",
        )
        rewritten = []
        for number in missing:
            rows = self.retained.get(number)
            if rows is None:
                continue
            try:
                self.writer.write_trial(rows.record, rows.vectors, rows.transfer, rows.generations)
            except StoreWriteError as exc:
                log.error("could not rewrite trial %d: %s", number, exc)
                continue
            rewritten.append(number)
        if rewritten:
            log.warning("rewrote %d lost trial(s) from their kept rows", len(rewritten))
        trials = self.stored_trials()
        lost = sorted(expected - {t.number for t in trials})
        return Verified(trials, rewritten, lost)

    def stored_trials(self) -> list[StoredTrial]:
        """The study's trials as the store has them now; a read that fails is
        retried with the same backoff as writes, for up to ``give_up_after_s``.

        Raises:
            StoreUnavailable: the study could not be read back to check it.
        """
        started = time.monotonic()
        delay = self.backoff.base_s
        while True:
            try:
                trials = study_at(self.writer.root, self.writer.context.study).completed_trials()
                OUTAGES.succeeded("read-back")
                return trials
            except Exception as exc:
                # pyarrow raises OSError; an S3 listing raises botocore's errors
                # (NoSuchBucket, AccessDenied, a dropped connection).
                if not _store_error(exc):
                    raise
                if time.monotonic() - started > self.give_up_after_s:
                    raise store_unavailable(
                        self.writer.root.uri,
                        f"could not be read back to check the study: {exc}",
                        "a rerun reads it again and runs only what is missing",
                    ) from exc
                OUTAGES.failed("read-back", str(exc), f"retried in {delay:.0f} s")
                time.sleep(delay)
                delay = min(self.backoff.max_s, 2 * delay)

    # ------------------------------------------------------------ internals

    def _send(self, batch: _Batch) -> None:
        fut = self.pool.submit(self._write, batch)
        self.writes[fut] = (batch, time.monotonic())

    def _write(self, batch: _Batch) -> float:
        t0 = time.perf_counter()
        if batch.tag is None:
            (rows,) = batch.rows
            self.writer.write_trial(rows.record, rows.vectors, rows.transfer, rows.generations)
        else:
            fresh = all(r.number > self.fresh_above for r in batch.rows)
            items = [(r.record, r.vectors, r.transfer, r.generations) for r in batch.rows]
            self.writer.write_group(items, tag=batch.tag, fresh=fresh)
        return time.perf_counter() - t0

    def _retain(self, rows: TrialRows) -> None:
        self.retained[rows.number] = rows
        self._retained_bytes += rows.nbytes()
        while self._retained_bytes > self.retain_bytes and len(self.retained) > 1:
            _, old = self.retained.popitem(last=False)
            self._retained_bytes -= old.nbytes()

    def _check_give_up(self, now: float) -> None:
        since = self.backoff.permanent_since
        if since is None or now - since < self.give_up_after_s:
            return
        numbers = sorted(r.number for b in self.waiting for r in b.rows)
        shown = ", ".join(map(str, numbers[:20])) + (" ..." if len(numbers) > 20 else "")
        raise store_unavailable(
            self.writer.root.uri,
            f"has refused writes for {now - (self.backoff.since or since):.0f} s with an error "
            f"that does not go away by itself: {self.backoff.error}",
            f"the {len(numbers)} finished trial(s) that could not be stored ({shown}) run "
            "again (store.give_up_after_s sets how long a study waits)",
        )


def _store_error(exc: BaseException) -> bool:
    """An error from the store's I/O (not a bug): an ``OSError``, or any error
    of botocore (the S3 client behind listings and conditional writes)."""
    return isinstance(exc, OSError) or type(exc).__module__.startswith("botocore")


def store_unavailable(uri: str, what: str, rerun: str) -> StoreUnavailable:
    """The one-paragraph error of a study stopped by its store."""
    return StoreUnavailable(
        f"the store {uri} {what}. Fix the store (create the bucket, or restore the "
        "credentials or the permissions), then rerun the same `steer-sweep run` command to "
        f"resume: the trials in the store are kept, and {rerun}."
    )
