"""The store failing under a running study: nothing is claimed that is not stored.

Real driver, sampler and store (moto S3 on 127.0.0.1, or a local folder);
fake workers, so that the store is what breaks. After each fault the store is
audited (tests/orchestrator/sweep_helpers.audit).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from cli_checks import assert_one_paragraph
from store.factories import make_bucket, set_fake_aws_env
from sweep_helpers import (
    FakeWorker,
    StudyThread,
    audit,
    tiny_config,
    use_local_pool,
    wait_for_trials,
)

from orchestrator.cli import main
from orchestrator.run.committer import StoreUnavailable
from orchestrator.run.pools import LocalPool, local_batch_pool
from orchestrator.run.preflight import prepare
from orchestrator.run.runner import run_study
from orchestrator.store import StoreWriteError, load_study_config, open_study


def local_pool(cfg: Any, delay: float = 0.05, n: int = 2) -> LocalPool:
    worker = FakeWorker([e.id for e in prepare(cfg).transfer], delay=delay)
    return local_batch_pool(worker, n)


def empty_and_delete(client: Any, bucket: str, within_s: float = 60.0) -> None:
    """Delete every object of ``bucket``, then the bucket. A running study's
    writes race in between the two, so this tries again at once until
    ``within_s`` has passed (on a loaded machine, a few seconds of tries
    were seen to lose every race to a fast driver)."""
    deadline, tries, last = time.monotonic() + within_s, 0, None
    while time.monotonic() < deadline:
        tries += 1
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys]})
        try:
            client.delete_bucket(Bucket=bucket)
            return
        except client.exceptions.ClientError as exc:
            last = exc.response.get("Error", {}).get("Code")
    raise AssertionError(f"could not delete the bucket in {tries} tries (last error: {last})")


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> tuple[Any, str]:
    set_fake_aws_env(monkeypatch, moto_endpoint, tmp_path)
    return make_bucket(moto_endpoint)


def fail_first_trials_puts(monkeypatch: pytest.MonkeyPatch, n: int) -> list[str]:
    """Fault injection below the driver: the first ``n`` puts of a ``trials``
    object fail as a 503 would; returns their keys as they fail."""
    import orchestrator.store.writer as writer_mod

    real_put = writer_mod.put_with_retries
    failed: list[str] = []

    def flaky_put(r: Any, key: str, data: bytes, retry: Any, stats: Any) -> None:
        if key.startswith("trials/") and len(failed) < n:
            failed.append(key)
            raise StoreWriteError(f"put {key}: HTTP status 503 (simulated)")
        real_put(r, key, data, retry, stats)

    monkeypatch.setattr(writer_mod, "put_with_retries", flaky_put)
    return failed


def failing_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The outage's lines a user sees (orchestrator.store.retry.Outage)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith(("store errors:", "store still failing"))
    ]


def test_a_bucket_emptied_and_recreated_mid_study_is_put_back(
    s3: tuple[Any, str], caplog: pytest.LogCaptureFixture
) -> None:
    """No false success: the bucket vanished with its objects and
    came back empty; the run must not count what the store no longer has."""
    client, bucket = s3
    root = f"s3://{bucket}/sweeps"
    # One vector at a time on one slow worker, so the loss lands mid-study.
    cfg = tiny_config(root, n_trials=14, model__max_batch_jobs=1)
    run = StudyThread(cfg, pool=local_pool(cfg, delay=1.0, n=1))
    with caplog.at_level(logging.INFO, logger="orchestrator"):
        run.start()
        wait_for_trials(root, "tiny", 4)
        empty_and_delete(client, bucket)
        time.sleep(3.0)  # writes fail with NoSuchBucket, a permanent error
        client.create_bucket(Bucket=bucket)
        summary = run.result(timeout=240)
    assert summary.rewritten, "trials written before the loss were put back"
    assert not summary.lost and summary.complete
    assert summary.stored == 14 and sum(summary.states.values()) == 14
    audit(root, "tiny", 14, 2)
    study = open_study(root, "tiny")
    assert study.files("examples"), "the examples table was written again"
    assert load_study_config(root, "tiny") is not None, "the config copy was written again"
    lines = failing_lines(caplog)
    assert 1 <= len(lines) <= 6, lines  # one line per backoff (1, 2, 4 s ...), not per attempt


def test_a_bucket_that_stays_gone_stops_the_study(
    s3: tuple[Any, str], tmp_path: Any, capsys: pytest.CaptureFixture, monkeypatch: Any
) -> None:
    client, bucket = s3
    root = f"s3://{bucket}/sweeps"
    # Enough trials that the bucket goes while the run still writes (it stops
    # at the give-up, so more trials do not make the test longer).
    cfg = tiny_config(root, n_trials=400, store={"root": root, "give_up_after_s": 2.0})
    run = StudyThread(cfg, pool=local_pool(cfg, delay=0.3))
    run.start()
    wait_for_trials(root, "tiny", 2)
    empty_and_delete(client, bucket)
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable) as err:
        run.result(timeout=120)
    assert time.monotonic() - t0 < 60
    message = str(err.value)
    for needle in (root, "NO_SUCH_BUCKET", "create the bucket", "rerun the same"):
        assert needle in message, message
    assert "\n" not in message

    # The same through the command line: one paragraph and exit 1.
    client.create_bucket(Bucket=bucket)
    path = tmp_path / "study.yaml"
    data = cfg.model_dump(mode="json")
    data["name"] = "tiny2"
    path.write_text(json.dumps(data))

    def pool_after_emptying(plan: Any) -> LocalPool:
        worker = FakeWorker([e.id for e in plan.transfer], delay=0.1)
        empty_and_delete(client, bucket)  # after the checks, before the first trial
        return local_batch_pool(worker, 2)

    use_local_pool(monkeypatch, pool_after_emptying)
    code = main(["-q", "run", str(path)])
    _, stderr = capsys.readouterr()
    assert code == 1, stderr
    assert_one_paragraph(stderr, "refused writes", "create the bucket", "rerun the same")


def test_a_write_that_fails_keeps_its_trial_pending_and_is_retried(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Fault injection below the driver: the first six ``trials`` objects fail to
    land. Those trials wait (told to nobody), are retried after a backoff, and
    are stored and told exactly once; every tell comes after its row is stored."""

    root = str(tmp_path / "store")
    cfg = tiny_config(root, n_trials=10, vectors_per_trial=1, model__max_batch_jobs=4)
    failed = fail_first_trials_puts(monkeypatch, 6)
    told_before_stored: list[int] = []
    told: list[int] = []
    import orchestrator.run.driver as driver_mod

    real_flush = driver_mod.Driver._flush

    def checking_flush(self: Any, study: Any, summary: Any, timing: Any, block: bool) -> None:
        before = summary.told
        real_flush(self, study, summary, timing, block)
        if summary.told > before:
            stored = {t.number for t in open_study(root, "tiny").completed_trials()}
            for t in study.get_trials(deepcopy=False):
                n = t.user_attrs.get("store_trial")
                if t.state.is_finished() and n not in told:
                    told.append(n)
                    if n not in stored:
                        told_before_stored.append(n)

    monkeypatch.setattr(driver_mod.Driver, "_flush", checking_flush)
    with caplog.at_level(logging.INFO, logger="orchestrator"):
        summary = run_study(cfg, pool=local_pool(cfg, n=1), show_progress=False)
    assert len(failed) == 6
    assert summary.told == 10 and summary.stored == 10 and not summary.lost
    assert sorted(told) == list(range(10)) and not told_before_stored
    audit(root, "tiny", 10, 1)
    lines = failing_lines(caplog)
    assert 1 <= len(lines) < len(failed), lines  # trials failing together share one backoff


