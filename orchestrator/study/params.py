"""One trial's parameters, converted once: :class:`TrialParams`.

A trial's raw parameters are the fixed entries of the search space plus what
Optuna sampled (:func:`orchestrator.study.space.fixed_params`). They are read
here, into typed fields, and nowhere else: the assignment builder
(:mod:`orchestrator.run.expand`) and the stored rows (the driver's records)
both take a :class:`TrialParams`. The raw dict is kept as it came, because it
is what the ``trials`` table stores (``params_json``, ``param_*``) and what a
resumed study tells Optuna.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from orchestrator.study.config import token_spec
from workers.jobs import InterventionKind, TokenMode, TokenSelection


def parse_tokens(spec: str) -> TokenSelection:
    """``all``, ``prompt``, ``last_k:20`` or ``positions:0,-1`` (the grammar of
    :func:`orchestrator.study.config.token_spec`)."""
    mode, k, positions = token_spec(spec)
    return TokenSelection(cast(TokenMode, mode), k=k, positions=positions)


@dataclass(frozen=True)
class TrialParams:
    """The settings every vector of one trial shares (the ``search:`` entries)."""

    layer: int
    norm: float | None
    loss: str
    lr: float
    max_iters: int
    init_norm: float
    coldness: float
    tokens: TokenSelection
    intervention: InterventionKind
    clamp_coef: float
    shots: int = 1  # training examples per vector (a trial stored before K-shot: 1)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @staticmethod
    def from_params(params: Mapping[str, Any]) -> TrialParams:
        """Raises ``KeyError`` for a missing entry and ``ValueError`` for a bad token selection."""
        norm = params.get("norm")
        return TrialParams(
            layer=int(params["layer"]),
            norm=None if norm is None else float(norm),
            loss=str(params["loss"]),
            lr=float(params["lr"]),
            max_iters=int(params["max_iters"]),
            init_norm=float(params["init_norm"]),
            coldness=float(params["coldness"]),
            tokens=parse_tokens(str(params["tokens"])),
            intervention=cast(InterventionKind, str(params["intervention"])),
            clamp_coef=float(params["clamp_coef"]),
            shots=int(params.get("shots", 1)),
            raw=dict(params),
        )

    def as_dict(self) -> dict[str, Any]:
        """The raw parameters, as stored in the ``trials`` table."""
        return dict(self.raw)
