"""The batched one-shot optimizer: many independent vectors in one pass.

Rows never interact: the batch loss is a sum over jobs, and Adam works
element by element with per-row learning rate and step count, so a vector
optimized in a batch equals the same vector optimized alone (up to
floating-point reassociation in the model's matmuls).

Loop, per job: evaluate the loss of the current vector (history[t]); check
the stopping rules; if none fires, take one Adam step and project onto the
norm ball. So ``history[-1]`` is always the loss of the returned vector and
``iterations`` counts optimizer steps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from workers.encoding import EncodedJob, JobError, collate, encode_job
from workers.interventions import BatchSteering, JobMeta
from workers.jobs import VectorJob, VectorResult
from workers.losses import batch_losses
from workers.models import LoadedModel

log = logging.getLogger(__name__)

BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


class BatchedAdam:
    """Adam over ``(J, K, d)`` parameters with per-row lr and step counts.

    Same update as ``torch.optim.Adam`` (betas 0.9/0.999, eps 1e-8) applied to
    each row separately; rows outside ``active`` are left untouched.
    """

    def __init__(self, params: Tensor, lr: Tensor) -> None:
        self.lr = lr  # (J,)
        self.m = torch.zeros_like(params)
        self.v = torch.zeros_like(params)
        self.steps = torch.zeros(params.shape[0], dtype=torch.float64, device=params.device)

    @torch.no_grad()
    def step(self, params: Tensor, grad: Tensor, active: Tensor) -> None:
        b1, b2 = BETAS
        sel = active.nonzero().flatten()
        if sel.numel() == 0:
            return
        self.steps[sel] += 1
        g = grad[sel]
        m = self.m[sel].lerp_(g, 1 - b1)
        v = self.v[sel].mul_(b2).addcmul_(g, g, value=1 - b2)
        self.m[sel], self.v[sel] = m, v
        steps = self.steps[sel]
        bc1 = (1 - b1**steps).to(params.dtype)[:, None, None]
        bc2_sqrt = torch.sqrt(1 - b2**steps).to(params.dtype)[:, None, None]
        denom = v.sqrt() / bc2_sqrt + ADAM_EPS
        params[sel] -= (self.lr[sel, None, None] / bc1) * m / denom


def initial_params(job: VectorJob, d_model: int, rank: int) -> Tensor:
    """The seeded starting parameters of one job, ``(1 + 2 * rank, d_model)``.

    Draw order is fixed (vector, then a, then b) and uses only ``job.seed``,
    so a vector is reproducible from its record whatever batch it ran in.
    """
    gen = torch.Generator().manual_seed(int(job.seed))
    out = torch.zeros(1 + 2 * rank, d_model)
    direction = torch.randn(d_model, generator=gen)
    vec = direction / direction.norm() * job.init_norm
    if job.init_vector is not None:
        vec = torch.as_tensor(job.init_vector, dtype=torch.float32)
    affine = job.intervention.kind == "affine"
    if not affine or job.intervention.affine_additive:
        out[0] = vec
    if affine:
        r = job.intervention.rank
        factors = torch.randn(2, r, d_model, generator=gen)
        factors = factors / factors.norm(dim=-1, keepdim=True)
        out[1 : 1 + r] = factors[0]
        out[1 + rank : 1 + rank + r] = factors[1]
    return out


@torch.no_grad()
def project(params: Tensor, bound: Tensor, rank: Tensor) -> None:
    """Norm constraint (paper App. A): ``v <- r v / |v|`` when ``|v| > r``.

    Affine factors ``a_r, b_r`` are kept at unit norm (§5.1.3). ``bound`` is
    ``(J,)`` with ``inf`` for no bound; ``rank`` ``(J,)`` is each job's own rank.
    """
    vec = params[:, 0]
    norms = vec.norm(dim=-1)
    scale = torch.where(norms > bound, bound / norms.clamp_min(1e-30), torch.ones_like(norms))
    params[:, 0] = vec * scale[:, None]
    R = (params.shape[1] - 1) // 2
    if R:
        slots = torch.arange(R, device=params.device)
        used = (slots[None, :] < rank[:, None]).to(params.dtype)[:, :, None]  # (J, R, 1)
        for lo in (1, 1 + R):
            f = params[:, lo : lo + R]
            params[:, lo : lo + R] = used * f / f.norm(dim=-1, keepdim=True).clamp_min(1e-30)


class _RowState:
    """Per-job bookkeeping for the stopping rules."""

    def __init__(self, job: VectorJob) -> None:
        self.job = job
        self.history: list[float] = []
        self.best = math.inf
        self.since_best = 0
        self.held = 0
        self.reason: str | None = None
        self.target_losses: list[float] = []
        self.norms: list[float] = []

    def observe(self, loss: float, term_losses: list[float], thresholds: list[float]) -> None:
        rules, t = self.job.stop, len(self.history)
        self.history.append(loss)
        if math.isfinite(loss):
            self.target_losses = term_losses
        if loss < self.best:
            self.best, self.since_best = loss, 0
        else:
            self.since_best += 1
        held = rules.hold_threshold is not None and loss <= rules.hold_threshold
        self.held = self.held + 1 if held else 0
        reached = [x <= th for x, th in zip(term_losses, thresholds, strict=True) if th == th]
        if not math.isfinite(loss):
            self.reason = "nonfinite"
        elif rules.targets_reached and reached and all(reached):
            self.reason = "targets_reached"
        elif rules.hold_threshold is not None and self.held >= max(rules.hold_iters, 1):
            self.reason = "threshold_held"
        elif rules.eps is not None and t >= 1 and abs(loss - self.history[-2]) < rules.eps:
            self.reason = "converged"
        elif rules.patience is not None and self.since_best >= rules.patience:
            self.reason = "no_improvement"
        elif t >= rules.max_iters:
            self.reason = "max_iters"


def _grad_mask(jobs: list[VectorJob], params: Tensor, R: int) -> Tensor:
    """1 where a job trains a slot. Unused slots get no gradient, so Adam keeps them at 0."""
    mask = torch.zeros_like(params)
    for i, job in enumerate(jobs):
        iv = job.intervention
        if iv.kind != "affine" or iv.affine_additive:
            mask[i, 0] = 1
        if iv.kind == "affine":
            mask[i, 1 : 1 + iv.rank] = 1
            mask[i, 1 + R : 1 + R + iv.rank] = 1
    return mask


ProgressFn = Callable[[int, int], None]


def optimize(
    lm: LoadedModel,
    jobs: Sequence[VectorJob],
    *,
    max_batch_jobs: int | None = None,
    progress: ProgressFn | None = None,
) -> list[VectorResult]:
    """Optimize every job and return one :class:`VectorResult` per job, in order.

    All jobs are validated before any model work. Jobs run in batches of at most
    ``max_batch_jobs`` (default: all at once). ``progress(done, total)`` is
    called as jobs finish.

    Raises:
        JobError: a job is malformed (see :func:`workers.encoding.encode_job`).
    """
    ids = [job.job_id for job in jobs]
    if len(set(ids)) != len(ids):
        raise JobError("job ids must be unique within one optimize() call")
    encoded = [encode_job(lm, job) for job in jobs]
    size = max_batch_jobs or max(len(encoded), 1)
    results: list[VectorResult] = []
    for start in range(0, len(encoded), size):
        results += _run_batch(lm, encoded[start : start + size])
        if progress is not None:
            progress(len(results), len(encoded))
    return results


def _run_batch(lm: LoadedModel, encoded: list[EncodedJob]) -> list[VectorResult]:
    device, J = lm.device, len(encoded)
    jobs = [e.job for e in encoded]
    meta = JobMeta.build(
        [e.layers for e in encoded], [j.intervention for j in jobs], lm.n_layers, device
    )
    R = meta.max_rank
    params = torch.stack([initial_params(j, lm.d_model, R) for j in jobs]).to(device)

    def per_job(values: list[float]) -> Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device)

    lr = per_job([j.lr for j in jobs])
    bound = per_job([j.norm_bound if j.norm_bound is not None else math.inf for j in jobs])
    coldness = per_job([j.loss.coldness for j in jobs])
    log_base = per_job([j.loss.log_base for j in jobs])
    normalize = per_job([float(j.loss.normalize_by_length) for j in jobs])
    grad_mask = _grad_mask(jobs, params, R)
    project(params, bound, meta.ranks)
    adam = BatchedAdam(params, lr)
    states = [_RowState(j) for j in jobs]
    thresholds = [[t[3] for t in e.terms] for e in encoded]
    pad_id = int(lm.tokenizer.pad_token_id or 0)

    live = list(range(J))
    batch, batch_rows = None, None
    while live:
        sub = torch.tensor(live, device=device)
        if batch_rows != live:
            # Finished jobs leave the batch, so their sequences cost nothing more.
            batch, batch_rows = collate([encoded[i] for i in live], pad_id, device), list(live)
        assert batch is not None
        p = params[sub].clone().requires_grad_(True)
        steer = BatchSteering(p, meta.select(sub), batch.row_job, positions=batch.positions)
        out = batch_losses(lm, batch, steer, coldness[sub], log_base[sub], normalize[sub])
        losses = out.job_loss.detach().cpu().tolist()
        norms = p.detach()[:, 0].norm(dim=-1).cpu().tolist()
        per_term = out.term_loss.detach().cpu().tolist()
        term_job = batch.term_job.cpu().tolist()
        stepping = []
        for row, i in enumerate(live):
            mine = [x for x, jj in zip(per_term, term_job, strict=True) if jj == row]
            states[i].norms.append(norms[row])
            states[i].observe(losses[row], mine, thresholds[i])
            if states[i].reason is None:
                stepping.append(row)
        if stepping:
            rows = torch.tensor(stepping, device=device)
            out.job_loss[rows].sum().backward()
            assert p.grad is not None
            grad = p.grad * grad_mask[sub]
            finite = torch.isfinite(grad).flatten(1).all(dim=1)
            go = torch.zeros(len(live), dtype=torch.bool, device=device)
            go[rows] = True
            for row in (go & ~finite).nonzero().flatten().tolist():
                states[live[row]].reason = "nonfinite"
            go &= finite
            full_go = torch.zeros(J, dtype=torch.bool, device=device)
            full_go[sub[go]] = True
            full_grad = torch.zeros_like(params)
            full_grad[sub] = torch.nan_to_num(grad)
            adam.step(params, full_grad, full_go)
            project(params, bound, meta.ranks)
        live = [i for i in live if states[i].reason is None]

    results = []
    for i, (job, state) in enumerate(zip(jobs, states, strict=True)):
        vec = params[i, 0].detach().cpu().numpy().astype(np.float32)
        factors, r = None, int(meta.ranks[i])
        if r:
            a = params[i, 1 : 1 + r].detach().cpu().numpy().astype(np.float32)
            b = params[i, 1 + R : 1 + R + r].detach().cpu().numpy().astype(np.float32)
            factors = (a, b)
        results.append(
            VectorResult(
                job_id=job.job_id,
                vector=vec,
                layers=encoded[i].layers,
                loss_history=state.history,
                target_losses=state.target_losses,
                iterations=len(state.history) - 1,
                stop_reason=state.reason or "max_iters",
                final_norm=float(np.linalg.norm(vec)),
                seed=job.seed,
                log_base=job.loss.log_base,
                factors=factors,
                norm_history=state.norms,
            )
        )
    return results
