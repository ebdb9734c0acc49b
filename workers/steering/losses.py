"""Steering losses (paper §2.1) computed on a collated batch.

Logits are computed only at scored positions, in float32, as
``log_softmax(coldness * logits)``. Losses are converted to the job's log base
(base 10: hartleys):

- promotion   ``L+ = -sum_k log P(y_k | y_<k, x; v)``
- suppression ``L- = -sum_k log(1 - P(y_k | y_<k, x; v))``
- reentrant   ``sum_k KL(p_k || P(. | prefix_k; v'))``

A term may be length-normalized (divided by its token count) and weighted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from workers.models import LoadedModel
from workers.steering.encoding import TERM_SUPPRESS, Batch
from workers.steering.interventions import BatchSteering, steering


def log1mexp(logp: Tensor) -> Tensor:
    """``log(1 - exp(logp))`` for ``logp <= 0``, accurate at both ends."""
    logp = logp.clamp(max=-1e-12)
    return torch.where(
        logp > -math.log(2.0), torch.log(-torch.expm1(logp)), torch.log1p(-torch.exp(logp))
    )


def final_hidden(
    lm: LoadedModel, input_ids: Tensor, attention_mask: Tensor, steer: BatchSteering | None
) -> Tensor:
    """The last hidden states ``(S, T, d)``, after the model's final norm."""
    base = lm.model.base_model
    if steer is None:
        return base(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
    with steering(lm.layers, steer):
        return base(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state


def logits_at(lm: LoadedModel, hidden: Tensor) -> Tensor:
    """Float32 logits ``(N, vocab)`` for gathered hidden states ``(N, d)``.

    Applies the final logit soft-capping of Gemma-2-style models, which
    their ``*ForCausalLM.forward`` would otherwise do.
    """
    logits = lm.model.get_output_embeddings()(hidden).to(torch.float32)
    cap = getattr(lm.model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def token_logprobs(lm: LoadedModel, hidden: Tensor, batch: Batch, coldness: Tensor) -> Tensor:
    """Natural-log probability ``(N,)`` of every scored token, at its job's coldness."""
    tok_job = batch.row_job[batch.tok_seq]
    logits = logits_at(lm, hidden[batch.tok_seq, batch.tok_pos])  # (N, vocab)
    logp = torch.log_softmax(coldness[tok_job, None] * logits, dim=-1)
    return logp.gather(1, batch.tok_id[:, None]).squeeze(1)


@dataclass
class LossOutput:
    """``job_loss`` ``(J,)`` and ``term_loss`` ``(M,)``, in each job's log base."""

    job_loss: Tensor
    term_loss: Tensor


def batch_losses(
    lm: LoadedModel,
    batch: Batch,
    steer: BatchSteering | None,
    coldness: Tensor,
    log_base: Tensor,
    normalize: Tensor,
) -> LossOutput:
    """Every term's loss and every job's total loss.

    ``coldness``, ``log_base`` and ``normalize`` (float 0/1) are per job, ``(J,)``.
    """
    hidden = final_hidden(lm, batch.input_ids, batch.attention_mask, steer)  # (S, T, d)
    n_terms = batch.term_job.shape[0]
    term_loss = torch.zeros(n_terms, dtype=torch.float32, device=hidden.device)
    if batch.tok_seq.numel():
        tok_job = batch.row_job[batch.tok_seq]
        lp = token_logprobs(lm, hidden, batch, coldness)  # (N,)
        suppress = batch.term_kind[batch.tok_term] == TERM_SUPPRESS
        per_tok = torch.where(suppress, -log1mexp(lp), -lp) / torch.log(log_base[tok_job])
        term_loss = term_loss.index_add(0, batch.tok_term, per_tok)
    if batch.kl_seq.numel():
        assert batch.teacher is not None
        kl_job = batch.row_job[batch.kl_seq]
        logits = logits_at(lm, hidden[batch.kl_seq, batch.kl_pos])  # (P, vocab)
        logq = torch.log_softmax(coldness[kl_job, None] * logits, dim=-1)
        teacher = batch.teacher
        kl = (teacher.exp() * (teacher - logq)).sum(-1) / torch.log(log_base[kl_job])
        term_loss = term_loss.index_add(0, batch.kl_term, kl)
    norm = torch.where(normalize[batch.term_job] > 0, batch.term_len, torch.ones_like(term_loss))
    term_loss = term_loss * batch.term_weight / norm
    job_loss = torch.zeros(batch.n_jobs, dtype=torch.float32, device=hidden.device)
    job_loss = job_loss.index_add(0, batch.term_job, term_loss)
    return LossOutput(job_loss=job_loss, term_loss=term_loss)
