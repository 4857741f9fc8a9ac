"""The per-tenant journals in PostgreSQL (working memory, associations), against a real server:
replay in order, snapshots and compaction, a second writer taking a journal over without the
two interleaving, a database that goes away and comes back."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Sequence

import anyio
import msgspec
import numpy as np
import pytest

from somabrain.memory import HashingEmbedder
from somabrain.memory._journal import COMPACT_MIN_BYTES, JournalKind
from somabrain.memory.associations import AssociationStore
from somabrain.memory.pg_journal import _APPEND_SYNC, PostgresJournal, PostgresJournals
from somabrain.memory.pg_log import JOURNAL_TABLE, PostgresLogs
from somabrain.memory.working_journal import DurableWorkingMemory
from tests.servers import PostgresServer

from .test_working_journal import Store, state

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

EMB = HashingEmbedder(dim=32)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # asyncpg is asyncio-only


class Note(msgspec.Struct, frozen=True, array_like=True):
    text: str


KIND: JournalKind[Note] = JournalKind("test-notes", b"", Note, what="note journal")


class Notes:
    """The simplest owner: a list of texts, the newest ``capacity`` kept."""

    def __init__(self, logs: PostgresLogs, tenant: str, capacity: int = 1_000_000) -> None:
        self.items: list[str] = []
        self.capacity = capacity
        self.journal: PostgresJournal[Note] = PostgresJournals(logs, tenant).journal(
            KIND, lambda: [Note(t) for t in self.items]
        )

    @classmethod
    async def open(cls, logs: PostgresLogs, tenant: str, capacity: int = 1_000_000) -> Notes:
        notes = cls(logs, tenant, capacity)
        for record in await notes.journal.read():
            notes.items.append(record.text)
        notes.items = notes.items[-capacity:]
        await notes.journal.start()
        return notes

    def add(self, text: str) -> None:
        self.items = [*self.items, text][-self.capacity :]
        self.journal.append(Note(text))


def new_tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def logs(postgres_server: PostgresServer) -> AsyncIterator[PostgresLogs]:
    pool = await PostgresLogs.connect(postgres_server.url)
    try:
        yield pool
    finally:
        await pool.aclose()


async def rows(logs: PostgresLogs, tenant: str, kind: str = KIND.name) -> list[tuple[int, bytes]]:
    found = await logs.pool.fetch(
        f"SELECT seq, record FROM {JOURNAL_TABLE} WHERE tenant = $1 AND kind = $2 ORDER BY seq",
        tenant,
        kind,
    )
    return [(r[0], r[1]) for r in found]


async def reread(logs: PostgresLogs, tenant: str, capacity: int = 1_000_000) -> list[str]:
    notes = await Notes.open(logs, tenant, capacity)
    await notes.journal.aclose()
    return notes.items


async def test_records_come_back_in_order_and_concurrent_flushes_share_writes(
    logs: PostgresLogs,
) -> None:
    tenant = new_tenant()
    notes = await Notes.open(logs, tenant)
    assert notes.items == [] and notes.journal.durable
    assert await rows(logs, tenant) == []  # an empty snapshot
    notes.add("first")
    await notes.journal.flush()

    async def add_and_flush(i: int) -> None:
        notes.add(f"note {i}")
        await notes.journal.flush()

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(add_and_flush, i)
    assert notes.journal.writes < 1 + 1 + 50  # flushes that waited for one went as one
    notes.add("unflushed, committed by the close")
    await notes.journal.aclose()
    assert not notes.journal.durable
    notes.add("after the close: in memory only")
    assert await reread(logs, tenant) == notes.items[:-1]
    assert notes.items[0] == "first" and len(notes.items) == 53


async def test_working_memorys_asynchronous_commits_leave_the_connection_as_it_was(
    postgres_server: PostgresServer,
) -> None:
    """Working memory's flushes commit with ``synchronous_commit = off``, for their own
    transaction only: the pooled connection's next user (a memory log's commit) waits for the
    WAL flush as before."""
    logs = await PostgresLogs.connect(postgres_server.url, max_connections=1)  # one connection
    try:
        store = Store()
        wm = await DurableWorkingMemory.open(PostgresJournals(logs, new_tenant()), store.items)
        wm.add("s", store.remember("k1"))
        await wm.flush()
        assert wm.durable
        assert await logs.pool.fetchval("SHOW synchronous_commit") == "on"
        await wm.aclose()
    finally:
        await logs.aclose()


async def test_tenants_and_kinds_are_apart(logs: PostgresLogs) -> None:
    a, b = new_tenant(), new_tenant()
    notes_a, notes_b = await Notes.open(logs, a), await Notes.open(logs, b)
    notes_a.add("of a")
    notes_b.add("of b")
    await notes_a.journal.aclose()
    await notes_b.journal.aclose()
    other = PostgresJournals(logs, a).journal(
        JournalKind("other-notes", b"", Note, what="x"), lambda: [Note("other kind")]
    )
    assert await other.read() == []
    await other.start()
    await other.aclose()
    assert await reread(logs, a) == ["of a"]
    assert await reread(logs, b) == ["of b"]


async def test_start_replaces_the_rows_by_a_snapshot(logs: PostgresLogs) -> None:
    tenant = new_tenant()
    notes = await Notes.open(logs, tenant, capacity=5)
    for i in range(20):
        notes.add(f"note {i}")
        await notes.journal.flush()
    await notes.journal.aclose()
    assert [seq for seq, _ in await rows(logs, tenant)] == list(range(1, 21))
    again = await Notes.open(logs, tenant, capacity=5)
    assert again.items == [f"note {i}" for i in range(15, 20)]
    # the snapshot after the rows it replaced: numbering keeps rising across snapshots
    assert [seq for seq, _ in await rows(logs, tenant)] == list(range(21, 26))
    await again.journal.aclose()


async def test_compaction_bounds_the_rows(logs: PostgresLogs) -> None:
    tenant = new_tenant()
    notes = await Notes.open(logs, tenant, capacity=8)
    text = "x" * 1000
    for i in range(3000):  # ~3 MiB of records, flushed 100 at a time
        notes.add(f"{i:05d} {text}")
        if i % 100 == 99:
            await notes.journal.flush()
    await notes.journal.flush()
    assert notes.journal.snapshots >= 3  # start's, then at least two compactions
    size = sum(len(record) for _, record in await rows(logs, tenant))
    assert size <= COMPACT_MIN_BYTES + 100 * 1100
    expected = notes.items
    await notes.journal.aclose()
    assert await reread(logs, tenant, capacity=8) == expected


async def test_a_second_writer_takes_the_journal_over_and_the_first_stops(
    logs: PostgresLogs, caplog: pytest.LogCaptureFixture
) -> None:
    """Two incarnations of one tenant's journal (two nodes that both think they own it): the
    one that opened last wins; the other's writes stop, and never land among its rows."""
    tenant = new_tenant()
    first = await Notes.open(logs, tenant)
    first.add("by the first")
    await first.journal.flush()
    second = Notes(logs, tenant)
    for record in await second.journal.read():
        second.items.append(record.text)
    first.add("by the first, between the second's read and start")  # lost: taken over
    await first.journal.flush()
    assert first.journal.durable
    await second.journal.start()
    second.add("by the second")
    await second.journal.flush()
    before = await rows(logs, tenant)

    first.add("by the first, after it lost the journal")
    await first.journal.flush()
    assert not first.journal.durable
    assert "another writer took the journal over" in caplog.text
    assert await rows(logs, tenant) == before  # nothing of it landed
    first.add("and again")
    await first.journal.aclose()  # writes nothing either
    assert await rows(logs, tenant) == before

    second.add("the second goes on")
    await second.journal.aclose()
    assert second.journal.writes == 3  # start, then two flushes (the close's included)
    assert await reread(logs, tenant) == ["by the first", "by the second", "the second goes on"]


