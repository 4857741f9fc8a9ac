"""Rendezvous ownership: stable, balanced, and minimal movement when membership changes."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from somabrain.cluster.ownership import owner, weight

TENANTS = [f"tenant-{i}" for i in range(3000)]
names = st.text("abcdefgh0123456789-", min_size=1, max_size=8)


def test_known_owners_do_not_change_between_releases() -> None:
    # Pinned values: a change of the hash would move the tenants of a running cluster.
    tenants = ("acme", "default", "t1", "t2", "t3", "t4")
    assert [owner(t, ["a", "b", "c"]) for t in tenants] == ["b", "c", "b", "b", "a", "c"]
    assert weight("acme", "a") == 2089671109328638371
    assert weight("ab", "c") != weight("a", "bc")


def test_tenants_spread_evenly_over_members() -> None:
    counts = Counter(owner(t, ["a", "b", "c"]) for t in TENANTS)
    assert set(counts) == {"a", "b", "c"}
    assert all(900 < n < 1100 for n in counts.values()), counts


def test_only_a_removed_members_tenants_move() -> None:
    before = {t: owner(t, ["a", "b", "c"]) for t in TENANTS}
    after = {t: owner(t, ["a", "c"]) for t in TENANTS}
    moved = {t for t in TENANTS if before[t] != after[t]}
    assert moved == {t for t in TENANTS if before[t] == "b"}


def test_a_new_member_takes_tenants_only_for_itself() -> None:
    before = {t: owner(t, ["a", "b"]) for t in TENANTS}
    after = {t: owner(t, ["a", "b", "c"]) for t in TENANTS}
    assert all(after[t] in (before[t], "c") for t in TENANTS)


@given(st.text(min_size=1, max_size=20), st.lists(names, min_size=1, max_size=6, unique=True))
def test_owner_is_a_member_whatever_the_order(tenant: str, members: list[str]) -> None:
    chosen = owner(tenant, members)
    assert chosen in members
    assert owner(tenant, list(reversed(members))) == chosen


def test_no_members_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one member"):
        owner("acme", [])
