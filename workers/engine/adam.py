"""Adam, the norm bound and the seeded start of a vector (paper App. A), on
``(J, K, d)`` parameter tensors, row by row: a row's update never depends on
another row, which is what keeps batched vectors equal to solo ones."""

from __future__ import annotations

import torch
from torch import Tensor

from workers.jobs import VectorJob

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
