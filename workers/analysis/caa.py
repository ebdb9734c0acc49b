"""Contrastive activation addition, the skyline (paper §2.1.3).

The CAA vector at layer ``l`` is the mean residual-stream activation entering
block ``l`` over the positive prompts minus the mean over the negative
prompts, read at the last prompt token (default) or averaged over all prompt
tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from workers.examples import Example
from workers.jobs import Prompt, StopRules, VectorJob
from workers.models import LoadedModel
from workers.models.layers import normalize_layer
from workers.steering.encoding import pad_right


class _Captured(Exception):
    """Raised by the capture hook to skip the blocks after the one read."""


@torch.no_grad()
def activations(
    lm: LoadedModel,
    prompts: Sequence[Prompt],
    layer: int,
    reduce: Literal["last", "mean"] = "last",
    batch_size: int = 16,
) -> Tensor:
    """Residual-stream activations entering block ``layer``: ``(len(prompts), d)`` float32."""
    layer = normalize_layer(layer, lm.n_layers)
    encoded = [lm.encode_prompt(p) for p in prompts]
    pad = int(lm.tokenizer.pad_token_id or 0)
    rows: list[Tensor] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        ids, attn = pad_right(chunk, pad, lm.device)
        seen: dict[str, Tensor] = {}

        def grab(_m: nn.Module, args: tuple[Any, ...], kwargs: dict, seen: dict = seen) -> None:
            seen["h"] = (args[0] if args else kwargs["hidden_states"]).to(torch.float32)
            raise _Captured

        handle = lm.layers[layer].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            lm.model.base_model(input_ids=ids, attention_mask=attn, use_cache=False)
        except _Captured:
            pass
        finally:
            handle.remove()
        h = seen["h"]  # (B, T, d)
        lengths = attn.sum(dim=1)
        if reduce == "last":
            rows.append(h[torch.arange(len(chunk), device=h.device), lengths - 1])
        else:
            mask = attn.to(h.dtype)[:, :, None]
            rows.append((h * mask).sum(dim=1) / lengths[:, None].to(h.dtype))
    return torch.cat(rows).cpu()


def caa_vector(
    lm: LoadedModel,
    positive: Sequence[Prompt],
    negative: Sequence[Prompt],
    layer: int,
    reduce: Literal["last", "mean"] = "last",
) -> np.ndarray:
    """``mean(act(positive)) - mean(act(negative))`` at ``layer``: ``(d_model,)`` float32."""
    if not positive or not negative:
        raise ValueError("CAA needs at least one positive and one negative prompt")
    pos = activations(lm, positive, layer, reduce).mean(dim=0)
    neg = activations(lm, negative, layer, reduce).mean(dim=0)
    return (pos - neg).numpy().astype(np.float32)


def _completion(lm: LoadedModel, prompt: Prompt, completion: str) -> str:
    """The prompt as the model sees it, with ``completion`` appended as raw text."""
    text, _ = lm.format_prompt(prompt)
    return text + completion


def examples_caa(
    lm: LoadedModel,
    examples: Sequence[Example],
    layer: int,
    reduce: Literal["last", "mean"] = "last",
) -> np.ndarray:
    """A CAA skyline for a task's examples (§2.1.3), contrasting completions.

    Positive: each prompt followed by its first promote target. Negative: the
    same prompt followed by its first suppress target, or the bare prompt when
    it has none; an example whose ``meta`` has a ``real_prompt`` (the
    fictitious task, §5) contrasts its prompt with that real prompt instead.
    Activations are read at the last token by default.
    """
    positive: list[Prompt] = []
    negative: list[Prompt] = []
    for ex in examples:
        if "real_prompt" in ex.meta:
            positive.append(ex.prompt)
            negative.append(ex.meta["real_prompt"])
        elif ex.promote:
            positive.append(_completion(lm, ex.prompt, ex.promote[0]))
            negative.append(_completion(lm, ex.prompt, ex.suppress[0] if ex.suppress else ""))
    return caa_vector(lm, positive, negative, layer, reduce)


@dataclass(frozen=True)
class CAASpec:
    """A CAA vector in place of an optimized one (a study's ``loss: caa``):
    the contrast of ``examples`` (:func:`examples_caa`) at the job's layer."""

    examples: tuple[Example, ...]
    reduce: Literal["last", "mean"] = "last"


def caa_job(lm: LoadedModel, job: VectorJob, spec: CAASpec) -> VectorJob:
    """``job`` with the CAA vector of ``spec`` as its starting vector and no
    optimization steps, so the engine only measures its loss on the job's
    targets (``loss_history[0]``). The vector is scaled to ``job.norm_bound``
    when that is set (so it compares with optimized vectors of that norm),
    else kept at its own norm."""
    vec = examples_caa(lm, spec.examples, job.layers[0], spec.reduce)
    norm = float(np.linalg.norm(vec))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError("the CAA vector is zero: its positive and negative prompts read the same")
    if job.norm_bound is not None:
        vec = (vec * (job.norm_bound / norm)).astype(np.float32)
    return dataclasses.replace(job, init_vector=vec, stop=StopRules(max_iters=0))
