"""The TPE sampler the driver uses proposes exactly what Optuna's own does."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from orchestrator.study.optuna_study import AheadTPESampler, _TPESampler

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


def test_ask_ahead_in_exact_mode_proposes_what_optuna_tpe_proposes() -> None:
    kwargs = {"seed": 3, "constant_liar": True, "n_startup_trials": 5}
    stock = _proposals(optuna.samplers.TPESampler(**kwargs), 120, in_flight=6)
    exact = _proposals(AheadTPESampler(ahead=1, **kwargs), 120, in_flight=6)
    assert exact == stock


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _told_log(
    sampler: AheadTPESampler, n: int, in_flight: int, clock: _Clock
) -> tuple[list[int], list[dict]]:
    """Like ``_proposals``, recording how many trials were finished (told)
    when each trial was asked; the clock moves 0.1 s per ask."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    rng = random.Random(2)
    running: list[optuna.trial.Trial] = []
    told, params = [], []
    for i in range(n):
        dists = DISTS if i < n // 2 else {k: v for k, v in DISTS.items() if k != "lr"}
        told.append(sum(t.state.is_finished() for t in study.get_trials(deepcopy=False)))
        trial = study.ask(dists)
        params.append(trial.params)
        assert set(trial.params) == set(dists), "a proposal from another search space"
        for name, d in dists.items():
            assert d._contains(d.to_internal_repr(trial.params[name]))
        running.append(trial)
        clock.t += 0.1
        while len(running) > in_flight:
            done = running.pop(rng.randrange(len(running)))
            study.tell(done, done.params["layer"] / 11 + rng.random() * 0.3)
    return told, params


@pytest.mark.parametrize(("ahead", "stale_s"), [(8, 100.0), (8, 0.35), (3, 100.0)])
def test_ask_ahead_never_proposes_from_a_history_older_than_its_bound(ahead, stale_s) -> None:
    """A proposal's fit saw every trial told ``ahead - 1`` asks before it, and
    was made at most ``max_stale_s`` before the ask it served."""
    clock = _Clock()
    sampler = AheadTPESampler(
        ahead=ahead, max_stale_s=stale_s, clock=clock, seed=0, constant_liar=True,
        n_startup_trials=5,
    )  # fmt: skip
    told, params = _told_log(sampler, 150, in_flight=6, clock=clock)
    served = sampler.proposals
    assert len(served) > 100  # every ask after the startup came from a batch
    for p in served:
        assert p.seen >= told[max(0, p.trial - (ahead - 1))], p
        assert p.asked_at - p.fitted_at <= stale_s + 1e-9, p
        assert p.fit_space == p.asked_space, p  # a new search space is a new fit
    per_fit = Counter(p.fit for p in served)
    assert max(per_fit.values()) <= ahead
    if stale_s < 1:  # 0.1 s per ask: a fit serves at most 4 asks
        assert max(per_fit.values()) == 4
    else:
        assert max(per_fit.values()) == ahead
    # proposals of one fit are distinct draws, not one point repeated
    first = [p.trial for p in served if p.fit == served[0].fit]
    assert len({tuple(sorted(params[t].items())) for t in first}) == len(first) > 1


def test_ask_ahead_serves_multi_objective_tpe(tmp_path) -> None:
    """Two objectives through make_sampler: proposals come from batches of the
    joint model, and the study's trials carry them."""
    from sweep_helpers import tiny_config

    from orchestrator.study.optuna_study import make_sampler

    cfg = tiny_config(
        str(tmp_path),
        objectives=[{"metric": "target_logprob"}, {"metric": "norm", "direction": "minimize"}],
        sampler={"name": "tpe", "ask_ahead": 4, "n_startup_trials": 5},
    )
    sampler = make_sampler(cfg, None)
    assert isinstance(sampler, AheadTPESampler) and sampler.ahead == 4
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=sampler, directions=["maximize", "minimize"])
    rng = random.Random(0)
    for _ in range(40):
        t = study.ask(DISTS)
        study.tell(t, [t.params["layer"] + rng.random(), t.params["norm"]])
    assert len(sampler.proposals) == 35
    assert {p.trial for p in sampler.proposals} == set(range(5, 40))
    assert max(Counter(p.fit for p in sampler.proposals).values()) == 4


