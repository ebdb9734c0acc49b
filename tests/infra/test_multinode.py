"""Multi-node behaviour on one machine, with ``ray.cluster_utils.Cluster``.

Each test starts a real Ray cluster of several raylets on this machine: a head
that declares no GPU (the driver's node, as in infra/kuberay) and worker nodes
that declare GPUs. The GPUs are only declared resources: the actors run
a tiny random model on the CPU (``model.device: cpu``), but Ray places and
restarts them by those resources exactly as on GPU nodes. The study goes through
``run_study`` with ``ray.address`` set to the cluster, as a study submitted to a
KubeRay cluster does. Nothing is mocked.

- ``placement: spread`` puts the actors on different nodes (each node has room
  for two); removing one of those nodes mid-study loses no vector and
  duplicates none (store audit), and the study goes on with the other actors.
- A pool asked for more actors than the cluster can place starts with those it
  has; a node added mid-study gets a waiting actor, which then runs batches.
  (The first node is removed just before, so that the rest of the study can
  only run on the added node and the test does not race the study's end.)

Where actors live comes from the GCS actor table (``Cluster.global_state``),
which needs no dashboard; how many batches each actor ran comes from the log
that ``RayPool.shutdown`` writes.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sweep_helpers import StudyThread, audit

from orchestrator.store import open_study
from orchestrator.study.config import parse_config

pytestmark = pytest.mark.timeout(300)

GPU_NODE = {"num_cpus": 1, "num_gpus": 1}  # one actor's worth (cpus_per_actor, gpus_per_actor)


@pytest.fixture
def make_cluster(monkeypatch) -> Iterator[Callable[..., Any]]:
    """Start ``Cluster``s of a GPU-less head plus ``n`` worker nodes with
    room for ``per_node`` actors each.

    Ray goes under a private temp dir (``RAY_TMPDIR``), so that the
    "current cluster" file Ray writes does not send a ``ray.init()`` of another
    process on this machine to this short-lived cluster.
    """
    import ray
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="ssmn", dir="/tmp")  # short: Ray's socket paths
    monkeypatch.setenv("RAY_TMPDIR", tmp)
    clusters: list[Cluster] = []

    def make(n_workers: int, per_node: int = 1) -> Cluster:
        cluster = Cluster()
        clusters.append(cluster)
        start_head(cluster)
        for _ in range(n_workers):
            cluster.add_node(**{k: v * per_node for k, v in GPU_NODE.items()})
        cluster.wait_for_nodes()
        return cluster

    yield make
    ray.shutdown()
    for cluster in clusters:
        cluster.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def start_head(cluster: Any) -> None:
    """The head node, tried twice: Ray gives a new node 30 s (fixed in
    ray._private.node) to register with its GCS, which a machine shared with
    other heavy jobs can miss. A failed head is a GCS of its own that nothing
    joins, and its processes share the test process's fate. (Worker nodes are
    not retried: a late one could still join this cluster.)"""
    head = {"num_cpus": 1, "num_gpus": 0, "include_dashboard": False}
    try:
        cluster.add_node(**head)
    except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception here
        if "timed out during startup" not in str(exc):
            raise
        logging.getLogger(__name__).warning("the Ray head did not start in time; trying again")
        cluster.add_node(**head)


def study_config(root: str, name: str, address: str, n_trials: int, **model: Any):
    return parse_config(
        {
            "name": name,
            "n_trials": n_trials,
            "vectors_per_trial": 2,
            "model": {
                "name": "tiny-random-llama",
                "device": "cpu",  # the GPUs are declared, not real
                "gpus_per_actor": 1,
                "cpus_per_actor": 1,
                "torch_threads": 1,
                "max_batch_jobs": 1,
                **model,
            },
            "task": {"builtin": "refusal", "max_transfer": 3},
            "search": {
                "layer": {"low": 0, "high": 3},
                "norm": [2.0, 8.0],
                "lr": 0.1,
                "max_iters": 8,
            },
            "evaluation": {"metrics": ["target_logprob"]},
            "store": {"root": root},
            "ray": {"address": address},
        }
    )


def wait_for(what: str, check: Callable[[], Any], study: StudyThread, timeout: float = 150) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if not study.is_alive():
            raise AssertionError(f"the study ended before {what}: {study.error!r}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def actors(cluster: Any, study: str) -> dict[int, dict[str, Any]]:
    """This study's SteeringWorker actors by index: state and node, from the GCS."""
    out = {}
    for a in cluster.global_state.actor_table(None).values():
        m = re.fullmatch(rf"SteeringWorker:[^:]+:{re.escape(study)}:(\d+):\w+", a["Name"])
        if m:
            out[int(m.group(1))] = {
                "state": a["State"],
                "node": a["Address"]["NodeID"],
                "restarts": a["NumRestarts"],
            }
    return out


