"""What a study measures on every finished vector (:class:`EvalSpec`), and
:func:`evaluate`, which runs those metrics on a batch of vectors."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from workers.evaluation.judges import ContainsAny, Judge, LacksAll, LLMJudge, LLMJudgeSpec
from workers.evaluation.screen import Screen
from workers.evaluation.transfer import (
    Decoded,
    Generation,
    PrefixCache,
    TransferRow,
    choice_flips,
    generations,
    judged,
    side_effect_kl,
    target_logprobs,
)
from workers.examples import Example
from workers.jobs import Prompt
from workers.models import LoadedModel
from workers.steering.vectors import SteeringVector

# "surprisal": the worker returns its greedy generations (``VectorOutcome.generations``);
# the orchestrator has them scored by the surprisal model's own actors.
METRICS = ("target_logprob", "choice_flip", "judge", "side_effect_kl", "surprisal")


@dataclass(frozen=True)
class EvalSpec:
    """What to measure on every vector; fixed for a study."""

    examples: tuple[Example, ...] = ()
    metrics: tuple[str, ...] = ("target_logprob",)
    neutral_prompts: tuple[Prompt, ...] = ()
    judge_contains_any: tuple[str, ...] = ()
    judge_lacks_all: tuple[str, ...] = ()
    # A model judge (``judge:llm``): this worker's own model, unsteered.
    llm_judge: LLMJudgeSpec | None = None
    generation_tokens: int = 24
    keep_generations: int = 0  # also generate on the first N held-out examples of every vector
    coldness: float = 0.7
    log_base: float = 10.0
    max_kl: float = 0.1
    batch_size: int = 32
    max_targets: int | None = None  # score at most this many targets per held-out example
    # The transfer screen (workers.evaluation.screen): with it, a vector sent
    # with a threshold is evaluated on the first slice_size examples, and on
    # the rest only when the slice scores it at or above the threshold.
    screen: Screen | None = None

    @property
    def generates_all(self) -> bool:
        """Judges and the surprisal model read every held-out example's text."""
        return "judge" in self.metrics or "surprisal" in self.metrics

    @property
    def scored_examples(self) -> list[Example]:
        """The held-out examples as scored: each cut to its first
        ``max_targets`` targets when that is set."""
        if self.max_targets is None:
            return list(self.examples)
        return [first_targets(ex, self.max_targets) for ex in self.examples]

    @property
    def keeps_text(self) -> bool:
        """Whether evaluation returns generations (the store's ``generations`` table)."""
        return self.generates_all or self.keep_generations > 0


@dataclass
class EvalCache:
    """What a worker keeps between evaluations, none of it depending on a
    vector: unsteered target log-probabilities per (example, coldness), the
    unsteered states below each steering layer per (example, layer), and
    unsteered greedy continuations per (example, tokens)."""

    unsteered: dict[tuple[str, float], list[float]] = field(default_factory=dict)
    prefixes: PrefixCache = field(default_factory=PrefixCache)
    plain: dict[tuple[str, int], Decoded] = field(default_factory=dict)
    judges: dict[LLMJudgeSpec, LLMJudge] = field(default_factory=dict)


