"""Shared fixtures. Async tests run on both anyio backends unless they pick one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import NatsServer, ServerError


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """A real nats-server on a free loopback port, shared by the session (tests use their own
    connections and subjects). Fails, never skips, when the binary is missing."""
    try:
        with NatsServer.running() as server:
            yield server
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
