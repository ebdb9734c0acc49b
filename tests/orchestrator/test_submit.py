"""``steer-sweep submit``: the command it builds, and a real job on a real Ray
head with its job server (``ray start --head`` on free ports, 127.0.0.1 only).

The head gets its own temp dir and ports, and is stopped by killing its process group:
``ray stop`` would stop every Ray process on the machine, not only this one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sweep_helpers import audit, study_dict

from orchestrator.cli import main

BIN = str(Path(sys.executable).parent)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _study(tmp_path: Path, n_trials: int = 2) -> Path:
    data = study_dict(str(tmp_path / "store"), "submitted", n_trials)
    data["model"] = {"name": "tiny-random-llama", "num_actors": 1, "max_batch_jobs": 2}
    data["evaluation"] = {"metrics": ["target_logprob"]}
    folder = tmp_path / "job"
    folder.mkdir()
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_dry_run_prints_the_ray_job_submit_command(tmp_path, capsys) -> None:
    path = _study(tmp_path)
    argv = ["submit", str(path), "n_trials=3", "--address", "http://10.0.0.1:8265"]
    argv += ["--working-dir", str(path.parent), "--pip", "polars", "--no-wait", "--extend"]
    assert main([*argv, "--submission-id", "s1", "--dry-run"]) == 0
    line = capsys.readouterr().err.strip()
    assert line.startswith("$ ray job submit --address http://10.0.0.1:8265 ")
    assert f"--working-dir {path.parent} --submission-id s1" in line
    assert """--runtime-env-json '{"pip": ["polars"]}' --no-wait""" in line
    assert line.endswith(f"-- steer-sweep run {path} n_trials=3 --extend")
    # The config is checked before anything is submitted.
    assert main(["submit", str(path), "n_trials=0", "--dry-run"]) == 2


@pytest.fixture
def ray_head(tmp_path) -> Iterator[str]:
    """A Ray head with the dashboard (job server) on 127.0.0.1; yields its URL."""
    ports = _free_ports(9)
    temp = tempfile.mkdtemp(prefix="rs-", dir="/tmp")  # short: unix socket paths
    cmd = [
        f"{BIN}/ray", "start", "--head", "--block", "--num-cpus=2", "--num-gpus=0",
        "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
        f"--port={ports[0]}", f"--dashboard-port={ports[1]}",
        f"--node-manager-port={ports[2]}", f"--object-manager-port={ports[3]}",
        f"--dashboard-agent-listen-port={ports[4]}", f"--dashboard-agent-grpc-port={ports[5]}",
        f"--runtime-env-agent-port={ports[6]}", f"--metrics-export-port={ports[7]}",
        f"--ray-client-server-port={ports[8]}", f"--temp-dir={temp}", "--disable-usage-stats",
    ]  # fmt: skip
    # RAY_AUTH_MODE: Ray turns token auth on when ~/.ray/auth_token exists; a
    # throwaway head on 127.0.0.1 does without (the client side is set in the test).
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "ray-head.log", "w")  # noqa: SIM115 - closed below
    head = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{ports[1]}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=2).read()
                break
            except OSError:
                if head.poll() is not None or time.time() > deadline:
                    raise AssertionError((tmp_path / "ray-head.log").read_text()) from None
                time.sleep(1)
        yield url
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_submit_runs_a_study_as_a_ray_job(tmp_path, ray_head, monkeypatch, capsys) -> None:
    path = _study(tmp_path)
    monkeypatch.setenv("PATH", f"{BIN}:{os.environ['PATH']}")  # `ray` for the subprocess
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    argv = ["submit", str(path), "--address", ray_head, "--working-dir", str(path.parent)]
    rc = main([*argv, "--submission-id", "steer-sweep-test"])
    assert rc == 0, capsys.readouterr()
    audit(str(tmp_path / "store"), "submitted", 2, 2)
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ray_head)
    assert client.get_job_status("steer-sweep-test") == JobStatus.SUCCEEDED
    assert "2/2 trials" in client.get_job_logs("steer-sweep-test")


@pytest.mark.parametrize(
    ("address", "needles"),
    [
        (
            "http://127.0.0.1:1",
            ["no Ray cluster answers at http://127.0.0.1:1", "Nothing was submitted"],
        ),
        ("127.0.0.1:8265", ["not a Ray dashboard URL", "http://HEAD:8265"]),
        ("NOT_RAY", ["answers, but not as a Ray dashboard", "HTTP 404"]),
    ],
)
def test_submit_to_no_cluster_is_one_paragraph_and_exit_2(
    tmp_path, capsys, address: str, needles: list[str]
) -> None:
    import http.server
    import threading

    from cli_checks import assert_one_paragraph

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        if address == "NOT_RAY":  # something answers there, but it is not Ray
            address = f"http://127.0.0.1:{server.server_address[1]}"
        path = _study(tmp_path)
        started = time.monotonic()
        assert main(["submit", str(path), "--address", address]) == 2
        assert time.monotonic() - started < 15
    finally:
        server.shutdown()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_paragraph(captured.err, *needles)
