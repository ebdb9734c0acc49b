"""Optimize a one-shot steering vector on a model you loaded yourself, then
apply it with ``workers.steer`` while the model generates.

    python examples/python/steer_your_model.py [MODEL]

MODEL is a local folder or a Hugging Face hub id; without it, the bundled
SmolLM2-135M-Instruct (converted once from its GGUF file to a folder). On a
2-core CPU this takes about half a minute.
"""

from __future__ import annotations

import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from workers import LoadedModel, StopRules, VectorJob, chat, optimize, steer


def main(source: str) -> None:
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source)
    lm = LoadedModel(model, tokenizer)  # eval mode, weights frozen in place

    # One training example: promote a refusal opening on an ordinary request (§4, inverted).
    job = VectorJob.simple(
        "refuse",
        chat("Write a thank-you note to my neighbour for watering my garden."),
        promote=["I'm sorry, but I can't"],
        layer=11,
        lr=0.5,
        norm_bound=32.0,
        stop=StopRules(max_iters=8),
    )
    [result] = optimize(lm, [job])
    print(f"loss {result.initial_loss:.2f} -> {result.final_loss:.2f} hartleys, "
          f"|v| = {result.final_norm:.1f}")  # fmt: skip

    # A held-out request, encoded the Hugging Face way.
    messages = [{"role": "user", "content": "Give me three tips for a job interview."}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    settings = {"max_new_tokens": 16, "do_sample": False, "pad_token_id": tokenizer.eos_token_id}
    plain = model.generate(**ids, **settings)
    with steer(model, result.vector, layer=11):  # the hooks are gone after the block
        steered = model.generate(**ids, **settings)
    n = ids["input_ids"].shape[1]
    print("unsteered:", repr(tokenizer.decode(plain[0, n:], skip_special_tokens=True)))
    print("steered:  ", repr(tokenizer.decode(steered[0, n:], skip_special_tokens=True)))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        from workers.models import ModelSpec
        from workers.models.sources import resolve_source

        main(resolve_source(ModelSpec("smollm2-135m-instruct"))[0])
