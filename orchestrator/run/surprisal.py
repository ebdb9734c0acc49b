"""The second pool: a base model that scores the steered model's generations.

With ``evaluation.metrics: [..., surprisal]`` and a ``surprisal_model``, every
vector's outcome comes back from its ``SteeringWorker`` with its greedy
generations (steered, and unsteered for reference) and waits in the
ledger's ``held`` until the surprisal model's actors have scored them
(§2.2: ``-log B(x | C) / |x|`` per text ``x``, in the study's log base, under
the task's ``surprisal_context`` C). Each generation then adds one transfer
row, metric ``surprisal``: ``steered`` and ``unsteered`` are the surprisal per
token of the steered and the unsteered generation, and ``success`` is true
when the steered one is no more surprising (the vector moved the generation
towards the context's behaviour, or kept it as plausible).

:class:`Scoring` is the bookkeeping (no Ray): outcomes queue, go to idle
scorer actors in batches, and come back as rows; a batch lost with its actor
is requeued, and an outcome lost ``max_attempts`` times gets an error.
Unsteered generations repeat across vectors, so their scores are cached.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.run.pools import LocalPool, Pool, WorkerLost
from workers.evaluation.transfer import TransferRow
from workers.service.protocol import VectorOutcome

METRIC = "surprisal"


@dataclass(frozen=True)
class ScoreSettings:
    """How the surprisal model scores: the context C, the log base, the batch size."""

    context: tuple[str, ...] = ()
    log_base: float = 10.0
    batch_size: int = 16


def _score(actor: Any, call: tuple[list[str], ScoreSettings]) -> Any:
    texts, s = call
    return actor.surprisal.remote(
        list(s.context), texts, log_base=s.log_base, batch_size=s.batch_size
    )


@dataclass
class FunctionScorer:
    """An in-process scorer: ``fn(texts) -> surprisal per text`` (tests)."""

    fn: Callable[[list[str]], list[float]]

    def surprisal(
        self, context: Sequence[str], texts: list[str], *, log_base: float, batch_size: int
    ) -> list[float]:
        return self.fn(texts)


def local_score_pool(fn: Callable[[int, list[str]], list[float]], n: int) -> LocalPool:
    """``n`` in-process scorers, each calling ``fn(key, texts)``."""
    from functools import partial

    return LocalPool([FunctionScorer(partial(fn, k)) for k in range(n)])


def needs_scores(outcome: VectorOutcome) -> bool:
    return outcome.error is None and outcome.result is not None and bool(outcome.generations)


class Scoring:
    """Queues held outcomes for a pool of scorers; see the module docstring."""

    def __init__(
        self,
        pool: Pool,
        settings: ScoreSettings | None = None,
        *,
        max_items: int = 16,
        max_attempts: int = 3,
    ) -> None:
        self.pool = pool
        self.settings = settings or ScoreSettings()
        self.max_items = max_items
        self.max_attempts = max_attempts
        self.pending: deque[VectorOutcome] = deque()
        self.running: dict[Hashable, tuple[list[VectorOutcome], list[str]]] = {}
        self.attempts: dict[str, int] = {}
        self.cache: dict[str, float] = {}  # unsteered text -> its surprisal

    @property
    def busy(self) -> bool:
        return bool(self.pending or self.running)

    def add(self, outcomes: list[VectorOutcome]) -> None:
        self.pending.extend(outcomes)

    def dispatch(self) -> None:
        for key in self.pool.keys:
            if not self.pending:
                return
            if key in self.running:
                continue
            items = [self.pending.popleft() for _ in range(min(self.max_items, len(self.pending)))]
            texts: dict[str, None] = {}
            for o in items:
                for g in o.generations:
                    texts[g.steered] = None
                    if g.unsteered not in self.cache:
                        texts[g.unsteered] = None
            self.running[key] = (items, list(texts))
            self.pool.submit(key, _score, (list(texts), self.settings), "score")

    def collect(self, timeout: float = 0.0) -> list[tuple[str, list[TransferRow], str | None]]:
        """Scored outcomes: ``(vector_id, rows, error)``."""
        out: list[tuple[str, list[TransferRow], str | None]] = []
        if not self.running:
            return out
        for done in self.pool.poll(timeout):
            key, result = done.key, done.value
            items, texts = self.running.pop(key)
            if isinstance(result, WorkerLost):
                for o in reversed(items):
                    self.attempts[o.vector_id] = self.attempts.get(o.vector_id, 0) + 1
                    if self.attempts[o.vector_id] >= self.max_attempts:
                        error = f"surprisal model lost {self.max_attempts} times: {result.reason}"
                        out.append((o.vector_id, [], error))
                    else:
                        self.pending.appendleft(o)
                continue
            scores = dict(zip(texts, result, strict=True))
            for o in items:
                for g in o.generations:
                    if g.unsteered in scores:
                        self.cache[g.unsteered] = scores[g.unsteered]
                out.append((o.vector_id, self.rows(o, scores), None))
        return out

    def rows(self, outcome: VectorOutcome, scores: dict[str, float]) -> list[TransferRow]:
        rows = []
        for g in outcome.generations:
            steered = scores[g.steered]
            unsteered = self.cache.get(g.unsteered, scores.get(g.unsteered, math.nan))
            ok = math.isfinite(steered) and math.isfinite(unsteered) and steered <= unsteered
            rows.append(TransferRow(g.vector_id, g.example_id, METRIC, steered, unsteered, ok))
        return rows
