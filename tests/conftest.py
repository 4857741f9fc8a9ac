"""Shared fixtures. Async tests run on both anyio backends unless they pick one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import (
    KafkaServer,
    NatsServer,
    PostgresServer,
    RedisServer,
    ServerError,
    ServerProcess,
)


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


def _serving(kind: type[ServerProcess], directory: Path) -> Iterator[Any]:
    """A real server of ``kind`` for a fixture's life. Fails, never skips, when its binary is
    missing (scripts/test installs Debian's redis-server and postgresql; the rest are dev
    dependencies)."""
    try:
        with kind.running_in(directory) as server:
            assert isinstance(server, kind)
            yield server
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, one per test (tests stop and restart it)."""
    yield from _serving(RedisServer, tmp_path_factory.mktemp("redis"))


@pytest.fixture
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    """A real Kafka-protocol broker (noida-db) on a free loopback port, one per test."""
    yield from _serving(KafkaServer, tmp_path_factory.mktemp("kafka"))


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A real PostgreSQL server on a free loopback port, shared by the session (tests use
    their own tenants)."""
    yield from _serving(PostgresServer, tmp_path_factory.mktemp("postgres"))


@pytest.fixture
def own_postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A PostgreSQL server for one test (that stops, kills or restarts it)."""
    yield from _serving(PostgresServer, tmp_path_factory.mktemp("postgres"))


@pytest.fixture(scope="session")
def minilm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory holding the MiniLM ONNX export, made once per session by the child
    process a node starts (``somabrain embedder export``, ~10 s), never in the user's cache.
    Only for tests that need the ``minilm`` extra."""
    from somabrain.memory.minilm_export import ensure_export

    cache = tmp_path_factory.mktemp("embedder-cache")
    ensure_export(cache)
    return cache
