"""The batched one-shot optimizer (the engine): many independent vectors in one pass.

Rows never interact: the batch loss is a sum over jobs, and Adam works
element by element with per-row learning rate and step count, so a vector
optimized in a batch equals the same vector optimized alone (up to
floating-point reassociation in the model's matmuls).

Loop, per job: evaluate the loss of the current vector (history[t]); check
the stopping rules; if none fires, take one Adam step and project onto the
norm ball. So ``history[-1]`` is always the loss of the returned vector and
``iterations`` counts optimizer steps.

Continuous batching: jobs wait in a :class:`workers.engine.scheduler.Scheduler`;
each step runs the admitted jobs, and when a job stops its row goes to a
waiting job with fresh optimizer state. Each job's parameters and Adam
moments live in its own slot of a device tensor and are gathered into the
batch for the step, so joining or leaving never disturbs the others. Per step the model runs only the blocks from each
job's steering layer on (:mod:`workers.steering.prefix`), computes logits only at scored
positions (:mod:`workers.steering.losses`), and backpropagates only from the steering
layer, since the model's own weights are frozen.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from workers.engine.adam import adam_step, project
from workers.engine.scheduler import Request, Scheduler
from workers.engine.slots import SlotBank, job_rank
from workers.engine.stopping import RowState
from workers.jobs import VectorJob, VectorResult
from workers.models import LoadedModel
from workers.steering.encoding import Batch, EncodedJob, JobError, collate, encode_job
from workers.steering.interventions import BatchSteering, JobMeta
from workers.steering.losses import batch_losses
from workers.steering.prefix import assemble, block_output_format, capture, resume, split

log = logging.getLogger(__name__)


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
    step_s: float = 0.0  # wall time in steps
    busy_row_s: float = 0.0  # sum over steps of running jobs x the step's seconds

    @property
    def occupancy(self) -> float:
        return self.vector_steps / self.slot_steps if self.slot_steps else 0.0

    @property
    def padding_waste(self) -> float:
        return 1.0 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0


class _Job:
    """One job while it waits, runs or is paused; its tensors live in the :class:`SlotBank`."""

    def __init__(self, enc: EncodedJob, n_layers: int) -> None:
        job = enc.job
        self.enc = enc
        self.rank = job_rank(job)
        self.layer = min(enc.layers)
        self.depth = n_layers - self.layer  # blocks its rows run
        self.bound = job.norm_bound if job.norm_bound is not None else math.inf
        self.state = RowState(job)
        self.thresholds = [t.threshold for t in enc.terms]
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
    row with fresh optimizer state (see :mod:`workers.engine.scheduler`). The blocks
    before each job's steering layer run once per job (``prefix_reuse``, see
    :mod:`workers.steering.prefix`).

    An out-of-memory error halves the batch and retries the step; a job that
    runs out of memory alone stops with reason ``out_of_memory``. ``fault(job_ids)``
    is called with the running jobs before every step (fault injection in tests).
    ``progress(done, total)`` is called as jobs finish; ``stats`` is filled in.

    Raises:
        JobError: a job is malformed (see :func:`workers.steering.encoding.encode_job`).
    """
    ids = [job.job_id for job in jobs]
    if len(set(ids)) != len(ids):
        raise JobError("job ids must be unique within one optimize() call")
    encoded = [encode_job(lm, job) for job in jobs]
    engine = Engine(
        lm,
        max_rows=max_batch_jobs,
        token_budget=token_budget,
        prefix_reuse=prefix_reuse,
        fault=fault,
        seed=seed,
        stats=stats,
    )
    engine.add(encoded)
    results: dict[str, VectorResult] = {}
    while not engine.idle:
        for res in engine.step():
            results[res.job_id] = res
            if progress is not None:
                progress(len(results), len(ids))
    return [results[i] for i in ids]


@dataclass
class _Statics:
    """What a step needs that changes only when the batch's membership does:
    the collated batch, the steering settings, each sequence's prefix layer, the
    prefix states ``(S, T, d)`` (``None`` without prefix reuse), and the count
    of real (non-padding) token positions."""

    members: list[str]
    batch: Batch
    meta: JobMeta
    row_layer: list[int]
    prefix: Tensor | None
    real_tokens: int


