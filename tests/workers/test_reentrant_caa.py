"""Reentrant steering (Algorithm 1) and the CAA skyline on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.analysis.caa import activations, caa_vector
from workers.engine.reentrant import ReentrantJob, optimize_reentrant
from workers.jobs import Intervention, ScoredPrompt, StopRules, Target, VectorJob, chat


@pytest.mark.parametrize("prefix", ["greedy", "target"])
def test_reentrant_stage_two_lowers_the_kl(tiny_llama, prefix: str) -> None:
    prompt = chat("What is the capital of France?")
    stage1 = VectorJob(
        job_id="s1",
        prompts=(ScoredPrompt(prompt, (Target(" Just kidding!", "suppress"),)),),
        layers=(0,),
        lr=0.1,
        seed=1,
        intervention=Intervention("affine", rank=1),
        stop=StopRules(max_iters=10),
    )
    stage2 = VectorJob(
        job_id="s2",
        layers=(2,),
        lr=0.2,
        norm_bound=30.0,
        seed=2,
        stop=StopRules(max_iters=25, eps=None),
    )
    [res] = optimize_reentrant(
        tiny_llama, [ReentrantJob(stage1, stage2, prefix=prefix, n_tokens=6)]
    )
    assert res.stage1.factors is not None
    a, b = res.stage1.factors
    np.testing.assert_allclose(np.linalg.norm(a), 1.0, rtol=1e-5)  # |v| = |u| = 1 (§5.1.3)
    np.testing.assert_allclose(np.linalg.norm(b), 1.0, rtol=1e-5)
    expected_len = 6 if prefix == "greedy" else len(tiny_llama.encode_target(" Just kidding!"))
    assert len(res.decoded) == expected_len
    kl = res.stage2.loss_history
    assert kl[0] > 0
    assert kl[-1] < 0.8 * kl[0], kl
    assert res.stage2.layers == (2,)


def test_caa_equals_a_hand_computation(tiny_llama) -> None:
    lm = tiny_llama
    pos = [chat("Thank you so much, this is wonderful!"), chat("Hello world")]
    neg = [chat("I cannot help with that request."), "The quick brown fox", chat("Sure")]
    layer = 2

    def hand(prompts):
        rows = []
        for p in prompts:
            ids = torch.tensor([lm.encode_prompt(p)])
            with torch.no_grad():
                hs = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
            rows.append(hs[layer][0, -1])  # hidden_states[l] enters block l
        return torch.stack(rows).mean(0)

    expected = (hand(pos) - hand(neg)).numpy()
    got = caa_vector(lm, pos, neg, layer)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # Mean reduction over every real prompt token, with padding excluded.
    ids = lm.encode_prompt(neg[1])
    with torch.no_grad():
        hs = lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    mean_acts = activations(lm, neg, layer, reduce="mean")
    np.testing.assert_allclose(mean_acts[1].numpy(), hs[layer][0].mean(0).numpy(), atol=1e-5)
    assert all(len(block._forward_pre_hooks) == 0 for block in lm.layers)


def test_examples_caa_contrasts_completions(tiny_llama) -> None:
    from workers.analysis.caa import examples_caa
    from workers.examples import Example

    lm = tiny_llama
    exs = [
        Example("a", chat("Hello world"), promote=("Thank you",), suppress=("No",)),
        Example("b", chat("What is the capital?"), promote=("Paris",)),
        Example("c", "fake prompt", promote=("x",), meta={"real_prompt": "real prompt"}),
    ]
    got = examples_caa(lm, exs, 2)
    text_a, _ = lm.format_prompt(exs[0].prompt)
    text_b, _ = lm.format_prompt(exs[1].prompt)
    expected = caa_vector(
        lm,
        [text_a + "Thank you", text_b + "Paris", "fake prompt"],
        [text_a + "No", text_b, "real prompt"],
        2,
    )
    np.testing.assert_allclose(got, expected, rtol=1e-6)
