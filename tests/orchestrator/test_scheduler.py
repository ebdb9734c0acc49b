"""The scheduler with fake workers: nothing lost, nothing run twice, any order."""

from __future__ import annotations

import random

import pytest

from orchestrator.scheduler import Scheduler, TrialWork
from workers.jobs import VectorJob
from workers.tasks import VectorOutcome, VectorTask


def trial(number: int, k: int) -> TrialWork:
    tasks = [
        VectorTask(f"t{number}v{i}", number, f"ex{i}", VectorJob(f"t{number}v{i}"))
        for i in range(k)
    ]
    return TrialWork(number, tasks)


@pytest.mark.parametrize("seed", range(8))
def test_random_completion_order_and_worker_deaths_lose_nothing(seed: int) -> None:
    rng = random.Random(seed)
    sched = Scheduler(max_attempts=50)
    for n in range(20):
        sched.add_trial(trial(n, rng.randint(1, 5)))
    workers = list(range(4))
    runs: dict[str, int] = {}
    finished_trials: list[int] = []
    while sched.trials:
        for w in workers:
            if not sched.busy(w):
                sched.take(w, rng.randint(1, 6))
        busy = [w for w in workers if sched.busy(w)]
        w = rng.choice(busy)
        if rng.random() < 0.2:
            sched.lost(w, "simulated death")
        else:
            batch = sched.running[w]
            outs = [VectorOutcome(t.vector_id, t.trial, t.example_id) for t in batch]
            rng.shuffle(outs)
            for t in batch:
                runs[t.vector_id] = runs.get(t.vector_id, 0) + 1
            sched.finish(w, outs)
        for work in sched.ready():
            assert sorted(work.outcomes) == sorted(t.vector_id for t in work.tasks)
            sched.pop(work.number)
            finished_trials.append(work.number)
    assert sorted(finished_trials) == list(range(20))
    assert all(n == 1 for n in runs.values())  # every task completed exactly once
    assert not sched.pending and not sched.running


def test_a_task_that_keeps_killing_workers_becomes_a_failed_outcome() -> None:
    sched = Scheduler(max_attempts=3)
    sched.add_trial(trial(0, 2))
    for _ in range(3):
        sched.take("w", 10)
        sched.lost("w", "segfault")
    [work] = sched.ready()
    assert all("worker lost 3 times" in (o.error or "") for o in work.outcomes.values())


def test_pruned_trials_drop_unstarted_tasks_and_keep_finished_ones() -> None:
    sched = Scheduler()
    sched.add_trial(trial(0, 4))
    batch = sched.take("w", 1)
    sched.finish("w", [VectorOutcome(batch[0].vector_id, 0, batch[0].example_id)])
    sched.prune(0)
    assert sched.take("w", 10) == []  # the three unstarted tasks are dropped
    [work] = sched.ready()
    assert list(work.outcomes) == [batch[0].vector_id]


def test_mismatched_outcomes_are_refused() -> None:
    sched = Scheduler()
    sched.add_trial(trial(0, 2))
    sched.take("w", 2)
    with pytest.raises(RuntimeError, match="returned"):
        sched.finish("w", [VectorOutcome("other", 0, "x")])


def test_held_outcomes_keep_their_trial_open_until_released() -> None:
    sched = Scheduler()
    sched.add_trial(trial(0, 2))
    sched.add_trial(trial(1, 2))
    batch = sched.take("w", 4)
    outcomes = [VectorOutcome(t.vector_id, t.trial, t.example_id) for t in batch]
    hold = {"t0v1", "t1v0"}
    changed = sched.finish("w", outcomes, hold=lambda o: o.vector_id in hold)
    assert changed == {0, 1} and set(sched.held) == hold
    assert sched.ready() == []  # each trial has one outcome held
    sched.prune(1)
    assert sched.ready() == [], "a pruned trial waits for its held outcome too"
    assert sched.release("t1v0", ["row"]) == 1
    assert [w.number for w in sched.ready()] == [1]
    assert sched.trials[1].outcomes["t1v0"].rows == ["row"]
    assert sched.release("t0v1", [], error="scorer lost") == 0
    assert sorted(w.number for w in sched.ready()) == [0, 1]
    assert sched.trials[0].outcomes["t0v1"].error == "scorer lost"
