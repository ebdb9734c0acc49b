"""Plain dataclasses that describe vector jobs and their results.

These are the contract between the orchestrator and the workers: they hold
only numbers, strings and numpy arrays, so they cross Ray process boundaries
cheaply and never need pickle-specific tricks.

Units: every loss is in units of ``log_base`` (hartleys for the paper's base 10,
nats for base e). The base is recorded on every result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

ChatMessages = tuple[tuple[str, str], ...]
"""Chat messages as ``((role, content), ...)``: hashable, and JSON friendly."""

Prompt = str | ChatMessages
"""A raw prompt string (used verbatim), or chat messages (the tokenizer's chat
template is applied, with the generation prompt appended)."""

TargetKind = Literal["promote", "suppress"]
InterventionKind = Literal["add", "clamp", "affine"]
TokenMode = Literal["all", "prompt", "last_k", "positions"]

STOP_REASONS = (
    "max_iters",
    "converged",
    "no_improvement",
    "targets_reached",
    "threshold_held",
    "nonfinite",
    "out_of_memory",
)


def chat(*turns: str | tuple[str, str]) -> ChatMessages:
    """Build chat messages. A bare string is a user turn.

    >>> chat("Hi")
    (('user', 'Hi'),)
    """
    out: list[tuple[str, str]] = []
    for turn in turns:
        out.append(("user", turn) if isinstance(turn, str) else (turn[0], turn[1]))
    return tuple(out)


@dataclass(frozen=True)
class Target:
    """One completion to promote or suppress after a prompt.

    ``threshold`` is this target's own loss goal (same unit as the loss); the
    ``targets_reached`` stopping rule fires once every target is at or below it.
    """

    text: str
    kind: TargetKind = "promote"
    threshold: float | None = None
    weight: float = 1.0


@dataclass(frozen=True)
class ScoredPrompt:
    """A prompt with the targets scored after it."""

    prompt: Prompt
    targets: tuple[Target, ...]


@dataclass(frozen=True)
class KLTerm:
    """A reentrant-steering loss term: KL(teacher || steered) at given positions.

    ``input_ids`` is the whole sequence (prompt plus decoded tokens);
    ``positions[i]`` is the position whose next-token distribution is compared
    with ``teacher_logprobs[i]`` (shape ``(n, vocab)``, natural-log
    probabilities, already including coldness).
    """

    input_ids: tuple[int, ...]
    prompt_len: int
    positions: tuple[int, ...]
    teacher_logprobs: np.ndarray


@dataclass(frozen=True)
class Intervention:
    """How the vector acts on the residual stream (docs/methods.md).

    - ``add``: ``x -> x + v``.
    - ``clamp``: ``x -> x - (v v^T / |v|^2) x + clamp_coef * v`` (paper §4.1, §4.4).
    - ``affine``: ``x -> x + sum_r a_r (b_r . x)`` with ``|a_r| = |b_r| = 1``
      (a rank-``rank`` matrix, paper §5.1.3), plus ``v`` when ``affine_additive``.
    """

    kind: InterventionKind = "add"
    clamp_coef: float = 1.0
    rank: int = 1
    affine_additive: bool = False


@dataclass(frozen=True)
class TokenSelection:
    """Which token positions the intervention touches.

    - ``all``: every real position (prompt and completion).
    - ``prompt``: prompt positions only.
    - ``last_k``: the last ``k`` prompt positions (§4.4 uses 20).
    - ``positions``: explicit prompt positions; negative ones count from the
      prompt's end.
    """

    mode: TokenMode = "all"
    k: int = 0
    positions: tuple[int, ...] = ()


@dataclass(frozen=True)
class LossSettings:
    """``coldness`` multiplies logits before the softmax (paper App. A: 0.7).
    ``log_base`` is the unit of every loss (10: hartleys, e: nats)."""

    coldness: float = 0.7
    log_base: float = 10.0
    normalize_by_length: bool = False


@dataclass(frozen=True)
class StopRules:
    """Stopping rules; the first one to fire stops the row.

    - ``max_iters``: the number of optimizer steps.
    - ``eps``: ``|loss_t - loss_{t-1}| < eps`` (paper App. A: 1e-6).
    - ``patience``: stop after this many steps without a new best loss
      (``1`` is §5's "loss stopped decreasing").
    - ``targets_reached``: every target's loss is at or below its threshold.
    - ``hold_threshold`` / ``hold_iters``: the total loss stayed at or below the
      threshold for that many consecutive evaluations (§5: 0.01 for 20).
    """

    max_iters: int = 50
    eps: float | None = 1e-6
    patience: int | None = None
    targets_reached: bool = False
    hold_threshold: float | None = None
    hold_iters: int = 0


@dataclass(frozen=True)
class VectorJob:
    """One one-shot steering vector to optimize.

    Rows of a batch never interact: each job has its own prompts, layer(s), lr,
    norm bound, loss and stopping rules, and its random start is drawn from
    ``seed`` alone, so the vector can be rebuilt from this record.
    """

    job_id: str
    prompts: tuple[ScoredPrompt, ...] = ()
    layers: tuple[int, ...] = (0,)
    lr: float = 0.1
    norm_bound: float | None = None
    init_norm: float = 1.0
    init_vector: np.ndarray | None = None
    seed: int = 0
    intervention: Intervention = field(default_factory=Intervention)
    tokens: TokenSelection = field(default_factory=TokenSelection)
    loss: LossSettings = field(default_factory=LossSettings)
    stop: StopRules = field(default_factory=StopRules)
    kl_terms: tuple[KLTerm, ...] = ()

    @staticmethod
    def simple(
        job_id: str,
        prompt: Prompt,
        promote: Sequence[str] = (),
        suppress: Sequence[str] = (),
        *,
        layer: int,
        **kwargs: object,
    ) -> VectorJob:
        """A job with one prompt, promoting and/or suppressing target strings."""
        targets = tuple(Target(t, "promote") for t in promote) + tuple(
            Target(t, "suppress") for t in suppress
        )
        return VectorJob(
            job_id=job_id,
            prompts=(ScoredPrompt(prompt, targets),),
            layers=(layer,),
            **kwargs,  # type: ignore[arg-type]
        )


@dataclass
class VectorResult:
    """The outcome of one job.

    ``vector`` has shape ``(d_model,)``; ``factors`` holds the affine
    ``(a, b)`` matrices, each ``(rank, d_model)``, for affine jobs. Losses are in
    units of ``log_base``; ``loss_history[t]`` is the loss of the vector after
    ``t`` optimizer steps, so ``loss_history[-1]`` belongs to ``vector``;
    ``norm_history[t]`` is that vector's norm.
    """

    job_id: str
    vector: np.ndarray
    layers: tuple[int, ...]
    loss_history: list[float]
    target_losses: list[float]
    iterations: int
    stop_reason: str
    final_norm: float
    seed: int
    log_base: float
    factors: tuple[np.ndarray, np.ndarray] | None = None
    norm_history: list[float] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        return self.loss_history[-1]

    @property
    def initial_loss(self) -> float:
        return self.loss_history[0]
