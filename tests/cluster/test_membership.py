"""What a member makes of the hellos it hears (``somabrain.cluster.membership``), and what
it shows of the NATS server."""

from __future__ import annotations

import logging

import pytest

from somabrain.cluster.membership import SILENT_AFTER, Membership
from somabrain.cluster.ownership import membership_digest
from somabrain.cluster.wire import Hello, wire_codec


def _hello(member: str, members: list[str], instance: str = "i-1") -> Hello:
    hello = Hello(
        member=member, members=members, digest=membership_digest(members), instance=instance
    )
    codec = wire_codec()
    crossed = codec.decode(codec.encode(hello))
    assert crossed == hello
    return crossed


def test_the_digest_ignores_order_and_tells_lists_apart() -> None:
    assert membership_digest(["a", "b"]) == membership_digest(["b", "a"])
    assert membership_digest(["a", "b"]) != membership_digest(["a", "b", "c"])
    assert membership_digest(["ab", "c"]) != membership_digest(["a", "bc"])


def test_members_that_agree_are_up_and_answered_once() -> None:
    here = Membership("a", ["a", "b"])
    assert here.problems(0.0) == ["member 'b' not heard from (down, or cut off from NATS)"]
    assert here.heard(here.hello(), 0.0) is False  # its own, echoed
    assert here.heard(_hello("b", ["b", "a"]), 0.0) is True  # new: answered at once
    assert here.heard(_hello("b", ["a", "b"]), 1.0) is False  # known: no storm of hellos
    assert here.problems(1.0) == []
    assert here.peers(1.5)["b"] == {
        "heard": True,
        "seconds_ago": 0.5,
        "up": True,
        "same_members": True,
    }
    assert here.heard(_hello("b", ["a", "b"], instance="i-2"), 2.0) is True  # restarted
    assert here.problems(2.0 + SILENT_AFTER + 0.1) == [
        "member 'b' not heard from (down, or cut off from NATS)"
    ]


def test_a_member_with_another_list_is_reported_and_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    here = Membership("a", ["a", "b"])
    wide = ["a", "b", "c"]
    with caplog.at_level(logging.ERROR, "somabrain.cluster"):
        assert here.heard(_hello("b", wide), 0.0) is True
    assert "has cluster.members ['a', 'b', 'c']" in caplog.text
    assert here.problems(0.0) == [
        "member 'b' has other cluster.members: ['a', 'b', 'c'] (here: ['a', 'b'])"
    ]
    assert here.peers(0.0)["b"]["same_members"] is False
    assert not here.agrees(membership_digest(wide))
    assert here.agrees(membership_digest(["b", "a"]))
    assert here.agrees("")  # a call without a digest is not checked


def test_a_stranger_and_a_twin_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    here = Membership("a", ["a", "b"])
    here.heard(_hello("b", ["a", "b"]), 0.0)
    with caplog.at_level(logging.ERROR, "somabrain.cluster"):
        here.heard(_hello("x", ["a", "b", "x"]), 0.0)
        assert here.heard(_hello("a", ["a", "b"], instance="another"), 0.0) is True
    assert "not in this node's cluster.members" in caplog.text
    assert "another process uses this node's name 'a'" in caplog.text
    assert here.problems(0.0) == [
        "another process uses this node's name 'a'",
        "node 'x' is in the cluster but not in cluster.members",
    ]
    # Both gone: after a while they are no longer reported.
    here.heard(_hello("b", ["a", "b"]), SILENT_AFTER + 1)
    assert here.problems(SILENT_AFTER + 1) == []
    assert "x" not in here.peers(SILENT_AFTER + 1)


def test_health_and_errors_show_the_nats_url_without_credentials() -> None:
    from somabrain.actors.nats_transport import without_credentials

    assert without_credentials("nats://user:pw@10.0.0.1:4222") == "nats://***@10.0.0.1:4222"
    assert without_credentials("tls://token@nats.internal") == "tls://***@nats.internal"
    assert without_credentials("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"


def test_the_members_up_are_those_heard_and_the_unheard_while_young() -> None:
    here = Membership("a", ["a", "b", "c"], failover=True, now=100.0)
    assert here.up(100.0 + SILENT_AFTER) == ["a", "b", "c"]  # nobody had time to say hello
    here.heard(_hello("b", ["a", "b", "c"]), 101.0)
    assert here.up(101.0 + SILENT_AFTER) == ["a", "b"]  # c never said hello: not up
    assert here.up(101.5 + SILENT_AFTER) == ["a"]  # b silent for longer than SILENT_AFTER
    here.heard(_hello("b", ["a", "b", "c"]), 120.0)
    assert here.up(120.0) == ["a", "b"]  # b is back


def test_a_member_not_listening_yet_counts_every_member_up() -> None:
    """A member waiting for NATS at start heard nobody, which says nothing about who is up:
    it is young from when it joins, however long it waited."""
    here = Membership("a", ["a", "b", "c"], failover=True, now=None)
    assert here.up(1000.0) == ["a", "b", "c"]
    here.listening(1000.0)
    assert here.up(1000.0 + SILENT_AFTER) == ["a", "b", "c"]
    assert here.up(1001.0 + SILENT_AFTER) == ["a"]


def test_a_silent_member_is_logged_as_moved_with_failover(
    caplog: pytest.LogCaptureFixture,
) -> None:
    here = Membership("a", ["a", "b"], failover=True, now=0.0)
    here.heard(_hello("b", ["a", "b"]), 0.0)
    with caplog.at_level(logging.WARNING, logger="somabrain.cluster"):
        here.tick(SILENT_AFTER + 1)
    assert "move to the members that are up" in caplog.text
