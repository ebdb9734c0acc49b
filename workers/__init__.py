"""steer-sweep workers: everything that runs beside a GPU.

Model loading, interventions, losses, the batched optimizer, evaluation and
the Ray actor. This package never imports ``orchestrator``.
"""

from workers.jobs import (
    Intervention,
    KLTerm,
    LossSettings,
    ScoredPrompt,
    StopRules,
    Target,
    TokenSelection,
    VectorJob,
    VectorResult,
    chat,
)
from workers.models import LoadedModel, ModelLoadError, ModelSpec, load_model
from workers.optimizer import optimize

__all__ = [
    "Intervention",
    "KLTerm",
    "LoadedModel",
    "LossSettings",
    "ModelLoadError",
    "ModelSpec",
    "ScoredPrompt",
    "StopRules",
    "Target",
    "TokenSelection",
    "VectorJob",
    "VectorResult",
    "chat",
    "load_model",
    "optimize",
]
