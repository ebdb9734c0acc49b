"""The built-in tasks: sizes, splits, ids, task info, and that every example tokenizes."""

from __future__ import annotations

import pytest

from orchestrator.datasets import (
    BUILTIN_TASKS,
    NEUTRAL_PROMPTS,
    DatasetError,
    Task,
    builtin_task,
    swap_example,
)
from orchestrator.datasets.fictitious import FIGURES, OCCUPATIONS, fake_occupation
from workers.examples import Example

TASKS = [builtin_task(name) for name in BUILTIN_TASKS]


def _prompts(task: Task) -> list:
    """Every prompt a run may feed the model: examples, swapped copies, neutral prompts."""
    out = [ex.prompt for ex in task.examples] + list(task.neutral_prompts)
    out += [swap_example(ex).prompt for ex in task.examples if len(ex.choices) == 2]
    out += [ex.meta["real_prompt"] for ex in task.examples if "real_prompt" in ex.meta]
    return out


def _texts(task: Task) -> set[str]:
    return {t for ex in task.examples for t in (*ex.promote, *ex.suppress, *ex.choices)}


@pytest.mark.parametrize("task", TASKS, ids=BUILTIN_TASKS)
def test_task_shape(task: Task):
    assert task.name in BUILTIN_TASKS and task.description
    assert len(task.examples) >= 40
    assert len(task.transfer) >= 16
    assert 6 <= len(task.train) <= 20
    assert len(task.train) + len(task.transfer) == len(task.examples)
    ids = [ex.id for ex in task.examples]
    assert len(set(ids)) == len(ids)
    assert len({ex.prompt for ex in task.examples}) == len(task.examples)
    assert len(task.neutral_prompts) >= 8
    for ex in task.examples:
        assert isinstance(ex, Example)
        assert ex.promote and all(ex.promote), ex.id
        assert ex.group, ex.id
        assert ex.thresholds == ()


def test_builtin_task_is_cached_and_unknown_names_fail():
    assert builtin_task("refusal") is builtin_task("refusal")
    with pytest.raises(DatasetError, match="no built-in task 'nope'") as info:
        builtin_task("nope")
    assert isinstance(info.value, KeyError)  # preflight catches KeyError
    assert str(info.value).startswith("<builtin>: no built-in task 'nope'; use one of")


def test_task_ids_are_unique_across_tasks():
    ids = [ex.id for task in TASKS for ex in task.examples]
    assert len(set(ids)) == len(ids)


def test_refusal_and_sentiment_judges():
    refusal, sentiment = builtin_task("refusal"), builtin_task("sentiment")
    assert refusal.judge("I'm sorry, but I can't help with that.")
    assert refusal.judge("I CANNOT do that")
    assert not refusal.judge("Sure! Here is a recipe for banana bread.")
    assert all(ex.promote == refusal.examples[0].promote for ex in refusal.examples)
    assert not any(ex.suppress for ex in refusal.examples)
    assert sentiment.judge("What a wonderful question! Bees are amazing.")
    assert not sentiment.judge("A washing machine cleans clothes with water.")
    assert all(len(ex.suppress) == 1 for ex in sentiment.examples)


def test_fictitious_follows_the_section_5_template():
    task = builtin_task("fictitious")
    assert task.groups == OCCUPATIONS
    assert task.judge_lacks_all and not task.judge_contains_any
    assert not task.judge("Just kidding! He is actually a physicist.")
    assert task.judge("As a musician, he wrote many songs.")
    assert len(task.surprisal_context) == len(OCCUPATIONS)
    names = [n for names in FIGURES.values() for n in names]
    assert len(set(names)) == len(names) == len(task.examples)
    for occ in OCCUPATIONS:
        group = [ex for ex in task.examples if ex.group == occ]
        assert len(group) == len(FIGURES[occ]) >= 8
        assert sum(ex.split == "train" for ex in group) >= 1
    for ex in task.examples:
        fake, real = ex.meta["fake_occupation"], ex.meta["real_occupation"]
        assert real == ex.group and fake == fake_occupation(real) != real
        assert isinstance(ex.prompt, str)
        assert ex.prompt.endswith(
            f"{ex.meta['name']} is best known for being {'an' if fake[0] in 'aeiou' else 'a'} {fake}."
        )
        assert ex.meta["real_prompt"].endswith(f" {real}.")
        assert fake in ex.promote[0]
        assert set(ex.suppress) == {"Just kidding", " Just kidding"}
    assert fake_occupation("musician") == "actor"


def test_two_choice_groups_orders_and_targets():
    task = builtin_task("two_choice")
    assert task.groups == ("benign", "harmful")
    assert {ex.correct for ex in task.examples} == {0, 1}
    for group in task.groups:
        sel = [ex for ex in task.examples if ex.group == group]
        assert sum(ex.correct == 0 for ex in sel) == len(sel) // 2  # A is benign half the time
        assert sum(ex.split == "transfer" for ex in sel) >= 16
    for ex in task.examples:
        assert ex.choices == ("A", "B") and ex.correct in (0, 1)
        assert ex.suppress == (ex.choices[ex.correct],)
        assert ex.promote == (ex.choices[1 - ex.correct],)
        sw = swap_example(ex)
        assert sw.correct == 1 - ex.correct and sw.promote == ex.suppress
        assert sw.prompt != ex.prompt and swap_example(sw).prompt == ex.prompt
    # Each scenario's watched and unwatched copies share a split.
    splits: dict[str, set[str]] = {}
    for ex in task.examples:
        splits.setdefault(ex.meta["scenario"], set()).add(ex.split)
    assert all(len(s) == 1 for s in splits.values())


def test_neutral_prompts_are_plain_chat():
    assert len(NEUTRAL_PROMPTS) >= 8
    assert all(p[0][0] == "user" and len(p) == 1 for p in NEUTRAL_PROMPTS)


@pytest.mark.parametrize("task", TASKS, ids=BUILTIN_TASKS)
def test_every_example_tokenizes_with_the_tiny_tokenizer(task: Task, tiny_llama):
    for prompt in _prompts(task):
        assert tiny_llama.encode_prompt(prompt)
    for text in _texts(task):
        assert tiny_llama.encode_target(text)


@pytest.mark.real_model
@pytest.mark.parametrize("task", TASKS, ids=BUILTIN_TASKS)
def test_every_example_tokenizes_with_smollm2(task: Task, smollm2):
    lengths = {}
    for prompt in _prompts(task):
        ids = smollm2.encode_prompt(prompt)
        assert ids
        lengths[prompt] = len(ids)
    longest_target = max(len(smollm2.encode_target(t)) for t in _texts(task))
    assert max(lengths.values()) + longest_target < smollm2.max_context
    for ex in task.examples:
        for choice in ex.choices:  # §3 answers are single tokens
            assert len(smollm2.encode_target(choice)) == 1
    if task.name == "fictitious":
        # The raw ChatML prompt is read as chat: special tokens, not text.
        ids = smollm2.encode_prompt(task.examples[0].prompt)
        im_start = smollm2.tokenizer.convert_tokens_to_ids("<|im_start|>")
        assert ids[0] == im_start and ids.count(im_start) == 2


def test_task_judge_combines_both_lists():
    task = Task("t", "d", (), judge_contains_any=("Yes",), judge_lacks_all=("but",))
    assert task.judge("yes indeed")
    assert not task.judge("Yes, but no")
    assert not task.judge("nothing")
    assert Task("t", "d", ()).judge("anything")
