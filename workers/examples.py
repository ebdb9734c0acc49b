"""Examples: one prompt with its targets, the unit of training and of transfer.

An ``Example`` is plain data, shared by the loaders (``orchestrator.datasets``)
and the scorers (``workers.evaluation.transfer``). Log-probabilities and thresholds are
in the unit of the study's log base (base 10: hartleys).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from workers.jobs import Prompt, ScoredPrompt, Target

Split = Literal["train", "transfer"]


@dataclass(frozen=True)
class Example:
    """One prompt and what a steering vector should do after it.

    - ``promote`` / ``suppress``: target completions.
    - ``thresholds``: optional log-probability thresholds, one per target in the
      order ``promote + suppress``. A promote target succeeds when its steered
      log-probability is at or above its threshold, a suppress target when it is
      at or below. Without thresholds, success means "moved the right way":
      steered above unsteered for promote, below for suppress.
    - ``split``: ``train`` (a vector may be optimized on it) or ``transfer``
      (held out).
    - ``group``: a free label, e.g. ``benign``/``harmful`` (§3) or an
      occupation (§5); metrics are reported per group.
    - ``choices`` / ``correct``: single-token answers (e.g. ``("A", "B")``) and
      the index of the unsteered model's intended answer, for choice-flip rates.
    """

    id: str
    prompt: Prompt
    promote: tuple[str, ...] = ()
    suppress: tuple[str, ...] = ()
    thresholds: tuple[float, ...] = ()
    split: Split = "train"
    group: str = ""
    choices: tuple[str, ...] = ()
    correct: int | None = None
    meta: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def targets(self) -> list[tuple[str, str, float | None]]:
        """``(text, kind, logprob threshold or None)`` for every target."""
        kinds = [(t, "promote") for t in self.promote] + [(t, "suppress") for t in self.suppress]
        out: list[tuple[str, str, float | None]] = []
        for i, (text, kind) in enumerate(kinds):
            out.append((text, kind, self.thresholds[i] if i < len(self.thresholds) else None))
        return out

    def scored_prompt(self, log_base: float = 10.0) -> ScoredPrompt:
        """The training form of this example: each threshold becomes a loss goal."""
        targets = []
        for text, kind, th in self.targets():
            loss_goal = None
            if th is not None:
                loss_goal = logprob_to_loss(th, kind, log_base)
            targets.append(Target(text, kind, threshold=loss_goal))  # type: ignore[arg-type]
        return ScoredPrompt(self.prompt, tuple(targets))


def logprob_to_loss(logprob: float, kind: str, log_base: float = 10.0) -> float:
    """The per-target loss at which a target sits exactly at ``logprob``.

    Promotion loss is ``-log P``; suppression loss is ``-log(1 - P)``, both in
    units of ``log_base``.
    """
    if kind == "promote":
        return -logprob
    p = log_base**logprob
    if p >= 1.0:
        return math.inf
    return -math.log(1.0 - p) / math.log(log_base)