def test_ask_ahead_is_for_tpe_only(tmp_path) -> None:
    from sweep_helpers import tiny_config

    with pytest.raises(Exception, match="leave ask_ahead at 1"):
        tiny_config(str(tmp_path), sampler={"name": "random", "ask_ahead": 8})


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_ranked_split_is_optunas_split(direction) -> None:
    """The incremental good/bad split equals Optuna's own on growing
    histories with ties, pruned and running trials (no constraints)."""
    from optuna.samplers._tpe.sampler import _split_trials, default_gamma

    from orchestrator.study.optuna_study import RankedTrials

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.RandomSampler(0))
    rng = random.Random(5)
    ranked, running = RankedTrials(), []
    checked = 0
    for i in range(400):
        running.append(study.ask(DISTS))
        while len(running) > 8:
            t = running.pop(rng.randrange(len(running)))
            roll = rng.random()
            if roll < 0.1:
                t.report(rng.random(), step=0)
                study.tell(t, state=TrialState.PRUNED)
            else:
                study.tell(t, round(rng.random(), 1))  # ties on purpose
        if i % 7:
            continue
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        history = study.get_trials(deepcopy=False, states=states)
        n_told = sum(t.state != TrialState.RUNNING for t in history)
        n_good = default_gamma(n_told)
        good = ranked.good(study, history, n_good)
        if good is None:
            assert sum(t.state == TrialState.COMPLETE for t in history) < n_good
            continue
        want = _split_trials(study, history, n_good)
        assert [t.number for t in good] == [t.number for t in want[0]]
        # the bad half the ask-ahead fit takes: every other trial, in history order
        numbers = {t.number for t in good}
        assert [t.number for t in history if t.number not in numbers] == [t.number for t in want[1]]
        checked += 1
    assert checked > 40


def test_thinned_history_keeps_running_and_newest() -> None:
    from orchestrator.study.optuna_study import thin_history

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
    trials = [study.ask(DISTS) for _ in range(300)]
    for t in trials[:-10]:
        study.tell(t, 0.5)
    history = study.get_trials(deepcopy=False)
    thin = thin_history(history, 64)
    numbers = [t.number for t in thin]
    assert len(thin) == 64 and numbers == sorted(numbers)
    assert set(range(290, 300)) <= set(numbers)  # every running trial
    assert set(range(265, 290)) <= set(numbers)  # the 25 newest finished
    older = [n for n in numbers if n < 265]
    assert len(older) == 29 and older[0] == 0 and max(np.diff(older)) - min(np.diff(older)) <= 1
    assert thin_history(history[:50], 64) == history[:50]


def test_the_trial_index_and_thin_bad_equal_a_full_scan() -> None:
    """The ask-ahead fit's incremental view of the study (``TrialIndex``) and
    its thinned bad set (``thin_bad``) equal reading every trial and thinning
    the whole bad list, on a history told out of order with pruned and failed
    trials, for good sets with and without members among the kept trials."""
    from orchestrator.study.optuna_study import TrialIndex, thin_bad, thin_history

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
    rng = random.Random(11)
    index, running, checked = TrialIndex(), [], 0
    for i in range(900):
        running.append(study.ask(DISTS))
        while len(running) > 24:
            t = running.pop(rng.randrange(len(running)))
            roll = rng.random()
            if roll < 0.1:
                study.tell(t, state=TrialState.PRUNED)
            elif roll < 0.15:
                study.tell(t, state=TrialState.FAIL)
            else:
                study.tell(t, rng.random())
        if i % 13:
            continue
        asked = running[-1].number
        index.update(study, exclude=asked)
        told = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        assert [t.number for t in index.told()] == [t.number for t in told]
        want_running = [t.number for t in running if t.number != asked]
        assert sorted(t.number for t in index.running) == sorted(want_running)
        numbers = index.numbers
        for n_good in (0, 1, 25, 60):
            good = set(rng.sample(numbers, min(n_good, len(numbers))))
            if n_good == 25 and len(numbers) > 40:
                good |= set(numbers[-5:])  # good trials among the newest too
            bad = sorted(
                [t for t in index.told() if t.number not in good] + index.running,
                key=lambda t: t.number,
            )
            for at_most in (32, 100, 256, 5000):
                got = thin_bad(index, good, index.running, at_most)
                want = thin_history(bad, at_most)
                assert [t.number for t in got] == [t.number for t in want], (i, n_good, at_most)
                checked += 1
    assert checked > 1000


