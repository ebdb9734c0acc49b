"""The Optuna side: samplers, pruners, and re-telling stored trials on resume."""

from __future__ import annotations

import bisect
import json
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, distribution_to_json, json_to_distribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from orchestrator.study import optuna_internals as internals
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
    stock sampler's (tests/orchestrator/test_search.py compares them). It
    overrides a private method (``orchestrator.study.optuna_internals``), so
    only ask-ahead TPE is built on it.
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


@dataclass(frozen=True)
class Proposal:
    """Where an ask-ahead proposal came from: the fit it was drawn from (its
    index, the finished trials it saw, its clock time) and the trial it went to."""

    trial: int
    fit: int
    seen: int
    fitted_at: float
    asked_at: float
    fit_space: tuple[str, ...] = ()  # the parameters the fit modelled
    asked_space: tuple[str, ...] = ()  # the parameters the ask wanted


class AheadTPESampler(_TPESampler):
    """TPE that fits its Parzen estimators once per ``ahead`` proposals.

    An ask costs a fit (the split of every finished trial into good and bad,
    two mixture models over their parameters) and a draw (``n_ei_candidates``
    samples from the good model, the best by l(x)/g(x) taken). The fit grows
    with the history; the draw does not. This sampler draws ``ahead``
    proposals from one fit, each the best of its own ``n_ei_candidates``
    samples, and serves them to the next asks.

    Staleness bound: a proposal comes from a fit made at most ``ahead - 1``
    asks and at most ``max_stale_s`` seconds before the ask it serves, and
    that fit saw every trial finished (told) by then, with the trials then
    running as constant-liar "bad" points. Proposals of one fit do not see
    each other (within a batch there is no constant liar). A fit older than
    ``max_stale_s`` discards the rest of its batch; a change of search space
    is seen at the next fit (Optuna samples a parameter the fit did not model
    on its own, and ignores one the ask does not want).

    The draw's cost is the acquisition: every candidate's density under both
    models, one kernel per trial, so it grows with the history whatever the
    batch. The good model has at most 25 kernels (TPE's gamma); the bad model
    has one per other trial. When asking ahead, the bad model is built from at
    most ``max_bad`` trials: every running one (the constant liar's points),
    the 25 newest finished ones (TPE's full-weight trials), and older ones
    evenly spaced in trial order, which TPE's linear ramp weights low anyway.
    This keeps an ask's cost flat in the history; it is an approximation of
    TPE's bad model (fewer, so wider, kernels), made only when ``ahead > 1``.

    ``ahead=1`` is the exact mode: every ask fits on the whole history and
    proposes what Optuna's own TPE proposes for the same seed and history
    (tests/orchestrator/test_search.py). With an Optuna whose internals are
    not the tested ones (``optuna_internals.ask_ahead_problem``) it warns and
    runs in the exact mode; ``make_sampler`` gives stock TPE there instead.
    """

    def __init__(
        self,
        *,
        ahead: int = 1,
        max_stale_s: float = 1.0,
        max_bad: int = 256,
        clock: Any = time.monotonic,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if ahead < 1:
            raise ValueError(f"ahead must be at least 1, got {ahead}")
        problem = internals.ask_ahead_problem()
        self.ahead = ahead if problem is None else 1
        if ahead > 1 and problem is not None:
            log.warning("ask-ahead TPE runs in its exact mode: %s", problem)
        self.max_stale_s = max_stale_s
        self.max_bad = max_bad
        self.clock = clock
        self._queue: list[dict[str, Any]] = []
        self._queue_key: tuple | None = None
        self._fits = 0
        self._seen = 0
        self._fitted_at = 0.0
        # One per ask served from a batch (the latest 100,000), for the staleness test.
        self.proposals: deque[Proposal] = deque(maxlen=100_000)
        self._ranked = RankedTrials()
        self._index = TrialIndex()

    def infer_relative_search_space(
        self, study: Any, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        """While a batch is fresh, the space it was fitted on: Optuna works
        the intersection out again on every ask, rescanning every trial since
        the oldest one still running, which costs more than the draw. The
        space is worked out again at the next fit (within the staleness bound)."""
        if self.ahead > 1 and self._queue and self._fresh():
            assert self._queue_key is not None
            return dict(self._queue_key)
        return super().infer_relative_search_space(study, trial)

    def _fresh(self) -> bool:
        return self.clock() - self._fitted_at <= self.max_stale_s

    def _sample_relative(
        self, study: Any, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if self.ahead == 1 or not search_space:
            return super()._sample_relative(study, trial, search_space)
        now = self.clock()
        key = tuple(search_space.items())
        if not (self._queue and key == self._queue_key and self._fresh()):
            self._index.update(study, exclude=trial.number)
            told = len(self._index.numbers)  # COMPLETE and PRUNED, as Optuna counts
            if told < self._n_startup_trials:
                return {}
            self._queue = self._draw(study, trial, search_space, self.ahead)
            self._queue_key, self._fitted_at, self._seen = key, now, told
            self._fits += 1
        assert self._queue_key is not None
        fit_space = tuple(name for name, _ in self._queue_key)
        self.proposals.append(
            Proposal(
                trial.number, self._fits, self._seen, self._fitted_at, now,
                fit_space, tuple(search_space),
            )
        )  # fmt: skip
        return self._queue.pop(0)

    def _draw(
        self, study: Any, trial: FrozenTrial, space: dict[str, BaseDistribution], n: int
    ) -> list[dict[str, Any]]:
        """``n`` proposals from one fit on the history as it is now (the
        trial index just updated by the caller)."""
        idx = self._index
        new = idx.take_new()
        running = idx.running if self._constant_liar else []
        if self._gamma is None:
            self._gamma = internals.default_gamma(len(study.directions))
        n_good = self._gamma(len(idx.numbers))
        good = None
        if self._constraints_func is None:  # the driver never sets constraints
            good = self._ranked.good(study, new, n_good)
        if good is not None:
            bad = thin_bad(idx, {t.number for t in good}, running, self.max_bad)
        else:  # multi-objective, constraints, or too few complete trials
            history = sorted(idx.told() + running, key=lambda t: t.number)
            good, bad = internals.split_trials(study, history, n_good)
            bad = thin_history(bad, self.max_bad)
        l_x = self._build_parzen_estimator(study, space, good, handle_below=True)
        g_x = self._build_parzen_estimator(study, space, bad, handle_below=False)
        k = self._n_ei_candidates
        samples = l_x.sample(self._rng.rng, n * k)
        score = estimator_log_pdf(l_x, samples) - estimator_log_pdf(g_x, samples)
        out = []
        for i in range(n):
            part = {name: v[i * k : (i + 1) * k] for name, v in samples.items()}
            best = optuna.samplers.TPESampler._compare(part, score[i * k : (i + 1) * k])
            out.append({name: d.to_external_repr(best[name]) for name, d in space.items()})
        return out


class RankedTrials:
    """TPE's split of a single-objective history into good and bad trials,
    kept up to date instead of sorted again at every fit.

    Complete trials are kept ranked by value (ties: lower number first, as a
    stable sort of Optuna's gives); a fit adds the trials finished since the
    last one. ``good`` returns the good half of what
    ``optuna.samplers._tpe.sampler._split_trials`` returns for a study without
    constraints (the caller's check) whenever the good set is made of complete
    trials alone (at least ``n_good`` of them), else None; the bad half is every
    other trial of the history (both tested).
    """

    def __init__(self) -> None:
        self._keys: list[tuple[float, int]] = []  # (value, number), best first
        self._trials: dict[int, FrozenTrial] = {}

    def good(self, study: Any, new: Sequence[FrozenTrial], n_good: int) -> list[FrozenTrial] | None:
        """The good trials (in number order) after adding the complete ones of
        ``new`` (trials seen before are skipped), or None."""
        if len(study.directions) != 1:
            return None  # multi-objective TPE ranks by non-domination
        sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
        for t in new:
            if t.state == TrialState.COMPLETE and t.number not in self._trials:
                self._trials[t.number] = t
                bisect.insort(self._keys, (sign * float(t.values[0]), t.number))
        if len(self._trials) < n_good:
            return None
        # A finished trial never leaves a study's history: the ranked ones are in it.
        return sorted((self._trials[n] for _, n in self._keys[:n_good]), key=lambda t: t.number)


class TrialIndex:
    """The trials an ask-ahead fit reads, kept up to date without reading the
    whole history at every fit.

    A study's trials only grow, in creation order, and a finished trial never
    changes. So every fit scans only the trials from the oldest one that was
    unfinished at the previous fit: newly told ones (COMPLETE or PRUNED, the
    states TPE fits on) join ``numbers`` (ascending) and ``take_new()``; the running
    ones (other than the trial being asked) are ``running``. With T trials in
    flight a fit costs O(T + told since the last fit), not O(history).
    """

    def __init__(self) -> None:
        self._reset(None)

    def _reset(self, study: Any) -> None:
        self.numbers: list[int] = []  # told trials, ascending
        self.trials: dict[int, FrozenTrial] = {}
        self._new: list[FrozenTrial] = []  # told since the last take_new()
        self.running: list[FrozenTrial] = []
        self._study = study
        self._scan = 0  # every trial before this position is finished and absorbed
        self._absorbed: set[int] = set()  # finished trials at or after _scan, absorbed

    def update(self, study: Any, exclude: int) -> None:
        key = internals.study_key(study)
        if key != self._study:
            self._reset(key)
        trials = internals.all_trials(study)
        self.running = []
        advancing = True
        for pos in range(self._scan, len(trials)):
            t = trials[pos]
            if t.state.is_finished():
                if t.number not in self._absorbed:
                    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
                        bisect.insort(self.numbers, t.number)
                        self.trials[t.number] = t
                        self._new.append(t)
                    self._absorbed.add(t.number)
                if advancing:
                    self._scan = pos + 1
                    self._absorbed.discard(t.number)
                continue
            advancing = False
            if t.state == TrialState.RUNNING and t.number != exclude:
                self.running.append(t)

    def told(self) -> list[FrozenTrial]:
        return [self.trials[n] for n in self.numbers]

    def take_new(self) -> list[FrozenTrial]:
        """The trials told since the last call (in the order they were found)."""
        new, self._new = self._new, []
        return new


def thin_bad(
    index: TrialIndex,
    good: set[int],
    running: list[FrozenTrial],
    at_most: int,
    recent: int = 25,
) -> list[FrozenTrial]:
    """``thin_history(bad, at_most, recent)`` for ``bad`` = the told trials of
    ``index`` not in ``good`` (a subset of them) and ``running``, in number
    order; without building ``bad``: it walks only the trials it keeps."""
    numbers, trials = index.numbers, index.trials
    if len(numbers) - len(good) + len(running) <= at_most:
        return sorted(
            [trials[n] for n in numbers if n not in good] + running, key=lambda t: t.number
        )
    newest: list[int] = []
    j = len(numbers) - 1
    while len(newest) < recent and j >= 0:
        if numbers[j] not in good:
            newest.append(numbers[j])
        j -= 1
    # The older bad trials are numbers[: j + 1] less the good ones among them.
    good_pos = sorted(p for p in (bisect.bisect_left(numbers, g) for g in good) if p <= j)
    n_older = j + 1 - len(good_pos)
    room = at_most - len(running) - len(newest)
    picked: list[int] = []
    if room > 0 and n_older:
        k = 0  # good positions at or before the current one
        for i in np.unique(np.linspace(0, n_older - 1, num=min(room, n_older)).round()):
            while k < len(good_pos) and good_pos[k] <= int(i) + k:
                k += 1
            picked.append(numbers[int(i) + k])
    return sorted([trials[n] for n in picked + newest] + running, key=lambda t: t.number)


def thin_history(trials: list[FrozenTrial], at_most: int, recent: int = 25) -> list[FrozenTrial]:
    """At most ``at_most`` of ``trials`` (sorted by number): every running one,
    the ``recent`` newest finished ones, and older finished ones evenly spaced
    in trial order; the order is kept."""
    if len(trials) <= at_most:
        return trials
    running = [t for t in trials if t.state == TrialState.RUNNING]
    finished = [t for t in trials if t.state != TrialState.RUNNING]
    newest, older = finished[-recent:], finished[:-recent]
    room = at_most - len(running) - len(newest)
    picked: list[FrozenTrial] = []
    if room > 0 and older:
        idx = np.unique(np.linspace(0, len(older) - 1, num=min(room, len(older))).round())
        picked = [older[int(i)] for i in idx]
    return sorted(picked + newest + running, key=lambda t: t.number)


def estimator_log_pdf(estimator: Any, samples: dict[str, np.ndarray]) -> np.ndarray:
    """``estimator.log_pdf(samples)`` for one of TPE's Parzen estimators,
    computed with fewer passes over the (samples x kernels) matrix.

    The estimator is a weighted mixture over kernels k of products over
    parameters d, so log p(x) = logsumexp_k [log w_k + sum_d log p_kd(x_d)].
    For a continuous parameter, p_kd is a normal N(mu_kd, sigma_kd) truncated
    to [low, high] (in log space for a log parameter):
    log p_kd(x) = -z^2/2 - log sqrt(2 pi) - log sigma_kd - log Z_kd, with
    z = (x - mu_kd) / sigma_kd and Z_kd its mass on [low, high]. Only the
    z^2 term depends on both x and k; whether x lies outside [low, high]
    depends on x alone. Optuna's code builds several full matrices per
    parameter for the same value (the normaliser and the bounds broadcast to
    every sample, a three-way select); this takes about a third of its time
    on a 256-kernel bad model (7.5 against 26 ms at 768 samples). Stepped (int) and categorical parameters are
    computed as Optuna does (the mass of the step around each distinct value,
    the kernel's weight of the choice). Equal to ``log_pdf`` to rounding
    (tests/orchestrator/test_search.py); any structure it does not know
    falls back to ``log_pdf``.
    """
    mix = getattr(estimator, "_mixture_distribution", None)
    if mix is None or not hasattr(estimator, "_transform"):
        return estimator.log_pdf(samples)
    categorical = internals.categorical_type()
    x = estimator._transform(samples)
    weights = np.asarray(mix.weights, dtype=np.float64)
    n = len(x)
    with np.errstate(divide="ignore"):
        acc = np.repeat(np.log(weights)[None, :], n, axis=0)
    outside = np.zeros(n, dtype=bool)
    for i, d in enumerate(mix.distributions):
        xi = x[:, i]
        if isinstance(d, categorical):
            with np.errstate(divide="ignore"):
                acc += np.log(d.weights[:, xi.astype(np.int64)]).T
            continue
        if not hasattr(d, "mu") or d.adapted_low >= d.adapted_high:
            return estimator.log_pdf(samples)
        mu, sigma = np.asarray(d.mu, np.float64), np.asarray(d.sigma, np.float64)
        low, high = d.adapted_low, d.adapted_high
        norm = internals.log_gauss_mass((low - mu) / sigma, (high - mu) / sigma)
        if d.step == 0.0:
            xt = np.log(xi) if d.is_log else xi
            outside |= (xt < low) | (xt > high)
            z = np.subtract.outer(xt, mu)
            z /= sigma
            z *= z
            z *= -0.5
            acc += z
            acc -= (internals.LOG_SQRT_2PI + np.log(sigma) + norm)[None, :]
        else:
            values, inverse = np.unique(xi, return_inverse=True)
            half = d.step / 2
            left = np.log(values - half) if d.is_log else values - half
            right = np.log(values + half) if d.is_log else values + half
            mass = internals.log_gauss_mass(
                (left[:, None] - mu) / sigma, (right[:, None] - mu) / sigma
            )
            acc += mass[inverse.reshape(-1)]
            acc -= norm[None, :]
    top = acc.max(axis=1)
    top[np.isneginf(top)] = 0.0
    acc -= top[:, None]
    np.exp(acc, out=acc)
    with np.errstate(divide="ignore"):
        out = np.log(acc.sum(axis=1)) + top
    out[outside] = -np.inf
    return out


def make_sampler(config: StudyConfig, space: Any) -> optuna.samplers.BaseSampler:
    s = config.sampler
    if s.name == "tpe":
        # constant_liar: trials in flight count as bad guesses, so parallel
        # asks spread out instead of piling onto one point.
        problem = internals.ask_ahead_problem() if s.ask_ahead > 1 else None
        if problem is not None:
            log.warning(
                "sampler.ask_ahead %d needs Optuna's TPE internals as tested; %s: using "
                "Optuna's own TPE (one fit per ask)",
                s.ask_ahead,
                problem,
            )
        if s.ask_ahead == 1 or problem is not None:  # Optuna's TPE, nothing overridden
            return optuna.samplers.TPESampler(
                seed=s.seed, constant_liar=True, n_startup_trials=s.n_startup_trials
            )
        # Ask-ahead needs the joint (multivariate) model, which Optuna's TPE
        # uses by default for one objective; with two or more it would sample
        # each parameter on its own, so ask for the joint model explicitly.
        return AheadTPESampler(
            ahead=s.ask_ahead,
            max_stale_s=s.max_stale_ms / 1000,
            max_bad=s.max_bad_trials,
            seed=s.seed,
            constant_liar=True,
            n_startup_trials=s.n_startup_trials,
            multivariate=True,
        )
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
