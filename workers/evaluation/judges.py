"""Judges of generated text: string matches, or a model asked a yes/no question.

A judge is any object with a ``name`` and a call
``judge(prompts, generations) -> list[bool]``, so users can plug in their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from workers.jobs import Prompt, chat
from workers.models import LoadedModel


class Judge(Protocol):
    @property
    def name(self) -> str: ...

    def __call__(self, prompts: Sequence[Prompt], generations: Sequence[str]) -> list[bool]: ...


def _prompt_text(prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(c for _, c in prompt)


@dataclass(frozen=True)
class ContainsAny:
    """True when the generation contains any of ``strings`` (e.g. refusal phrases)."""

    strings: tuple[str, ...]
    case_sensitive: bool = False
    name: str = "contains_any"

    def __call__(self, prompts: Sequence[Prompt], generations: Sequence[str]) -> list[bool]:
        def norm(s: str) -> str:
            return s if self.case_sensitive else s.lower()

        needles = [norm(s) for s in self.strings]
        return [any(n in norm(g) for n in needles) for g in generations]


@dataclass(frozen=True)
class LacksAll:
    """True when the generation contains none of ``strings`` (e.g. "Just kidding", §5.2)."""

    strings: tuple[str, ...]
    case_sensitive: bool = False
    name: str = "lacks_all"

    def __call__(self, prompts: Sequence[Prompt], generations: Sequence[str]) -> list[bool]:
        found = ContainsAny(self.strings, self.case_sensitive)(prompts, generations)
        return [not f for f in found]


@dataclass(frozen=True)
class LLMJudgeSpec:
    """What a study's model judge asks (see :class:`LLMJudge`); plain data, so
    it travels in an ``EvalSpec``."""

    template: str
    yes: str = "Yes"
    no: str = "No"


class LLMJudge:
    """Ask a chat model a yes/no question built from ``template``.

    ``template`` is formatted with ``{prompt}`` and ``{response}``; the verdict is
    True when the judge model's next token after the chat-templated question is
    more likely to be ``yes`` than ``no``. Verdicts are kept per question (the
    unsteered generations recur for every vector), up to ``MEMO`` questions.
    """

    MEMO = 4096

    def __init__(
        self,
        lm: LoadedModel,
        template: str,
        *,
        yes: str = "Yes",
        no: str = "No",
        name: str = "llm",
        batch_size: int = 16,
    ) -> None:
        if "{response}" not in template:
            raise ValueError("an LLM judge template needs a {response} placeholder")
        self.lm, self.template, self.name, self.batch_size = lm, template, name, batch_size
        self.yes, self.no = lm.encode_target(yes)[0], lm.encode_target(no)[0]
        if self.yes == self.no:
            raise ValueError(f"the judge's {yes!r} and {no!r} start with the same token")
        self._memo: dict[str, bool] = {}

    def __call__(self, prompts: Sequence[Prompt], generations: Sequence[str]) -> list[bool]:
        from workers.steering.generate import next_token_logprobs

        questions = [
            self.template.format(prompt=_prompt_text(p), response=g)
            for p, g in zip(prompts, generations, strict=True)
        ]
        todo = list(dict.fromkeys(q for q in questions if q not in self._memo))
        if len(self._memo) + len(todo) > self.MEMO:
            self._memo.clear()
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            ids = [self.lm.encode_prompt(chat(q)) for q in chunk]
            out = next_token_logprobs(self.lm, ids, [[len(i) - 1] for i in ids], None)
            for q, lp in zip(chunk, out, strict=True):
                self._memo[q] = bool(lp[0, self.yes] > lp[0, self.no])
        return [self._memo[q] for q in questions]
