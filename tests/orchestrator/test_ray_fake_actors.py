"""The driver on real Ray actor processes: eight actors run the streaming
protocol (put, drain, epochs) with a fake engine that sleeps (no model, no
torch in the actor), through the real RayPool, feeder, ask-ahead TPE and
group commits. One actor is killed mid-run; Ray restarts it, what it held
goes back to the queue, and every trial is stored exactly once."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sleep_actor import SleepWorker
from sweep_helpers import tiny_config

from orchestrator.run.pools import RayPool
from orchestrator.run.preflight import prepare
from orchestrator.run.runner import run_study
from orchestrator.store import open_study

ROOT = Path(__file__).resolve().parents[2]
N_TRIALS = 60


@pytest.fixture
def ray_with_fakes() -> Any:
    import ray

    path = f"{ROOT / 'tests' / 'orchestrator'}:{ROOT}"
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    yield ray
    ray.shutdown()


@pytest.mark.timeout(300)
def test_eight_real_actors_with_one_killed_store_every_trial_once(
    tmp_path: Path, ray_with_fakes: Any
) -> None:
    ray = ray_with_fakes
    cfg = tiny_config(
        str(tmp_path / "store"),
        n_trials=N_TRIALS,
        vectors_per_trial=2,
        task__max_transfer=4,
        sampler={"name": "tpe", "seed": 0, "ask_ahead": 8, "n_startup_trials": 4},
        store__group_trials=8,
    )
    plan = prepare(cfg)
    pool = RayPool(
        model={"seconds": 0.05, "transfer_ids": [e.id for e in plan.transfer]},
        evaluation=None,
        label="sleep",
        num_actors=8,
        num_cpus=0.25,
        num_gpus=0,
        max_batch_jobs=1,
        torch_threads=None,
        namespace="steer-sweep-test",
        actor_class=SleepWorker,
    )
    infos = pool.info(timeout=120)
    assert len(infos) == 8 and not any(i["torch"] for i in infos)  # no torch in the actors
    assert len({i["pid"] for i in infos}) == 8  # eight processes

    killed: list[int] = []

    def kill_one() -> None:
        store = tmp_path / "store"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = list(store.glob("trials/study=tiny/*.parquet"))
            if len(done) >= 2:  # some groups stored: the study is well under way
                ray.kill(pool.actors[3], no_restart=False)
                killed.append(3)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    try:
        summary = run_study(cfg, pool=pool, show_progress=False)
    finally:
        pool.shutdown()
    killer.join(timeout=5)
    assert killed == [3], "the actor was killed while the study ran"
    assert summary.states == {"COMPLETE": N_TRIALS}
    study = open_study(tmp_path / "store", "tiny")
    trials = study.completed_trials()
    assert sorted(t.number for t in trials) == list(range(N_TRIALS))
    ids = study.vectors.to_table(columns=["vector_id"]).column(0).to_pylist()
    assert len(ids) == len(set(ids)) == 2 * N_TRIALS  # every vector once
    rows = study.transfer.count_rows()
    assert rows == 2 * N_TRIALS * len(plan.transfer)
