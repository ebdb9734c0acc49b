"""The Optuna side of a report, from stored trials only: best-so-far and
parameter importances (the Pareto front is the ranking's, ``orchestrator.ranking``).

Importances come from an in-memory Optuna study rebuilt from the stored
COMPLETE trials (params, distributions, values) and Optuna's PED-ANOVA
evaluator. PED-ANOVA needs only numpy (Optuna's fANOVA would pull in
scikit-learn): it asks, per parameter, how differently the top 10% of trials
are distributed from all trials, so a parameter that the good trials share
scores high. With few trials the top set is one or two trials and the numbers
are noise, hence ``MIN_TRIALS_FOR_IMPORTANCE``.
"""

from __future__ import annotations

import json
import logging
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

MIN_TRIALS_FOR_IMPORTANCE = 10


def best_so_far(values: np.ndarray, direction: str) -> np.ndarray:
    """Running best of ``values`` (NaN skipped) under ``direction``."""
    out = np.full(len(values), np.nan)
    best = np.nan
    for i, v in enumerate(values):
        if np.isfinite(v) and (
            np.isnan(best) or (v > best if direction == "maximize" else v < best)
        ):
            best = v
        out[i] = best
    return out


def _distributions(trials: pd.DataFrame) -> dict[str, Any]:
    """The searched parameters' Optuna distributions: from the stored
    ``distributions_json`` (the driver's), else inferred from the values of
    parameters that vary."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
        json_to_distribution,
    )

    dists: dict[str, Any] = {}
    for raw in trials["distributions_json"].dropna():
        for name, text in json.loads(raw).items():
            dists[name] = json_to_distribution(text)
    if dists:
        return dists
    params = [json.loads(p) for p in trials["params_json"]]
    for name in sorted({k for p in params for k in p}):
        vals = [p.get(name) for p in params]
        if None in vals or len({repr(v) for v in vals}) < 2:
            continue
        if all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            dists[name] = IntDistribution(min(vals), max(vals))
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
            dists[name] = FloatDistribution(float(min(vals)), float(max(vals)))
        else:
            dists[name] = CategoricalDistribution(sorted(set(vals), key=repr))
    return dists


def param_importances(trials: pd.DataFrame, direction: str) -> tuple[dict[str, float], str]:
    """Importance (PED-ANOVA, for the first objective) of each searched
    parameter that varies, and a message ("" when computed)."""
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator

    done = trials[(trials["state"] == "COMPLETE") & trials["value"].notna()]
    if len(done) < MIN_TRIALS_FOR_IMPORTANCE:
        return {}, (
            f"parameter importances need at least {MIN_TRIALS_FOR_IMPORTANCE} complete trials; "
            f"this study has {len(done)}"
        )
    dists = _distributions(done)
    rows = [json.loads(p) for p in done["params_json"]]
    varied = [
        n for n, d in dists.items() if len({repr(r.get(n)) for r in rows}) > 1 and not d.single()
    ]
    if not varied:
        return {}, "no searched parameter took more than one value: nothing to rank"
    quiet = logging.getLogger("optuna")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # no "A new study created in memory" line
    try:
        study = optuna.create_study(direction="minimize" if direction == "minimize" else "maximize")
    finally:
        quiet.setLevel(level)
    for row, value in zip(rows, done["value"], strict=True):
        params = {n: row[n] for n in varied if n in row}
        if len(params) != len(varied):
            continue  # a trial from an older search space
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions={n: dists[n] for n in params}, value=float(value)
            )
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PED-ANOVA is marked experimental
        imp = optuna.importance.get_param_importances(
            study, evaluator=PedAnovaImportanceEvaluator(), normalize=True
        )
    return {k: float(v) for k, v in imp.items()}, ""
