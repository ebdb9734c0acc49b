"""Greedy decoding and next-token distributions under per-row steering.

This is the simple, cache-free version: each step re-runs the whole
right-padded batch. It is exact and batch-invariant, and cheap for the short
continuations reentrant steering needs (§5 decodes 10 tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from workers.encoding import pad_right, selection_mask
from workers.interventions import BatchSteering, JobMeta
from workers.jobs import TokenSelection
from workers.losses import final_hidden, logits_at
from workers.models import LoadedModel


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


@torch.no_grad()
def greedy_decode(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    n_tokens: int,
    steer: RowSteering | None = None,
    stop_at_eos: bool = True,
) -> list[list[int]]:
    """Greedily decode up to ``n_tokens`` after each prompt (token ids), steering each row.

    Returns only the new tokens. A row stops early at EOS when ``stop_at_eos``.
    """
    seqs = [list(p) for p in prompts]
    new: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    eos = lm.tokenizer.eos_token_id
    pad = int(lm.tokenizer.pad_token_id or 0)
    for _ in range(n_tokens):
        ids, attn = pad_right(seqs, pad, lm.device)
        hidden = final_hidden(lm, ids, attn, steer.bind(attn) if steer else None)
        last = torch.tensor([len(s) - 1 for s in seqs], device=lm.device)
        logits = logits_at(lm, hidden[torch.arange(len(seqs), device=lm.device), last])
        picks = logits.argmax(dim=-1).tolist()
        for i, tok in enumerate(picks):
            if done[i]:
                continue
            seqs[i].append(int(tok))
            new[i].append(int(tok))
            done[i] = stop_at_eos and tok == eos
        if all(done):
            break
    return new
