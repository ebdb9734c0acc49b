"""What evaluation produces, as plain data: one :class:`TransferRow` per
(vector, held-out example, metric) and one :class:`Generation` per (vector,
held-out example) whose text is kept. No torch: the actors' protocol
(``workers.service.protocol``) carries them, and a process that only
passes them on need not load the engine."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TransferRow:
    vector_id: str
    example_id: str
    metric: str
    steered: float
    unsteered: float
    success: bool


@dataclass(frozen=True)
class Generation:
    """A vector's greedy continuation of one held-out prompt, beside the
    unsteered model's; ``max_tokens`` is the generation budget both had."""

    vector_id: str
    example_id: str
    steered: str
    unsteered: str
    steered_tokens: int = 0
    unsteered_tokens: int = 0
    steered_stop: str = "length"
    unsteered_stop: str = "length"
    max_tokens: int = 0
