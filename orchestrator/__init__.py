"""steer-sweep orchestrator: everything that runs on the driver.

- ``study``: the study file (``config``), the search space (``space``), one
  trial's typed parameters (``params``), objectives, and the Optuna study;
- ``run``: checks before anything starts (``preflight``), the driver, the
  ledger of assignments, worker pools, the surprisal pool, and ``runner``
  (``steer-sweep run``);
- ``store``: Parquet tables on a folder or S3 (never imports torch);
- ``datasets``: examples from files and the built-in tasks;
- ``report``: HTML and PNG reports read from the store (never imports Ray);
- ``cli`` and ``commands``: the ``steer-sweep`` command line.

- ``ranking``: which trial and which vector is best (``steer-sweep best``).

The Python API for results: ``orchestrator.open_study(root, name)`` (its
datasets and frames), ``orchestrator.rank_vectors(study)`` and
``orchestrator.rank_trials(study)`` (the ranking, best first, and its
``RULE``), ``orchestrator.build_report(root, name, out)``.

May import ``workers`` (its dataclasses and, in ``run``, its actor); ``workers``
never imports this package (tests/test_architecture.py).
"""

from typing import Any

# The Python API for reading results, imported on first use so that
# `import orchestrator.cli` stays light.
_PUBLIC = {
    "open_study": "orchestrator.store",
    "list_studies": "orchestrator.store",
    "rank_trials": "orchestrator.ranking",
    "rank_vectors": "orchestrator.ranking",
    "RULE": "orchestrator.ranking",
    "build_report": "orchestrator.report",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
