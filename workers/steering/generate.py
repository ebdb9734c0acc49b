"""Greedy decoding and next-token distributions under per-row steering.

Greedy decoding keeps a KV cache. The batch stays right-padded, as in
optimization, so every real token keeps the position ids it would have alone:
the prompt fills cache slots ``0..T0-1`` (padding included, masked out), and
the token decoded at step ``t`` goes to slot ``T0 + t`` with position id
``n_i + t`` for a prompt of ``n_i`` tokens. Steering applies to decoded tokens
only when the row's token selection is ``all`` (the other selections name
prompt positions). ``greedy_decode(..., kv_cache=False)`` re-runs the whole
sequence every step instead; the tests hold the two equal.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from workers.jobs import TokenSelection
from workers.models import LoadedModel
from workers.steering.encoding import pad_right, selection_mask
from workers.steering.interventions import BatchSteering, JobMeta, steering
from workers.steering.losses import final_hidden, logits_at


@dataclass
class RowSteering:
    """Steering for a batch where row ``i`` uses job ``i``.

    ``params`` ``(S, K, d)``; ``selections`` and ``prompt_lens`` have one entry per row;
    ``sign`` ``(S,)`` optionally flips the additive vector per row.
    """

    params: Tensor
    meta: JobMeta
    selections: Sequence[TokenSelection]
    prompt_lens: Sequence[int]
    sign: Tensor | None = None

    def bind(self, attention_mask: Tensor) -> BatchSteering:
        rows = torch.arange(attention_mask.shape[0], device=attention_mask.device)
        mask = selection_mask(self.selections, self.prompt_lens, attention_mask)
        return BatchSteering(self.params, self.meta, rows, positions=mask, sign=self.sign)


@torch.no_grad()
def next_token_logprobs(
    lm: LoadedModel,
    seqs: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    steer: RowSteering | None,
    coldness: float | Sequence[float] = 1.0,
) -> list[Tensor]:
    """``log_softmax(coldness * logits)`` after each listed position: ``(n_i, vocab)`` per row.

    ``coldness`` is one value for all rows, or one per row.
    """
    colds = [float(coldness)] * len(seqs) if isinstance(coldness, int | float) else coldness
    ids, attn = pad_right(seqs, int(lm.tokenizer.pad_token_id or 0), lm.device)
    hidden = final_hidden(lm, ids, attn, steer.bind(attn) if steer else None)
    return [
        torch.log_softmax(colds[i] * logits_at(lm, hidden[i, list(pos)]), dim=-1)
        for i, pos in enumerate(positions)
    ]


@dataclass(frozen=True)
class Sampling:
    """How :func:`decode` picks each token: greedy when ``temperature`` is 0,
    else a draw from ``softmax(logits / temperature)`` with ``generator``
    (seeded by the caller, so a draw is reproducible)."""

    temperature: float = 0.0
    generator: torch.Generator | None = None

    def pick(self, logits: Tensor) -> Tensor:
        if self.temperature <= 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)


GREEDY = Sampling()


def stop_reason(tokens: Sequence[int], eos: int | None) -> str:
    """``eos`` when a decoded row ended on the end-of-sequence token, else ``length``."""
    return "eos" if tokens and eos is not None and tokens[-1] == eos else "length"


@torch.no_grad()
def greedy_decode(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    n_tokens: int,
    steer: RowSteering | None = None,
    stop_at_eos: bool = True,
    kv_cache: bool = True,
    sampling: Sampling = GREEDY,
) -> list[list[int]]:
    """Decode up to ``n_tokens`` after each prompt (token ids), steering each row;
    greedy unless ``sampling`` says otherwise.

    Returns only the new tokens. A row stops early at EOS when ``stop_at_eos``
    (the EOS token is then the row's last token; see :func:`stop_reason`).
    """
    if kv_cache:
        try:
            return _decode_cached(lm, prompts, n_tokens, steer, stop_at_eos, sampling)
        except _NoCache:
            pass
    seqs = [list(p) for p in prompts]
    new: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    pad = int(lm.tokenizer.pad_token_id or 0)
    for _ in range(n_tokens):
        ids, attn = pad_right(seqs, pad, lm.device)
        hidden = final_hidden(lm, ids, attn, steer.bind(attn) if steer else None)
        last = torch.tensor([len(s) - 1 for s in seqs], device=lm.device)
        logits = logits_at(lm, hidden[torch.arange(len(seqs), device=lm.device), last])
        for i, tok in enumerate(sampling.pick(logits).tolist()):
            if not done[i]:
                seqs[i].append(int(tok))
        _collect(new, done, seqs, lm.tokenizer.eos_token_id, stop_at_eos)
        if all(done):
            break
    return new


def _collect(
    new: list[list[int]], done: list[bool], seqs: list[list[int]], eos: int | None, stop: bool
) -> None:
    for i, seq in enumerate(seqs):
        if done[i]:
            continue
        new[i].append(seq[-1])
        done[i] = stop and seq[-1] == eos


class _NoCache(Exception):
    """This model's base forward takes no KV cache argument we know."""


def _cache_kwarg(lm: LoadedModel) -> str:
    params = inspect.signature(lm.model.base_model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise _NoCache


def _decode_cached(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    n_tokens: int,
    steer: RowSteering | None,
    stop_at_eos: bool,
    sampling: Sampling,
) -> list[list[int]]:
    from transformers import DynamicCache

    key = _cache_kwarg(lm)
    base, device = lm.model.base_model, lm.device
    S = len(prompts)
    lens = torch.tensor([len(p) for p in prompts], device=device)
    ids, attn = pad_right(prompts, int(lm.tokenizer.pad_token_id or 0), device)
    T0 = ids.shape[1]
    rows = torch.arange(S, device=device)
    cache = DynamicCache(config=lm.model.config)
    positions = torch.arange(T0, device=device)[None].expand(S, T0)
    kwargs = {key: cache, "use_cache": True, "position_ids": positions, "attention_mask": attn}
    hidden = _run(lm, base, ids, steer.bind(attn) if steer else None, kwargs)
    logits = logits_at(lm, hidden[rows, lens - 1])
    seqs = [list(p) for p in prompts]
    new: list[list[int]] = [[] for _ in prompts]
    done = [False] * S
    all_tokens = None
    if steer is not None:
        every = [1.0 if sel.mode == "all" else 0.0 for sel in steer.selections]
        all_tokens = torch.tensor(every, device=device)[:, None]  # (S, 1)
    for t in range(n_tokens):
        picks = sampling.pick(logits)
        for i, tok in enumerate(picks.tolist()):
            if not done[i]:
                seqs[i].append(int(tok))
        _collect(new, done, seqs, lm.tokenizer.eos_token_id, stop_at_eos)
        if all(done) or t == n_tokens - 1:
            break
        attn = torch.cat([attn, torch.ones(S, 1, dtype=attn.dtype, device=device)], dim=1)
        kwargs = {
            key: cache,
            "use_cache": True,
            "position_ids": (lens + t)[:, None],
            "attention_mask": attn,
        }
        step = None
        if steer is not None:
            assert all_tokens is not None
            step = BatchSteering(
                steer.params, steer.meta, rows, positions=all_tokens, sign=steer.sign
            )
        hidden = _run(lm, base, picks[:, None], step, kwargs)
        logits = logits_at(lm, hidden[:, -1])
    return new


def _run(
    lm: LoadedModel, base: torch.nn.Module, ids: Tensor, steer: BatchSteering | None, kwargs: dict
) -> Tensor:
    if steer is None:
        return base(input_ids=ids, **kwargs).last_hidden_state
    with steering(lm.layers, steer):
        return base(input_ids=ids, **kwargs).last_hidden_state
