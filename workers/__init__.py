"""steer-sweep workers: everything that runs beside a GPU.

Top level: ``jobs`` (the contract: vector jobs and results, plain data) and
``examples`` (a prompt with its targets). Packages, each importing only the
ones before it:

- ``models``: loading a model, its tokenizer and decoder blocks;
- ``steering``: interventions, token batches, losses, prefix reuse, decoding;
- ``engine``: the batched optimizer (continuous batching) and reentrant steering;
- ``evaluation``: transfer metrics and judges (never the engine);
- ``analysis``: the CAA skyline and vector geometry;
- ``service``: assignments and the Ray actor that runs them.

This package never imports ``orchestrator`` (tests/test_architecture.py).
"""

from typing import TYPE_CHECKING

from workers.lazy import lazy_getattr

# The public names, imported on first use: `import workers.jobs` (plain data,
# what the store and the datasets need) must not load torch and the engine.
_PUBLIC = {
    "optimize": "workers.engine.loop",
    "Intervention": "workers.jobs",
    "KLTerm": "workers.jobs",
    "LossSettings": "workers.jobs",
    "ScoredPrompt": "workers.jobs",
    "StopRules": "workers.jobs",
    "Target": "workers.jobs",
    "TokenSelection": "workers.jobs",
    "VectorJob": "workers.jobs",
    "VectorResult": "workers.jobs",
    "chat": "workers.jobs",
    "LoadedModel": "workers.models",
    "ModelLoadError": "workers.models",
    "ModelSpec": "workers.models",
    "load_model": "workers.models",
    "steer": "workers.steering.context",
}
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
    "steer",
]

if TYPE_CHECKING:
    from workers.engine.loop import optimize
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
    from workers.steering.context import steer


__getattr__ = lazy_getattr(globals(), _PUBLIC)
