"""Shared fixtures. Async tests run on both anyio backends unless they pick one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import KafkaServer, NatsServer, PostgresServer, RedisServer, ServerError


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


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, one per test (tests stop and restart it).
    Fails, never skips, when redis-server is missing (scripts/test installs it)."""
    try:
        with RedisServer.running_in(tmp_path_factory.mktemp("redis")) as server:
            assert isinstance(server, RedisServer)
            yield server
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    """A real Kafka-protocol broker (noida-db) on a free loopback port, one per test."""
    try:
        with KafkaServer.running_in(tmp_path_factory.mktemp("kafka")) as server:
            assert isinstance(server, KafkaServer)
            yield server
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A real PostgreSQL server on a free loopback port, shared by the session (tests use
    their own tenants). Fails, never skips, when the server binaries are missing (scripts/test
    installs them)."""
    try:
        with PostgresServer.running_in(tmp_path_factory.mktemp("postgres")) as server:
            assert isinstance(server, PostgresServer)
            yield server
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def own_postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A PostgreSQL server for one test (that stops, kills or restarts it)."""
    try:
        with PostgresServer.running_in(tmp_path_factory.mktemp("postgres")) as server:
            assert isinstance(server, PostgresServer)
            yield server
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def minilm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory holding the MiniLM ONNX export, made once per session by the child
    process a node starts (``somabrain embedder export``, ~10 s), never in the user's cache.
    Only for tests that need the ``minilm`` extra."""
    from somabrain.memory.minilm_export import ensure_export

    cache = tmp_path_factory.mktemp("embedder-cache")
    ensure_export(cache)
    return cache
