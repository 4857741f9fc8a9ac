"""The working-memory journal: reopening gives the same sessions and item order, eviction and
discards included; forgotten keys stay out; torn tails, compaction and write errors."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from somabrain.memory import HashingEmbedder, tokenize
from somabrain.memory.working import WMItem
from somabrain.memory.working_journal import DurableWorkingMemory, working_journal_path

pytestmark = pytest.mark.anyio

EMB = HashingEmbedder(dim=32)


class Store:
    """The tenant's memories, as far as working memory is concerned: key -> content."""

    def __init__(self) -> None:
        self.contents: dict[str, str] = {}

    def items(self, keys: Sequence[str]) -> list[WMItem]:
        return [
            WMItem(k, self.contents[k], EMB.embed([self.contents[k]])[0],
                   frozenset(tokenize(self.contents[k])), 0.0)
            for k in keys
            if k in self.contents
        ]  # fmt: skip

    def remember(self, *keys: str) -> list[WMItem]:
        for key in keys:
            self.contents[key] = f"content of {key}"
        return self.items(keys)


def state(wm: DurableWorkingMemory) -> list[tuple[str, list[str]]]:
    return [(s, [it.key for it in wm.items(s)]) for s in wm.sessions()]


async def reopen(
    path: Path, store: Store, capacity: int = 4, max_sessions: int = 3
) -> DurableWorkingMemory:
    return await DurableWorkingMemory.open(path, store.items, capacity, max_sessions=max_sessions)


async def test_reopen_keeps_sessions_order_eviction_and_discards(tmp_path: Path) -> None:
    path = working_journal_path(tmp_path, "acme")
    store = Store()
    wm = await reopen(path, store)
    assert wm.durable and path.exists() and state(wm) == []
    wm.add("a", store.remember("a1", "a2", "a3", "a4", "a5"))  # a1 evicted (capacity 4)
    wm.add("b", store.remember("b1", "b2"))
    wm.add("a", store.remember("a2"))  # refreshed: newest of a, and a is touched
    wm.add("c", store.remember("c1"))
    wm.discard("a3")
    wm.add("d", store.remember("d1"))  # b is the least recently touched: evicted
    wm.add("a", store.remember("a6"))
    assert wm.clear("d") and not wm.clear("d")
    expected = [("c", ["c1"]), ("a", ["a4", "a5", "a2", "a6"])]
    assert state(wm) == expected
    await wm.aclose()
    assert not wm.durable
    again = await reopen(path, store)
    assert state(again) == expected
    assert [it.content for it in again.items("a")] == [f"content of a{i}" for i in (4, 5, 2, 6)]
    await again.aclose()
    # unclosed (as after a kill -9 of the process): every change was written already
    third = await reopen(path, store)
    third.add("c", store.remember("c2"))
    fourth = await reopen(path, store)
    assert state(fourth)[-1] == ("c", ["c1", "c2"])
    await third.aclose()
    await fourth.aclose()


async def test_forgotten_keys_do_not_come_back(tmp_path: Path) -> None:
    path = working_journal_path(tmp_path, "acme")
    store = Store()
    wm = await reopen(path, store)
    wm.add("s", store.remember("k1", "k2", "k3"))
    wm.add("gone", store.remember("g1"))
    await wm.aclose()
    del store.contents["k2"], store.contents["g1"]  # forgotten while the actor was down
    again = await reopen(path, store)
    assert state(again) == [("s", ["k1", "k3"])]
    await again.aclose()
    store.contents["k2"] = "remembered again"  # the journal was rewritten without k2
    third = await reopen(path, store)
    assert state(third) == [("s", ["k1", "k3"])]
    await third.aclose()


async def test_a_torn_tail_or_a_foreign_file_is_ignored(tmp_path: Path) -> None:
    path = working_journal_path(tmp_path, "acme")
    store = Store()
    wm = await reopen(path, store)
    wm.add("s", store.remember("k1"))
    wm.add("s", store.remember("k2"))
    await wm.aclose()
    os.truncate(path, path.stat().st_size - 3)  # a crash in the middle of the last frame
    again = await reopen(path, store)
    assert state(again) == [("s", ["k1"])]
    await again.aclose()
    path.write_bytes(b"something else entirely")
    third = await reopen(path, store)
    assert state(third) == [] and third.durable
    third.add("s", store.remember("k9"))
    await third.aclose()
    fourth = await reopen(path, store)
    assert state(fourth) == [("s", ["k9"])]
    await fourth.aclose()


async def test_compaction_bounds_the_file(tmp_path: Path) -> None:
    path = working_journal_path(tmp_path, "acme")
    store = Store()
    keys = [f"key-{i:05d}-{'x' * 40}" for i in range(400)]
    store.remember(*keys)
    wm = await reopen(path, store, capacity=8, max_sessions=3)
    for _ in range(60):  # ~1.5 MiB of records: past the 1 MiB threshold at least once
        for i, key in enumerate(keys):
            wm.add(f"s{i % 3}", store.items([key]))
    assert path.stat().st_size < 1024 * 1024 + 4096
    expected = state(wm)
    assert [s for s, _ in expected] == ["s1", "s2", "s0"] and all(len(k) == 8 for _, k in expected)
    await wm.aclose()
    again = await reopen(path, store, capacity=8, max_sessions=3)
    assert state(again) == expected
    await again.aclose()
    assert not path.with_name(path.name + ".compact").exists()


async def test_a_write_error_stops_journaling_not_working_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = working_journal_path(tmp_path, "acme")
    store = Store()
    wm = await reopen(path, store)
    wm.add("s", store.remember("k1"))
    assert wm._journal._file is not None
    readonly = os.open(path, os.O_RDONLY)  # the journal's fd turns read-only: EBADF on write
    os.dup2(readonly, wm._journal._file.fileno())
    os.close(readonly)
    wm.add("s", store.remember("k2"))  # no exception: working memory goes on
    assert not wm.durable and state(wm) == [("s", ["k1", "k2"])]
    assert "journaling stops" in caplog.text
    await wm.aclose()
    again = await reopen(path, store)
    assert state(again) == [("s", ["k1"])]
    await again.aclose()
