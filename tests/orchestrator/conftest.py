"""Fixtures for orchestrator tests: a moto S3 server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from store.factories import free_port, start_moto


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    port = free_port()
    server = start_moto(port)
    yield f"http://127.0.0.1:{port}"
    server.stop()
