"""Each loss against a direct computation from the model's full logits.

The optimizer's ``loss_history[0]`` is the loss of the seeded initial vector,
so a job with ``max_iters=0`` evaluates the loss machinery (gathered logits,
coldness, log base, suppression, normalization, KL) at a known vector. The
reference below uses the plain ``model(...).logits`` path and its own hook.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference import reference_logits

from workers.engine.loop import optimize
from workers.jobs import (
    KLTerm,
    LossSettings,
    ScoredPrompt,
    StopRules,
    Target,
    VectorJob,
    chat,
)

PROMPT = chat("What is the capital of France?")
STOP0 = StopRules(max_iters=0)


def full_logprobs(lm, ids: list[int], vector: np.ndarray, layer: int, coldness: float):
    """Reference: add the vector at every position entering ``layer``; full logits."""
    return torch.log_softmax(coldness * reference_logits(lm, ids, vector, layer), dim=-1)


def reference_term(lm, prompt, target: Target, vector, layer, settings: LossSettings) -> float:
    p_ids = lm.encode_prompt(prompt)
    t_ids = lm.encode_target(target.text)
    logp = full_logprobs(lm, p_ids + t_ids, vector, layer, settings.coldness)
    total = 0.0
    for k, tok in enumerate(t_ids):
        lp = float(logp[len(p_ids) + k - 1, tok])
        total += -lp if target.kind == "promote" else -math.log(1 - math.exp(lp))
    total /= math.log(settings.log_base)
    if settings.normalize_by_length:
        total /= len(t_ids)
    return total * target.weight


@pytest.mark.parametrize(
    "settings",
    [
        LossSettings(),
        LossSettings(coldness=1.0, log_base=math.e),
        LossSettings(coldness=0.5, log_base=2.0, normalize_by_length=True),
    ],
    ids=["paper-defaults", "nats-cold1", "bits-normalized"],
)
def test_promotion_suppression_and_mixed_match_direct_computation(tiny_llama, settings) -> None:
    lm = tiny_llama
    targets = (
        Target("Paris is lovely.", "promote"),
        Target("I cannot help", "suppress", weight=0.5),
    )
    second = ScoredPrompt("Hello world", (Target(" Just kidding!", "suppress"),))
    job = VectorJob(
        job_id="mixed",
        prompts=(ScoredPrompt(PROMPT, targets), second),
        layers=(2,),
        init_norm=3.0,
        seed=7,
        loss=settings,
        stop=STOP0,
    )
    [res] = optimize(lm, [job])
    expected = [reference_term(lm, PROMPT, t, res.vector, 2, settings) for t in targets]
    expected.append(reference_term(lm, "Hello world", second.targets[0], res.vector, 2, settings))
    np.testing.assert_allclose(res.target_losses, expected, rtol=1e-4)
    assert res.loss_history[0] == pytest.approx(sum(expected), rel=1e-4)
    assert res.iterations == 0 and res.stop_reason == "max_iters"


def test_suppression_is_accurate_when_the_target_is_nearly_certain(tiny_llama) -> None:
    import mpmath

    from workers.steering.losses import log1mexp

    mpmath.mp.dps = 50
    values = [-1e-9, -1e-3, -0.5, -5.0, -40.0]
    expected = torch.tensor(
        [float(mpmath.log(1 - mpmath.exp(v))) for v in values], dtype=torch.float64
    )
    got = log1mexp(torch.tensor(values, dtype=torch.float64))
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=0)
    assert torch.isfinite(log1mexp(torch.tensor([0.0]))).all()


def test_reentrant_kl_term_matches_direct_computation(tiny_llama) -> None:
    lm = tiny_llama
    ids = lm.encode_prompt(PROMPT) + lm.encode_target("Paris is lovely.")
    prompt_len = len(lm.encode_prompt(PROMPT))
    positions = tuple(range(prompt_len - 1, len(ids)))
    rng = np.random.default_rng(0)
    teacher = torch.log_softmax(torch.tensor(rng.normal(size=(len(positions), lm.vocab_size))), -1)
    job = VectorJob(
        job_id="kl",
        layers=(1,),
        seed=3,
        init_norm=2.0,
        stop=STOP0,
        kl_terms=(KLTerm(tuple(ids), prompt_len, positions, teacher.numpy().astype(np.float32)),),
    )
    [res] = optimize(lm, [job])
    logq = full_logprobs(lm, ids, res.vector, 1, 0.7)[list(positions)]
    kl = (teacher.exp() * (teacher - logq)).sum(-1).sum() / math.log(10)
    assert res.loss_history[0] == pytest.approx(float(kl), rel=1e-4)
