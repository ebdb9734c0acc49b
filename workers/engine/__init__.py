"""The optimizer: many one-shot vectors in one batch with continuous batching.

``loop`` is the engine (:func:`optimize`); ``scheduler`` decides which jobs run
in each step (plain bookkeeping, no torch); ``slots`` holds every job's
parameters and Adam moments on the device; ``adam`` and ``stopping`` are the
per-row update and stopping rules (paper App. A); ``reentrant`` is reentrant
steering (§2.1.2, Alg. 1), built from two engine runs.

May import: ``workers.jobs``, ``workers.models``, ``workers.steering``, torch.
"""

from workers.engine.loop import EngineStats, optimize
from workers.engine.reentrant import ReentrantJob, ReentrantResult, optimize_reentrant

__all__ = ["EngineStats", "ReentrantJob", "ReentrantResult", "optimize", "optimize_reentrant"]
