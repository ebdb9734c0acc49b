"""What the orchestrator calls: :class:`Assignment` (one vector to optimize
and evaluate) and its :class:`VectorOutcome` (``assignments``), and the Ray
actor that keeps a model resident and runs assignments (``actor``).

May import every other part of ``workers``; Ray only lazily, so the rest of
the package runs without it.
"""

from workers.service.assignments import Assignment, VectorOutcome, run_assignments

__all__ = ["Assignment", "VectorOutcome", "run_assignments"]
