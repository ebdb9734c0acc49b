"""Exactly-once writes of a trial's rows.

A trial becomes three objects (four when the study keeps generated text),
one per table, under keys derived from the study and trial number
(``<table>/study=<study>/trial-<n>.parquet``). Writing the trial again
overwrites them, so a retried or resumed trial never leaves two copies. The
``trials`` object is written last: a trial counts as done
(``completed_trials``) only once its row exists, so a crash half-way
through leaves a trial the orchestrator simply runs again.

With group commits (``store.group_trials`` > 1, :meth:`StoreWriter.write_group`)
several trials share one object per table, in the compacted-file layout
(``compact-<lo>-<hi>-<tag>.parquet``, the trial numbers in the footer), again
``trials`` last, so the group's trials become complete together; a group that
may hold trials written before (a killed run's) first removes their earlier
rows, as a rewrite of one trial does.

Every object is written whole or not at all (see ``roots.put_bytes``), and
transient errors are retried with backoff; a final failure raises
``StoreWriteError``, and the caller should keep the trial pending.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import pyarrow as pa

from orchestrator.store import records as R
from orchestrator.store import schemas as S
from orchestrator.store.compact import drop_trials_from_compacted
from orchestrator.store.parquet_io import put_with_retries, to_parquet_bytes
from orchestrator.store.retry import RetryPolicy, RetryStats, with_retries
from orchestrator.store.roots import StoreRoot, delete_objects, exists, resolve_root

log = logging.getLogger(__name__)

TrialWrite = tuple[
    R.TrialRecord,
    Sequence[R.VectorRecord],
    Sequence[R.TransferRecord],
    Sequence[R.GenerationRecord] | None,
]
"""One trial of a group write: its record, vectors, transfer rows, generations."""

_MARKER_TEXT = b"compacted files (compaction or group commits) exist in this study\n"


@dataclass(frozen=True)
class WriteReport:
    """What one write did: object keys (relative to the root), bytes written,
    request attempts and retries, and wall time in seconds."""

    keys: tuple[str, ...]
    bytes_written: int
    attempts: int
    retries: int
    seconds: float


class StoreWriter:
    """Writes the rows of one study to a root.

    Raises ``ValueError`` for malformed records (before anything is written)
    and ``StoreWriteError`` when the store cannot be written.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | StoreRoot,
        context: R.StudyContext,
        *,
        endpoint_url: str | None = None,
        retry: RetryPolicy | None = None,
        on_object_written: Callable[[str, int], None] | None = None,
    ) -> None:
        """``on_object_written(key, n_bytes)`` is called after each object
        lands (for progress reporting and metrics)."""
        self.root = resolve_root(root, endpoint_url=endpoint_url)
        self.context = context
        self.retry = retry or RetryPolicy()
        self.on_object_written = on_object_written
        self._marked = False  # this writer has put the compacted marker

    def vector_id(self, trial: int, example_id: str) -> str:
        """The id the vector of (trial, training example) gets in this study."""
        return S.vector_id(self.context.study, trial, example_id)

    def write_examples(
        self, examples: Sequence[R.ExampleRecord], *, name: str = "all"
    ) -> WriteReport:
        """Write (or overwrite) the example set ``name`` of the study."""
        table = R.examples_table(examples)
        key = S.examples_key(self.context.study, name)
        return self._write({key: self._encode("examples", table, None)}, None)

    def write_trial(
        self,
        trial: R.TrialRecord,
        vectors: Sequence[R.VectorRecord] = (),
        transfer: Sequence[R.TransferRecord] = (),
        generations: Sequence[R.GenerationRecord] | None = None,
    ) -> WriteReport:
        """Write one finished trial: its vectors, their transfer rows and
        generations, and the trial row last. Safe to call again for the same
        trial number.

        ``generations`` None writes no ``generations`` object (a study that
        keeps no text); a sequence, even empty, writes one, so a rewritten
        trial replaces its earlier text. (A study whose keep_generations went
        to 0 between runs leaves the text of trials it does not rewrite.)"""
        n = trial.number
        tables = self._tables([(trial, vectors, transfer, generations)])
        # Encode everything first: a bad record must not leave a partial trial.
        blobs = {
            S.trial_key(name, self.context.study, n): self._encode(name, tables[name], [n])
            for name in S.TRIAL_TABLES
            if name in tables
        }
        return self._write(blobs, n)

    def write_group(self, trials: Sequence[TrialWrite], *, tag: str, fresh: bool) -> WriteReport:
        """Write several finished trials as one object per table (a group
        commit): ``compact-<lo>-<hi>-<tag>.parquet``, the compacted-file
        layout, whose footer lists the trial numbers inside; the ``trials``
        object last, so the group's trials become complete together.

        ``fresh``: no object of the study has held any of these trial numbers
        before (the driver numbers new trials above everything stored), so
        there is nothing to replace. Otherwise each table first loses every
        earlier row of these trials (a killed run's uncommitted group, a
        per-trial file, a compacted file), as a rewrite of one trial does.
        Writing the same group again (same ``tag``) overwrites its objects.
        """
        if not trials:
            raise ValueError("a group needs at least one trial")
        numbers = [t[0].number for t in trials]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"a group holds trial numbers twice: {sorted(numbers)}")
        tables = self._tables(trials)
        blobs = {}
        lo, hi = min(numbers), max(numbers)
        for name in S.TRIAL_TABLES:
            if name in tables:
                key = S.compact_key(name, self.context.study, lo, hi, tag)
                blobs[key] = self._encode(name, tables[name], numbers)
        return self._write(blobs, None, group=set(numbers), fresh=fresh)

    def _tables(self, trials: Sequence[TrialWrite]) -> dict[str, pa.Table]:
        """Each table's rows of ``trials``, one Arrow table per table (a group
        built at once: building one small table per trial and table, then
        concatenating, cost the driver more than encoding and writing).
        ``generations`` holds the rows of the trials that keep text, and is
        absent when none does."""
        for trial, vectors, transfer, generations in trials:
            n = trial.number
            ids = {S.vector_id(self.context.study, n, v.example_id) for v in vectors}
            for what, rows in (("transfer", transfer), ("generation", generations or ())):
                stray = {t.vector_id for t in rows} - ids
                if stray:
                    raise ValueError(
                        f"trial {n}: {what} rows name vectors this trial did not produce: "
                        f"{sorted(stray)[:5]}"
                    )
        tables = {
            "transfer": R.transfer_table_many([(t[0].number, t[2]) for t in trials]),
            "vectors": R.vectors_table_many(self.context, [(t[0].number, t[1]) for t in trials]),
            "trials": R.trials_table_many(self.context, [(t[0], len(t[1])) for t in trials]),
        }
        texts = [(t[0].number, t[3]) for t in trials if t[3] is not None]
        if texts:
            tables["generations"] = R.generations_table_many(texts)
        return tables

    # ------------------------------------------------------------ internals

    def _encode(self, table: str, data: pa.Table, trials: list[int] | None) -> bytes:
        c = self.context
        meta = S.file_metadata(
            table=table,
            study=c.study,
            config_hash=c.config_hash,
            model_id=c.model_id,
            model_revision=c.model_revision,
            trials=trials,
        )
        return to_parquet_bytes(data, meta)

    def _write(
        self,
        blobs: dict[str, bytes],
        trial: int | None,
        *,
        group: set[int] | None = None,
        fresh: bool = False,
    ) -> WriteReport:
        t0 = time.monotonic()
        stats = RetryStats()
        marker = S.compacted_marker_key(self.context.study)
        replace: set[int] = set()
        if group is not None:
            # Later rewrites of one trial look for it in compacted files only
            # once the marker says there are some.
            if not self._marked:
                put_with_retries(self.root, marker, _MARKER_TEXT, self.retry, stats)
                self._marked = True
            replace = set() if fresh else group
        elif trial is not None:
            compacted = with_retries(
                lambda: exists(self.root, marker),
                what=f"stat {self.root.display(marker)}",
                policy=self.retry,
                stats=stats,
            )
            replace = {trial} if compacted else set()
        for key, data in blobs.items():  # dict order is the write order
            if replace:
                table = key.split("/", 1)[0]
                drop_trials_from_compacted(
                    self.root, table, self.context.study, replace, self.retry, stats
                )
                if group is not None:  # and the per-trial files of those trials
                    old = [S.trial_key(table, self.context.study, n) for n in sorted(replace)]
                    with_retries(
                        partial(delete_objects, self.root, old),
                        what=f"delete earlier files under {self.root.display(table)}",
                        policy=self.retry,
                        stats=stats,
                    )
            put_with_retries(self.root, key, data, self.retry, stats)
            if self.on_object_written is not None:
                self.on_object_written(key, len(data))
        seconds = time.monotonic() - t0
        log.debug(
            "wrote %d object(s) under %s in %.3f s (%d retries)",
            len(blobs),
            self.root.uri,
            seconds,
            stats.retries,
        )
        return WriteReport(
            keys=tuple(blobs),
            bytes_written=sum(len(b) for b in blobs.values()),
            attempts=stats.attempts,
            retries=stats.retries,
            seconds=seconds,
        )