@pytest.mark.parametrize("round_", range(5))
async def test_concurrent_takeovers_leave_one_journal_whole(
    logs: PostgresLogs, round_: int
) -> None:
    """Journals started at once on one tenant (each a takeover), while the journal's previous
    writer keeps flushing: the takeovers go one after the other, the old writer stops at the
    first, and the rows end as the last takeover left them, never a mix."""
    tenant = new_tenant()
    old = await Notes.open(logs, tenant)
    owners = [Notes(logs, tenant) for _ in range(6)]
    for i, notes in enumerate(owners):
        await notes.journal.read()
        notes.items = [f"owner {i} note {j}" for j in range(3)]

    async def old_writer() -> None:
        for j in range(200):
            old.add(f"old {j}")
            await old.journal.flush()
            if not old.journal.durable:
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(old_writer)
        await anyio.sleep(0.01 * round_)
        for notes in owners:
            tg.start_soon(notes.journal.start)
    assert not old.journal.durable
    assert all(notes.journal.durable for notes in owners)  # each took it over in turn
    for notes in owners:
        await notes.journal.aclose()
    assert await reread(logs, tenant) in [notes.items for notes in owners]


async def test_a_write_whose_answer_was_lost_is_superseded_by_the_catch_up(
    logs: PostgresLogs,
) -> None:
    """A write that got no answer may have landed or not: the catch-up's snapshot holds the
    state either way."""
    tenant = new_tenant()
    notes = await Notes.open(logs, tenant)
    notes.add("one")
    await notes.journal.flush()
    journal = notes.journal
    async with logs.pool.acquire() as conn:  # "two"'s lost write did land
        await conn.execute(
            _APPEND_SYNC, tenant, KIND.name, journal._writer, [msgspec.msgpack.encode(Note("two"))]
        )
    notes.items.append("two")
    notes.items.append("three")  # "three"'s did not
    journal._catch_up = journal._failing = True
    notes.add("four")
    await journal.flush()
    assert journal.durable
    assert await reread(logs, tenant) == ["one", "two", "three", "four"]
    await journal.aclose()


