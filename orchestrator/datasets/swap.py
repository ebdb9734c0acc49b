"""The option swap of the paper's two-choice format (§3, App. B.2 step 2).

A two-choice prompt lists its two actions on lines of their own, each opened by
its label: ``A) ...`` and ``B) ...`` (``(A)``, ``A.`` and ``A:`` work too). The
swapped copy ``x'`` shows the two actions in the other order, each with the
other label: the action that was ``A`` is now second and labelled ``B``. The
text around the options is unchanged. Every function here is pure.
"""

from __future__ import annotations

import re
from dataclasses import replace

from workers.examples import Example
from workers.jobs import Prompt

LABELS = ("A", "B")


class SwapError(ValueError):
    """The prompt does not hold exactly one option line per label."""


def _option_line(label: str) -> re.Pattern[str]:
    return re.compile(rf"^([ \t]*\(?{re.escape(label)}[).:][ \t]?)(.*)$", re.MULTILINE)


def swap_text(text: str, labels: tuple[str, str] = LABELS) -> str:
    """Swap the two option texts of a prompt, keeping each line's label prefix.

    >>> swap_text("Pick one.\\nA) stay\\nB) go\\nAnswer A or B.")
    'Pick one.\\nA) go\\nB) stay\\nAnswer A or B.'

    Raises:
        SwapError: a label has no option line, or more than one.
    """
    found = []
    for label in labels:
        matches = list(_option_line(label).finditer(text))
        if len(matches) != 1:
            raise SwapError(
                f"expected exactly one option line for label {label!r} "
                f"(like '{label}) ...'), found {len(matches)}"
            )
        found.append(matches[0])
    first, second = sorted(found, key=lambda m: m.start())
    # Rebuild from the end so earlier offsets stay valid.
    out = text[: second.start(2)] + first.group(2) + text[second.end(2) :]
    return out[: first.start(2)] + second.group(2) + out[first.end(2) :]


def swap_prompt(prompt: Prompt, labels: tuple[str, str] = LABELS) -> Prompt:
    """Swap the options of a raw prompt, or of the last user turn of chat messages."""
    if isinstance(prompt, str):
        return swap_text(prompt, labels)
    turns = list(prompt)
    for i in range(len(turns) - 1, -1, -1):
        if turns[i][0] == "user":
            turns[i] = ("user", swap_text(turns[i][1], labels))
            return tuple(turns)
    raise SwapError("the chat prompt has no user turn to swap options in")


def swap_example(example: Example) -> Example:
    """The option-swapped copy of a two-choice example.

    The options trade places (:func:`swap_text`), ``correct`` points at the
    other choice, and every target equal to a choice label becomes the other
    label, so "promote the harmful option" keeps its meaning. The copy's id
    gets the suffix ``~swap``; ``meta['swapped_from']`` names the original.

    Raises:
        SwapError: the example does not have exactly two choices, or its
            prompt lacks one option line per choice.
    """
    if len(example.choices) != 2:
        raise SwapError(
            f"example {example.id!r} has choices {list(example.choices)}; a swap needs two"
        )
    a, b = example.choices
    other = {a: b, b: a}
    return replace(
        example,
        id=f"{example.id}~swap",
        prompt=swap_prompt(example.prompt, (a, b)),
        promote=tuple(other.get(t, t) for t in example.promote),
        suppress=tuple(other.get(t, t) for t in example.suppress),
        correct=None if example.correct is None else 1 - example.correct,
        meta={**example.meta, "swapped_from": example.id},
    )
