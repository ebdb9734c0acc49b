"""Running a study: ``preflight`` (every check before Ray starts, giving a
``Plan``), ``expand`` (a trial's parameters to assignments), ``ledger`` (where
each assignment is), ``pools`` (workers shaped like Ray's ActorPool: Ray
actors, or objects in this process for tests), ``feeder`` (inboxes topped up,
outboxes drained), ``surprisal`` (the second model's scorers), ``committer``
(finished trials to the store, off the loop), ``driver`` (dispatch, collect,
store, tell, ask) and ``runner`` (``steer-sweep run``: Ray, actors, the store,
the driver).

May import: ``orchestrator.study``, ``orchestrator.store``,
``orchestrator.datasets``, ``workers``; Ray only lazily.
"""
