"""A task: examples plus the task-level information its evaluation needs."""

from __future__ import annotations

from dataclasses import dataclass

from workers.examples import Example, Split
from workers.jobs import Prompt


@dataclass(frozen=True)
class Task:
    """Examples and how to judge them.

    - ``examples``: train and transfer examples (``Example.split``).
    - ``judge_contains_any`` / ``judge_lacks_all``: the generation string-match
      judge (§4, §5.2). A greedy generation succeeds when it contains at least
      one string of ``judge_contains_any`` (if that is non-empty) and none of
      ``judge_lacks_all`` (if that is non-empty). Compare case-insensitively.
    - ``neutral_prompts``: ordinary prompts for the side-effect KL.
    - ``surprisal_context``: example texts of the desired behaviour, the
      context ``C`` of base-model surprisal (§2.2); may be empty.
    """

    name: str
    description: str
    examples: tuple[Example, ...]
    judge_contains_any: tuple[str, ...] = ()
    judge_lacks_all: tuple[str, ...] = ()
    neutral_prompts: tuple[Prompt, ...] = ()
    surprisal_context: tuple[str, ...] = ()

    def split(self, split: Split) -> tuple[Example, ...]:
        """The examples of one split, in task order."""
        return tuple(ex for ex in self.examples if ex.split == split)

    @property
    def train(self) -> tuple[Example, ...]:
        return self.split("train")

    @property
    def transfer(self) -> tuple[Example, ...]:
        return self.split("transfer")

    @property
    def groups(self) -> tuple[str, ...]:
        """The distinct groups, in order of first appearance."""
        return tuple(dict.fromkeys(ex.group for ex in self.examples))

    def judge(self, text: str) -> bool:
        """The string-match judge on one generation (see the class docstring)."""
        low = text.lower()
        if self.judge_contains_any and not any(s.lower() in low for s in self.judge_contains_any):
            return False
        return not any(s.lower() in low for s in self.judge_lacks_all)
