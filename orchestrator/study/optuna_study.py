"""The Optuna side: samplers, pruners, and re-telling stored trials on resume."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, distribution_to_json, json_to_distribution
from optuna.trial import FrozenTrial, TrialState

from orchestrator.study.config import StudyConfig
from orchestrator.study.space import grid

log = logging.getLogger(__name__)

STORE_TRIAL = "store_trial"  # user attr linking an Optuna trial to its store number
STATES = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED, "FAIL": TrialState.FAIL}


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler calls ``study.stop()`` once the grid is covered,
    which is an error outside ``study.optimize``; the driver counts trials
    itself (preflight caps n_trials at the grid size), so skip that."""

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


class _TPESampler(optuna.samplers.TPESampler):
    """Optuna's TPE, with each finished trial's parameters converted to
    Optuna's internal representation once instead of on every ``ask``.

    Every ask rebuilds its Parzen estimators from all trials; at a few thousand
    trials the Python loop that reads each trial's parameters is a sizeable
    part of that. A finished trial's parameters never change, so their
    converted row is kept per search space. The proposals are the same as the
    stock sampler's (tests/orchestrator/test_search.py compares them); should
    a future Optuna drop the private hook, the stock code path runs.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._rows: dict[tuple, dict[int, tuple[float, ...] | None]] = {}

    def _get_internal_repr(
        self, trials: list[FrozenTrial], search_space: dict[str, BaseDistribution], study: Any
    ) -> dict[str, np.ndarray]:
        names = list(search_space)
        cache = self._rows.setdefault(tuple(search_space.items()), {})
        rows = [cache.get(t._trial_id, _MISSING) for t in trials]
        for i, trial in enumerate(trials):
            if rows[i] is not _MISSING:
                continue
            params = self._get_params(trial, study)
            row = None
            if search_space.keys() <= params.keys():
                row = tuple(d.to_internal_repr(params[n]) for n, d in search_space.items())
            if trial.state.is_finished():
                cache[trial._trial_id] = row
            rows[i] = row
        present = [r for r in rows if r is not None]
        columns = list(zip(*present, strict=True)) if present else [() for _ in names]
        return {n: np.asarray(c) for n, c in zip(names, columns, strict=True)}


_MISSING: Any = object()
_HOOK = hasattr(optuna.samplers.TPESampler, "_get_internal_repr")


def make_sampler(config: StudyConfig, space: Any) -> optuna.samplers.BaseSampler:
    s = config.sampler
    if s.name == "tpe":
        # constant_liar: trials in flight count as bad guesses, so parallel
        # asks spread out instead of piling onto one point.
        cls = _TPESampler if _HOOK else optuna.samplers.TPESampler
        return cls(seed=s.seed, constant_liar=True, n_startup_trials=s.n_startup_trials)
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.name == "grid":
        return _GridSampler(grid(space), seed=s.seed)
    return optuna.samplers.NSGAIISampler(seed=s.seed)


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    p = config.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        )
    if p.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    # none, and transfer_screen: that one stops a vector's evaluation in the
    # worker (workers.evaluation.screen), never a trial.
    return optuna.pruners.NopPruner()


def create_study(config: StudyConfig, space: Any) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=config.name,
        storage=config.optuna_storage,
        load_if_exists=True,
        sampler=make_sampler(config, space),
        pruner=make_pruner(config),
        directions=[o.direction for o in config.objectives],
    )


def distributions_json(dists: dict[str, BaseDistribution]) -> str:
    return json.dumps({k: distribution_to_json(v) for k, v in dists.items()}, sort_keys=True)


def retell(study: optuna.Study, stored: Sequence[Any]) -> int:
    """Add finished trials from the store that the Optuna study does not have yet.

    With a persistent Optuna storage, trials left RUNNING by a killed driver are
    marked FAIL (their store number is re-run). Returns the number added.
    """
    known = {t.user_attrs.get(STORE_TRIAL) for t in study.get_trials(deepcopy=False)}
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        study.tell(t.number, state=TrialState.FAIL)
        log.info("marked Optuna trial %d (left running by an earlier driver) as FAIL", t.number)
    added = 0
    for rec in stored:
        if rec.number in known:
            continue
        raw = json.loads(rec.distributions_json) if rec.distributions_json else {}
        dists = {k: json_to_distribution(v) for k, v in raw.items()}
        params = {k: rec.params[k] for k in dists if k in rec.params}
        state = STATES[rec.state]
        frozen = optuna.trial.create_trial(
            state=state,
            params=params,
            distributions=dists,
            values=rec.values if state == TrialState.COMPLETE else None,
            intermediate_values=dict(rec.intermediate_values),
            user_attrs={STORE_TRIAL: rec.number, **({"error": rec.error} if rec.error else {})},
        )
        study.add_trial(frozen)
        added += 1
    return added