async def test_a_database_that_goes_away_is_caught_up_with_when_it_is_back(
    own_postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = own_postgres_server
    tenant = new_tenant()
    logs = await PostgresLogs.connect(server.url, timeout=2.0)
    try:
        notes = await Notes.open(logs, tenant)
        notes.add("before")
        await notes.journal.flush()
        server.stop()
        with caplog.at_level(logging.ERROR, logger="somabrain.memory"):
            for text in ("during 1", "during 2"):
                notes.add(text)
                await notes.journal.flush()  # no exception: the state goes on in memory
        assert not notes.journal.durable
        assert notes.items == ["before", "during 1", "during 2"]
        failed = [r for r in caplog.records if "write failed" in r.getMessage()]
        assert len(failed) == 1  # logged once
        server.start()
        for i in range(50):  # the pool replaces its dead connection on the next acquire
            notes.add(f"after {i}")
            await notes.journal.flush()
            if notes.journal.durable:
                break
            await anyio.sleep(0.1)
        else:
            pytest.fail("the journal never caught up after the database came back")
        assert "caught up" in caplog.text
        expected = notes.items
        await notes.journal.aclose()
        assert await reread(logs, tenant) == expected  # the outage's records included

        server.stop()  # an owner that cannot read its journal stays in memory only
        store = Store()
        wm = await DurableWorkingMemory.open(PostgresJournals(logs, tenant), store.items)
        assert not wm.durable
        wm.add("s", store.remember("k1"))
        await wm.flush()
        assert state(wm) == [("s", ["k1"])]
        await wm.aclose()
        assert "unreadable, not durable" in caplog.text
    finally:
        await logs.aclose()


# ------------------------------------------------------------------------------ the owners


async def test_working_memory_reopens_from_its_rows(logs: PostgresLogs) -> None:
    tenant = new_tenant()
    journals = PostgresJournals(logs, tenant)
    store = Store()

    async def reopen() -> DurableWorkingMemory:
        return await DurableWorkingMemory.open(journals, store.items, 4, max_sessions=3)

    wm = await reopen()
    assert wm.durable and state(wm) == [] and tenant in wm.where
    wm.add("a", store.remember("a1", "a2", "a3", "a4", "a5"))  # a1 evicted (capacity 4)
    wm.add("b", store.remember("b1", "b2"))
    wm.add("a", store.remember("a2"))
    wm.add("c", store.remember("c1"))
    wm.discard("a3")
    wm.add("d", store.remember("d1"))  # b evicted
    await wm.flush()
    wm.add("a", store.remember("a6"))
    assert wm.clear("d")
    expected = [("c", ["c1"]), ("a", ["a4", "a5", "a2", "a6"])]
    assert state(wm) == expected
    await wm.aclose()
    again = await reopen()
    assert state(again) == expected
    # flushed but never closed (as after a kill -9 of the node): the flush is what counts
    again.add("c", store.remember("c2"))
    await again.flush()
    third = await reopen()
    assert state(third)[-1] == ("c", ["c1", "c2"])
    await third.aclose()
    again.add("b", store.remember("b9"))
    await again.aclose()  # the third took the journal over: nothing of the second's lands
    assert not again.durable
    fourth = await reopen()
    assert state(fourth) == state(third)
    await fourth.aclose()


async def _embed(texts: Sequence[str]) -> np.ndarray:
    return EMB.embed(list(texts))


async def test_associations_reopen_from_their_rows(logs: PostgresLogs) -> None:
    tenant = new_tenant()
    journals = PostgresJournals(logs, tenant)
    store = await AssociationStore.open(journals, EMB.dim, _embed, capacity=3)
    assert store.durable and store.where is not None and tenant in store.where
    for i, keys in enumerate([["a"], ["b", "c"], ["c"], ["d"]]):
        store.add(f"query {i} about {' '.join(keys)}", EMB.embed([f"query {i}"])[0], keys)
    await store.sync()
    store.discard("c")
    await store.flush()  # not closed: what was flushed is there
    again = await AssociationStore.open(journals, EMB.dim, _embed, capacity=3)
    assert again.entries() == [("query 1 about b c", ("b",)), ("query 3 about d", ("d",))]
    lifts = again.lifts(EMB.embed(["query 1 about b c"])[0], neighbours=1)
    assert lifts == {"b": pytest.approx(1.0)}
    await again.aclose()
    await store.aclose()
    assert len(await rows(logs, tenant, "associations")) == 2  # the snapshot
    assert await rows(logs, tenant, "working") == []
