"""Stored vectors as they are applied: one :class:`SteeringVector` per vector,
and :class:`VectorRows`, their parameters stacked so that row ``i`` of a batch
can be steered by any of them (evaluation, reentrant steering's stage one)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from workers.jobs import Intervention, TokenSelection, VectorJob, VectorResult
from workers.models import LoadedModel
from workers.steering.generate import RowSteering
from workers.steering.interventions import JobMeta, params_from


@dataclass(frozen=True)
class SteeringVector:
    """A vector as it is applied at evaluation time."""

    vector_id: str
    vector: np.ndarray
    layers: tuple[int, ...]
    intervention: Intervention = Intervention()
    tokens: TokenSelection = TokenSelection()
    factors: tuple[np.ndarray, np.ndarray] | None = None

    @staticmethod
    def from_result(vector_id: str, result: VectorResult, job: VectorJob) -> SteeringVector:
        return SteeringVector(
            vector_id, result.vector, result.layers, job.intervention, job.tokens, result.factors
        )


class VectorRows:
    """Steering tensors of a set of vectors, and per-row selections of them.

    Row ``i`` of a batch is steered by ``vectors[vec_idx[i]]``."""

    def __init__(self, lm: LoadedModel, vectors: Sequence[SteeringVector]) -> None:
        self.lm = lm
        self.vectors = vectors
        meta = JobMeta.build(
            [v.layers for v in vectors], [v.intervention for v in vectors], lm.n_layers, lm.device
        )
        rank = meta.max_rank
        self.meta = meta
        self.params = torch.stack(
            [
                params_from(
                    torch.as_tensor(v.vector, dtype=torch.float32, device=lm.device),
                    None
                    if v.factors is None
                    else tuple(torch.as_tensor(f, device=lm.device) for f in v.factors),  # type: ignore[arg-type]
                    rank,
                )
                for v in vectors
            ]
        )

    def select(self, vec_idx: Sequence[int]) -> tuple[Tensor, JobMeta]:
        idx = torch.tensor(list(vec_idx), device=self.lm.device)
        return self.params[idx], self.meta.select(idx)

    def rows(self, vec_idx: Sequence[int], prompt_lens: Sequence[int]) -> RowSteering:
        params, meta = self.select(vec_idx)
        tokens = [self.vectors[i].tokens for i in vec_idx]
        return RowSteering(params, meta, tokens, list(prompt_lens))
