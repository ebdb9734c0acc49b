"""Interventions read back at the block they act on, and hooks that never leak."""

from __future__ import annotations

import pytest
import torch

from workers.jobs import Intervention, TokenSelection
from workers.steering.encoding import pad_right, selection_mask
from workers.steering.interventions import (
    BatchSteering,
    JobMeta,
    params_from,
    single_vector,
    steering,
)


def capture_inputs(lm, ids, attn, steer, layer):
    """The hidden state entering ``layer`` with and without ``steer``.

    The capturing pre-hook is registered after the steering hook, so it sees
    the steered input.
    """
    seen = {}

    def grab(_m, args, kwargs):
        seen["h"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    out = []
    for s in (None, steer):
        if s is None:
            handle = lm.layers[layer].register_forward_pre_hook(grab, with_kwargs=True)
            try:
                lm.model.base_model(input_ids=ids, attention_mask=attn)
            finally:
                handle.remove()
        else:
            with steering(lm.layers, s):
                handle = lm.layers[layer].register_forward_pre_hook(grab, with_kwargs=True)
                try:
                    lm.model.base_model(input_ids=ids, attention_mask=attn)
                finally:
                    handle.remove()
        out.append(seen["h"])
    return out


def test_hooks_are_removed_after_an_exception(tiny_llama) -> None:
    lm = tiny_llama
    steer = single_vector(torch.ones(64), [0, 2], lm.n_layers, 1)
    with pytest.raises(RuntimeError, match="boom"):
        with steering(lm.layers, steer):
            assert len(lm.layers[0]._forward_pre_hooks) == 1
            assert len(lm.layers[2]._forward_pre_hooks) == 1
            raise RuntimeError("boom")
    assert all(len(block._forward_pre_hooks) == 0 for block in lm.layers)
    # And after an exception raised inside the model's own forward.
    with pytest.raises(IndexError):
        with steering(lm.layers, steer):
            lm.model(input_ids=torch.tensor([[10_000]]))
    assert all(len(block._forward_pre_hooks) == 0 for block in lm.layers)


def test_additive_vector_with_each_token_selection(tiny_llama) -> None:
    lm = tiny_llama
    seqs = [list(range(5, 17)), list(range(20, 27))]
    prompt_lens = [8, 5]
    ids, attn = pad_right(seqs, 0, lm.device)
    v = torch.randn(64)
    cases = {
        "all": (TokenSelection("all"), [list(range(12)), list(range(7))]),
        "prompt": (TokenSelection("prompt"), [list(range(8)), list(range(5))]),
        "last_k": (TokenSelection("last_k", k=3), [[5, 6, 7], [2, 3, 4]]),
        "positions": (TokenSelection("positions", positions=(0, -2)), [[0, 6], [0, 3]]),
    }
    for name, (sel, expected) in cases.items():
        mask = selection_mask([sel, sel], prompt_lens, attn)
        steer = single_vector(v, [1], lm.n_layers, 2, positions=mask)
        base, steered = capture_inputs(lm, ids, attn, steer, 1)
        for row in range(2):
            changed = (steered[row] - base[row]).abs().amax(dim=-1) > 1e-6
            assert changed.nonzero().flatten().tolist() == expected[row], name
            for p in expected[row]:
                torch.testing.assert_close(steered[row, p], base[row, p] + v, rtol=0, atol=1e-5)


@pytest.mark.parametrize("coef", [1.0, 0.5, -2.0])
def test_clamp_sets_the_projection_to_the_coefficient(tiny_llama, coef: float) -> None:
    lm = tiny_llama
    ids, attn = pad_right([list(range(3, 15))], 0, lm.device)
    v = torch.randn(64) * 3
    steer = single_vector(v, [2], lm.n_layers, 1, kind="clamp", clamp_coef=coef)
    base, steered = capture_inputs(lm, ids, attn, steer, 2)
    proj = steered[0] @ v / (v @ v)
    torch.testing.assert_close(proj, torch.full_like(proj, coef), rtol=0, atol=1e-4)

    # The part orthogonal to v is untouched.
    def orth(h):
        return h - (h @ v / (v @ v))[:, None] * v

    torch.testing.assert_close(orth(steered[0]), orth(base[0]), rtol=0, atol=1e-4)


def test_affine_rank_one_and_rows_at_different_layers(tiny_llama) -> None:
    lm = tiny_llama
    ids, attn = pad_right([list(range(3, 12)), list(range(30, 39))], 0, lm.device)
    a, b = torch.randn(1, 64), torch.randn(1, 64)
    a, b = a / a.norm(), b / b.norm()
    v = torch.randn(64)
    params = torch.stack(
        [params_from(torch.zeros(64), (a, b), 1), params_from(v, None, 1)]
    )  # (2 jobs, 3 slots, 64)
    meta = JobMeta.build(
        [[1], [3]], [Intervention("affine", rank=1), Intervention("add")], lm.n_layers, lm.device
    )
    steer = BatchSteering(params, meta, torch.tensor([0, 1]))
    base1, steered1 = capture_inputs(lm, ids, attn, steer, 1)
    # Row 0 (affine at layer 1): x + a (b . x). Row 1 acts only at layer 3.
    expected = base1[0] + (base1[0] @ b[0])[:, None] * a[0]
    torch.testing.assert_close(steered1[0], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(steered1[1], base1[1], rtol=0, atol=0)
    base3, steered3 = capture_inputs(lm, ids, attn, steer, 3)
    torch.testing.assert_close(steered3[1][0], base3[1][0] + v, rtol=0, atol=1e-5)


def test_sign_subtracts_the_vector_per_row(tiny_llama) -> None:
    lm = tiny_llama
    ids, attn = pad_right([list(range(3, 9))] * 2, 0, lm.device)
    v = torch.randn(64)
    steer = single_vector(v, [0], lm.n_layers, 2)
    steer.sign = torch.tensor([1.0, -1.0])
    base, steered = capture_inputs(lm, ids, attn, steer, 0)
    torch.testing.assert_close(steered[0], base[0] + v, rtol=0, atol=1e-5)
    torch.testing.assert_close(steered[1], base[1] - v, rtol=0, atol=1e-5)
