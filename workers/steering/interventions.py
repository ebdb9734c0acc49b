"""Batched steering interventions as hooks that cannot leak.

Every row of a batch (one token sequence) points at one *job* (one steering
vector). Each job has its own kind, layers and parameters, so rows at
different layers share one forward pass: the hook on block ``l`` only touches
the rows whose job acts at ``l``.

Parameters of all jobs live in one tensor ``params`` of shape ``(J, K, d)``:
slot 0 is the additive/clamp vector ``v``; for affine jobs slots ``1..R`` hold
the ``a_r`` and slots ``R+1..2R`` the ``b_r`` of ``sum_r a_r b_r^T``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor, nn

from workers.jobs import Intervention

KIND_CODES = {"add": 0, "clamp": 1, "affine": 2}


@dataclass
class JobMeta:
    """Static per-job steering settings as tensors, for ``J`` jobs.

    - ``layer_mask``: ``(J, n_layers)`` bool, where each job acts.
    - ``kind``: ``(J,)`` long, codes from ``KIND_CODES``.
    - ``clamp_coef``: ``(J,)`` float, the ``a`` of clamping.
    - ``additive``: ``(J,)`` float, 1 where an affine job also adds ``v``.
    - ``ranks``: ``(J,)`` long, each job's affine rank (0 if not affine).
    """

    layer_mask: Tensor
    kind: Tensor
    clamp_coef: Tensor
    additive: Tensor
    ranks: Tensor

    @staticmethod
    def build(
        layers: Sequence[Sequence[int]],
        interventions: Sequence[Intervention],
        n_layers: int,
        device: torch.device,
    ) -> JobMeta:
        layer_mask = torch.zeros(len(layers), n_layers, dtype=torch.bool)
        for i, job_layers in enumerate(layers):
            layer_mask[i, list(job_layers)] = True
        return JobMeta(
            layer_mask=layer_mask.to(device),
            kind=torch.tensor([KIND_CODES[iv.kind] for iv in interventions], device=device),
            clamp_coef=torch.tensor(
                [iv.clamp_coef for iv in interventions], dtype=torch.float32, device=device
            ),
            additive=torch.tensor(
                [float(iv.affine_additive) for iv in interventions], device=device
            ),
            ranks=torch.tensor(
                [iv.rank if iv.kind == "affine" else 0 for iv in interventions], device=device
            ),
        )

    @property
    def max_rank(self) -> int:
        return int(self.ranks.max()) if self.ranks.numel() else 0

    def select(self, rows: Tensor) -> JobMeta:
        return JobMeta(
            self.layer_mask[rows],
            self.kind[rows],
            self.clamp_coef[rows],
            self.additive[rows],
            self.ranks[rows],
        )


@dataclass
class BatchSteering:
    """Per-row steering for a batch of ``S`` sequences of length ``T``.

    - ``params``: ``(J, K, d)`` float32, see the module docstring.
    - ``meta``: the jobs' static settings.
    - ``row_job``: ``(S,)`` long, the job of each sequence.
    - ``positions``: ``(S, T)`` float selection mask, or ``None`` for all positions.
    - ``rank``: ``R``, the number of affine factor pairs in ``params``.
    - ``sign``: ``(S,)`` float multiplier of the additive vector per row
      (``-1`` subtracts it, as in the paper's choice-flip evaluation), or ``None``.
    """

    params: Tensor
    meta: JobMeta
    row_job: Tensor
    positions: Tensor | None = None
    sign: Tensor | None = None

    @property
    def rank(self) -> int:
        return (self.params.shape[1] - 1) // 2

    def active_layers(self) -> list[int]:
        return [int(i) for i in self.meta.layer_mask.any(dim=0).nonzero().flatten().tolist()]


def _delta(steer: BatchSteering, layer: int, hidden: Tensor) -> Tensor | None:
    """The change to ``hidden`` (S, T, d) at ``layer``, in float32; None if no row acts."""
    acts = steer.meta.layer_mask[steer.row_job, layer]  # (S,)
    if not bool(acts.any()):
        return None
    S, T, _ = hidden.shape
    gate = acts.to(torch.float32)[:, None].expand(S, T)  # (S, T)
    if steer.positions is not None:
        gate = gate * steer.positions[:, :T]
    params = steer.params[steer.row_job]  # (S, K, d)
    vec = params[:, 0]  # (S, d)
    if steer.sign is not None:
        vec = vec * steer.sign[:, None]
    kind = steer.meta.kind[steer.row_job]  # (S,)
    h = hidden.to(torch.float32)
    delta = torch.zeros_like(h)
    if bool((kind == 0).any()):
        delta = delta + (kind == 0).to(h.dtype)[:, None, None] * vec[:, None, :]
    if bool((kind == 1).any()):
        # x -> x - (v v^T / |v|^2) x + a v: the component along v becomes a v.
        sq = (vec * vec).sum(-1).clamp_min(1e-30)  # (S,)
        proj = torch.einsum("std,sd->st", h, vec) / sq[:, None]  # (S, T)
        coef = steer.meta.clamp_coef[steer.row_job][:, None]  # (S, 1)
        clamp = (coef - proj)[:, :, None] * vec[:, None, :]
        delta = delta + (kind == 1).to(h.dtype)[:, None, None] * clamp
    if bool((kind == 2).any()):
        R = steer.rank
        a, b = params[:, 1 : 1 + R], params[:, 1 + R : 1 + 2 * R]  # (S, R, d)
        coeffs = torch.einsum("std,srd->str", h, b)
        affine = torch.einsum("str,srd->std", coeffs, a)
        add = steer.meta.additive[steer.row_job][:, None, None] * vec[:, None, :]
        delta = delta + (kind == 2).to(h.dtype)[:, None, None] * (affine + add)
    return delta * gate[:, :, None]


def _pre_hook(
    steer: BatchSteering, layer: int, _module: nn.Module, args: tuple[Any, ...], kwargs: dict
) -> tuple[tuple[Any, ...], dict]:
    if args:
        hidden = args[0]
    else:
        hidden = kwargs["hidden_states"]
    delta = _delta(steer, layer, hidden)
    if delta is None:
        return args, kwargs
    steered = (hidden.to(torch.float32) + delta).to(hidden.dtype)
    if args:
        return (steered, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": steered}


@contextmanager
def steering(layers: nn.ModuleList, steer: BatchSteering) -> Iterator[BatchSteering]:
    """Apply ``steer`` to the residual stream entering each active block.

    The hooks are removed when the block exits, whether normally or by an
    exception.
    """
    handles = []
    try:
        for layer in steer.active_layers():
            hook = partial(_pre_hook, steer, layer)
            handles.append(layers[layer].register_forward_pre_hook(hook, with_kwargs=True))
        yield steer
    finally:
        for handle in handles:
            handle.remove()


def params_from(vector: Tensor, factors: tuple[Tensor, Tensor] | None, rank: int) -> Tensor:
    """Pack one job's parameters into ``(1 + 2 * rank, d)`` slots."""
    out = torch.zeros(1 + 2 * rank, vector.shape[-1], dtype=torch.float32, device=vector.device)
    out[0] = vector
    if factors is not None:
        r = factors[0].shape[0]
        out[1 : 1 + r] = factors[0]
        out[1 + rank : 1 + rank + r] = factors[1]
    return out


def single_vector(
    vector: Tensor,
    layers: Sequence[int],
    n_layers: int,
    batch_size: int,
    *,
    kind: Literal["add", "clamp"] = "add",
    clamp_coef: float = 1.0,
    positions: Tensor | None = None,
) -> BatchSteering:
    """A :class:`BatchSteering` that applies one vector ``(d,)`` to every row.

    ``kind`` is ``add`` or ``clamp``; ``positions`` an optional ``(S, T)`` mask.
    """
    if kind not in ("add", "clamp"):
        raise ValueError(f"single_vector supports add and clamp, not '{kind}'")
    device = vector.device
    meta = JobMeta.build(
        [layers],
        [Intervention(kind, clamp_coef=clamp_coef)],
        n_layers,
        device,
    )
    return BatchSteering(
        params=vector.to(torch.float32).reshape(1, 1, -1),
        meta=meta,
        row_job=torch.zeros(batch_size, dtype=torch.long, device=device),
        positions=positions,
    )