def test_a_group_write_that_fails_is_retried_whole(tmp_path: Any, monkeypatch: pytest.MonkeyPatch):
    """Group commits: the first two groups' ``trials`` objects fail to land
    (their other tables did). Each group is retried whole under the same keys
    after the backoff; every trial is stored and told once, no row twice."""

    root = str(tmp_path / "store")
    cfg = tiny_config(
        root, n_trials=10, vectors_per_trial=1, model__max_batch_jobs=4,
        store={"root": root, "group_trials": 3, "group_ms": 50.0},
    )  # fmt: skip
    failed = fail_first_trials_puts(monkeypatch, 2)
    summary = run_study(cfg, pool=local_pool(cfg, n=1), show_progress=False)
    assert len(failed) == 2 and all("/compact-" in k for k in failed)
    assert summary.told == 10 and summary.stored == 10 and not summary.lost
    audit(root, "tiny", 10, 1)
    st = open_study(root, "tiny")
    for table, key in (("vectors", ["vector_id"]), ("transfer", ["vector_id", "eval_example_id"])):
        df = st.dataset(table).to_table().to_pandas()
        assert not df.duplicated(key).any(), table
    # the retried groups were written under the keys that failed
    assert {k.split("/")[-1] for k in failed} <= {k.split("/")[-1] for k in st.files("trials")}


