"""Independent references for tests: add a vector entering a block, with a
plain pre-hook that knows nothing of ``workers.steering.interventions``, and
the logits, greedy decoding and Adam loop built on it."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


@contextmanager
def adding(lm, layer: int, vector) -> Iterator[None]:
    """Add ``vector`` (a tensor, gradients kept) at every position entering ``layer``."""
    v = torch.as_tensor(vector)

    def hook(_m, args, kwargs):
        if args:
            return (args[0] + v, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + v}

    handle = lm.layers[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def reference_logits(lm, ids, vector=None, layer=0, sign=1.0):
    """Full logits ``(T, vocab)`` in float64, with ``sign * vector`` added when given."""
    with torch.no_grad():
        if vector is None:
            return lm.model(input_ids=torch.tensor([ids])).logits[0].double()
        with adding(lm, layer, sign * torch.as_tensor(vector)):
            return lm.model(input_ids=torch.tensor([ids])).logits[0].double()


def reference_greedy(
    lm: Any, prompt: Any, vector: np.ndarray | None, layer: int, n: int
) -> tuple[str, int, str]:
    """Greedy continuation by re-running the whole sequence each step (no KV
    cache), the vector added at every position entering ``layer``."""
    ids = list(lm.encode_prompt(prompt))
    new: list[int] = []
    eos = lm.tokenizer.eos_token_id
    for _ in range(n):
        with torch.no_grad():
            if vector is None:
                logits = lm.model(input_ids=torch.tensor([ids + new])).logits
            else:
                with adding(lm, layer, torch.as_tensor(vector)):
                    logits = lm.model(input_ids=torch.tensor([ids + new])).logits
        new.append(int(logits[0, -1].argmax()))
        if new[-1] == eos:
            break
    stop = "eos" if new and new[-1] == eos else "length"
    text = lm.tokenizer.decode(new, skip_special_tokens=True)
    return text, len(new) - (stop == "eos"), stop


def reference_adam(lm: Any, job: Any, steps: int) -> np.ndarray:
    """An independent optimizer loop: torch.optim.Adam on the sum over the
    job's prompts and promote targets of weight * (-log p), in units of
    log_base, full logits, one vector added at every position entering its
    layer, and the norm projection of App. A after each step."""
    from workers.engine.adam import initial_params

    v = initial_params(job, lm.d_model, 0)[0].clone()
    v = (v * min(1.0, job.norm_bound / float(v.norm()))).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=job.lr)
    for _ in range(steps):
        loss = torch.zeros(())
        for scored in job.prompts:
            p_ids = lm.encode_prompt(scored.prompt)
            for target in scored.targets:
                t_ids = lm.encode_target(target.text)
                with adding(lm, job.layers[0], v):
                    logits = lm.model(input_ids=torch.tensor([p_ids + t_ids])).logits[0].float()
                logp = torch.log_softmax(job.loss.coldness * logits, dim=-1)
                nll = sum(-logp[len(p_ids) + k - 1, tok] for k, tok in enumerate(t_ids))
                loss = loss + target.weight * nll / math.log(job.loss.log_base)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            if v.norm() > job.norm_bound:
                v.mul_(job.norm_bound / v.norm())
    return v.detach().numpy()
