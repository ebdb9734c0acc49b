"""End to end on a real local Ray cluster, a tiny model and the moto S3 endpoint:
a full study, a driver killed and resumed (twice), and an actor killed mid-sweep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml
from store.factories import make_bucket, set_fake_aws_env
from sweep_helpers import audit

from orchestrator.config import parse_config
from orchestrator.runner import run_study
from orchestrator.store import open_study


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, namespace="steer-sweep", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def s3_root(moto_endpoint, monkeypatch, tmp_path):
    set_fake_aws_env(monkeypatch, moto_endpoint, tmp_path)
    _, bucket = make_bucket(moto_endpoint)
    return f"s3://{bucket}/sweeps"


def study_dict(root: str, name: str, n_trials: int, **extra) -> dict:
    data = {
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


def test_a_study_on_ray_writes_every_trial_to_s3(ray_cluster, s3_root) -> None:
    cfg = parse_config(study_dict(s3_root, "e2e", 5))
    summary = run_study(cfg, show_progress=False)
    assert summary.told == 5 and summary.states == {"COMPLETE": 5}
    audit(s3_root, "e2e", 5, 2)
    study = open_study(s3_root, "e2e")
    metrics = set(study.transfer.to_table(columns=["metric"]).column("metric").to_pylist())
    assert {"side_effect_kl", "target_logprob:promote:0"} <= metrics
    assert study.examples.count_rows() >= 2 + 3


def _run_driver(config_path, env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "-q", "run", str(config_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_trials(root: str, study: str, n: int, proc, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"driver exited early:\n{proc.stdout.read()}")
        try:
            if len(open_study(root, study).completed_trials()) >= n:
                return
        except Exception:  # noqa: BLE001 - the study may not exist yet
            pass
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} trials after {timeout} s")


def test_a_killed_driver_resumes_twice_without_duplicates(ray_cluster, s3_root, tmp_path) -> None:
    # One vector per actor call and more steps, so the kills land mid-study.
    data = study_dict(s3_root, "resume", 12)
    data["model"]["max_batch_jobs"] = 1
    data["search"]["max_iters"] = 8
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = _run_driver(path, env)
    _wait_for_trials(s3_root, "resume", 1, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    after_first = len(open_study(s3_root, "resume").completed_trials())
    assert 1 <= after_first < 12
    second = _run_driver(path, env)
    _wait_for_trials(s3_root, "resume", after_first + 1, second)
    second.send_signal(signal.SIGKILL)
    second.wait()
    assert len(open_study(s3_root, "resume").completed_trials()) < 12
    third = _run_driver(path, env)
    out, _ = third.communicate(timeout=300)
    assert third.returncode == 0, out
    assert "12/12 trials" in out
    audit(s3_root, "resume", 12, 2)


def test_killing_an_actor_mid_sweep_loses_nothing(ray_cluster, tmp_path) -> None:
    root = str(tmp_path / "store")
    cfg = parse_config(
        study_dict(
            root,
            "killactor",
            8,
            model={
                "name": "tiny-random-llama",
                "num_actors": 2,
                "cpus_per_actor": 1,
                "max_batch_jobs": 1,
            },
        )
    )
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(s=run_study(cfg, show_progress=False)))
    thread.start()
    try:
        deadline = time.time() + 120
        names = []
        while time.time() < deadline and not names:
            names = [
                a["name"]
                for a in ray_cluster.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("SteeringWorker:tiny-random-llama:killactor:0")
            ]
            time.sleep(0.2)
        assert names, "the actor never appeared"
        actor = ray_cluster.get_actor(names[0], namespace="steer-sweep")
        pid = ray_cluster.get(actor.info.remote(), timeout=120)["pid"]
        _wait_for_trials(root, "killactor", 1, _Alive())
        assert thread.is_alive(), "the study ended before the actor could be killed"
        os.kill(pid, signal.SIGKILL)
    finally:
        thread.join(timeout=300)
    assert result["s"].told == 8
    audit(root, "killactor", 8, 2)


class _Alive:
    """Stands in for a Popen whose process never exits (the driver runs in a thread)."""

    def poll(self):
        return None
