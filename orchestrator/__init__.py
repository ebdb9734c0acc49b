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

May import ``workers`` (its dataclasses and, in ``run``, its actor); ``workers``
never imports this package (tests/test_architecture.py).
"""
