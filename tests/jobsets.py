"""Job sets shared by the optimizer and engine tests."""

from __future__ import annotations

from workers.jobs import (
    Intervention,
    LossSettings,
    ScoredPrompt,
    StopRules,
    Target,
    TokenSelection,
    VectorJob,
    chat,
)

PROMPTS = [
    chat("What is the capital of France?"),
    "Hello world",
    chat("Option A or option B: choose the safer action."),
    "The quick brown fox jumps over the lazy dog. Thank you so much, this is wonderful!",
    chat("Steering vectors move the residual stream."),
    "Sure",
    chat("Hello"),
    "I cannot help with that request. What is the capital?",
]


def eight_jobs() -> list[VectorJob]:
    """Eight rows that differ in every per-row setting, including their lengths."""
    kinds = [
        [Target("Paris is lovely.", "promote")],
        [Target(" Just kidding!", "suppress")],
        [Target("A", "promote"), Target("B", "suppress")],
        [Target(" Sure, here is", "promote", weight=2.0)],
        [Target("I cannot help with that request.", "suppress")],
        [Target(", here is a short answer.", "promote")],
        [Target("Thank you", "promote"), Target("Hello", "promote")],
        [Target(" Paris", "promote")],
    ]
    interventions = [Intervention()] * 5 + [
        Intervention("clamp", clamp_coef=0.5),
        Intervention("affine", rank=1, affine_additive=True),
        Intervention("affine", rank=2),
    ]
    tokens = [TokenSelection()] * 3 + [
        TokenSelection("prompt"),
        TokenSelection("last_k", k=3),
        TokenSelection("positions", positions=(0, -1)),
        TokenSelection(),
        TokenSelection(),
    ]
    return [
        VectorJob(
            job_id=f"job{i}",
            prompts=(ScoredPrompt(PROMPTS[i], tuple(kinds[i])),),
            layers=(i % 4,) if i != 7 else (1, 3),
            lr=[0.05, 0.1, 0.2][i % 3],
            norm_bound=[None, 4.0, 8.0, 2.0][i % 4],
            init_norm=1.0 + i / 4,
            seed=100 + i,
            intervention=interventions[i],
            tokens=tokens[i],
            loss=LossSettings(normalize_by_length=i % 2 == 1),
            stop=StopRules(max_iters=6 + i, eps=None),
        )
        for i in range(8)
    ]
