"""The result store on a real S3 endpoint: a moto server on 127.0.0.1,
reached over HTTP by pyarrow (data) and boto3 (listing, checks)."""

from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from orchestrator.store import (
    RetryPolicy,
    StoreConfigError,
    StoreWriteError,
    StoreWriter,
    check_store,
    cleanup,
    compact,
    open_study,
    save_study_config,
)

from .conftest import S3Env
from .factories import (
    FAKE_KEY_ID,
    FAKE_SECRET,
    FAKE_TOKEN,
    assert_no_credentials,
    check_round_trip,
    free_port,
    make_bucket,
    make_context,
    make_trial,
    set_fake_aws_env,
    standard_trials,
    start_moto,
    write_study,
)

FAST = RetryPolicy(max_attempts=2, base_delay_s=0.05, max_delay_s=0.2)


def _keys(s3: S3Env) -> list[str]:
    resp = s3.client.list_objects_v2(Bucket=s3.bucket)
    return sorted(o["Key"] for o in resp.get("Contents", []))


def test_round_trip_on_s3_through_pyarrow_and_boto3(s3: S3Env) -> None:
    ctx = make_context()
    trials = standard_trials(ctx)
    check = check_store(s3.root)
    assert check.endpoint_url == s3.endpoint
    write_study(StoreWriter(s3.root, ctx), trials)

    # pyarrow side: the public read API.
    study = open_study(s3.root, ctx.study)
    check_round_trip(study, ctx, trials)

    # boto3 side: the objects are where the layout says, plain Parquet.
    keys = _keys(s3)
    assert "results/v1/trials/study=study-a/trial-00000003.parquet" in keys
    assert "results/v1/examples/study=study-a/examples-all.parquet" in keys
    assert not [k for k in keys if "_check" in k]  # the start-up probe cleaned up
    for key in keys:
        body = s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
        table = pq.read_table(io.BytesIO(body))
        assert table.schema.metadata[b"steer_sweep.study"] == b"study-a"
    body = s3.client.get_object(
        Bucket=s3.bucket, Key="results/v1/vectors/study=study-a/trial-00000000.parquet"
    )["Body"].read()
    vt = pq.read_table(io.BytesIO(body))
    assert vt.num_rows == 3
    vec = np.asarray(vt["vector"][0].as_py(), np.float32)
    assert np.array_equal(vec, trials[0].vectors[0].result.vector)


def test_retried_trial_write_on_s3_leaves_one_copy(s3: S3Env) -> None:
    ctx = make_context()
    w = StoreWriter(s3.root, ctx)
    w.write_trial(*make_trial(ctx, 1, seed=1).args())
    again = make_trial(ctx, 1, seed=2)
    w.write_trial(*again.args())
    st = open_study(s3.root, ctx.study)
    assert [t.number for t in st.completed_trials()] == [1]
    assert st.completed_trials()[0].values == again.trial.values
    assert st.vectors.count_rows() == 3 and st.transfer.count_rows() == len(again.transfer)


