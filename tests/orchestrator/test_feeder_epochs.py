"""The feeder tells a worker's incarnations apart (``epoch`` in each call's
tag): when an actor dies, its other calls that fail afterwards are not a
second death, and a late answer of the dead incarnation does not stand in
for the new one's drain. The pool below only replays call results, in the
order a Ray cluster can deliver them; the feeder and the ledger are real."""

from __future__ import annotations

from typing import Any

from orchestrator.run.feeder import Feeder
from orchestrator.run.ledger import Ledger, TrialWork
from orchestrator.run.pools import Done, WorkerLost
from workers.jobs import VectorJob
from workers.service.protocol import Assignment, Drained, EngineReport, VectorOutcome


class ReplayPool:
    """One worker (key 0); ``submit`` records the call, ``poll`` returns what
    the test queued (Ray's answers, in the order they arrive)."""

    keys = [0]
    size = 1

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.answers: list[Done] = []

    def submit(self, key: int, fn: Any, value: Any, tag: str = "") -> None:
        self.calls.append(tag)

    def poll(self, timeout: float) -> list[Done]:
        out, self.answers = self.answers, []
        return out

    def info(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        return []

    def shutdown(self) -> None:
        pass


def test_a_dead_incarnations_late_answers_are_not_taken_for_the_new_one() -> None:
    ledger = Ledger(max_attempts=5)
    jobs = [Assignment(f"v{i}", 0, f"ex{i}", VectorJob(f"v{i}")) for i in range(2)]
    ledger.add_trial(TrialWork(0, jobs))
    pool = ReplayPool()
    feeder = Feeder(pool, ledger, depth=2)  # type: ignore[arg-type]
    feeder.pump()
    assert pool.calls == ["drain:0", "put:0"]
    # The actor dies: both of its calls in flight fail, one after the other.
    pool.answers = [
        Done(0, "drain:0", WorkerLost("actor died")),
        Done(0, "put:0", WorkerLost("actor died")),
    ]
    events = feeder.poll(0.0)
    assert events.lost == [(0, "actor died")]  # one death, not two
    for key, reason in events.lost:
        ledger.lost(key, reason)
    feeder.pump()  # the restarted actor: a new drain and the work again
    assert pool.calls[2:] == ["drain:1", "put:1"]
    # A drain of the dead incarnation answers late, with an outcome.
    late = Drained([VectorOutcome("v0", 0, "ex0")], EngineReport(max_rows=2))
    pool.answers = [Done(0, "drain:0", late)]
    events = feeder.poll(0.0)
    assert [len(o) for _, o in events.outcomes] == [
        1
    ]  # its outcome still counts (the ledger dedups)
    feeder.pump()
    assert pool.calls.count("drain:1") == 1, "the new incarnation's drain is still in flight"