class Engine:
    """The optimizer as a resident loop: :meth:`add` jobs at any time, and each
    :meth:`step` runs one step of the admitted jobs and returns the results of
    those that stopped. :func:`optimize` is one engine run over a fixed set of
    jobs; a streaming worker keeps one engine for its whole life.

    ``max_rows`` caps the jobs of a step (``None``: all admitted jobs); every
    counter goes to ``stats``.
    """

    def __init__(
        self,
        lm: LoadedModel,
        *,
        max_rows: int | None = None,
        token_budget: int | None = None,
        prefix_reuse: bool = True,
        fault: FaultFn | None = None,
        seed: int = 0,
        stats: EngineStats | None = None,
    ) -> None:
        self.lm = lm
        self.sched = Scheduler(token_budget=token_budget, max_rows=max_rows, seed=seed)
        self.fault = fault
        self.stats = stats if stats is not None else EngineStats()
        self.reuse = prefix_reuse and block_output_format(lm) is not None
        self.stats.prefix_reuse = self.reuse
        self.pad_id = int(lm.tokenizer.pad_token_id or 0)
        self._static: _Statics | None = None
        self.jobs: dict[str, _Job] = {}  # admitted or waiting, not yet stopped
        self.bank = SlotBank(lm.d_model, 0, lm.device)
        self._added = 0  # jobs ever added: the rows of a step when max_rows is None

    @property
    def idle(self) -> bool:
        """No job waits or runs."""
        return self.sched.idle

    @property
    def running(self) -> list[str]:
        """Ids of the jobs admitted to the batch (the rows in use)."""
        return [r.key for r in self.sched.running]

    @property
    def waiting(self) -> int:
        return len(self.sched.waiting)

    def add(self, encoded: Sequence[EncodedJob]) -> None:
        """Queue jobs; they are admitted as rows free up.

        Raises:
            JobError: a job id is already in the engine.
        """
        new = [_Job(e, self.lm.n_layers) for e in encoded]
        ids = [j.enc.job.job_id for j in new]
        taken = [i for i in ids if i in self.jobs]
        if taken or len(set(ids)) != len(ids):
            raise JobError(f"job ids must be unique in one engine: {sorted(set(taken))[:5]}")
        if self.bank.grow_rank(max((j.rank for j in new), default=0)):
            self._static = None
        self.jobs.update(zip(ids, new, strict=True))
        self._added += len(new)
        self.sched.add(j.request() for j in new)

    def step(self) -> list[VectorResult]:
        """Admit waiting jobs while they fit, run one step of the batch, and
        return the results of the jobs that stopped (their rows are free)."""
        if self.sched.idle:
            return []
        self.sched.admit()
        running = [self.jobs[r.key] for r in self.sched.running]
        for j in running:
            if j.slot is None:
                j.slot = self.bank.take(j.enc.job, j.bound, j.rank)
        capacity = self.sched.max_rows or max(self._added, 1)
        t0 = time.perf_counter()
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
        dt = time.perf_counter() - t0
        self.stats.step_s += dt
        self.stats.busy_row_s += len(running) * dt
        results = []
        for job in finished:
            job_id = job.enc.job.job_id
            self.sched.finish(job_id)
            self._retire(job)
            results.append(self._result(job))
            del self.jobs[job_id]
        return results

    def evict(self, job_ids: Sequence[str]) -> list[EncodedJob]:
        """Take jobs out of the engine (running or waiting), freeing their rows;
        returns them as they were encoded, to be run again some other way."""
        out = []
        for job_id in job_ids:
            j = self.jobs.pop(job_id)
            self.sched.remove(job_id)
            if j.slot is not None:
                self.bank.release(j.slot)
            out.append(j.enc)
        self._static = None
        return out

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
        self._static = None
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

    def _statics(self, running: list[_Job]) -> _Statics:
        """Rebuilt when the batch's membership changes; see :class:`_Statics`."""
        members = [j.enc.job.job_id for j in running]
        if self._static is not None and self._static.members == members:
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
        self._static = _Statics(members, batch, meta, row_layer, prefix, real)
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
        static = self._statics(running)
        batch, meta, prefix = static.batch, static.meta, static.prefix
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
            with resume(lm, prefix, static.row_layer):
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
        self.stats.real_tokens += static.real_tokens
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