def test_reading_back_a_vanished_bucket_is_store_unavailable(s3: tuple[Any, str]) -> None:
    """The end-of-run read-back (``Committer.verify``) against a bucket that is
    gone: botocore's NoSuchBucket from the listing is retried, then becomes
    the one-paragraph StoreUnavailable, not a traceback."""
    from store.factories import make_context

    from orchestrator.run.committer import Committer
    from orchestrator.store import StoreWriter

    client, bucket = s3
    writer = StoreWriter(f"s3://{bucket}/sweeps", make_context())
    committer = Committer(writer, give_up_after_s=0.5, base_delay_s=0.1)
    try:
        empty_and_delete(client, bucket)
        with pytest.raises(StoreUnavailable, match="could not be read back") as err:
            committer.verify({0, 1})
        assert "create the bucket" in str(err.value) and "\n" not in str(err.value)
    finally:
        committer.close()


class FlakyEndpoint:
    """A TCP proxy on 127.0.0.1 in front of the moto S3 server: while it is
    down, every connection to it is refused and every open one is cut, as
    when an endpoint restarts; up again, it forwards as before."""

    def __init__(self, target: str) -> None:
        import socket
        import threading
        from urllib.parse import urlparse

        url = urlparse(target)
        self.target = (url.hostname or "127.0.0.1", int(url.port or 80))
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conns: list[Any] = []
        self.lock = threading.Lock()
        self.listener: Any = None
        self.up()

    def up(self) -> None:
        import socket
        import threading

        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(64)
        self.listener = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def down(self) -> None:
        self.listener.close()
        with self.lock:
            for c in self.conns:
                c.close()
            self.conns.clear()

    def _accept(self, srv: Any) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return  # closed: down
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: Any, b: Any) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass


def test_a_20_s_outage_is_three_lines_at_most_and_loses_nothing(
    moto_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = FlakyEndpoint(moto_endpoint)
    set_fake_aws_env(monkeypatch, proxy.url, tmp_path)
    _, bucket = make_bucket(proxy.url)
    root = f"s3://{bucket}/sweeps"
    cfg = tiny_config(root, n_trials=16, model__max_batch_jobs=1, store__give_up_after_s=120)
    run = StudyThread(cfg, pool=local_pool(cfg, delay=0.5, n=1))
    with caplog.at_level(logging.DEBUG, logger="orchestrator"):
        run.start()
        wait_for_trials(root, "tiny", 3)
        proxy.down()
        time.sleep(20.0)
        proxy.up()
        summary = run.result(timeout=240)
    assert not summary.lost and summary.complete and summary.stored == 16
    audit(root, "tiny", 16, 2)
    shown = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("orchestrator")
    ]
    assert 2 <= len(shown) <= 3, shown
    assert shown[0].startswith("store errors:") and shown[-1].startswith("store working again")
    attempts = [
        r for r in caplog.records if r.levelno == logging.DEBUG and "failed (" in r.getMessage()
    ]
    assert len(attempts) > len(shown), "every attempt is kept at DEBUG"
