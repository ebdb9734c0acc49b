"""Turn vector jobs into padded token batches with their scored positions.

A job becomes one sequence per (prompt, target) pair, plus one per KL term.
Each target is a loss *term*; its tokens are scored at the positions just
before them (teacher forcing). Batches are right-padded, so every real token
keeps the position ids it would have alone: that is what makes a vector
optimized in a batch equal to the same vector optimized solo.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from workers.jobs import TokenSelection, VectorJob
from workers.models import LoadedModel
from workers.models.layers import normalize_layer
from workers.steering.interventions import KIND_CODES

TERM_PROMOTE, TERM_SUPPRESS, TERM_KL = 0, 1, 2


class JobError(ValueError):
    """A job is malformed; the message names the job and the problem."""


@dataclass
class EncodedSeq:
    ids: list[int]
    prompt_len: int


class ScoredToken(NamedTuple):
    """A target token: its sequence, the position that predicts it, its id, its term."""

    seq: int
    pos: int
    token: int
    term: int


class Term(NamedTuple):
    """One loss term (a target, or a KL sequence): ``kind`` is ``TERM_*``,
    ``threshold`` the loss goal or NaN."""

    kind: int
    weight: float
    n_tokens: int
    threshold: float


class KLPosition(NamedTuple):
    """A position whose next-token distribution is compared with row
    ``teacher_row`` of the job's teacher matrix."""

    seq: int
    pos: int
    term: int
    teacher_row: int


@dataclass
class EncodedJob:
    """A validated job in token space. Term and sequence indices are job-local."""

    job: VectorJob
    layers: tuple[int, ...]
    seqs: list[EncodedSeq] = field(default_factory=list)
    tokens: list[ScoredToken] = field(default_factory=list)
    terms: list[Term] = field(default_factory=list)
    kl: list[KLPosition] = field(default_factory=list)
    teacher: np.ndarray | None = None  # (P, vocab) natural-log probabilities


