"""A study with ``pruner: {name: transfer_screen}`` on the tiny random Llama,
through the real driver and store: screened vectors are marked and keep
exactly their slice's rows, the others are evaluated in full, objectives
come from the rows stored, and a resume rebuilds the screen's history."""

from __future__ import annotations

import pytest
from sweep_helpers import audit, run_in_process, tiny_config

from orchestrator.report import build_report
from orchestrator.run.preflight import PreflightError, prepare
from orchestrator.run.screening import slice_scores, stored_slice_scores
from orchestrator.store import open_study
from orchestrator.study.objectives import Objective
from workers.evaluation.screen import Screen
from workers.evaluation.transfer import TransferRow
from workers.service.protocol import VectorOutcome

SLICE = 2
OBJECTIVE = {"metric": "target_logprob", "statistic": "delta"}


def _cfg(root: str, **kw):
    kw.setdefault("n_trials", 6)
    return tiny_config(
        root,
        name="screened",
        trials_in_flight=1,  # each trial sees every vector before it: a strict history
        task={"builtin": "refusal", "max_transfer": 5},
        objectives=[OBJECTIVE],
        pruner={"name": "transfer_screen", "slice_size": SLICE, "margin": 0.0,
                "n_startup_vectors": 2},
        **kw,
    )  # fmt: skip


def test_screened_vectors_are_marked_and_keep_their_slice(tiny_llama, tmp_path) -> None:
    cfg = _cfg(str(tmp_path / "store"))
    plan, summary = run_in_process(cfg, tiny_llama)
    assert summary.complete
    audit(cfg.store.root, cfg.name, 6, 2, Objective(**OBJECTIVE), states={"COMPLETE": 6})

    study = open_study(cfg.store.root, cfg.name)
    vectors = study.vectors.to_table(columns=["vector_id", "trial", "screened"]).to_pandas()
    transfer = study.transfer.to_table().to_pandas()
    all_ids = [ex.id for ex in plan.transfer]
    slice_ids = set(all_ids[:SLICE])
    assert vectors["screened"].notna().all()
    screened = set(vectors.loc[vectors["screened"], "vector_id"])
    # margin 0: a vector below the running median stops; some do, some do not
    assert 0 < len(screened) < len(vectors), vectors
    # the first trial starts with no history: nothing of it can be screened
    assert not vectors.loc[vectors["trial"] == vectors["trial"].min(), "screened"].any()
    seen = transfer.groupby("vector_id")["eval_example_id"].agg(set)
    for vid, ids in seen.items():
        assert ids == (slice_ids if vid in screened else set(all_ids)), vid

    # Each screened vector's slice is below the median slice of the vectors of
    # the trials before its own (trials_in_flight 1: exactly those had finished).
    on_slice = transfer[transfer["eval_example_id"].isin(slice_ids)]
    on_slice = on_slice[on_slice["metric"].str.startswith("target_logprob")]
    score = (on_slice["steered"] - on_slice["unsteered"]).groupby(on_slice["vector_id"]).mean()
    trial_of = vectors.set_index("vector_id")["trial"]
    for vid in vectors["vector_id"]:
        before = score[trial_of[score.index] < trial_of[vid]]
        if len(before) < 2:
            assert vid not in screened
            continue
        below = score[vid] < before.median()
        assert (vid in screened) == below, (vid, score[vid], before.median())

    page = build_report(cfg.store.root, cfg.name, tmp_path / "report").html.read_text()
    assert f"{len(screened)} of {len(vectors)} vectors were screened" in page


def _screen_rule_holds(study, plan) -> set[str]:
    """Each vector is screened exactly when its slice score is below the
    median of the vectors of the trials before its own (given two or more);
    returns the screened ids."""
    vectors = study.vectors.to_table(columns=["vector_id", "trial", "screened"]).to_pandas()
    transfer = study.transfer.to_table().to_pandas()
    slice_ids = {ex.id for ex in plan.transfer[:SLICE]}
    on_slice = transfer[transfer["eval_example_id"].isin(slice_ids)]
    on_slice = on_slice[on_slice["metric"].str.startswith("target_logprob")]
    score = (on_slice["steered"] - on_slice["unsteered"]).groupby(on_slice["vector_id"]).mean()
    trial_of = vectors.set_index("vector_id")["trial"]
    screened = set(vectors.loc[vectors["screened"], "vector_id"])
    for vid in vectors["vector_id"]:
        before = score[trial_of[score.index] < trial_of[vid]]
        below = len(before) >= 2 and score[vid] < before.median()
        assert (vid in screened) == below, (vid, trial_of[vid], score[vid], before.median())
    return screened


