"""Exactly-once writes of a trial's rows.

A trial becomes three objects (four when the study keeps generated text),
one per table, under keys derived from the study and trial number
(``<table>/study=<study>/trial-<n>.parquet``). Writing the trial again
overwrites them, so a retried or resumed trial never leaves two copies. The
``trials`` object is written last: a trial counts as done
(``completed_trials``) only once its row exists, so a crash half-way
through leaves a trial the orchestrator simply runs again.

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

import pyarrow as pa

from orchestrator.store import records as R
from orchestrator.store import schemas as S
from orchestrator.store.compact import drop_trials_from_compacted
from orchestrator.store.parquet_io import put_with_retries, to_parquet_bytes
from orchestrator.store.retry import RetryPolicy, RetryStats, with_retries
from orchestrator.store.roots import StoreRoot, exists, resolve_root

log = logging.getLogger(__name__)


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
        vec = R.vectors_table(self.context, n, vectors)
        ids = set(vec["vector_id"].to_pylist())
        for what, rows in (("transfer", transfer), ("generation", generations or ())):
            stray = {t.vector_id for t in rows} - ids
            if stray:
                raise ValueError(
                    f"trial {n}: {what} rows name vectors this trial did not produce: "
                    f"{sorted(stray)[:5]}"
                )
        tables = {
            "transfer": R.transfer_table(n, transfer),
            "vectors": vec,
            "trials": R.trials_table(self.context, trial, len(vectors)),
        }
        if generations is not None:
            tables["generations"] = R.generations_table(n, generations)
        # Encode everything first: a bad record must not leave a partial trial.
        blobs = {
            S.trial_key(name, self.context.study, n): self._encode(name, tables[name], n)
            for name in S.TRIAL_TABLES
            if name in tables
        }
        return self._write(blobs, n)

    # ------------------------------------------------------------ internals

    def _encode(self, table: str, data: pa.Table, trial: int | None) -> bytes:
        c = self.context
        meta = S.file_metadata(
            table=table,
            study=c.study,
            config_hash=c.config_hash,
            model_id=c.model_id,
            model_revision=c.model_revision,
            trials=None if trial is None else [trial],
        )
        return to_parquet_bytes(data, meta)

    def _write(self, blobs: dict[str, bytes], trial: int | None) -> WriteReport:
        t0 = time.monotonic()
        stats = RetryStats()
        compacted = False
        if trial is not None:
            marker = S.compacted_marker_key(self.context.study)
            compacted = with_retries(
                lambda: exists(self.root, marker),
                what=f"stat {self.root.display(marker)}",
                policy=self.retry,
                stats=stats,
            )
        for key, data in blobs.items():  # dict order is the write order
            if compacted and trial is not None:
                table = key.split("/", 1)[0]
                drop_trials_from_compacted(
                    self.root, table, self.context.study, {trial}, self.retry, stats
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