def pad_right(
    seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """``(input_ids, attention_mask)``, both ``(S, T)``, right-padded."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        attn[i, : len(s)] = 1
    return ids.to(device), attn.to(device)


def selection_mask(
    selections: Sequence[TokenSelection],
    prompt_lens: Sequence[int],
    attention_mask: Tensor,
) -> Tensor:
    """``(S, T)`` float mask of the real positions each row's intervention touches."""
    mask = torch.zeros(attention_mask.shape, dtype=torch.float32)
    for i, (sel, n) in enumerate(zip(selections, prompt_lens, strict=True)):
        if sel.mode == "all":
            mask[i] = 1.0
        elif sel.mode == "prompt":
            mask[i, :n] = 1.0
        elif sel.mode == "last_k":
            mask[i, max(0, n - sel.k) : n] = 1.0
        else:
            mask[i, [p % n for p in sel.positions]] = 1.0
    return mask.to(attention_mask.device) * attention_mask


def _check_job(job: VectorJob, lm: LoadedModel) -> tuple[int, ...]:
    def fail(msg: str) -> JobError:
        return JobError(f"job '{job.job_id}': {msg}")

    if not job.prompts and not job.kl_terms:
        raise fail("has no prompts and no KL terms, so there is nothing to optimize")
    if not job.layers:
        raise fail("names no layer")
    try:
        layers = tuple(sorted({normalize_layer(layer, lm.n_layers) for layer in job.layers}))
    except ValueError as exc:
        raise fail(str(exc)) from None
    if not (job.lr > 0 and math.isfinite(job.lr)):
        raise fail(f"lr must be a positive number, got {job.lr}")
    if job.norm_bound is not None and not job.norm_bound > 0:
        raise fail(f"norm_bound must be positive, got {job.norm_bound}")
    if not job.init_norm > 0:
        raise fail(f"init_norm must be positive, got {job.init_norm}")
    if job.init_vector is not None and job.init_vector.shape != (lm.d_model,):
        raise fail(f"init_vector has shape {job.init_vector.shape}, expected ({lm.d_model},)")
    if job.intervention.kind not in KIND_CODES:
        raise fail(f"unknown intervention '{job.intervention.kind}'; use add, clamp or affine")
    if job.intervention.kind == "affine" and job.intervention.rank < 1:
        raise fail("an affine intervention needs rank >= 1")
    if job.tokens.mode not in ("all", "prompt", "last_k", "positions"):
        raise fail(f"unknown token selection '{job.tokens.mode}'")
    if job.tokens.mode == "last_k" and job.tokens.k < 1:
        raise fail("token selection last_k needs k >= 1")
    if job.tokens.mode == "positions" and not job.tokens.positions:
        raise fail("token selection 'positions' needs a non-empty list")
    if not job.loss.coldness > 0:
        raise fail(f"coldness must be positive, got {job.loss.coldness}")
    if not (job.loss.log_base > 0 and job.loss.log_base != 1):
        raise fail(f"log_base must be positive and not 1, got {job.loss.log_base}")
    if job.stop.max_iters < 0:
        raise fail("max_iters must be >= 0")
    if job.stop.targets_reached and not any(
        t.threshold is not None for p in job.prompts for t in p.targets
    ):
        raise fail("the targets_reached stopping rule needs at least one target threshold")
    return layers


def encode_job(lm: LoadedModel, job: VectorJob) -> EncodedJob:
    """Validate and tokenize one job.

    Raises:
        JobError: for an empty target or prompt, an unknown loss or intervention,
            a layer out of range, or a sequence longer than the model's context.
    """
    enc = EncodedJob(job=job, layers=_check_job(job, lm))
    for p_index, scored in enumerate(job.prompts):
        if not scored.targets:
            raise JobError(f"job '{job.job_id}': prompt {p_index} has no targets")
        try:
            prompt_ids = lm.encode_prompt(scored.prompt)
        except ValueError as exc:
            raise JobError(f"job '{job.job_id}': prompt {p_index}: {exc}") from None
        n = len(prompt_ids)
        if job.tokens.mode == "positions" and any(not -n <= p < n for p in job.tokens.positions):
            raise JobError(
                f"job '{job.job_id}': token positions {list(job.tokens.positions)} fall outside "
                f"prompt {p_index}, which has {n} tokens"
            )
        for target in scored.targets:
            if target.kind not in ("promote", "suppress"):
                raise JobError(
                    f"job '{job.job_id}': unknown loss kind '{target.kind}' for target "
                    f"{target.text!r}; use 'promote' or 'suppress'"
                )
            if not target.text:
                raise JobError(f"job '{job.job_id}': a target is empty")
            try:
                target_ids = lm.encode_target(target.text)
            except ValueError as exc:
                raise JobError(f"job '{job.job_id}': {exc}") from None
            ids = prompt_ids + target_ids
            if len(ids) > lm.max_context:
                raise JobError(
                    f"job '{job.job_id}': prompt {p_index} plus target {target.text!r} is "
                    f"{len(ids)} tokens, longer than the model's context of {lm.max_context}"
                )
            seq_index, term_index = len(enc.seqs), len(enc.terms)
            enc.seqs.append(EncodedSeq(ids, len(prompt_ids)))
            for k, tok in enumerate(target_ids):
                enc.tokens.append(ScoredToken(seq_index, len(prompt_ids) + k - 1, tok, term_index))
            kind = TERM_PROMOTE if target.kind == "promote" else TERM_SUPPRESS
            threshold = math.nan if target.threshold is None else float(target.threshold)
            enc.terms.append(Term(kind, float(target.weight), len(target_ids), threshold))
    teachers: list[np.ndarray] = []
    for term in job.kl_terms:
        seq_index, term_index = len(enc.seqs), len(enc.terms)
        if len(term.input_ids) > lm.max_context:
            raise JobError(f"job '{job.job_id}': a KL sequence exceeds the model's context")
        if term.teacher_logprobs.shape != (len(term.positions), lm.vocab_size):
            raise JobError(
                f"job '{job.job_id}': teacher_logprobs has shape "
                f"{term.teacher_logprobs.shape}, expected ({len(term.positions)}, {lm.vocab_size})"
            )
        enc.seqs.append(EncodedSeq(list(term.input_ids), term.prompt_len))
        for row, pos in enumerate(term.positions):
            first = sum(len(t) for t in teachers)
            enc.kl.append(KLPosition(seq_index, pos, term_index, first + row))
        teachers.append(term.teacher_logprobs.astype(np.float32))
        enc.terms.append(Term(TERM_KL, 1.0, len(term.positions), math.nan))
    if teachers:
        enc.teacher = np.concatenate(teachers, axis=0)
    return enc


@dataclass
class Batch:
    """A collated batch: ``S`` sequences, ``N`` scored tokens, ``M`` terms, ``P`` KL rows.

    Tensors: ``input_ids``/``attention_mask``/``positions`` ``(S, T)``;
    ``row_job`` ``(S,)``; ``tok_seq``/``tok_pos``/``tok_id``/``tok_term`` ``(N,)``;
    ``term_job``/``term_kind``/``term_weight``/``term_len``/``term_threshold`` ``(M,)``;
    ``kl_seq``/``kl_pos``/``kl_term`` ``(P,)`` and ``teacher`` ``(P, vocab)``.
    """

    input_ids: Tensor
    attention_mask: Tensor
    positions: Tensor
    row_job: Tensor
    tok_seq: Tensor
    tok_pos: Tensor
    tok_id: Tensor
    tok_term: Tensor
    term_job: Tensor
    term_kind: Tensor
    term_weight: Tensor
    term_len: Tensor
    term_threshold: Tensor
    kl_seq: Tensor
    kl_pos: Tensor
    kl_term: Tensor
    teacher: Tensor | None
    n_jobs: int


def collate(jobs: Sequence[EncodedJob], pad_id: int, device: torch.device) -> Batch:
    """Right-pad and concatenate the sequences and terms of ``jobs``."""
    seqs: list[EncodedSeq] = []
    selections: list[TokenSelection] = []
    row_job: list[int] = []
    toks: list[ScoredToken] = []
    terms: list[Term] = []
    term_job: list[int] = []
    kls: list[KLPosition] = []
    teachers: list[np.ndarray] = []
    for j, enc in enumerate(jobs):
        s0, m0, p0 = len(seqs), len(terms), sum(len(t) for t in teachers)
        seqs += enc.seqs
        selections += [enc.job.tokens] * len(enc.seqs)
        row_job += [j] * len(enc.seqs)
        toks += [ScoredToken(s + s0, pos, tok, t + m0) for s, pos, tok, t in enc.tokens]
        kls += [KLPosition(s + s0, pos, t + m0, r + p0) for s, pos, t, r in enc.kl]
        terms += enc.terms
        term_job += [j] * len(enc.terms)
        if enc.teacher is not None:
            teachers.append(enc.teacher)
    ids, attn = pad_right([s.ids for s in seqs], pad_id, device)
    positions = selection_mask(selections, [s.prompt_len for s in seqs], attn)

    def col(rows: Sequence[tuple], name: str, dtype: torch.dtype) -> Tensor:
        return torch.tensor([getattr(r, name) for r in rows], dtype=dtype, device=device)

    # KL rows are listed in teacher order, so the teacher matrix needs no reindexing.
    kls.sort(key=lambda r: r.teacher_row)
    return Batch(
        input_ids=ids,
        attention_mask=attn,
        positions=positions,
        row_job=torch.tensor(row_job, dtype=torch.long, device=device),
        tok_seq=col(toks, "seq", torch.long),
        tok_pos=col(toks, "pos", torch.long),
        tok_id=col(toks, "token", torch.long),
        tok_term=col(toks, "term", torch.long),
        term_job=torch.tensor(term_job, dtype=torch.long, device=device),
        term_kind=col(terms, "kind", torch.long),
        term_weight=col(terms, "weight", torch.float32),
        term_len=col(terms, "n_tokens", torch.float32),
        term_threshold=col(terms, "threshold", torch.float32),
        kl_seq=col(kls, "seq", torch.long),
        kl_pos=col(kls, "pos", torch.long),
        kl_term=col(kls, "term", torch.long),
        teacher=(torch.from_numpy(np.concatenate(teachers)).to(device) if teachers else None),
        n_jobs=len(jobs),
    )
