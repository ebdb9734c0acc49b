"""Running a study: ``preflight`` (every check before Ray starts, giving a
``Plan``), ``expand`` (a trial's parameters to assignments), ``ledger`` (where
each assignment is), ``pools`` (the workers: Ray actors, or threads for tests),
``surprisal`` (the second model's pool), ``driver`` (ask, dispatch, collect,
store, tell) and ``runner`` (``steer-sweep run``: Ray, actors, the store, the
driver).

May import: ``orchestrator.study``, ``orchestrator.store``,
``orchestrator.datasets``, ``workers``; Ray only lazily.
"""
