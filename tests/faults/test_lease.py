"""One writer per study: the lease, on a local folder and on S3 (moto on
127.0.0.1, with its conditional writes). Real driver and store; fake workers."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cli_checks import assert_one_paragraph
from store.factories import make_bucket, set_fake_aws_env
from sweep_helpers import FakeWorker, StudyThread, audit, tiny_config, wait_for_trials

from orchestrator.cli import main
from orchestrator.run.pools import LocalPool, local_batch_pool
from orchestrator.run.preflight import prepare
from orchestrator.run.runner import run_study
from orchestrator.store import (
    Holder,
    LeaseHeld,
    LeaseLost,
    StudyLease,
    read_holder,
    resolve_root,
)
from orchestrator.store.lease import lease_key
from orchestrator.store.roots import exists, put_bytes


@pytest.fixture(params=["local", "s3"])
def root(request: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    endpoint = request.getfixturevalue("moto_endpoint")
    set_fake_aws_env(monkeypatch, endpoint, tmp_path)
    _, bucket = make_bucket(endpoint)
    return f"s3://{bucket}/sweeps"


def pool(cfg: Any, delay: float = 0.05, n: int = 2) -> LocalPool:
    return local_batch_pool(FakeWorker([e.id for e in prepare(cfg).transfer], delay=delay), n)


def slow(root: str, n_trials: int, **extra: Any) -> Any:
    """A study that one worker runs one vector at a time, slowly."""
    return tiny_config(root, n_trials=n_trials, model__max_batch_jobs=1, **extra)


def plant(root: str, study: str, **fields: Any) -> Holder:
    """A lease held by some other run, written straight into the store."""
    now = time.time()
    holder = Holder(
        **{
            "run_id": "other-run",
            "host": "elsewhere",
            "pid": 4242,
            "started_at": now - 600,
            "heartbeat_at": now,
            **fields,
        }  # fmt: skip
    )
    put_bytes(resolve_root(root), lease_key(study), holder.to_json())
    return holder


def test_a_second_run_refuses_while_the_first_holds_the_lease(
    root: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = slow(root, 16)
    first = StudyThread(cfg, pool=pool(cfg, delay=1.0, n=1))
    first.start()
    wait_for_trials(root, "tiny", 1)
    holder = read_holder(resolve_root(root), "tiny")
    assert holder is not None and holder.host == socket.gethostname()
    with pytest.raises(LeaseHeld) as err:
        run_study(cfg, pool=pool(cfg), show_progress=False)
    for needle in (f"run {holder.run_id}", f"host {holder.host}", "--force-lease"):
        assert needle in str(err.value)
    # Through the command line: refused before Ray starts, one paragraph, exit 2.
    path = tmp_path / "study.yaml"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    assert main(["-q", "run", str(path)]) == 2
    assert_one_paragraph(capsys.readouterr().err, "is being run by", holder.host)
    summary = first.result(timeout=240)
    assert summary.told == 16
    audit(root, "tiny", 16, 2)
    assert read_holder(resolve_root(root), "tiny") is None, "released at the end"


def test_a_stale_lease_is_taken_over(root: str, caplog: pytest.LogCaptureFixture) -> None:
    cfg = tiny_config(root, n_trials=3)
    plant(root, "tiny", heartbeat_at=time.time() - 3600)
    summary = run_study(cfg, pool=pool(cfg), show_progress=False)
    assert summary.told == 3
    assert "took over the lease of run other-run on host elsewhere" in caplog.text
    assert "no heartbeat for 60 min" in caplog.text


def test_a_lease_of_a_dead_process_on_this_host_is_taken_at_once(root: str) -> None:
    """A killed driver, resumed on the same machine, need not wait for its lease."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    plant(root, "tiny", host=socket.gethostname(), pid=int(dead.stdout))
    cfg = tiny_config(root, n_trials=2)
    assert run_study(cfg, pool=pool(cfg), show_progress=False).told == 2


def test_force_lease_takes_a_live_lease(root: str) -> None:
    cfg = tiny_config(root, n_trials=2)
    plant(root, "tiny")  # fresh heartbeat, another host: alive as far as anyone can tell
    with pytest.raises(LeaseHeld, match="run other-run on host elsewhere"):
        run_study(cfg, pool=pool(cfg), show_progress=False)
    assert not exists(resolve_root(root), "trials/study=tiny"), "refused before any write"
    assert run_study(cfg, pool=pool(cfg), show_progress=False, force_lease=True).told == 2


