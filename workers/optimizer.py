"""The batched one-shot optimizer (the engine): many independent vectors in one pass.

Rows never interact: the batch loss is a sum over jobs, and Adam works
element by element with per-row learning rate and step count, so a vector
optimized in a batch equals the same vector optimized alone (up to
floating-point reassociation in the model's matmuls).

Loop, per job: evaluate the loss of the current vector (history[t]); check
the stopping rules; if none fires, take one Adam step and project onto the
norm ball. So ``history[-1]`` is always the loss of the returned vector and
``iterations`` counts optimizer steps.

Continuous batching: jobs wait in a :class:`workers.scheduler.Scheduler`;
each step runs the admitted jobs, and when a job stops its row goes to a
waiting job with fresh optimizer state. Each job's parameters and Adam
moments live in its own slot of a device tensor and are gathered into the
batch for the step, so joining or leaving never disturbs the others. Per step the model runs only the blocks from each
job's steering layer on (:mod:`workers.prefix`), computes logits only at scored
positions (:mod:`workers.losses`), and backpropagates only from the steering
layer, since the model's own weights are frozen.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from workers.encoding import EncodedJob, JobError, collate, encode_job
from workers.interventions import BatchSteering, JobMeta
from workers.jobs import VectorJob, VectorResult
from workers.losses import batch_losses
from workers.models import LoadedModel
from workers.prefix import assemble, block_output_format, capture, resume, split
from workers.scheduler import Request, Scheduler

log = logging.getLogger(__name__)

BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def adam_step(
    params: Tensor, grad: Tensor, m: Tensor, v: Tensor, steps: Tensor, lr: Tensor, active: Tensor
) -> None:
    """One in-place Adam update of ``(J, K, d)`` parameters, row by row.

    Same update as ``torch.optim.Adam`` (betas 0.9/0.999, eps 1e-8) applied to
    each row separately, with per-row ``lr`` ``(J,)`` and step counts ``steps``
    ``(J,)`` (float64); rows outside ``active`` ``(J,)`` are left untouched.
    """
    b1, b2 = BETAS
    sel = active.nonzero().flatten()
    if sel.numel() == 0:
        return
    steps[sel] += 1
    g = grad[sel]
    m_sel = m[sel].lerp_(g, 1 - b1)
    v_sel = v[sel].mul_(b2).addcmul_(g, g, value=1 - b2)
    m[sel], v[sel] = m_sel, v_sel
    n = steps[sel]
    bc1 = (1 - b1**n).to(params.dtype)[:, None, None]
    bc2_sqrt = torch.sqrt(1 - b2**n).to(params.dtype)[:, None, None]
    denom = v_sel.sqrt() / bc2_sqrt + ADAM_EPS
    params[sel] -= (lr[sel, None, None] / bc1) * m_sel / denom


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

    def snapshot(self) -> _RowState:
        """A copy whose lists are its own; the job is shared, not copied."""
        out = copy.copy(self)
        out.history, out.norms = list(self.history), list(self.norms)
        return out

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


def _job_rank(job: VectorJob) -> int:
    return job.intervention.rank if job.intervention.kind == "affine" else 0


def _grad_mask(job: VectorJob, d_model: int, R: int) -> Tensor:
    """1 where a job trains a slot of the ``(1 + 2 R, d)`` layout. Unused slots
    get no gradient, so Adam keeps them at 0."""
    r = _job_rank(job)
    mask = torch.zeros(1 + 2 * R, d_model)
    iv = job.intervention
    if iv.kind != "affine" or iv.affine_additive:
        mask[0] = 1
    mask[1 : 1 + r] = 1
    mask[1 + R : 1 + R + r] = 1
    return mask


class _Bank:
    """Optimizer state of every admitted job in fixed slots on the device.

    A step gathers its rows' slots and scatters them back: two tensor ops,
    however many jobs join or leave. A job keeps its slot while paused and
    frees it when it stops.
    """

    def __init__(self, d_model: int, R: int, device: torch.device) -> None:
        self.d, self.R, self.device = d_model, R, device
        self.params = torch.zeros(0, 1 + 2 * R, d_model, device=device)
        self.m = torch.zeros_like(self.params)
        self.v = torch.zeros_like(self.params)
        self.mask = torch.zeros_like(self.params)
        self.steps = torch.zeros(0, dtype=torch.float64, device=device)
        self.free: list[int] = []

    def take(self, job: VectorJob, bound: float, rank: int) -> int:
        if not self.free:
            grow = max(len(self.steps), 8)
            n = len(self.steps)
            pad = torch.zeros(grow, *self.params.shape[1:], device=self.device)
            self.params, self.m, self.v, self.mask = (
                torch.cat([t, pad]) for t in (self.params, self.m, self.v, self.mask)
            )
            self.steps = torch.cat([self.steps, self.steps.new_zeros(grow)])
            self.free = list(range(n + grow - 1, n - 1, -1))
        slot = self.free.pop()
        start = initial_params(job, self.d, self.R).to(self.device)
        project(
            start[None],
            torch.tensor([bound], device=self.device),
            torch.tensor([rank], device=self.device),
        )
        self.params[slot] = start
        self.m[slot] = 0
        self.v[slot] = 0
        self.steps[slot] = 0
        self.mask[slot] = _grad_mask(job, self.d, self.R).to(self.device)
        return slot

    def release(self, slot: int) -> None:
        self.free.append(slot)


ProgressFn = Callable[[int, int], None]
FaultFn = Callable[[list[str]], None]


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA out-of-memory error, or the CPU allocator failing."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    msg = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in msg or "can't allocate memory" in msg
    )


@dataclass
class EngineStats:
    """What one :func:`optimize` call did.

    ``occupancy`` is the mean over steps of running jobs / ``max_rows``;
    ``padding_waste`` the share of computed token positions that were padding.
    """

    steps: int = 0
    vector_steps: int = 0
    slot_steps: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    out_of_memory: int = 0
    paused: int = 0
    prefix_reuse: bool = False

    @property
    def occupancy(self) -> float:
        return self.vector_steps / self.slot_steps if self.slot_steps else 0.0

    @property
    def padding_waste(self) -> float:
        return 1.0 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0


class _Job:
    """One job while it waits, runs or is paused; its tensors live in the :class:`_Bank`."""

    def __init__(self, enc: EncodedJob, n_layers: int) -> None:
        job = enc.job
        self.enc = enc
        self.rank = _job_rank(job)
        self.layer = min(enc.layers)
        self.depth = n_layers - self.layer  # blocks its rows run
        self.bound = job.norm_bound if job.norm_bound is not None else math.inf
        self.state = _RowState(job)
        self.thresholds = [t[3] for t in enc.terms]
        self.prefix: Tensor | None = None  # (S_j, T_j, d) entering block ``layer``
        self.slot: int | None = None
        self.final: tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None] | None = None

    def request(self) -> Request:
        lengths = [len(s.ids) for s in self.enc.seqs]
        return Request(self.enc.job.job_id, len(lengths), max(lengths), self.depth)


def optimize(
    lm: LoadedModel,
    jobs: Sequence[VectorJob],
    *,
    max_batch_jobs: int | None = None,
    token_budget: int | None = None,
    prefix_reuse: bool = True,
    progress: ProgressFn | None = None,
    stats: EngineStats | None = None,
    fault: FaultFn | None = None,
    seed: int = 0,
) -> list[VectorResult]:
    """Optimize every job and return one :class:`VectorResult` per job, in order.

    Continuous batching: at most ``max_batch_jobs`` jobs (and ``token_budget``
    padded tokens) run in each step; when a job stops, a waiting one takes its
    row with fresh optimizer state (see :mod:`workers.scheduler`). The blocks
    before each job's steering layer run once per job (``prefix_reuse``, see
    :mod:`workers.prefix`).

    An out-of-memory error halves the batch and retries the step; a job that
    runs out of memory alone stops with reason ``out_of_memory``. ``fault(job_ids)``
    is called with the running jobs before every step (fault injection in tests).
    ``progress(done, total)`` is called as jobs finish; ``stats`` is filled in.

    Raises:
        JobError: a job is malformed (see :func:`workers.encoding.encode_job`).
    """
    ids = [job.job_id for job in jobs]
    if len(set(ids)) != len(ids):
        raise JobError("job ids must be unique within one optimize() call")
    encoded = [encode_job(lm, job) for job in jobs]
    engine = _Engine(lm, max_batch_jobs, token_budget, prefix_reuse, fault, seed)
    if stats is not None:
        engine.stats = stats
    return engine.run(encoded, progress)


class _Engine:
    def __init__(
        self,
        lm: LoadedModel,
        max_rows: int | None,
        token_budget: int | None,
        prefix_reuse: bool,
        fault: FaultFn | None,
        seed: int,
    ) -> None:
        self.lm = lm
        self.sched = Scheduler(token_budget=token_budget, max_rows=max_rows, seed=seed)
        self.fault = fault
        self.stats = EngineStats()
        self.reuse = prefix_reuse and block_output_format(lm) is not None
        self.pad_id = int(lm.tokenizer.pad_token_id or 0)
        self._members: list[str] | None = None
        self._static: tuple[Any, ...] | None = None

    def run(self, encoded: list[EncodedJob], progress: ProgressFn | None) -> list[VectorResult]:
        jobs = {e.job.job_id: _Job(e, self.lm.n_layers) for e in encoded}
        R = max((j.rank for j in jobs.values()), default=0)
        self.bank = _Bank(self.lm.d_model, R, self.lm.device)
        self.stats.prefix_reuse = self.reuse
        self.sched.add(j.request() for j in jobs.values())
        capacity = self.sched.max_rows or max(len(jobs), 1)
        done = 0
        while not self.sched.idle:
            self.sched.admit()
            running = [jobs[r.key] for r in self.sched.running]
            for j in running:
                if j.slot is None:
                    j.slot = self.bank.take(j.enc.job, j.bound, j.rank)
            try:
                if self.fault is not None:
                    self.fault([j.enc.job.job_id for j in running])
                finished = self._step(running)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                self._out_of_memory(running, exc)
                finished = [j for j in running if j.state.reason == "out_of_memory"]
            else:
                self.stats.steps += 1
                self.stats.vector_steps += len(running)
                self.stats.slot_steps += capacity
            for job in finished:
                self.sched.finish(job.enc.job.job_id)
                self._retire(job)
                done += 1
                if progress is not None:
                    progress(done, len(jobs))
        return [self._result(jobs[e.job.job_id]) for e in encoded]

    def _retire(self, j: _Job) -> None:
        """Copy a stopped job's parameters off the device and free its slot."""
        assert j.slot is not None
        slots = self.bank.params[j.slot].detach().cpu()
        vec = slots[0].numpy().astype(np.float32)
        factors, r, R = None, j.rank, self.bank.R
        if r:
            a = slots[1 : 1 + r].numpy().astype(np.float32)
            b = slots[1 + R : 1 + R + r].numpy().astype(np.float32)
            factors = (a, b)
        j.final = (vec, factors)
        self.bank.release(j.slot)
        j.slot, j.prefix = None, None

    def _out_of_memory(self, running: list[_Job], exc: BaseException) -> None:
        self.stats.out_of_memory += 1
        self._members = None
        if self.lm.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(running) == 1:
            log.warning("job %s ran out of memory alone: %s", running[0].enc.job.job_id, exc)
            running[0].state.reason = "out_of_memory"
            return
        paused = self.sched.shrink()
        self.stats.paused += len(paused)
        log.warning(
            "out of memory with %d jobs; pausing %d and retrying (budget now %s tokens, %s rows)",
            len(running),
            len(paused),
            self.sched.token_budget,
            self.sched.max_rows,
        )

    def _statics(self, running: list[_Job]) -> tuple[Any, ...]:
        """Collated batch, steering metadata and prefix states; rebuilt when membership changes."""
        members = [j.enc.job.job_id for j in running]
        if members == self._members and self._static is not None:
            return self._static
        lm, device = self.lm, self.lm.device
        batch = collate([j.enc for j in running], self.pad_id, device)
        meta = JobMeta.build(
            [j.enc.layers for j in running],
            [j.enc.job.intervention for j in running],
            lm.n_layers,
            device,
        )
        row_layer = [j.layer for j in running for _ in j.enc.seqs]
        prefix = None
        if self.reuse:
            self._capture([j for j in running if j.prefix is None])
            parts = [j.prefix for j in running if j.prefix is not None]
            prefix = assemble(lm, parts, batch.input_ids.shape)
        real = int(batch.attention_mask.sum())
        self._members, self._static = members, (batch, meta, row_layer, prefix, real)
        return self._static

    def _capture(self, new: list[_Job]) -> None:
        if not new:
            return
        batch = collate([j.enc for j in new], self.pad_id, self.lm.device)
        row_layer = [j.layer for j in new for _ in j.enc.seqs]
        states = capture(self.lm, batch.input_ids, batch.attention_mask, row_layer)
        lengths = [max(len(s.ids) for s in j.enc.seqs) for j in new]
        for j, part in zip(
            new, split(states, [len(j.enc.seqs) for j in new], lengths), strict=True
        ):
            j.prefix = part

    def _step(self, running: list[_Job]) -> list[_Job]:
        """One evaluation (and, for jobs that go on, one Adam step) of every running job."""
        lm, device, bank = self.lm, self.lm.device, self.bank
        batch, meta, row_layer, prefix, real = self._statics(running)
        slots = torch.tensor([j.slot for j in running], device=device)
        params = bank.params[slots]

        def per_job(values: list[float]) -> Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)

        settings = [j.enc.job.loss for j in running]
        p = params.clone().requires_grad_(True)
        steer = BatchSteering(p, meta, batch.row_job, positions=batch.positions)
        coldness = per_job([s.coldness for s in settings])
        log_base = per_job([s.log_base for s in settings])
        normalize = per_job([float(s.normalize_by_length) for s in settings])
        if prefix is not None:
            with resume(lm, prefix, row_layer):
                out = batch_losses(lm, batch, steer, coldness, log_base, normalize)
        else:
            out = batch_losses(lm, batch, steer, coldness, log_base, normalize)
        losses = out.job_loss.detach().cpu().tolist()
        norms = p.detach()[:, 0].norm(dim=-1).cpu().tolist()
        terms: list[list[float]] = [[] for _ in running]
        for x, row in zip(
            out.term_loss.detach().cpu().tolist(), batch.term_job.tolist(), strict=True
        ):
            terms[row].append(x)
        # Stopping is decided on snapshots, so an out-of-memory error in the
        # backward pass below leaves every job exactly as it was.
        after = []
        for row, j in enumerate(running):
            state = j.state.snapshot()
            state.norms.append(norms[row])
            state.observe(losses[row], terms[row], j.thresholds)
            after.append(state)
        stepping = [row for row, st in enumerate(after) if st.reason is None]
        if stepping:
            rows = torch.tensor(stepping, device=device)
            out.job_loss[rows].sum().backward()
        for j, st in zip(running, after, strict=True):
            j.state = st
        self.stats.real_tokens += real
        self.stats.padded_tokens += batch.input_ids.numel()
        if stepping:
            assert p.grad is not None
            grad = p.grad * bank.mask[slots]
            finite = torch.isfinite(grad).flatten(1).all(dim=1)
            go = torch.zeros(len(running), dtype=torch.bool, device=device)
            go[rows] = True
            for row in (go & ~finite).nonzero().flatten().tolist():
                running[row].state.reason = "nonfinite"
            go &= finite
            m, v, steps = bank.m[slots], bank.v[slots], bank.steps[slots]
            lr = per_job([j.enc.job.lr for j in running])
            bound = per_job([j.bound for j in running])
            with torch.no_grad():
                adam_step(params, torch.nan_to_num(grad), m, v, steps, lr, go)
                project(params, bound, meta.ranks)
                bank.params[slots], bank.m[slots], bank.v[slots] = params, m, v
                bank.steps[slots] = steps
        return [j for j in running if j.state.reason is not None]

    def _result(self, j: _Job) -> VectorResult:
        job, state = j.enc.job, j.state
        assert j.final is not None
        vec, factors = j.final
        return VectorResult(
            job_id=job.job_id,
            vector=vec,
            layers=j.enc.layers,
            loss_history=state.history,
            target_losses=state.target_losses,
            iterations=max(len(state.history) - 1, 0),
            stop_reason=state.reason or "max_iters",
            final_norm=float(np.linalg.norm(vec)),
            seed=job.seed,
            log_base=job.loss.log_base,
            factors=factors,
            norm_history=state.norms,
        )
