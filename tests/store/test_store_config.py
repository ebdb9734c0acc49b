"""The stored study config (redaction, hash, mismatch) and the retry rules."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import pytest

from orchestrator.store import (
    RetryPolicy,
    StoreWriteError,
    StoreWriter,
    StudyConfigMismatch,
    config_hash,
    load_study_config,
    open_study,
    redact,
    save_study_config,
)
from orchestrator.store.retry import RetryStats, is_transient, with_retries
from orchestrator.store.study_config import is_secret_key

from .factories import (
    FAKE_KEY_ID,
    FAKE_SECRET,
    FAKE_TOKEN,
    make_context,
    standard_trials,
    write_study,
)

CONFIG = {
    "study": "study-a",
    "model": {"id": "HuggingFaceTB/SmolLM2-135M-Instruct", "hf_token": "hf_abcdefgh"},
    "search": {"max_new_tokens": 32, "token_selection": "last_k", "layer": [4, 8]},
    "store": {"root": "s3://bucket/prefix", "secretAccessKey": "zzz", "password": None},
}


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("aws_secret_access_key", True),
        ("secretAccessKey", True),
        ("aws_session_token", True),
        ("hf_token", True),
        ("token", True),
        ("api_key", True),
        ("max_new_tokens", False),
        ("token_selection", False),
        ("pad_token", False),
        ("eos_token", False),
        ("layer", False),
    ],
)
def test_secret_key_names(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_redaction_and_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    cfg = dict(CONFIG, notes=f"key {FAKE_SECRET} and https://me:pw@host/x")
    out = redact(cfg)
    assert out["model"]["hf_token"] == "<redacted>"
    assert out["store"]["secretAccessKey"] == "<redacted>"
    assert out["store"]["password"] is None  # nothing to hide
    assert out["search"] == CONFIG["search"]
    assert FAKE_SECRET not in out["notes"] and "pw@" not in out["notes"]
    assert out["notes"] == "key <redacted> and https://me:<redacted>@host/x"
    # The hash is over the redacted text: the secret does not change it.
    other = json.loads(json.dumps(CONFIG))
    other["model"]["hf_token"] = "hf_other"
    assert config_hash(other) == config_hash(CONFIG)
    other["search"]["layer"] = [4]
    assert config_hash(other) != config_hash(CONFIG)


def test_save_study_config_is_idempotent_and_refuses_a_different_config(tmp_path: Path) -> None:
    digest = save_study_config(tmp_path, "study-a", CONFIG)
    assert save_study_config(tmp_path, "study-a", CONFIG) == digest
    stored = load_study_config(tmp_path, "study-a")
    assert stored is not None and stored["model"]["hf_token"] == "<redacted>"
    assert open_study(tmp_path, "study-a").config() == stored
    changed = dict(CONFIG, search={"layer": [1]})
    with pytest.raises(StudyConfigMismatch, match="use a new study name"):
        save_study_config(tmp_path, "study-a", changed)
    assert save_study_config(tmp_path, "study-a", changed, overwrite=True) != digest
    assert load_study_config(tmp_path, "nope") is None


def test_env_credentials_never_reach_local_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", FAKE_TOKEN)
    ctx = make_context()
    leaky = dict(CONFIG, env_dump={"AWS_SECRET_ACCESS_KEY": FAKE_SECRET, "x": FAKE_TOKEN})
    with caplog.at_level(logging.DEBUG):
        save_study_config(tmp_path, ctx.study, leaky)
        write_study(StoreWriter(tmp_path, ctx), standard_trials(ctx))
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 5
    for secret in (FAKE_KEY_ID, FAKE_SECRET, FAKE_TOKEN):
        assert not any(secret.encode() in p.read_bytes() for p in files), secret
        assert secret not in caplog.text


def test_transient_and_permanent_errors() -> None:
    import botocore.exceptions as bce

    aws = "AWS Error {} during PutObject operation: x"
    assert is_transient(OSError(aws.format("NETWORK_CONNECTION")))
    assert is_transient(OSError(aws.format("SLOW_DOWN")))
    assert is_transient(OSError("AWS Error UNKNOWN (HTTP status 503) during PutObject"))
    assert not is_transient(OSError(aws.format("ACCESS_DENIED")))
    assert not is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert is_transient(OSError(errno.EIO, "I/O error"))
    assert not is_transient(ValueError("bad input"))
    assert is_transient(bce.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    slow = bce.ClientError(
        {"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject"
    )
    denied = bce.ClientError(
        {"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}},
        "PutObject",
    )
    assert is_transient(slow) and not is_transient(denied)


def test_with_retries_backs_off_then_succeeds_or_raises() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OSError("AWS Error NETWORK_CONNECTION during PutObject operation")
        return "ok"

    stats = RetryStats()
    policy = RetryPolicy(max_attempts=4, base_delay_s=0.001, jitter=False)
    assert with_retries(flaky, what="put x", policy=policy, stats=stats) == "ok"
    assert (stats.attempts, stats.retries) == (3, 2)
    assert [policy.delay_s(k) for k in (1, 2, 3)] == [0.001, 0.002, 0.004]

    def denied() -> None:
        raise OSError("AWS Error ACCESS_DENIED during PutObject operation")

    with pytest.raises(StoreWriteError, match="permanent error after 1 attempt"):
        with_retries(denied, what="put y", policy=policy)
