"""The TPE sampler the driver uses proposes exactly what Optuna's own does."""

from __future__ import annotations

import random

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from orchestrator.study.optuna_study import _TPESampler

DISTS = {
    "layer": IntDistribution(0, 11),
    "norm": FloatDistribution(1.0, 30.0, log=True),
    "lr": FloatDistribution(0.01, 1.0),
    "loss": CategoricalDistribution(["promote", "suppress", "mixed"]),
}


def _proposals(sampler: optuna.samplers.BaseSampler, n: int, in_flight: int) -> list[dict]:
    """Ask ``n`` trials with up to ``in_flight`` running at once (constant liar
    sees them); finish them in a shuffled order as COMPLETE, PRUNED or FAIL."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    rng = random.Random(1)
    running: list[optuna.trial.Trial] = []
    out = []
    for i in range(n):
        if i == n // 2:  # a search-space change mid-study: a new cache key
            dists = {k: v for k, v in DISTS.items() if k != "lr"}
        else:
            dists = DISTS
        trial = study.ask(dists)
        out.append(trial.params)
        running.append(trial)
        while len(running) > in_flight:
            done = running.pop(rng.randrange(len(running)))
            roll = rng.random()
            if roll < 0.1:
                done.report(rng.random(), step=0)
                study.tell(done, state=TrialState.PRUNED)
            elif roll < 0.15:
                study.tell(done, state=TrialState.FAIL)
            else:
                study.tell(done, done.params["layer"] / 11 + rng.random() * 0.3)
    return out


def test_cached_tpe_proposes_what_optuna_tpe_proposes() -> None:
    kwargs = {"seed": 3, "constant_liar": True, "n_startup_trials": 5}
    stock = _proposals(optuna.samplers.TPESampler(**kwargs), 120, in_flight=6)
    cached = _proposals(_TPESampler(**kwargs), 120, in_flight=6)
    assert cached == stock
