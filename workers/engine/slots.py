"""Device slots that hold every admitted job's parameters and Adam moments.

The slot layout is ``(1 + 2 R, d)`` per job: slot 0 the additive/clamp vector,
then the affine factors ``a_1..a_R`` and ``b_1..b_R`` (R the batch's largest
affine rank, see :mod:`workers.steering.interventions`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from workers.engine.adam import initial_params, project
from workers.jobs import VectorJob


def job_rank(job: VectorJob) -> int:
    return job.intervention.rank if job.intervention.kind == "affine" else 0


def grad_mask(job: VectorJob, d_model: int, R: int) -> Tensor:
    """1 where a job trains a slot of the ``(1 + 2 R, d)`` layout. Unused slots
    get no gradient, so Adam keeps them at 0."""
    r = job_rank(job)
    mask = torch.zeros(1 + 2 * R, d_model)
    iv = job.intervention
    if iv.kind != "affine" or iv.affine_additive:
        mask[0] = 1
    mask[1 : 1 + r] = 1
    mask[1 + R : 1 + R + r] = 1
    return mask


class SlotBank:
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
        self.mask[slot] = grad_mask(job, self.d, self.R).to(self.device)
        return slot

    def grow_rank(self, R: int) -> bool:
        """Make room for affine factors of rank ``R`` (jobs keep their slots and
        state; a wider layout only adds unused, zero factor rows). Returns
        whether the layout changed."""
        if R <= self.R:
            return False
        old = self.R

        def wider(t: Tensor) -> Tensor:
            out = t.new_zeros(t.shape[0], 1 + 2 * R, t.shape[2])
            out[:, 0] = t[:, 0]
            out[:, 1 : 1 + old] = t[:, 1 : 1 + old]
            out[:, 1 + R : 1 + R + old] = t[:, 1 + old : 1 + 2 * old]
            return out

        self.params, self.m, self.v, self.mask = (
            wider(t) for t in (self.params, self.m, self.v, self.mask)
        )
        self.R = R
        return True

    def release(self, slot: int) -> None:
        self.free.append(slot)
