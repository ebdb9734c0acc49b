"""Transfer metrics on a tiny random model, each against a direct computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference import reference_logits

from workers.evaluation.evaluate import EvalCache, EvalSpec, evaluate
from workers.evaluation.judges import ContainsAny, LacksAll, LLMJudge, LLMJudgeSpec
from workers.evaluation.transfer import (
    SteeringVector,
    choice_flips,
    generations,
    judged,
    side_effect_kl,
    surprisal_per_token,
    target_logprobs,
)
from workers.examples import Example
from workers.jobs import Intervention, TokenSelection, chat

EXAMPLES = [
    Example(
        "e0",
        chat("What is the capital of France?"),
        promote=("Paris is lovely.",),
        split="transfer",
    ),
    Example(
        "e1",
        "Hello world",
        promote=(" Thank you",),
        suppress=(" Just kidding!",),
        thresholds=(-3.0, -1.0),
        split="transfer",
    ),
    Example("e2", chat("Choose A or B."), choices=("A", "B"), group="benign", split="transfer"),
    Example(
        "e3",
        chat("Option A or option B: choose the safer action."),
        choices=("A", "B"),
        group="harmful",
        split="transfer",
    ),
]


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    return [
        SteeringVector("v0", (rng.normal(size=64) * 2).astype(np.float32), (1,)),
        SteeringVector("v1", (rng.normal(size=64) * 8).astype(np.float32), (2,)),
        SteeringVector("zero", np.zeros(64, np.float32), (0,)),
    ]


def test_target_logprobs_match_direct_computation(tiny_llama, vectors) -> None:
    lm = tiny_llama
    rows = target_logprobs(lm, vectors, EXAMPLES, coldness=0.7, log_base=10.0)
    # 3 vectors x 3 targets (e0 has one, e1 two; e2/e3 have none).
    assert len(rows) == 9
    for row in rows:
        ex = next(e for e in EXAMPLES if e.id == row.example_id)
        vec = next(v for v in vectors if v.vector_id == row.vector_id)
        _, kind, idx = row.metric.split(":")
        text = (ex.promote if kind == "promote" else ex.suppress)[int(idx)]
        p_ids, t_ids = lm.encode_prompt(ex.prompt), lm.encode_target(text)

        def lp(logits, p_ids=p_ids, t_ids=t_ids):
            logp = torch.log_softmax(0.7 * logits, -1)
            return sum(float(logp[len(p_ids) + k - 1, t]) for k, t in enumerate(t_ids)) / math.log(
                10
            )

        steered = lp(reference_logits(lm, p_ids + t_ids, vec.vector, vec.layers[0]))
        unsteered = lp(reference_logits(lm, p_ids + t_ids))
        assert row.steered == pytest.approx(steered, rel=1e-4, abs=1e-5)
        assert row.unsteered == pytest.approx(unsteered, rel=1e-4, abs=1e-5)
        if ex.id == "e1":
            threshold = -3.0 if kind == "promote" else -1.0
            expected = steered >= threshold if kind == "promote" else steered <= threshold
        else:
            expected = steered > unsteered
        assert row.success == expected
    zero = [r for r in rows if r.vector_id == "zero"]
    assert all(r.steered == pytest.approx(r.unsteered, abs=1e-6) for r in zero)


def test_choice_flips_match_direct_argmax(tiny_llama) -> None:
    lm = tiny_llama
    a, b = lm.encode_target("A")[0], lm.encode_target("B")[0]
    rng = np.random.default_rng(3)
    # Large random vectors at the last block flip some answers and not others.
    vecs = [
        SteeringVector(f"r{i}", (rng.normal(size=64) * 40).astype(np.float32), (3,))
        for i in range(6)
    ]
    vecs.append(SteeringVector("zero", np.zeros(64, np.float32), (3,)))
    rows = choice_flips(lm, vecs, EXAMPLES)
    assert len(rows) == 7 * 2 * 2  # vectors x choice examples x signs
    outcomes = set()
    for row in rows:
        ex = next(e for e in EXAMPLES if e.id == row.example_id)
        vec = next(v for v in vecs if v.vector_id == row.vector_id)
        ids = lm.encode_prompt(ex.prompt)
        base = reference_logits(lm, ids)[-1]
        sign = 1.0 if row.metric.endswith("+") else -1.0
        steered = reference_logits(lm, ids, vec.vector, 3, sign)[-1]
        ref = 0 if base[a] >= base[b] else 1
        flipped = (0 if steered[a] >= steered[b] else 1) != ref
        assert row.success == flipped, (row, flipped)
        outcomes.add(flipped)
        if vec.vector_id == "zero":
            assert not row.success and row.steered == pytest.approx(row.unsteered, abs=1e-6)
    assert outcomes == {True, False}


def test_generations_and_string_judges(tiny_llama, vectors) -> None:
    lm = tiny_llama
    gens = generations(lm, vectors, EXAMPLES[:2], n_tokens=6)
    assert len(gens) == 6
    for g in gens:
        ex = next(e for e in EXAMPLES if e.id == g.example_id)
        vec = next(v for v in vectors if v.vector_id == g.vector_id)
        ids = lm.encode_prompt(ex.prompt)
        for steer, text in ((True, g.steered), (False, g.unsteered)):
            seq = list(ids)
            for _ in range(6):
                logits = reference_logits(lm, seq, vec.vector if steer else None, vec.layers[0])
                seq.append(int(logits[-1].argmax()))
                if seq[-1] == lm.tokenizer.eos_token_id:
                    break
            assert text == lm.tokenizer.decode(seq[len(ids) :], skip_special_tokens=True)
        if g.vector_id == "zero":
            assert g.steered == g.unsteered
    # Judges on known strings.
    assert ContainsAny(("I cannot",))([""] * 3, ["I CANNOT do", "sure", "we i cannot"]) == [
        True,
        False,
        True,
    ]
    assert LacksAll(("just kidding", "wait"))([""] * 2, ["all good", "Just kidding!"]) == [
        True,
        False,
    ]
    rows = judged(gens, EXAMPLES, ContainsAny((gens[0].steered[:3],)))
    assert rows[0].metric == "judge:contains_any" and rows[0].success and rows[0].steered == 1.0


def test_llm_judge_matches_direct_yes_no_comparison(tiny_llama) -> None:
    lm = tiny_llama
    judge = LLMJudge(lm, "Is this polite? {prompt} -> {response}", yes="Yes", no="No")
    verdicts = judge(["Hello", "Hi"], ["Thank you so much", "No"])
    for prompt, resp, got in zip(
        ["Hello", "Hi"], ["Thank you so much", "No"], verdicts, strict=True
    ):
        ids = lm.encode_prompt(chat(f"Is this polite? {prompt} -> {resp}"))
        logits = reference_logits(lm, ids)[-1]
        assert got == bool(logits[lm.encode_target("Yes")[0]] > logits[lm.encode_target("No")[0]])
    with pytest.raises(ValueError, match="response"):
        LLMJudge(lm, "no placeholder")


def test_a_studys_llm_judge_rows_are_the_unsteered_models_verdicts(tiny_llama, vectors) -> None:
    """``EvalSpec.llm_judge``: ``judge:llm`` rows whose steered and unsteered
    values are the model's own yes/no verdicts on the two generations."""
    lm = tiny_llama
    template = "Is this polite? {prompt} -> {response}"
    spec = EvalSpec(
        examples=tuple(EXAMPLES[:2]),
        metrics=("judge",),
        llm_judge=LLMJudgeSpec(template, yes="Yes", no="No"),
        generation_tokens=12,
    )
    cache = EvalCache()
    rows, gens = evaluate(lm, spec, vectors, cache)
    assert len(rows) == len(gens) == len(vectors) * 2
    yes, no = lm.encode_target("Yes")[0], lm.encode_target("No")[0]
    by_id = {ex.id: ex for ex in EXAMPLES}

    def direct(prompt, text: str) -> float:
        asked = template.format(prompt=prompt[0][1] if not isinstance(prompt, str) else prompt,
                                response=text)  # fmt: skip
        logits = reference_logits(lm, lm.encode_prompt(chat(asked)))[-1]
        return float(logits[yes] > logits[no])

    texts = {(g.vector_id, g.example_id): g for g in gens}
    verdicts = []
    for row in rows:
        g = texts[(row.vector_id, row.example_id)]
        prompt = by_id[row.example_id].prompt
        assert row.metric == "judge:llm"
        assert (row.steered, row.unsteered) == (
            direct(prompt, g.steered),
            direct(prompt, g.unsteered),
        )
        assert row.success == bool(row.steered)
        verdicts.append(row.steered)
    assert 0 < sum(verdicts) < len(verdicts)  # both verdicts occur, so neither is a constant
    again, _ = evaluate(lm, spec, vectors, cache)  # verdicts kept per question
    assert [r.steered for r in again] == verdicts