def trials_done(root: str, study: str) -> int:
    try:
        return len(open_study(root, study).completed_trials())
    except Exception:  # noqa: BLE001 - the study's folders may not exist yet
        return 0


def batches_run(caplog: Any, study: str) -> dict[int, tuple[int, bool]]:
    """Per actor index: (outcomes it returned, ready at the end), from the
    driver's count per actor and RayPool.shutdown's log."""
    ready: dict[int, bool] = {}
    returned: dict[int, int] = {}
    for record in caplog.records:
        message = record.getMessage()
        m = re.fullmatch(rf"SteeringWorker:[^:]+:{re.escape(study)}:(\d+):\w+: (.*)", message)
        if m:
            ready[int(m.group(1))] = "not ready" not in m.group(2)
        m = re.fullmatch(r"actor (\d+): \d+ assignments sent, (\d+) outcomes back", message)
        if m:
            returned[int(m.group(1))] = int(m.group(2))
    return {i: (returned.get(i, 0), r) for i, r in ready.items()}


def test_spread_actors_and_a_node_lost_mid_study(make_cluster, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="orchestrator.run")
    # Room for two actors on each node: one per node is the placement's doing.
    cluster = make_cluster(3, per_node=2)
    workers = {node.node_id: node for node in cluster.worker_nodes}
    root, name, n_trials = str(tmp_path / "store"), "lostnode", 16
    cfg = study_config(root, name, cluster.address, n_trials, num_actors=3, placement="spread")
    study = StudyThread(cfg)
    study.start()

    placed = wait_for(
        "3 actors alive",
        lambda: (
            (a := actors(cluster, name))
            and len(a) == 3
            and all(v["state"] == "ALIVE" for v in a.values())
            and a
        ),
        study,
    )
    nodes = {v["node"] for v in placed.values()}
    assert len(nodes) == 3, placed  # one actor per node ...
    assert nodes == set(workers), placed  # ... and only on the GPU nodes, not the head

    wait_for("a first trial", lambda: trials_done(root, name) >= 1, study)
    lost_node = placed[0]["node"]
    before = trials_done(root, name)
    cluster.remove_node(workers[lost_node])
    assert before < n_trials and study.is_alive(), "the node went away after the study"

    summary = study.result(timeout=200)
    assert summary.told == n_trials - summary.resumed
    assert summary.states == {"COMPLETE": n_trials}
    audit(root, name, n_trials, 2)  # every trial and vector once, objectives recomputed

    # The other two actors went on; Ray restarts the lost one on a node with
    # room, and it rejoins if it loads before the study ends (not asserted:
    # that is a race with the study's end).
    runs = batches_run(caplog, name)
    assert set(runs) == {0, 1, 2}, runs
    assert runs[1][0] > 0 and runs[2][0] > 0, runs
    assert sum(n for n, _ in runs.values()) >= n_trials * 2
    logging.getLogger(__name__).info("batches (ready at the end) per actor: %s", runs)


def test_a_node_added_mid_study_gets_used(make_cluster, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="orchestrator.run")
    cluster = make_cluster(1)  # room for one of the two actors
    [first_node] = cluster.worker_nodes
    root, name, n_trials = str(tmp_path / "store"), "addnode", 12
    cfg = study_config(root, name, cluster.address, n_trials, num_actors=2)
    study = StudyThread(cfg)
    study.start()

    # The study runs on the one actor Ray could place; the other waits.
    wait_for("a first trial", lambda: trials_done(root, name) >= 1, study)
    states = {i: a["state"] for i, a in actors(cluster, name).items()}
    assert sorted(states.values()) == ["ALIVE", "PENDING_CREATION"], states
    # The first node goes, then a new one comes: the trials left can only run
    # on the added node, so the test does not race the study's end.
    cluster.remove_node(first_node)
    assert trials_done(root, name) < n_trials and study.is_alive(), "the study ended first"
    new_node = cluster.add_node(**GPU_NODE)

    summary = study.result(timeout=200)
    assert summary.states == {"COMPLETE": n_trials}
    audit(root, name, n_trials, 2)

    # The trials after the swap ran on the actor that started on the new node.
    runs = batches_run(caplog, name)
    [late] = [i for i, (_, ready) in runs.items() if ready]
    assert runs[late][0] > 0, runs
    assert actors(cluster, name)[late]["node"] == new_node.node_id
    # Usually the actor that waited from the start takes the new node (it was
    # queued first); the first actor, restarting after its node went, may
    # take it instead.
    logging.getLogger(__name__).info("the new node went to actor %d (before: %s)", late, states)