def test_a_resumed_study_screens_with_the_history_it_stored(tiny_llama, tmp_path) -> None:
    """Three trials, then the study extended to eight by a new run: the new
    run's first trials are screened against the stored vectors' slices (a
    resumed driver with an empty history could screen none of them)."""
    from orchestrator.run.pools import LocalPool
    from orchestrator.run.runner import run_study
    from workers.service.stream import StreamingEngine

    root = str(tmp_path / "store")
    plan, _ = run_in_process(_cfg(root, n_trials=3), tiny_llama)
    cfg = _cfg(root, n_trials=8)
    pool = LocalPool([StreamingEngine(tiny_llama, plan.evaluation, max_rows=4)])
    summary = run_study(cfg, pool=pool, show_progress=False, extend=True)
    assert summary.resumed == 3 and summary.told == 5
    study = open_study(root, cfg.name)
    screened = _screen_rule_holds(study, plan)
    trials = study.vectors.to_table(columns=["vector_id", "trial"]).to_pandas()
    first_new = set(trials.loc[trials["trial"] == 3, "vector_id"])
    assert first_new & screened, "the resumed run's first trial was screened on stored history"


def test_resume_rebuilds_the_slice_history(tiny_llama, tmp_path) -> None:
    cfg = _cfg(str(tmp_path / "store"), n_trials=3)
    plan, _ = run_in_process(cfg, tiny_llama)
    study = open_study(cfg.store.root, cfg.name)
    done = {t.number for t in study.completed_trials()}
    screen = plan.evaluation.screen
    slice_ids = frozenset(ex.id for ex in plan.transfer[:SLICE])
    got = stored_slice_scores(study, done, screen, slice_ids)

    rows = study.transfer.to_table().to_pandas()
    rows = rows[rows["eval_example_id"].isin(slice_ids)]
    want = (rows["steered"] - rows["unsteered"]).groupby(rows["vector_id"]).mean()
    assert sorted(got) == pytest.approx(sorted(want.tolist()))
    assert len(got) == 6
    # a trial number missing from ``done`` (its trials row never written) is left out
    assert len(stored_slice_scores(study, done - {0}, screen, slice_ids)) == 4


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"objectives": [{"metric": "norm"}]}, "not measured per held-out example"),
        ({"pruner": {"name": "transfer_screen", "slice_size": 5}}, "slice_size is 5"),
    ],
)
def test_bad_screens_stop_before_the_study(tmp_path, change, match) -> None:
    settings = {"task": {"builtin": "refusal", "max_transfer": 5}}
    settings |= {"pruner": {"name": "transfer_screen"}} | change
    cfg = tiny_config(str(tmp_path / "store"), **settings)
    with pytest.raises(PreflightError, match=match):
        prepare(cfg)
    assert not (tmp_path / "store").exists()


def test_no_screen_leaves_vectors_unscreened(tiny_llama, tmp_path) -> None:
    cfg = tiny_config(str(tmp_path / "store"), n_trials=2)
    run_in_process(cfg, tiny_llama)
    screened = open_study(cfg.store.root, cfg.name).vectors.to_table(columns=["screened"])
    assert screened.column("screened").to_pylist() == [False] * 4


def test_the_driver_scores_only_the_slice() -> None:
    """Rows on the slice and off it far apart, and other metrics beside: the
    history the threshold comes from is the slice's objective value alone."""
    screen = Screen(2, "target_logprob", "delta")

    def row(vid: str, ex: str, delta: float, metric: str = "target_logprob:promote:0"):
        return TransferRow(vid, ex, metric, -3.0 + delta, -3.0, delta > 0)

    good = VectorOutcome(
        "a",
        0,
        "x",
        rows=[
            row("a", "s0", 1.0),
            row("a", "s1", 2.0),
            row("a", "r0", -50.0),
            row("a", "s0", 9.0, "judge:x"),
        ],
    )
    failed = VectorOutcome("b", 0, "y", rows=[row("b", "s0", 1.0)], error="boom")
    empty = VectorOutcome("c", 0, "z", rows=[row("c", "r0", 4.0)])
    assert slice_scores([good, failed, empty], screen, frozenset({"s0", "s1"})) == [1.5]


def test_the_history_threshold_is_the_screens_median_rule() -> None:
    """The driver keeps its slice scores sorted and reads the median; that is
    the screen's own rule on the same scores, at every step."""
    import random

    from orchestrator.run.screening import ScreenHistory

    rng = random.Random(4)
    for direction in ("maximize", "minimize"):
        screen = Screen(2, "target_logprob", "delta", direction)
        history = ScreenHistory(screen, frozenset({"s0"}), margin=0.3, n_startup=3)
        seen: list[float] = []
        for i in range(40):
            score = round(rng.uniform(-2, 2), 1)  # ties on purpose
            seen.append(score)
            history.add([VectorOutcome(f"v{i}", 0, "x", rows=[
                TransferRow(f"v{i}", "s0", "target_logprob:promote:0", score - 3.0, -3.0, True)
            ])])  # fmt: skip
            want = screen.threshold(seen, 0.3) if len(seen) >= 3 else None
            assert history.threshold() == (pytest.approx(want) if want is not None else None)
