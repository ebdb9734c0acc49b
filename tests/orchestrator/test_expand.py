"""A trial's parameters to assignments (``orchestrator.run.expand``): every loss
kind, intervention, token selection, threshold and reentrant stage one."""

from __future__ import annotations

import pytest

from orchestrator.run.expand import build_assignment, job_seed
from orchestrator.study.config import SearchSpace
from orchestrator.study.params import TrialParams
from workers.examples import Example, logprob_to_loss
from workers.jobs import Intervention, TokenSelection

EX = Example(
    "ex1",
    (("user", "Tell me a joke."),),
    promote=("I cannot", "Sorry"),
    suppress=("Sure",),
    thresholds=(-1.0, -2.0, -0.5),
)
PLAIN = Example("ex2", "Hello", promote=("World",))

BASE = {
    "layer": 5,
    "norm": 8,
    "loss": "promote",
    "lr": 0.25,
    "max_iters": 7,
    "init_norm": 1.5,
    "coldness": 0.6,
    "tokens": "all",
    "intervention": "add",
    "clamp_coef": 2.0,
}


def build(example: Example = EX, space: SearchSpace | None = None, **params: object):
    p = TrialParams.from_params({**BASE, **params})
    return build_assignment(
        "vid", 3, example, p, space or SearchSpace(), study_seed=11, log_base=10.0
    )


@pytest.mark.parametrize(
    ("loss", "kinds"),
    [
        ("promote", ["promote", "promote"]),
        ("suppress", ["suppress"]),
        ("mixed", ["promote", "promote", "suppress"]),
    ],
)
def test_each_loss_kind_scores_its_targets(loss: str, kinds: list[str]) -> None:
    a = build(loss=loss)
    assert a.reentrant is None and a.vector_id == "vid" and a.trial == 3
    (prompt,) = a.job.prompts
    assert prompt.prompt == EX.prompt
    assert [t.kind for t in prompt.targets] == kinds
    texts = {"promote": ["I cannot", "Sorry"], "suppress": ["Sure"]}
    assert [t.text for t in prompt.targets] == (
        texts["promote"] + texts["suppress"] if loss == "mixed" else texts[loss]
    )


def test_thresholds_become_loss_goals_and_the_stopping_rule() -> None:
    a = build(loss="mixed")
    goals = [t.threshold for t in a.job.prompts[0].targets]
    assert goals == [
        logprob_to_loss(-1.0, "promote"),
        logprob_to_loss(-2.0, "promote"),
        logprob_to_loss(-0.5, "suppress"),
    ]
    assert a.job.stop.targets_reached and a.job.stop.max_iters == 7
    plain = build(PLAIN)
    assert [t.threshold for t in plain.job.prompts[0].targets] == [None]
    assert not plain.job.stop.targets_reached


def test_the_trial_settings_reach_the_job() -> None:
    a = build()
    job = a.job
    assert job.layers == (5,) and job.lr == 0.25 and job.norm_bound == 8.0
    assert job.init_norm == 1.5 and job.loss.coldness == 0.6 and job.loss.log_base == 10.0
    assert job.seed == job_seed(11, 3, "ex1") and job.job_id == "vid"
    assert build(norm=None).job.norm_bound is None
    assert (
        build().job.seed
        != build_assignment(
            "vid", 4, EX, TrialParams.from_params(BASE), SearchSpace(), study_seed=11, log_base=10.0
        ).job.seed
    ), "each trial draws its own random start"


@pytest.mark.parametrize(
    ("intervention", "expected"),
    [
        ("add", Intervention("add", clamp_coef=2.0)),
        ("clamp", Intervention("clamp", clamp_coef=2.0)),
    ],
)
def test_interventions(intervention: str, expected: Intervention) -> None:
    assert build(intervention=intervention).job.intervention == expected


@pytest.mark.parametrize(
    ("spec", "selection"),
    [
        ("all", TokenSelection("all")),
        ("prompt", TokenSelection("prompt")),
        ("last_k:3", TokenSelection("last_k", k=3)),
        ("positions:0,-1", TokenSelection("positions", positions=(0, -1))),
    ],
)
def test_token_selections(spec: str, selection: TokenSelection) -> None:
    assert build(tokens=spec).job.tokens == selection


def test_reentrant_builds_an_affine_stage_one_and_the_vector_as_stage_two() -> None:
    space = SearchSpace(reentrant_layer=1, reentrant_tokens=6)
    a = build(loss="reentrant", intervention="clamp", space=space, tokens="last_k:2")
    r = a.reentrant
    assert r is not None and r.n_tokens == 6 and r.prefix == "greedy"
    s1, s2 = r.stage1, r.stage2
    assert s1.layers == (1,) and s1.intervention == Intervention("affine", rank=1)
    assert s1.job_id == "vid:stage1" and s1.seed == a.job.seed + 1
    assert [t.kind for t in s1.prompts[0].targets] == ["promote", "promote", "suppress"]
    assert s1.stop.targets_reached, "stage one stops at the thresholds, as a mixed loss would"
    assert s2.job_id == "vid" and s2.layers == (5,) and s2.norm_bound == 8.0
    assert s2.intervention == Intervention("clamp", clamp_coef=2.0)
    assert s2.tokens == TokenSelection("last_k", k=2) and s2.stop.max_iters == 7
    assert not s2.stop.targets_reached and s2.prompts == ()


def test_a_loss_the_example_has_no_targets_for_is_an_error() -> None:
    with pytest.raises(ValueError, match="no targets for loss 'suppress'"):
        build(PLAIN, loss="suppress")
