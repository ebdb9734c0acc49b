"""The ledger with fake workers: nothing lost, nothing run twice, any order."""

from __future__ import annotations

import random

import pytest

from orchestrator.run.ledger import Ledger, TrialWork
from workers.jobs import VectorJob
from workers.service.protocol import Assignment, VectorOutcome


def trial(number: int, k: int) -> TrialWork:
    assignments = [
        Assignment(f"t{number}v{i}", number, f"ex{i}", VectorJob(f"t{number}v{i}"))
        for i in range(k)
    ]
    return TrialWork(number, assignments)


@pytest.mark.parametrize("seed", range(8))
def test_random_completion_order_and_worker_deaths_lose_nothing(seed: int) -> None:
    rng = random.Random(seed)
    ledger = Ledger(max_attempts=50)
    for n in range(20):
        ledger.add_trial(trial(n, rng.randint(1, 5)))
    workers = list(range(4))
    runs: dict[str, int] = {}
    finished_trials: list[int] = []
    while ledger.trials:
        for w in workers:
            if not ledger.busy(w):
                ledger.take(w, rng.randint(1, 6))
        busy = [w for w in workers if ledger.busy(w)]
        w = rng.choice(busy)
        if rng.random() < 0.2:
            ledger.lost(w, "simulated death")
        else:
            batch = ledger.running[w]
            outs = [VectorOutcome(t.vector_id, t.trial, t.example_id) for t in batch]
            rng.shuffle(outs)
            for t in batch:
                runs[t.vector_id] = runs.get(t.vector_id, 0) + 1
            ledger.finish(w, outs)
        for work in ledger.ready():
            assert sorted(work.outcomes) == sorted(t.vector_id for t in work.assignments)
            ledger.pop(work.number)
            finished_trials.append(work.number)
    assert sorted(finished_trials) == list(range(20))
    assert all(n == 1 for n in runs.values())  # every assignment completed exactly once
    assert not ledger.pending and not ledger.running


def test_an_assignment_that_keeps_killing_workers_becomes_a_failed_outcome() -> None:
    ledger = Ledger(max_attempts=3)
    ledger.add_trial(trial(0, 2))
    for _ in range(3):
        ledger.take("w", 10)
        ledger.lost("w", "segfault")
    [work] = ledger.ready()
    assert all("worker lost 3 times" in (o.error or "") for o in work.outcomes.values())


def test_pruned_trials_drop_unstarted_assignments_and_keep_finished_ones() -> None:
    ledger = Ledger()
    ledger.add_trial(trial(0, 4))
    batch = ledger.take("w", 1)
    ledger.finish("w", [VectorOutcome(batch[0].vector_id, 0, batch[0].example_id)])
    ledger.prune(0)
    assert ledger.take("w", 10) == []  # the three unstarted assignments are dropped
    [work] = ledger.ready()
    assert list(work.outcomes) == [batch[0].vector_id]


def test_mismatched_outcomes_are_refused() -> None:
    ledger = Ledger()
    ledger.add_trial(trial(0, 2))
    ledger.take("w", 2)
    with pytest.raises(RuntimeError, match="returned"):
        ledger.finish("w", [VectorOutcome("other", 0, "x")])


def test_held_outcomes_keep_their_trial_open_until_released() -> None:
    ledger = Ledger()
    ledger.add_trial(trial(0, 2))
    ledger.add_trial(trial(1, 2))
    batch = ledger.take("w", 4)
    outcomes = [VectorOutcome(t.vector_id, t.trial, t.example_id) for t in batch]
    hold = {"t0v1", "t1v0"}
    changed = ledger.finish("w", outcomes, hold=lambda o: o.vector_id in hold)
    assert changed == {0, 1} and set(ledger.held) == hold
    assert ledger.ready() == []  # each trial has one outcome held
    ledger.prune(1)
    assert ledger.ready() == [], "a pruned trial waits for its held outcome too"
    assert ledger.release("t1v0", ["row"]) == 1
    assert [w.number for w in ledger.ready()] == [1]
    assert ledger.trials[1].outcomes["t1v0"].rows == ["row"]
    assert ledger.release("t0v1", [], error="scorer lost") == 0
    assert sorted(w.number for w in ledger.ready()) == [0, 1]
    assert ledger.trials[0].outcomes["t0v1"].error == "scorer lost"


def test_an_outcome_that_comes_back_twice_counts_once_and_the_first_wins() -> None:
    """A worker thought lost answers after all, and the assignment sent again
    answers too: the trial changes once, keeps the first outcome, and a
    duplicate of a held outcome stays out as well."""
    ledger = Ledger()
    ledger.add_trial(trial(0, 2))
    [a] = ledger.take("w1", 1)
    ledger.lost("w1", "no heartbeat")  # requeued
    [again] = ledger.take("w2", 1)
    assert again.vector_id == a.vector_id
    first = VectorOutcome(a.vector_id, 0, a.example_id, error="first")
    second = VectorOutcome(a.vector_id, 0, a.example_id, error="second")
    assert ledger.finish("w2", [first]) == {0}
    assert ledger.finish("w1", [second]) == set()
    assert ledger.trials[0].outcomes[a.vector_id].error == "first"
    [b] = ledger.take("w3", 1)
    hold = lambda o: True  # noqa: E731 - waits for its scores
    ledger.finish("w3", [VectorOutcome(b.vector_id, 0, b.example_id, error="held")], hold)
    assert ledger.finish("w3", [VectorOutcome(b.vector_id, 0, b.example_id)]) == set()
    assert b.vector_id in ledger.held and b.vector_id not in ledger.trials[0].outcomes
