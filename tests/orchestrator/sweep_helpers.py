"""Shared pieces for orchestrator tests: study configs, a fake worker, a store audit."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import numpy as np
from sleep_actor import fake_outcome

from orchestrator.run.runner import RunSummary, run_study
from orchestrator.store import open_study
from orchestrator.study.config import StudyConfig, parse_config
from orchestrator.study.objectives import Objective, trial_value
from workers.evaluation.transfer import TransferRow
from workers.service.protocol import Assignment, VectorOutcome


def tiny_config(root: str, **overrides: Any) -> StudyConfig:
    data: dict[str, Any] = {
        "name": "tiny",
        "n_trials": 6,
        "vectors_per_trial": 2,
        "model": {"name": "tiny-random-llama", "max_batch_jobs": 4, "cpus_per_actor": 1},
        "task": {"builtin": "refusal", "max_transfer": 4},
        "search": {"layer": {"low": 0, "high": 3}, "norm": [2.0, 8.0], "lr": 0.1, "max_iters": 2},
        "store": {"root": root},
        "ray": {"num_cpus": 2},
    }
    for key, value in overrides.items():
        node = data
        parts = key.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return parse_config(data)


class FakeWorker:
    """Returns plausible outcomes without a model: success depends on the layer
    (so a sampler has signal), completion times are random, and the first
    ``lose_first`` batches are lost as if their worker died (fewer than the
    ledger's 3 attempts, so every assignment still completes)."""

    def __init__(
        self, transfer_ids: list[str], lose_first: int = 0, seed: int = 0, delay: float = 0.005
    ) -> None:
        self.transfer_ids = transfer_ids
        self.lose_first = lose_first
        self.rng = random.Random(seed)
        self.delay = delay
        self.calls = 0
        self.lost = 0
        self.lock = threading.Lock()

    def __call__(self, key: int, assignments: list[Assignment]) -> list[VectorOutcome]:
        with self.lock:  # workers are threads: count atomically
            self.calls += 1
            lose = self.calls <= self.lose_first
            self.lost += lose
        time.sleep(self.rng.uniform(0, self.delay))
        if lose:
            raise RuntimeError("simulated worker death")
        return [self.outcome(t) for t in assignments]

    def outcome(self, assignment: Assignment) -> VectorOutcome:
        return fake_outcome(assignment, self.transfer_ids)


def run_in_process(cfg: StudyConfig, lm: Any, rows: int = 4) -> tuple[Any, RunSummary]:
    """Run ``cfg`` through the real driver and store on one in-process
    streaming worker holding the loaded model ``lm``; ``(plan, summary)``."""
    from orchestrator.run.pools import LocalPool
    from orchestrator.run.preflight import prepare
    from workers.service.stream import StreamingEngine

    plan = prepare(cfg)
    engine = StreamingEngine(lm, plan.evaluation, max_rows=rows)
    return plan, run_study(cfg, pool=LocalPool([engine]), show_progress=False)


def audit(
    root: str,
    study: str,
    n_trials: int,
    k: int,
    objective: Objective | None = None,
    *,
    states: dict[str, int] | None = None,
    norm_bounded: bool = False,
) -> dict:
    """Exactly the expected trials and vectors, no duplicate ids, every vector
    finite (and, with ``norm_bounded``, within its trial's norm bound, with
    ``final_norm`` its true norm), and every complete trial's objective
    recomputed from its stored transfer rows. ``states`` (e.g. ``{"COMPLETE":
    3, "FAIL": 1}``) is checked when given."""
    objective = objective or Objective()
    s = open_study(root, study)
    trials = s.completed_trials()
    assert sorted(t.number for t in trials) == list(range(n_trials)), [t.number for t in trials]
    if states is not None:
        assert Counter(t.state for t in trials) == Counter(states), [t.state for t in trials]
    columns = ["vector_id", "trial", "final_norm", "norm_bound", "vector"]
    vectors = s.vectors.to_table(columns=columns).to_pylist()
    ids = [v["vector_id"] for v in vectors]
    assert len(ids) == len(set(ids)), "duplicate vector ids"
    by_trial: dict[int, list[dict]] = {}
    for v in vectors:
        by_trial.setdefault(v["trial"], []).append(v)
        x = np.asarray(v["vector"], dtype=np.float64)
        assert np.isfinite(x).all(), f"vector {v['vector_id']} is not finite"
        if norm_bounded:
            norm = float(np.linalg.norm(x))
            assert v["norm_bound"] is not None and norm <= v["norm_bound"] * (1 + 1e-5), v
            assert abs(norm - v["final_norm"]) <= 1e-4 * max(1.0, norm), v
    assert set(by_trial) <= {t.number for t in trials}, "vectors of a trial that never finished"
    transfer = s.transfer.to_table().to_pylist()
    assert {r["vector_id"] for r in transfer} <= set(ids), "transfer rows of unknown vectors"
    for t in trials:
        if t.state == "COMPLETE":
            assert len(by_trial.get(t.number, [])) == k
            mine = {v["vector_id"] for v in by_trial[t.number]}
            rows = [
                TransferRow(
                    r["vector_id"],
                    r["eval_example_id"],
                    r["metric"],
                    r["steered"],
                    r["unsteered"],
                    r["success"],
                )
                for r in transfer
                if r["vector_id"] in mine
            ]
            norms = {v["vector_id"]: v["final_norm"] for v in by_trial[t.number]}
            assert t.values is not None
            assert t.values[0] == trial_value(rows, objective, norms)
    return {"trials": trials, "vectors": vectors}


# ------------------------------------------------- real studies on Ray (e2e, faults)


def study_dict(root: str, name: str, n_trials: int, **extra: Any) -> dict:
    """A study of the tiny random Llama on two one-CPU actors."""
    data: dict[str, Any] = {
        "name": name,
        "n_trials": n_trials,
        "vectors_per_trial": 2,
        "model": {
            "name": "tiny-random-llama",
            "num_actors": 2,
            "cpus_per_actor": 1,
            "max_batch_jobs": 2,
        },
        "task": {"builtin": "refusal", "max_transfer": 3},
        "search": {"layer": {"low": 0, "high": 3}, "norm": [2.0, 8.0], "lr": 0.1, "max_iters": 3},
        "evaluation": {"metrics": ["target_logprob", "side_effect_kl"]},
        "store": {"root": root},
    }
    data.update(extra)
    return data


class StudyThread(threading.Thread):
    """``run_study`` on a thread of the test process, so a test can break
    things (actors, the store, the cluster) while the study runs."""

    def __init__(self, cfg: StudyConfig, **kwargs: Any) -> None:
        super().__init__(daemon=True)
        self.cfg = cfg
        self.kwargs = kwargs  # more arguments of run_study (a pool, force_lease)
        self.summary: RunSummary | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.summary = run_study(self.cfg, show_progress=False, **self.kwargs)
        except BaseException as exc:  # noqa: BLE001 - raised again by result()
            self.error = exc

    def result(self, timeout: float) -> RunSummary:
        self.join(timeout)
        assert not self.is_alive(), f"the study did not finish in {timeout} s"
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary


def use_local_pool(monkeypatch: Any, make_pool: Any) -> None:
    """Make ``steer-sweep run`` (in this process) use ``make_pool(plan)``
    instead of starting Ray and its actors: the rest of the command, checks,
    store and driver included, runs as it does for a user."""
    import orchestrator.run.runner as runner

    monkeypatch.setattr(runner, "connect_ray", lambda cfg: "none: in-process workers (test)")
    monkeypatch.setattr(runner, "make_ray_pool", make_pool)


def run_driver(config_path: Any, *args: str) -> subprocess.Popen:
    """``steer-sweep -q run CONFIG`` in a child process (stdout and stderr merged),
    joining this process's Ray cluster: with ``address="auto"`` it could join
    another cluster on the same machine."""
    import ray

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if ray.is_initialized():
        env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "-q", "run", str(config_path), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_trials(
    root: str, study: str, n: int, proc: subprocess.Popen | None = None, timeout: float = 240
) -> int:
    """Wait until the store holds ``n`` finished trials (the driver in ``proc``
    must not exit first); returns how many it holds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"driver exited early:\n{out}")
        try:
            done = len(open_study(root, study).completed_trials())
            if done >= n:
                return done
        except Exception:  # noqa: BLE001 - the study may not exist yet
            pass
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} trials after {timeout} s")


def actor_pid(ray: Any, study: str, index: int = 0, timeout: float = 120) -> int:
    """PID of the ``index``-th SteeringWorker of ``study`` (waits for it to
    exist and, after a restart, to have loaded its model again)."""
    prefix = f"SteeringWorker:tiny-random-llama:{study}:{index}:"
    deadline = time.time() + timeout
    while time.time() < deadline:
        names = [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(prefix)
        ]
        if names:
            actor = ray.get_actor(names[0], namespace="steer-sweep")
            try:
                return int(ray.get(actor.info.remote(), timeout=timeout)["pid"])
            except ray.exceptions.ActorUnavailableError:
                pass  # restarting after a kill: ask again
        time.sleep(0.2)
    raise AssertionError(f"no actor {prefix}* after {timeout} s")