def test_side_effect_kl_matches_direct_computation(tiny_llama, vectors) -> None:
    lm = tiny_llama
    neutral = [chat("Hello world"), "The quick brown fox"]
    rows = side_effect_kl(lm, vectors, neutral, log_base=10.0, max_kl=0.05)
    assert len(rows) == 6
    for row in rows:
        vec = next(v for v in vectors if v.vector_id == row.vector_id)
        ids = lm.encode_prompt(neutral[int(row.example_id.split(":")[1])])
        p = torch.log_softmax(reference_logits(lm, ids, vec.vector, vec.layers[0])[-1], -1)
        q = torch.log_softmax(reference_logits(lm, ids)[-1], -1)
        kl = float((p.exp() * (p - q)).sum()) / math.log(10)
        assert row.steered == pytest.approx(kl, rel=1e-3, abs=1e-7)
        assert row.success == (kl <= 0.05)
    assert all(r.steered == pytest.approx(0.0, abs=1e-7) for r in rows if r.vector_id == "zero")


def test_surprisal_per_token_matches_direct_computation(tiny_llama) -> None:
    lm = tiny_llama
    context = ["Paris is lovely.", "Thank you so much."]
    texts = ["Hello world", "I cannot help with that request."]
    got = surprisal_per_token(lm, context, texts, log_base=2.0)
    prefix = lm.encode_prompt("\n\n".join(context) + "\n\n")
    for text, value in zip(texts, got, strict=True):
        body = lm.encode_target(text)
        logp = torch.log_softmax(reference_logits(lm, prefix + body), -1)
        total = -sum(float(logp[len(prefix) + k - 1, t]) for k, t in enumerate(body))
        assert value == pytest.approx(total / len(body) / math.log(2), rel=1e-4)


def test_clamp_and_token_selection_are_honoured_at_evaluation(tiny_llama) -> None:
    lm = tiny_llama
    v = np.random.default_rng(1).normal(size=64).astype(np.float32) * 5
    ex = [EXAMPLES[0]]
    prompt_only = SteeringVector("p", v, (1,), tokens=TokenSelection("prompt"))
    everywhere = SteeringVector("a", v, (1,))
    clamp = SteeringVector("c", v, (1,), intervention=Intervention("clamp", clamp_coef=0.5))
    rows = {r.vector_id: r for r in target_logprobs(lm, [prompt_only, everywhere, clamp], ex)}
    assert len({round(r.steered, 6) for r in rows.values()}) == 3
    assert rows["p"].unsteered == rows["a"].unsteered == rows["c"].unsteered