@pytest.mark.parametrize("n_trials", [12, 300])
def test_the_estimators_log_density_is_optunas(n_trials) -> None:
    """``estimator_log_pdf`` equals Optuna's ``_ParzenEstimator.log_pdf`` on
    TPE's good and bad models over every kind of parameter (int, log int,
    stepped float, float, log float, categorical), at samples drawn from
    either model and at the bounds."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from orchestrator.study.optuna_study import estimator_log_pdf

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {
        "layer": IntDistribution(0, 11),
        "rank": IntDistribution(1, 64, log=True),
        "coef": FloatDistribution(-1.0, 1.0, step=0.25),
        "mix": FloatDistribution(0.0, 1.0),
        "norm": FloatDistribution(0.5, 64.0, log=True),
        "loss": CategoricalDistribution(["promotion", "suppression", "mixed"]),
    }
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(3))
    for _ in range(n_trials):
        t = study.ask(space)
        study.tell(t, t.params["norm"] * (1 + t.params["layer"]) + t.params["mix"])
    sampler = AheadTPESampler(ahead=4, seed=0, constant_liar=True)
    trials = sorted(study.trials, key=lambda t: t.value)
    rng = np.random.RandomState(0)
    for good, bad in ((trials[:3], trials[3:]), (trials[: n_trials // 10], trials)):
        models = [
            sampler._build_parzen_estimator(study, space, good, handle_below=True),
            sampler._build_parzen_estimator(study, space, bad, handle_below=False),
        ]
        for source in models:
            samples = source.sample(rng, 200)
            for name in ("layer", "mix", "norm"):
                samples[name][:2] = [space[name].low, space[name].high]  # the bounds
            for model in models:
                want = model.log_pdf(samples)
                got = estimator_log_pdf(model, samples)
                assert np.all(np.isfinite(want))
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_the_projects_log_gauss_mass_is_optunas_and_optuna_is_never_patched() -> None:
    """Ask-ahead's densities take log Phi from one array call of its own
    (``optuna_internals.log_gauss_mass``): the values of Optuna's
    ``_log_gauss_mass``, tails included; and Optuna's own function stays
    installed, and is the one TPE's sampling calls, during ask-ahead draws."""
    from optuna.samplers._tpe import _truncnorm

    from orchestrator.study.optuna_internals import log_gauss_mass

    rng = np.random.default_rng(1)
    a = np.concatenate([rng.normal(0, 3, 2000), np.linspace(-40, 38, 200)])
    b = a + np.concatenate([rng.exponential(2.0, 2000), np.full(200, 1.5)])
    want, got = _truncnorm._log_gauss_mass(a, b), log_gauss_mass(a, b)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    original = _truncnorm._log_ndtr
    calls = []

    def counted(x):
        calls.append(len(np.atleast_1d(x)))
        return original(x)

    _truncnorm._log_ndtr = counted
    try:
        ahead = AheadTPESampler(ahead=4, seed=0, constant_liar=True, n_startup_trials=3)
        _proposals(ahead, 16, in_flight=2)
        assert _truncnorm._log_ndtr is counted, "something replaced Optuna's function"
        assert calls, "TPE's sampling calls Optuna's own log Phi"
    finally:
        _truncnorm._log_ndtr = original


