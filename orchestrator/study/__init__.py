"""What a study is: its validated config (``config``), the search space as
Optuna distributions (``space``), one trial's typed parameters (``params``),
how a trial's rows become objective values (``objectives``), and the Optuna
study with its samplers, pruners and resume (``optuna_study``).

May import: ``workers.jobs`` (plain dataclasses), pydantic, optuna, yaml.
Never Ray, torch models or the store.
"""
