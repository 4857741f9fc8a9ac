"""The memory log in PostgreSQL, against a real server: replay, group commit, compaction, one
writer per tenant, a database that goes away and comes back, a crash of the database."""

from __future__ import annotations

import uuid

import anyio
import pytest

from somabrain.memory import (
    ForgetRecord,
    Link,
    LinkRecord,
    LogClosedError,
    LogError,
    LogStaleError,
    LogUnavailableError,
    Memory,
    RememberRecord,
    TenantMemory,
)
from somabrain.memory.pg_log import TABLE, PostgresLogs, redacted_url
from tests.servers import PostgresServer

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # asyncpg is asyncio-only (a trio node refuses the setting: test_node)


def remember(i: int) -> RememberRecord:
    return RememberRecord(Memory(key=f"k{i}", content=f"memory number {i}", meta={"i": i}))


def new_tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


async def replayed(url: str, tenant: str) -> list:
    logs = await PostgresLogs.connect(url)
    try:
        log = await logs.open_tenant(tenant)
        records = list(log.replay())
        await log.aclose()
        return records
    finally:
        await logs.aclose()


@pytest.mark.parametrize("policy", ["always", "group", "never"])
async def test_replay_in_order(postgres_server: PostgresServer, policy: str) -> None:
    tenant = new_tenant()
    records = [
        remember(1),
        remember(2),
        LinkRecord(Link(from_key="k1", to_key="k2", rel="next", weight=0.5)),
        ForgetRecord("k1"),
    ]
    logs = await PostgresLogs.connect(postgres_server.url)
    try:
        log = await logs.open_tenant(tenant, fsync=policy)  # type: ignore[arg-type]
        assert list(log.replay()) == []
        await log.append(records[0])
        await log.append_many(records[1:])
        assert log.record_count == 4
        stats = log.statistics()
        assert (stats.appends, stats.writes) == (4, 2)
        assert "#" + tenant in stats.path
        await log.aclose()
        with pytest.raises(LogClosedError):
            await log.append(remember(3))
    finally:
        await logs.aclose()
    assert await replayed(postgres_server.url, tenant) == records


async def test_tenants_are_apart(postgres_server: PostgresServer) -> None:
    a, b = new_tenant(), new_tenant()
    logs = await PostgresLogs.connect(postgres_server.url)
    try:
        log_a, log_b = await logs.open_tenant(a), await logs.open_tenant(b)
        await log_a.append(remember(1))
        await log_b.append_many([remember(2), remember(3)])
        await log_a.aclose()
        await log_b.aclose()
    finally:
        await logs.aclose()
    assert await replayed(postgres_server.url, a) == [remember(1)]
    assert await replayed(postgres_server.url, b) == [remember(2), remember(3)]


async def test_concurrent_appends_share_commits(postgres_server: PostgresServer) -> None:
    tenant = new_tenant()
    logs = await PostgresLogs.connect(postgres_server.url)
    try:
        log = await logs.open_tenant(tenant)
        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(log.append, remember(i))
        stats = log.statistics()
        assert stats.appends == 100
        assert stats.writes < 100  # appends that arrived during a commit went in the next one
        await log.aclose()
    finally:
        await logs.aclose()
    assert sorted(r.memory.key for r in await replayed(postgres_server.url, tenant)) == sorted(
        f"k{i}" for i in range(100)
    )


async def test_rewrite_replaces_the_rows_and_appends_go_on(
    postgres_server: PostgresServer,
) -> None:
    tenant = new_tenant()
    logs = await PostgresLogs.connect(postgres_server.url)
    try:
        log = await logs.open_tenant(tenant)
        await log.append_many([remember(i) for i in range(200)])
        live = [remember(i) for i in range(100, 200)]  # a compaction's snapshot (COPY path)
        await log.rewrite(live)
        await log.append(remember(500))
        assert log.record_count == 101
        assert log.statistics().compactions == 1
        await log.aclose()
        async with logs.pool.acquire() as conn:
            rows = await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE tenant = $1", tenant)
        assert rows == 101
    finally:
        await logs.aclose()
    assert await replayed(postgres_server.url, tenant) == [*live, remember(500)]


async def test_rewrite_to_nothing(postgres_server: PostgresServer) -> None:
    tenant = new_tenant()
    logs = await PostgresLogs.connect(postgres_server.url)
    try:
        log = await logs.open_tenant(tenant, fsync="never")
        await log.append_many([remember(1), ForgetRecord("k1")])
        await log.rewrite([])  # everything was forgotten
        await log.append(remember(2))
        await log.aclose()
    finally:
        await logs.aclose()
    assert await replayed(postgres_server.url, tenant) == [remember(2)]


async def test_a_second_writer_is_refused(postgres_server: PostgresServer) -> None:
    """Two handles on one tenant (two nodes that both think they own it): the one that
    appends second collides on the sequence and refuses every later append."""
    tenant = new_tenant()
    logs = await PostgresLogs.connect(postgres_server.url)
    try:
        first, second = await logs.open_tenant(tenant), await logs.open_tenant(tenant)
        await first.append(remember(1))
        with pytest.raises(LogStaleError):
            await second.append(remember(2))
        with pytest.raises(LogStaleError):
            await second.append(remember(3))
        await first.append(remember(4))
        await first.aclose()
        await second.aclose()
    finally:
        await logs.aclose()
    assert await replayed(postgres_server.url, tenant) == [remember(1), remember(4)]


