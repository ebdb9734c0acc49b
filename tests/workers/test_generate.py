"""Greedy generation with a KV cache and per-row steering."""

from __future__ import annotations

import pytest
import torch

from workers.jobs import Intervention, TokenSelection
from workers.models.tiny import TINY_FAMILIES, tiny_model
from workers.steering.generate import RowSteering, greedy_decode
from workers.steering.interventions import JobMeta

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Sure",
    "Option A or option B",
]
SELECTIONS = [
    TokenSelection(),
    TokenSelection("prompt"),
    TokenSelection("last_k", k=2),
    TokenSelection(),
]


def setup(family: str) -> tuple:
    lm = tiny_model(family)
    prompts = [lm.encode_prompt(t) for t in TEXTS]
    gen = torch.Generator().manual_seed(0)
    params = torch.randn(len(TEXTS), 1, lm.d_model, generator=gen) * 3
    interventions = [Intervention(), Intervention(), Intervention("clamp", clamp_coef=2.0)]
    interventions.append(Intervention())
    meta = JobMeta.build([[1], [2], [0], [1, 3]], interventions, lm.n_layers, lm.device)
    steer = RowSteering(params, meta, SELECTIONS, [len(p) for p in prompts])
    return lm, prompts, params, meta, steer


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_kv_cache_generation_equals_full_recomputation(family: str) -> None:
    lm, prompts, _, _, steer = setup(family)
    for s in (steer, None):
        cached = greedy_decode(lm, prompts, 12, s, stop_at_eos=False)
        full = greedy_decode(lm, prompts, 12, s, stop_at_eos=False, kv_cache=False)
        assert cached == full
        assert all(len(row) == 12 for row in cached)


def test_batched_steered_generation_equals_each_row_alone() -> None:
    lm, prompts, params, meta, steer = setup("llama")
    batched = greedy_decode(lm, prompts, 12, steer, stop_at_eos=False)
    for i, prompt in enumerate(prompts):
        alone = RowSteering(
            params[i : i + 1], meta.select(torch.tensor([i])), [SELECTIONS[i]], [len(prompt)]
        )
        assert greedy_decode(lm, [prompt], 12, alone, stop_at_eos=False)[0] == batched[i]
    # Steering changed the text, so the comparison above had something to compare.
    assert greedy_decode(lm, prompts, 12, None, stop_at_eos=False) != batched


def test_generation_stops_at_eos_per_row() -> None:
    lm, prompts, params, meta, _ = setup("llama")
    eos = lm.tokenizer.eos_token_id
    # A huge vector along the EOS unembedding makes the steered row emit EOS first.
    direction = lm.model.get_output_embeddings().weight[eos].detach()
    strong = params.clone()
    strong[0, 0] = direction / direction.norm() * 200
    rows = RowSteering(
        strong,
        JobMeta.build([[3]] * 4, [Intervention()] * 4, 4, lm.device),
        SELECTIONS,
        [len(p) for p in prompts],
    )
    out = greedy_decode(lm, prompts, 8, rows)
    assert out[0] == [eos]
    assert any(len(row) > 1 for row in out[1:])