def test_endpoint_stopped_mid_write_is_retried_and_data_complete(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A private moto server is stopped after the first object of a trial
    lands, and restarted on the same port 5 s later. The write rides it
    out with retries, and every row arrives."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = start_moto(port)
    set_fake_aws_env(monkeypatch, endpoint, tmp_path)
    client, bucket = make_bucket(endpoint)
    root = f"s3://{bucket}/r"
    ctx = make_context(d_model=2304)
    data = make_trial(ctx, 3, k=40, n_eval=20)
    restarted = threading.Event()
    servers = [server]

    def restart_later() -> None:
        # Longer than pyarrow's own SDK retries can last (3 attempts with
        # jittered backoff: 0.5-2.6 s against a closed port, measured), so the
        # store's retry loop has to do the work; at 2.5 s the SDK sometimes
        # rode the outage out alone and the test saw no retry.
        time.sleep(5.0)
        servers.append(start_moto(port))
        restarted.set()

    def on_written(key: str, n_bytes: int) -> None:
        if key.startswith("transfer/") and not restarted.is_set() and len(servers) == 1:
            servers[0].stop()  # the endpoint goes away in the middle of write_trial
            threading.Thread(target=restart_later, daemon=True).start()

    policy = RetryPolicy(max_attempts=10, base_delay_s=0.2, max_delay_s=1.0)
    w = StoreWriter(root, ctx, retry=policy, on_object_written=on_written)
    try:
        with caplog.at_level(logging.WARNING, logger="orchestrator.store"):
            report = w.write_trial(*data.args())
        assert restarted.is_set()
        assert report.retries >= 1, "the outage should have forced at least one retry"
        assert "store errors:" in caplog.text
        st = open_study(root, ctx.study)
        assert [t.number for t in st.completed_trials()] == [3]
        vt = st.vectors.to_table(columns=["vector_id", "vector"])
        assert vt.num_rows == 40
        got = {r["vector_id"]: r["vector"] for r in vt.to_pylist()}
        for v in data.vectors:
            assert np.array_equal(np.asarray(got[w.vector_id(3, v.example_id)]), v.result.vector)
        assert st.transfer.count_rows() == len(data.transfer) == 40 * 20 * 2
    finally:
        servers[-1].stop()


def test_write_gives_up_with_clear_error_when_endpoint_stays_down(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    set_fake_aws_env(monkeypatch, endpoint, tmp_path)
    ctx = make_context()
    w = StoreWriter("s3://no-server/r", ctx, retry=FAST)
    with pytest.raises(StoreWriteError, match="still failing after 2 attempts"):
        w.write_trial(*make_trial(ctx, 0).args())


def test_missing_bucket_fails_fast_and_readably(s3: S3Env) -> None:
    t0 = time.monotonic()
    with pytest.raises(StoreConfigError, match="bucket 'no-such-bucket-x' does not exist"):
        check_store("s3://no-such-bucket-x/prefix")
    assert time.monotonic() - t0 < 10


def test_unreachable_endpoint_fails_fast_and_readably(s3: S3Env) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(StoreConfigError, match=f"cannot reach the S3 endpoint {dead}"):
        check_store(s3.root, endpoint_url=dead)
    assert time.monotonic() - t0 < 10


def test_bad_credentials_fail_fast_and_readably(
    s3: S3Env, moto_auth: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    iam = boto3.client("iam", endpoint_url=s3.endpoint, region_name="us-east-1")
    iam.create_user(UserName="reader-without-policy")
    key = iam.create_access_key(UserName="reader-without-policy")["AccessKey"]
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    moto_auth(True)  # from here on moto checks every signature and policy

    cases = [
        (FAKE_KEY_ID, FAKE_SECRET, "access key was not recognised"),
        (key["AccessKeyId"], "wrong-secret-" + "x" * 27, "secret key does not match"),
        (key["AccessKeyId"], key["SecretAccessKey"], "access denied to s3://"),
    ]
    for key_id, secret, message in cases:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        t0 = time.monotonic()
        with pytest.raises(StoreConfigError, match=message) as err:
            check_store(s3.root)
        assert time.monotonic() - t0 < 10
        assert secret not in str(err.value)

    moto_auth(False)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StoreConfigError, match="no AWS credentials found"):
        check_store(s3.root)


def test_cleanup_aborts_stale_multipart_uploads(s3: S3Env) -> None:
    key = "results/v1/vectors/study=s/trial-00000001.parquet"
    upload = s3.client.create_multipart_upload(Bucket=s3.bucket, Key=key)
    s3.client.upload_part(
        Bucket=s3.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1024
    )
    other = s3.client.create_multipart_upload(Bucket=s3.bucket, Key="elsewhere/x")
    # moto reports every upload as initiated in 2010, so only the prefix rule
    # (not the age rule) can be checked against it.
    assert cleanup(s3.root, older_than_s=0).aborted_uploads == 1
    left = s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])
    assert [u["UploadId"] for u in left] == [other["UploadId"]]  # outside the prefix: kept


def test_credentials_never_written_or_logged(
    s3: S3Env, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = make_context()
    config = {
        "study": ctx.study,
        "store": {"root": s3.root, "aws_secret_access_key": FAKE_SECRET},
        "notes": f"copied from a shell: AWS_SESSION_TOKEN={FAKE_TOKEN}",
        "mirror": f"https://user:{FAKE_SECRET}@example.invalid/path",
    }
    # The store's own loggers at DEBUG. (botocore's DEBUG log prints request
    # headers, session token included: keep "botocore" at INFO or above.)
    with caplog.at_level(logging.DEBUG, logger="orchestrator"):
        check_store(s3.root)
        save_study_config(s3.root, ctx.study, config)
        write_study(StoreWriter(s3.root, ctx), standard_trials(ctx))
        compact(s3.root, ctx.study)
        open_study(s3.root, ctx.study).joined_frame()
    blobs = [s3.client.get_object(Bucket=s3.bucket, Key=k)["Body"].read() for k in _keys(s3)]
    assert len(blobs) > 5
    assert_no_credentials([*blobs, caplog.text])  # every value, decoded, and the log