async def test_a_commit_in_doubt_is_settled_on_the_next_flush(
    postgres_server: PostgresServer,
) -> None:
    """A commit whose answer was lost: if it did not land the log goes on; if it did (here:
    its row is there), the log is broken, since this process never applied it."""
    tenant = new_tenant()
    logs = await PostgresLogs.connect(postgres_server.url)
    try:
        log = await logs.open_tenant(tenant)
        await log.append(remember(1))
        log._in_doubt = True  # as after a commit that got no answer and did not land
        await log.append(remember(2))
        async with logs.pool.acquire() as conn:  # one that did land
            await conn.execute(f"INSERT INTO {TABLE} VALUES ($1, 3, $2)", tenant, b"\x81\xa1x\x01")
        log._in_doubt = True
        with pytest.raises(LogStaleError, match="did land"):
            await log.append(remember(3))
        await log.aclose()
    finally:
        await logs.aclose()


async def test_an_unreachable_database_fails_writes_until_it_is_back(
    own_postgres_server: PostgresServer,
) -> None:
    server = own_postgres_server
    tenant = new_tenant()
    logs = await PostgresLogs.connect(server.url, timeout=2.0)
    try:
        log = await logs.open_tenant(tenant)
        await log.append(remember(1))
        server.stop()
        with pytest.raises(LogUnavailableError):
            await log.append(remember(2))
        server.start()
        for _ in range(50):  # the pool replaces its dead connection on the next acquire
            try:
                await log.append(remember(3))
                break
            except LogUnavailableError:
                await anyio.sleep(0.1)
        else:
            pytest.fail("the log never wrote again after the database came back")
        await log.aclose()
    finally:
        await logs.aclose()
    assert await replayed(server.url, tenant) == [remember(1), remember(3)]


async def test_acknowledged_appends_survive_a_crash_of_the_database(
    own_postgres_server: PostgresServer,
) -> None:
    server = own_postgres_server
    tenant = new_tenant()
    logs = await PostgresLogs.connect(server.url, timeout=2.0)
    try:
        log = await logs.open_tenant(tenant)
        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(log.append, remember(i))
        server.stop(kill=True)  # SIGKILL: recovery from the WAL on the next start
        await log.aclose()
    finally:
        await logs.aclose()
    server.start()
    assert len(await replayed(server.url, tenant)) == 50


async def test_connecting_to_nothing_is_unavailable() -> None:
    from tests.servers import free_port

    url = f"postgresql://soma:secret@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(LogUnavailableError) as caught:
        await PostgresLogs.connect(url, timeout=2.0)
    assert "secret" not in str(caught.value)


async def test_a_tenant_memory_rebuilds_from_its_rows(postgres_server: PostgresServer) -> None:
    tenant = new_tenant()
    logs = await PostgresLogs.connect(postgres_server.url)
    try:
        memory = await TenantMemory.from_log(await logs.open_tenant(tenant), tenant)
        await memory.remember(Memory(key="paris", content="Paris is the capital of France"))
        await memory.remember(Memory(key="berlin", content="Berlin is the capital of Germany"))
        await memory.forget("berlin")
        await memory.aclose()
        again = await TenantMemory.from_log(await logs.open_tenant(tenant), tenant)
        assert [h.key for h in again.recall("capital of France", top_k=5)] == ["paris"]
        assert again.get("berlin") is None
        await again.aclose()
    finally:
        await logs.aclose()


def test_redacted_url() -> None:
    assert redacted_url("postgresql://u:pw@h:5432/db") == "postgresql://u@h:5432/db"
    assert redacted_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert redacted_url("postgresql://:pw@h/db") == "postgresql://h/db"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://soma@127.0.0.1/db", "postgresql:// URL"),
        ("postgresql://soma@127.0.0.1:port/db", "port is not a number"),
    ],
)
def test_the_url_is_checked_with_the_config(url: str, message: str) -> None:
    from somabrain import config
    from somabrain.supervision import ConfigError

    with pytest.raises(ConfigError, match=message):
        config.load(environ={"SOMA_MEMORY__POSTGRES_URL": url})


async def test_a_database_that_refuses_the_table_is_a_log_error_not_a_crash(
    postgres_server: PostgresServer,
) -> None:
    """A role that may not read the table: the tenant's open fails with a ``LogError``
    (503 at the edge), which is not taken for an outage to retry."""
    import asyncpg

    admin = await asyncpg.connect(postgres_server.url)
    try:
        role = f"reader_{uuid.uuid4().hex[:8]}"
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        logs = await PostgresLogs.connect(postgres_server.url)  # makes the table
        await logs.aclose()
        url = postgres_server.url.replace("soma@", f"{role}@")
        with pytest.raises(LogError) as caught:
            await PostgresLogs.connect(url)
        assert not isinstance(caught.value, LogUnavailableError)
        assert "permission" in str(caught.value).lower() or "owner" in str(caught.value).lower()
    finally:
        await admin.close()
