"""What the orchestrator calls: :class:`Assignment` (one vector to optimize
and evaluate) and its :class:`VectorOutcome` (``protocol``, plain data with
no torch), how they are run (``assignments``, ``stream``), and the Ray
actor that keeps a model resident and runs assignments (``actor``).

May import every other part of ``workers``; Ray only lazily, so the rest of
the package runs without it.
"""

from typing import TYPE_CHECKING

from workers.lazy import lazy_getattr

__all__ = ["Assignment", "VectorOutcome", "run_assignments"]
_PUBLIC = {
    "Assignment": "workers.service.protocol",
    "VectorOutcome": "workers.service.protocol",
    "run_assignments": "workers.service.assignments",
}
if TYPE_CHECKING:
    from workers.service.assignments import run_assignments
    from workers.service.protocol import Assignment, VectorOutcome

__getattr__ = lazy_getattr(globals(), _PUBLIC)
