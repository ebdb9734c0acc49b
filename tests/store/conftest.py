"""Fixtures for the result-store tests: a real moto S3 server on 127.0.0.1
(over HTTP, reached through both pyarrow and boto3), fake credentials set with
monkeypatch, and a fresh bucket per test."""

from __future__ import annotations

from typing import Any

import pytest

from .factories import S3Env, make_bucket, set_fake_aws_env


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> S3Env:
    """Fake credentials in the environment and a fresh bucket on the moto server."""
    set_fake_aws_env(monkeypatch, moto_endpoint, tmp_path)
    client, bucket = make_bucket(moto_endpoint)
    return S3Env(moto_endpoint, bucket, f"s3://{bucket}/results/v1", client)
