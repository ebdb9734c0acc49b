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


class LLMJudge:
    """Ask a chat model a yes/no question built from ``template``.

    ``template`` is formatted with ``{prompt}`` and ``{response}``; the verdict is
    True when the judge model's next token after the chat-templated question is
    more likely to be ``yes`` than ``no``.
    """

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

    def __call__(self, prompts: Sequence[Prompt], generations: Sequence[str]) -> list[bool]:
        from workers.steering.generate import next_token_logprobs

        questions = [
            chat(self.template.format(prompt=_prompt_text(p), response=g))
            for p, g in zip(prompts, generations, strict=True)
        ]
        verdicts: list[bool] = []
        for start in range(0, len(questions), self.batch_size):
            ids = [self.lm.encode_prompt(q) for q in questions[start : start + self.batch_size]]
            out = next_token_logprobs(self.lm, ids, [[len(i) - 1] for i in ids], None)
            verdicts += [bool(lp[0, self.yes] > lp[0, self.no]) for lp in out]
        return verdicts