def test_a_run_whose_lease_is_taken_stops_and_the_other_finishes(root: str) -> None:
    cfg = slow(root, 16, store={"root": root, "lease_stale_s": 1.2})
    first = StudyThread(cfg, pool=pool(cfg, delay=1.0, n=1))
    first.start()
    wait_for_trials(root, "tiny", 2)
    summary = run_study(cfg, pool=pool(cfg), show_progress=False, force_lease=True)
    with pytest.raises(LeaseLost, match="taken over by run"):
        first.result(timeout=120)
    assert summary.complete
    audit(root, "tiny", 16, 2)


def test_renew_notices_a_takeover_and_release_leaves_the_other_lease(root: str) -> None:
    r = resolve_root(root)
    mine = StudyLease(r, "s1", stale_s=30)
    assert mine.acquire() is None
    assert mine.renew() and not mine.lost
    theirs = StudyLease(r, "s1", stale_s=30)
    theirs.me = Holder("thief", "elsewhere", 1, time.time(), time.time())
    with pytest.raises(LeaseHeld):
        theirs.acquire()
    assert theirs.acquire(force=True) is not None
    assert not mine.renew() and "run thief on host elsewhere" in str(mine.lost)
    mine.release()
    holder = read_holder(r, "s1")
    assert holder is not None and holder.run_id == "thief"
    theirs.release()
    assert read_holder(r, "s1") is None


class _NoConditionalWrites:
    """An HTTP proxy on 127.0.0.1 in front of moto that answers a PUT with
    If-Match or If-None-Match as an S3 endpoint without conditional writes
    does (501 NotImplemented, as older MinIO and Ceph releases); every other
    request goes through. Counts the refusals."""

    def __init__(self, target: str) -> None:
        import http.client
        import http.server
        import threading
        from urllib.parse import urlparse

        up = urlparse(target)
        outer = self
        self.refused = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                if self.command == "PUT" and (
                    "If-Match" in self.headers or "If-None-Match" in self.headers
                ):
                    outer.refused += 1
                    xml = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>NotImplemented"
                           b"</Code><Message>conditional writes</Message></Error>")  # fmt: skip
                    self.send_response(501)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    self.wfile.write(xml)
                    return
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
                conn.request(self.command, self.path, body, dict(self.headers.items()))
                reply = conn.getresponse()
                data = reply.read()
                self.send_response(reply.status)
                head = self.command == "HEAD"  # its length is the object's, with no body
                for k, v in reply.getheaders():
                    drop = ("transfer-encoding", "connection") + (
                        () if head else ("content-length",)
                    )
                    if k.lower() not in drop:
                        self.send_header(k, v)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_an_endpoint_without_conditional_writes_gets_write_and_read_back(
    moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    proxy = _NoConditionalWrites(moto_endpoint)
    try:
        set_fake_aws_env(monkeypatch, proxy.url, tmp_path)
        _, bucket = make_bucket(proxy.url)
        r = resolve_root(f"s3://{bucket}/sweeps")
        mine = StudyLease(r, "s1", stale_s=30)
        with caplog.at_level("WARNING", logger="orchestrator"):
            assert mine.acquire() is None
        assert proxy.refused == 1  # asked once, then plain writes read back
        assert sum("does not support conditional writes" in m for m in caplog.messages) == 1
        holder = read_holder(r, "s1")
        assert holder is not None and holder.run_id == mine.me.run_id
        assert mine.renew() and not mine.lost
        theirs = StudyLease(r, "s1", stale_s=30)
        theirs.me = Holder("thief", "elsewhere", 1, time.time(), time.time())
        with pytest.raises(LeaseHeld):
            theirs.acquire()  # a live holder is refused without any condition
        assert theirs.acquire(force=True) is not None
        assert not mine.renew() and "run thief on host elsewhere" in str(mine.lost)
        theirs.release()
        assert read_holder(r, "s1") is None
    finally:
        proxy.server.shutdown()
