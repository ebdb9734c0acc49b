"""Every private name of Optuna this project uses, in one place, with the
contract it is used under.

Only ask-ahead TPE (``sampler.ask_ahead > 1``,
:class:`orchestrator.study.optuna_study.AheadTPESampler`) uses them: it
overrides, calls or reads TPE's internals to fit once per batch of
proposals. Everything else, ``ask_ahead: 1`` included, is Optuna's public
API (a stock ``TPESampler``).

:data:`TESTED` is the Optuna range the tests pass on, the same range
``pyproject.toml`` allows. :func:`ask_ahead_problem` says why ask-ahead
cannot run here (another Optuna release, a name gone or with another
signature), and then ``make_sampler`` gives a stock ``TPESampler`` with one
warning, never a silently different search. tests/orchestrator/test_optuna_contract.py
checks every entry of :data:`CALLS` and :data:`ATTRIBUTES` by name.

Nothing here patches Optuna: the vectorized log-Phi (:func:`log_gauss_mass`)
is this project's own function, called by its own density code.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import numpy as np
import optuna

TESTED = ((5, 0), (5, 1))
"""Optuna releases ``>= TESTED[0]`` and ``< TESTED[1]`` (major, minor)."""

# (owner, attribute, the parameters the project calls or overrides it with)
CALLS: list[tuple[str, str, tuple[str, ...]]] = [
    (
        "optuna.samplers.TPESampler",
        "_get_internal_repr",
        ("self", "trials", "search_space", "study"),
    ),
    ("optuna.samplers.TPESampler", "_get_params", ("self", "trial", "study")),
    ("optuna.samplers.TPESampler", "_sample_relative", ("self", "study", "trial", "search_space")),
    (
        "optuna.samplers.TPESampler",
        "_build_parzen_estimator",
        ("self", "study", "search_space", "trials", "handle_below"),
    ),
    ("optuna.samplers.TPESampler", "_compare", ("samples", "acquisition_func_vals")),
    ("optuna.samplers._tpe.sampler", "_split_trials", ("study", "trials", "n_below")),
    ("optuna.samplers._tpe.sampler", "default_gamma", ("x",)),
    ("optuna.samplers._tpe.sampler", "default_gamma_multiobjective", ("x",)),
    ("optuna.storages.BaseStorage", "get_all_trials", ("self", "study_id", "deepcopy", "states")),
]

# (what holds it, attribute): read, not called
ATTRIBUTES: list[tuple[str, str]] = [
    ("TPESampler()", "_gamma"),
    ("TPESampler()", "_n_startup_trials"),
    ("TPESampler()", "_constant_liar"),
    ("TPESampler()", "_constraints_func"),
    ("TPESampler()", "_n_ei_candidates"),
    ("TPESampler()", "_rng"),  # ._rng.rng, a numpy RandomState
    ("Study", "_storage"),
    ("Study", "_study_id"),
    ("FrozenTrial", "_trial_id"),
    ("_ParzenEstimator", "_mixture_distribution"),  # .weights, .distributions
    ("_ParzenEstimator", "_transform"),
    ("optuna.samplers._tpe.probability_distributions", "_BatchedCategoricalDistributions"),
    ("_BatchedTruncNormDistributions", "mu, sigma, low, high"),  # as adapted_low/high, step, is_log
]


def version() -> tuple[int, int]:
    major, minor = (
        int("".join(c for c in p if c.isdigit()) or 0) for p in optuna.__version__.split(".")[:2]
    )
    return major, minor


def _resolve(owner: str) -> Any:
    import importlib

    module, _, attr = owner.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return importlib.import_module(owner)


def call_problems() -> list[str]:
    """The entries of :data:`CALLS` missing here or with other parameters."""
    out = []
    for owner, name, params in CALLS:
        try:
            fn = getattr(_resolve(owner), name)
        except (ImportError, AttributeError):
            out.append(f"{owner}.{name} is missing")
            continue
        got = tuple(inspect.signature(fn).parameters)
        if got[: len(params)] != params:
            out.append(f"{owner}.{name}{got} is not {name}{params}")
    return out


@functools.cache
def ask_ahead_problem() -> str | None:
    """Why ask-ahead TPE cannot run with this Optuna, or None."""
    low, high = TESTED
    if not low <= version() < high:
        return (
            f"Optuna {optuna.__version__} is outside {low[0]}.{low[1]} to {high[0]}.{high[1]} "
            "(exclusive), the releases ask-ahead TPE is tested on"
        )
    problems = call_problems()
    if problems:
        return "Optuna's TPE internals changed: " + "; ".join(problems)
    return None


def split_trials(study: Any, trials: list[Any], n_below: int) -> tuple[list[Any], list[Any]]:
    """TPE's own split of ``trials`` into good (``n_below``) and bad ones."""
    from optuna.samplers._tpe.sampler import _split_trials

    return _split_trials(study, trials, n_below)


def default_gamma(n_objectives: int) -> Any:
    """TPE's default gamma (how many trials are good) for the objective count."""
    from optuna.samplers._tpe import sampler

    return sampler.default_gamma if n_objectives <= 1 else sampler.default_gamma_multiobjective


def categorical_type() -> Any:
    from optuna.samplers._tpe import probability_distributions

    return probability_distributions._BatchedCategoricalDistributions


def all_trials(study: Any) -> list[Any]:
    """Every trial of ``study``, not copied (the storage's own objects)."""
    return study._storage.get_all_trials(study._study_id, deepcopy=False)


def study_key(study: Any) -> tuple[int, int]:
    return (id(study._storage), study._study_id)


# ---------------------------------------------------------------- log Phi, this project's own


def log_ndtr(a: Any) -> np.ndarray:
    """log Phi(a) elementwise over a whole array (torch's float64 kernel)."""
    import torch

    return torch.special.log_ndtr(torch.from_numpy(np.asarray(a, dtype=np.float64))).numpy()


def _ndtr(a: Any) -> np.ndarray:
    import torch

    return torch.special.ndtr(torch.from_numpy(np.asarray(a, dtype=np.float64))).numpy()


def log_gauss_mass(a: Any, b: Any) -> np.ndarray:
    """log of the standard normal's mass on [a, b], elementwise (a <= b).

    Computed in the left tail, where log Phi is accurate: for b <= 0,
    log(Phi(b) - Phi(a)) = log Phi(b) + log(1 - exp(log Phi(a) - log Phi(b)));
    for a > 0 the mirror interval [-b, -a]; an interval around 0 is
    log(1 - Phi(a) - Phi(-b)). Equal to Optuna's TPE to rounding (tested)."""
    a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
    out = np.empty(a.shape, np.float64)
    left, right = b <= 0, a > 0
    central = ~(left | right)
    for mask, lo, hi in ((left, a, b), (right, -b, -a)):
        if mask.any():
            la, lb = log_ndtr(lo[mask]), log_ndtr(hi[mask])
            with np.errstate(divide="ignore", invalid="ignore"):
                out[mask] = lb + np.log1p(-np.exp(la - lb))
    if central.any():
        out[central] = np.log1p(-_ndtr(a[central]) - _ndtr(-b[central]))
    return out


LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
