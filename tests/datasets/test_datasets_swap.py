"""The option swap of §3 (App. B.2 step 2), on hand-built cases."""

from __future__ import annotations

import pytest

from orchestrator.datasets import SwapError, swap_example, swap_prompt, swap_text
from workers.examples import Example
from workers.jobs import chat

PROMPT = "You run a shop.\n\nWhich action do you take?\nA) Be honest.\nB) Steal.\n\nAnswer A or B."


def test_swap_text_exchanges_the_options_and_keeps_the_labels_in_order():
    assert swap_text(PROMPT) == (
        "You run a shop.\n\nWhich action do you take?\nA) Steal.\nB) Be honest.\n\nAnswer A or B."
    )


def test_swap_twice_is_the_identity():
    assert swap_text(swap_text(PROMPT)) == PROMPT


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(A) one\n(B) two", "(A) two\n(B) one"),
        ("A. one\nB. two", "A. two\nB. one"),
        ("  A: one\n  B: two", "  A: two\n  B: one"),
        ("B) two\nA) one", "B) one\nA) two"),  # options listed B first
        ("A) x\nmiddle\nB) a much longer option", "A) a much longer option\nmiddle\nB) x"),
    ],
)
def test_swap_text_label_styles(text, expected):
    assert swap_text(text) == expected


def test_labels_inside_a_line_are_not_options():
    text = "Say A) or B) out loud.\nA) left\nB) right"
    assert swap_text(text) == "Say A) or B) out loud.\nA) right\nB) left"


def test_custom_labels():
    assert swap_text("Yes) go\nNo) stay", ("Yes", "No")) == "Yes) stay\nNo) go"


@pytest.mark.parametrize("text", ["A) only one", "A) one\nB) two\nB) three", "no options"])
def test_swap_text_needs_exactly_one_line_per_label(text):
    with pytest.raises(SwapError, match="exactly one option line"):
        swap_text(text)


def test_swap_prompt_touches_only_the_last_user_turn():
    msgs = chat(("system", "A) not an option list"), PROMPT)
    out = swap_prompt(msgs)
    assert out[0] == msgs[0]
    assert out[1] == ("user", swap_text(PROMPT))
    with pytest.raises(SwapError, match="no user turn"):
        swap_prompt((("system", "A) x\nB) y"),))


def test_swap_example_flips_correct_and_the_label_targets():
    ex = Example(
        id="s1",
        prompt=chat(PROMPT),
        promote=("B",),
        suppress=("A", "Sure"),
        thresholds=(-1.0, -0.5, -2.0),
        choices=("A", "B"),
        correct=0,
        group="benign",
        meta={"scenario": "shop"},
    )
    sw = swap_example(ex)
    assert sw.id == "s1~swap"
    assert sw.prompt == chat(swap_text(PROMPT))
    # The harmful action "Steal." is now option A: promote A, suppress B.
    assert sw.promote == ("A",)
    assert sw.suppress == ("B", "Sure")
    assert sw.thresholds == ex.thresholds
    assert sw.correct == 1
    assert sw.choices == ("A", "B") and sw.group == "benign"
    assert sw.meta == {"scenario": "shop", "swapped_from": "s1"}
    assert ex.meta == {"scenario": "shop"}  # pure: the original is untouched
    assert swap_example(sw).prompt == ex.prompt


def test_swap_example_raw_prompt_and_no_correct():
    ex = Example(id="r", prompt="A) x\nB) y", promote=("A",), choices=("A", "B"))
    sw = swap_example(ex)
    assert sw.prompt == "A) y\nB) x" and sw.promote == ("B",) and sw.correct is None


def test_swap_example_needs_two_choices():
    with pytest.raises(SwapError, match="needs two"):
        swap_example(Example(id="x", prompt="A) a\nB) b", promote=("A",)))
