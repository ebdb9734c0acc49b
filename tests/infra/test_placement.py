"""A study that asks Ray for what the cluster does not have is told so:

- on a local cluster the run starts itself (it cannot grow), at once: exit 2,
  one paragraph naming what was asked and what exists, nothing written;
- on an existing cluster (an autoscaler may add nodes), after at most
  ``model.placement_timeout_s``: exit 1, the same paragraph;
- ``check`` says the same before anything runs.

Real Ray clusters (``ray.address: local``, ``ray.cluster_utils.Cluster``),
the real command line in a child process; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_checks import assert_one_paragraph

from orchestrator.run.placement import Demand, shortfall

ROOT = Path(__file__).resolve().parents[2]


def test_first_fit_places_actors_on_single_nodes() -> None:
    gpu = Demand("model", 3, {"CPU": 1.0, "GPU": 1.0})
    nodes = [{"CPU": 4.0, "GPU": 2.0}, {"CPU": 1.0, "GPU": 0.0}]
    assert shortfall([gpu], nodes) == [Demand("model", 1, gpu.each)]
    # Two half-GPU actors share one GPU; CPUs split over two nodes do not make one actor.
    half = Demand("model", 2, {"CPU": 1.0, "GPU": 0.5})
    assert shortfall([half], [{"CPU": 2.0, "GPU": 1.0}]) == []
    big = Demand("model", 1, {"CPU": 3.0, "GPU": 0.0})
    assert shortfall([big], [{"CPU": 2.0}, {"CPU": 2.0}]) == [big]
    # Two pools compete for one node: the larger actor is placed first.
    base = Demand("surprisal_model", 1, {"CPU": 1.0, "GPU": 0.0})
    steer = Demand("model", 1, {"CPU": 1.0, "GPU": 1.0})
    assert shortfall([base, steer], [{"CPU": 1.0, "GPU": 1.0}]) == [base]


def _study(folder: Path, **ray: Any) -> Path:
    data = {
        "name": "placed",
        "n_trials": 2,
        "vectors_per_trial": 1,
        "model": {"name": "tiny-random-llama", "cpus_per_actor": 1, "gpus_per_actor": 1},
        "task": {"builtin": "refusal", "max_transfer": 2},
        "search": {"layer": 1, "norm": 4.0, "lr": 0.1, "max_iters": 2},
        "store": {"root": str(folder / "store")},
        "ray": {"num_cpus": 2, "num_gpus": 0, **ray},
    }
    path = folder / "placed.yaml"
    path.write_text(json.dumps(data))
    return path


def _cli(
    *argv: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "-q", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    return done, time.monotonic() - started


def _last_paragraph(err: str) -> str:
    """The error paragraph at the end of stderr (Ray's own start-up lines come first)."""
    return err[err.rindex("error: ") :]


def test_a_local_cluster_without_the_gpus_asked_for_refuses_at_once(tmp_path: Path) -> None:
    path = _study(tmp_path, address="local")
    done, seconds = _cli("run", str(path))
    assert done.returncode == 2, done.stderr
    assert seconds < 30, seconds
    assert_one_paragraph(
        _last_paragraph(done.stderr), "1 actor(s) of {CPU 1, GPU 1}", "node 0: {CPU 2, GPU 0}",
        "does not grow",
    )  # fmt: skip
    assert not (tmp_path / "store").exists()  # nothing written
    done, _ = _cli("check", str(path))
    assert done.returncode == 2
    assert_one_paragraph(
        _last_paragraph(done.stderr), "1 actor(s) of {CPU 1, GPU 1}", "does not grow"
    )
    done, _ = _cli("check", str(path), "model.gpus_per_actor=0")
    assert done.returncode == 0, done.stderr
    assert "placement: the actors fit" in done.stdout
    # Without ray.address the study may be meant for a cluster: a warning, not a refusal.
    unset = _study(tmp_path, address=None)
    done, _ = _cli("check", str(unset), env={"RAY_ADDRESS": ""})
    assert done.returncode == 0, done.stderr
    assert "placement: warning: on this machine" in done.stdout, done.stdout
    assert "1 actor(s) of {CPU 1, GPU 1}" in done.stdout


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An existing cluster: a head of 2 CPUs and no GPU, under a private Ray temp dir."""
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="sspl", dir="/tmp")  # short: Ray's socket paths
    monkeypatch.setenv("RAY_TMPDIR", tmp)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
    try:
        yield c
    finally:
        c.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.timeout(240)
def test_an_existing_cluster_waits_placement_timeout_s_then_exits_1(
    tmp_path: Path, cluster: Any
) -> None:
    path = _study(tmp_path, address=cluster.address)
    done, seconds = _cli("run", str(path), "model.placement_timeout_s=5")
    assert done.returncode == 1, done.stderr
    assert seconds < 20, seconds
    assert_one_paragraph(
        _last_paragraph(done.stderr), "1 actor(s) of {CPU 1, GPU 1}", "GPU 0",
        "placement_timeout_s 5",
    )  # fmt: skip
    done, _ = _cli("check", str(path))
    assert done.returncode == 0, done.stderr
    assert "placement: warning:" in done.stdout and "placement_timeout_s" in done.stdout