def evaluate(
    lm: LoadedModel,
    spec: EvalSpec,
    vectors: list[SteeringVector],
    cache: EvalCache | None = None,
) -> tuple[list[TransferRow], list[Generation]]:
    """Every metric of ``spec`` for ``vectors`` on its held-out examples."""
    cache = cache if cache is not None else EvalCache()
    rows: list[TransferRow] = []
    gens: list[Generation] = []
    if not vectors:
        return rows, gens
    examples = spec.scored_examples
    if "target_logprob" in spec.metrics:
        rows += target_logprobs(
            lm,
            vectors,
            examples,
            coldness=spec.coldness,
            log_base=spec.log_base,
            batch_size=spec.batch_size,
            unsteered_cache=cache.unsteered,
            prefix_cache=cache.prefixes,
        )
    if "choice_flip" in spec.metrics:
        rows += choice_flips(lm, vectors, examples, batch_size=spec.batch_size)
    # Judges and the surprisal model read every held-out example's text; a
    # study without them still keeps the first ``keep_generations`` (the
    # store's ``generations`` table), so a user sees what a vector says.
    shown = examples if spec.generates_all else examples[: max(0, spec.keep_generations)]
    if shown:
        gens = generations(
            lm,
            vectors,
            shown,
            n_tokens=spec.generation_tokens,
            batch_size=spec.batch_size,
            plain_cache=cache.plain,
        )
    if "judge" in spec.metrics:
        judges: list[Judge] = []
        if spec.judge_contains_any:
            judges.append(ContainsAny(spec.judge_contains_any))
        if spec.judge_lacks_all:
            judges.append(LacksAll(spec.judge_lacks_all))
        if spec.llm_judge is not None:
            j = spec.llm_judge
            if j not in cache.judges:
                cache.judges[j] = LLMJudge(lm, j.template, yes=j.yes, no=j.no, name="llm")
            judges.append(cache.judges[j])
        for judge in judges:
            rows += judged(gens, examples, judge)
    if "side_effect_kl" in spec.metrics and spec.neutral_prompts:
        rows += side_effect_kl(
            lm,
            vectors,
            list(spec.neutral_prompts),
            log_base=spec.log_base,
            max_kl=spec.max_kl,
            batch_size=spec.batch_size,
        )
    return rows, gens


def evaluate_screened(
    lm: LoadedModel,
    spec: EvalSpec,
    vectors: list[SteeringVector],
    thresholds: list[float | None],
    cache: EvalCache | None = None,
) -> tuple[list[TransferRow], list[Generation], set[str]]:
    """:func:`evaluate` with the transfer screen: also the ids of the vectors
    that stopped at the slice (``spec.screen``; each vector's threshold is in
    ``thresholds``, None to evaluate it in full).

    Without a screen, a threshold, or examples beyond the slice this is
    :func:`evaluate`, row for row. Otherwise the slice is evaluated for every
    vector (every held-out metric but side-effect KL, which is not measured on
    held-out examples), then the remaining examples, with side-effect KL, for
    the vectors the slice did not stop. A vector evaluated in full gets the
    same rows as from :func:`evaluate`, in another order.
    """
    if len(thresholds) != len(vectors):
        raise ValueError(f"{len(thresholds)} thresholds for {len(vectors)} vectors")
    screen = spec.screen
    n = 0 if screen is None else screen.slice_size
    if screen is None or all(t is None for t in thresholds) or len(spec.examples) <= n:
        rows, gens = evaluate(lm, spec, vectors, cache)
        return rows, gens, set()
    cache = cache if cache is not None else EvalCache()
    on_slice = tuple(m for m in spec.metrics if m != "side_effect_kl")
    first = dataclasses.replace(spec, examples=spec.examples[:n], metrics=on_slice)
    rows, gens = evaluate(lm, first, vectors, cache)
    scores = screen.scores(rows)
    stopped = {
        v.vector_id
        for v, t in zip(vectors, thresholds, strict=True)
        if screen.skips(scores.get(v.vector_id), t)
    }
    rest = [v for v in vectors if v.vector_id not in stopped]
    if rest:
        after = dataclasses.replace(
            spec, examples=spec.examples[n:], keep_generations=max(0, spec.keep_generations - n)
        )
        more_rows, more_gens = evaluate(lm, after, rest, cache)
        rows += more_rows
        gens += more_gens
    return rows, gens, stopped


def first_targets(ex: Example, n: int) -> Example:
    """``ex`` with only its first ``n`` targets (promote first, then suppress)."""
    promote = ex.promote[:n]
    suppress = ex.suppress[: max(0, n - len(promote))]
    keep = list(range(len(promote))) + [len(ex.promote) + i for i in range(len(suppress))]
    thresholds = tuple(ex.thresholds[i] for i in keep) if ex.thresholds else ()
    return dataclasses.replace(ex, promote=promote, suppress=suppress, thresholds=thresholds)