def test_make_sampler_gives_stock_tpe_unless_asking_ahead(tmp_path, monkeypatch, caplog) -> None:
    """``ask_ahead: 1`` is Optuna's TPESampler itself, nothing overridden, and
    proposes what it proposes; ask-ahead on an Optuna outside the tested
    range is stock TPE too, with one warning."""
    from sweep_helpers import tiny_config

    from orchestrator.study import optuna_internals
    from orchestrator.study.optuna_study import make_sampler

    cfg = tiny_config(str(tmp_path), sampler={"name": "tpe", "seed": 3, "n_startup_trials": 5})
    sampler = make_sampler(cfg, None)
    assert type(sampler) is optuna.samplers.TPESampler
    stock = optuna.samplers.TPESampler(seed=3, constant_liar=True, n_startup_trials=5)
    assert _proposals(sampler, 60, in_flight=6) == _proposals(stock, 60, in_flight=6)
    ahead = tiny_config(str(tmp_path), sampler={"name": "tpe", "ask_ahead": 8})
    assert isinstance(make_sampler(ahead, None), AheadTPESampler)
    optuna_internals.ask_ahead_problem.cache_clear()
    monkeypatch.setattr(optuna, "__version__", "9.1.0")
    try:
        with caplog.at_level("WARNING", logger="orchestrator"):
            fallback = make_sampler(ahead, None)
        assert type(fallback) is optuna.samplers.TPESampler
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1 and "Optuna 9.1.0 is outside 5.0 to 5.1" in lines[0]
    finally:
        optuna_internals.ask_ahead_problem.cache_clear()


def test_the_study_file_reaches_ask_ahead_and_bounds_its_bad_model(tmp_path, monkeypatch) -> None:
    """``sampler.max_bad_trials`` and ``max_stale_ms`` reach the sampler
    ``make_sampler`` builds; through the real driver past 256 trials, every
    fit's bad model holds at most ``max_bad_trials`` trials (single and two
    objectives), and every trial is stored once."""
    from sweep_helpers import FakeWorker, audit, tiny_config

    from orchestrator.run.pools import local_batch_pool
    from orchestrator.run.preflight import prepare
    from orchestrator.run.runner import run_study
    from orchestrator.study.optuna_study import make_sampler

    bad_sizes: list[int] = []
    real = AheadTPESampler._build_parzen_estimator

    def counted(self, study, space, trials, handle_below):
        if not handle_below:
            bad_sizes.append(len(trials))
        return real(self, study, space, trials, handle_below)

    monkeypatch.setattr(AheadTPESampler, "_build_parzen_estimator", counted)
    sampler = {"name": "tpe", "ask_ahead": 8, "max_bad_trials": 40, "max_stale_ms": 250,
               "n_startup_trials": 10}  # fmt: skip
    for i, objectives in enumerate(
        [None, [{"metric": "target_logprob"}, {"metric": "norm", "direction": "minimize"}]]
    ):
        root = str(tmp_path / f"store{i}")
        extra = {"objectives": objectives} if objectives else {}
        # 8 in flight: the running trials and TPE's 25 newest fit in the bound
        cfg = tiny_config(root, n_trials=300, vectors_per_trial=1, sampler=sampler,
                          trials_in_flight=8,
                          search={"layer": {"low": 0, "high": 3}, "norm": {"low": 1.0, "high": 8.0},
                                  "lr": 0.1, "max_iters": 2}, **extra)  # fmt: skip
        built = make_sampler(cfg, None)
        assert isinstance(built, AheadTPESampler)
        assert (built.ahead, built.max_bad, built.max_stale_s) == (8, 40, 0.25)
        bad_sizes.clear()
        plan = prepare(cfg)
        pool = local_batch_pool(FakeWorker([e.id for e in plan.transfer], delay=0.0), 4)
        summary = run_study(cfg, pool=pool, show_progress=False)
        assert summary.stored == 300 and not summary.lost
        audit(root, "tiny", 300, 1, states={"COMPLETE": 300} if objectives else None)
        assert len(bad_sizes) > 10, "ask-ahead fitted through the driver"
        assert max(bad_sizes) <= 40 < 300 - 25, bad_sizes
