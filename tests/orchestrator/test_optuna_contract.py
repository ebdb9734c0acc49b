"""The private names of Optuna that ask-ahead TPE uses
(``orchestrator.study.optuna_internals``) exist here with the parameters the
code calls them with, and the installed Optuna is in the tested range, the
range pyproject.toml allows. An upgrade that moves one fails here, by name."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest

from orchestrator.study import optuna_internals as internals

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("owner", "name", "params"), internals.CALLS, ids=[f"{o}.{n}" for o, n, _ in internals.CALLS]
)
def test_each_private_call_has_the_signature_the_code_uses(owner, name, params) -> None:
    import inspect

    fn = getattr(internals._resolve(owner), name)
    assert tuple(inspect.signature(fn).parameters)[: len(params)] == params


def test_each_private_attribute_is_there() -> None:
    from optuna.samplers._tpe import probability_distributions as pd_

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=0, constant_liar=True, n_startup_trials=0)
    study = optuna.create_study(sampler=sampler)
    dists = {
        "x": optuna.distributions.FloatDistribution(0.1, 10, log=True),
        "c": optuna.distributions.CategoricalDistribution(["a", "b"]),
    }
    for v in range(5):
        t = study.ask(dists)
        study.tell(t, float(v))
    trials = study.get_trials(deepcopy=False)
    est = sampler._build_parzen_estimator(study, dists, trials, handle_below=True)
    holders = {
        "TPESampler()": sampler,
        "Study": study,
        "FrozenTrial": trials[0],
        "_ParzenEstimator": est,
        "optuna.samplers._tpe.probability_distributions": pd_,
    }
    for holder, attr in internals.ATTRIBUTES:
        if holder == "_BatchedTruncNormDistributions":
            numeric = [d for d in est._mixture_distribution.distributions if hasattr(d, "mu")]
            for a in ("mu", "sigma", "adapted_low", "adapted_high", "step", "is_log"):
                assert all(hasattr(d, a) for d in numeric) and numeric, a
            continue
        assert hasattr(holders[holder], attr), f"{holder}.{attr}"
    assert hasattr(sampler._rng, "rng") and hasattr(est._mixture_distribution, "weights")
    assert internals.all_trials(study) == trials


def test_the_installed_optuna_is_the_tested_and_pinned_range() -> None:
    low, high = internals.TESTED
    assert low <= internals.version() < high, optuna.__version__
    assert internals.ask_ahead_problem() is None
    (pin,) = re.findall(r'"(optuna[^"]*)"', (ROOT / "pyproject.toml").read_text())
    assert pin == f"optuna>={low[0]}.{low[1]},<{high[0]}.{high[1]}"


def test_a_changed_signature_is_named() -> None:
    calls = list(internals.CALLS)
    internals.CALLS.append(("optuna.samplers.TPESampler", "_compare", ("samples", "scores")))
    try:
        problems = internals.call_problems()
    finally:
        internals.CALLS[:] = calls
    assert len(problems) == 1 and re.search(r"_compare\(.*\) is not _compare", problems[0])
