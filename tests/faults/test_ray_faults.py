"""Real studies (tiny random Llama, a local two-CPU Ray cluster, the Parquet
store on moto S3 or a local folder) under faults, each followed by an audit of
the store: exactly the expected trials and vectors, no duplicate ids, every
vector finite and within its norm bound, every objective recomputable from its
transfer rows. Worker-node removal is covered in tests/infra/."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from store.factories import (
    assert_no_credentials,
    bucket_bytes,
    free_port,
    make_bucket,
    set_fake_aws_env,
    start_moto,
)
from sweep_helpers import (
    StudyThread,
    actor_pid,
    audit,
    run_driver,
    study_dict,
    wait_for_trials,
)

from orchestrator.store import open_study
from orchestrator.study.config import parse_config


def slow_study(root: str, name: str, n_trials: int, **extra: Any) -> dict:
    """One vector per actor call and more steps, so faults land mid-study."""
    data = study_dict(root, name, n_trials, **extra)
    data["model"]["max_batch_jobs"] = 1
    data["search"]["max_iters"] = 8
    return data


def stored_errors(root: str, study: str) -> list[str]:
    """The reasons of the study's FAIL trials, for assertion messages."""
    return [f"{t.number}: {t.error}" for t in open_study(root, study).completed_trials() if t.error]


def ray_log_bytes(ray: Any) -> list[bytes]:
    """Every file in this Ray session's log folder (driver, raylet, actors)."""
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    return [p.read_bytes() for p in logs.rglob("*") if p.is_file()]


def test_two_actors_killed_mid_batch_lose_nothing(ray_cluster, tmp_path, caplog) -> None:
    """SIGKILL one actor after the first stored trial and the other after the
    third, each holding a full inbox (one row, four assignments sent): all it
    held goes back to the queue, Ray restarts both, every trial completes once."""
    root = str(tmp_path / "store")
    data = slow_study(root, "killactor", 10)
    data["model"]["inbox_depth"] = 4
    study = StudyThread(parse_config(data))
    with caplog.at_level(logging.WARNING, logger="orchestrator.run.pools"):
        study.start()
        try:
            pids = [actor_pid(ray_cluster, "killactor", i) for i in (0, 1)]
            for n, pid in zip((1, 3), pids, strict=True):
                wait_for_trials(root, "killactor", n)
                assert study.is_alive(), "the study ended before the actor could be killed"
                os.kill(pid, signal.SIGKILL)
        finally:
            summary = study.result(300)
    assert caplog.text.count("died; requeueing what it held") >= 2, caplog.text
    assert summary.states == {"COMPLETE": 10}, stored_errors(root, "killactor")
    audit(root, "killactor", 10, 2, norm_bounded=True)


def test_a_killed_driver_resumes_twice_without_duplicates(ray_cluster, s3_root, tmp_path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(slow_study(s3_root, "resume", 12)))
    outputs = []
    first = run_driver(path)
    wait_for_trials(s3_root, "resume", 1, first)
    first.send_signal(signal.SIGKILL)
    outputs.append(first.communicate()[0])
    after_first = len(open_study(s3_root, "resume").completed_trials())
    assert 1 <= after_first < 12
    second = run_driver(path)
    wait_for_trials(s3_root, "resume", after_first + 1, second)
    second.send_signal(signal.SIGKILL)
    outputs.append(second.communicate()[0])
    assert len(open_study(s3_root, "resume").completed_trials()) < 12
    third = run_driver(path)
    out, _ = third.communicate(timeout=300)
    assert third.returncode == 0, out
    assert "12/12 trials" in out
    audit(s3_root, "resume", 12, 2, norm_bounded=True)
    assert_no_credentials(outputs + [out])


def test_a_10_s_s3_outage_mid_study_loses_nothing(
    ray_cluster, monkeypatch, tmp_path, caplog
) -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    servers = [start_moto(port)]  # this test's own endpoint, stopped and restarted below
    set_fake_aws_env(monkeypatch, endpoint, tmp_path)
    client, bucket = make_bucket(endpoint)
    root = f"s3://{bucket}/sweeps"
    study = StudyThread(parse_config(slow_study(root, "outage", 10)))
    try:
        with caplog.at_level(logging.DEBUG, logger="orchestrator"):
            study.start()
            try:
                wait_for_trials(root, "outage", 1)
                stored = len(client.list_objects_v2(Bucket=bucket)["Contents"])
                servers[0].stop()
                with pytest.raises(OSError):  # the endpoint is really gone
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                time.sleep(10)
                # No trial can be written while the store is down, so the
                # study cannot have ended.
                assert study.is_alive(), "the study ended during the outage"
                servers.append(start_moto(port))
                # moto keeps its state in-process: the restarted endpoint
                # still has the bucket and every object written before.
                assert len(client.list_objects_v2(Bucket=bucket)["Contents"]) >= stored
            finally:
                summary = study.result(300)
        assert "store errors:" in caplog.text, "the outage never reached a store write"
        assert summary.states == {"COMPLETE": 10}, stored_errors(root, "outage")
        audit(root, "outage", 10, 2, norm_bounded=True)
        # The credentials in the environment reach no object (tables, Parquet
        # metadata, the stored config), no log line, and no Ray log file.
        blobs = bucket_bytes(client, bucket)
        assert len(blobs) >= 3 * 10 + 2
        assert_no_credentials(blobs + [caplog.text] + ray_log_bytes(ray_cluster))
    finally:
        servers[-1].stop()
