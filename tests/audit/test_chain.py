"""Property tests of the hash chain: any change, loss, reordering or fork is found and named."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from somabrain.audit import AuditDraft, AuditEvent, Chain, encode_event, verify
from tests.audit.strategies import drafts, texts

chains = st.lists(drafts(), min_size=1, max_size=12)


def seal_all(
    items: list[AuditDraft], node: str = "n", key: bytes | None = None
) -> list[AuditEvent]:
    chain = Chain(node, key=key)
    return [chain.seal(d) for d in items]


def records(events: list[AuditEvent]) -> list[tuple[str, bytes]]:
    return [(str(i), encode_event(e)) for i, e in enumerate(events)]


@settings(max_examples=100, deadline=None)
@given(chains)
def test_an_intact_chain_verifies(items: list[AuditDraft]) -> None:
    events = seal_all(items)
    report = verify(records(events))["n"]
    assert report.ok, report.summary()
    assert (report.events, report.first_seq, report.last_seq) == (len(events), 1, len(events))
    assert report.head_hash == events[-1].hash


_FIELDS = ["tenant", "actor", "reason", "trace_id", "decision", "action", "time"]


@settings(max_examples=200, deadline=None)
@given(chains, st.data())
def test_changing_any_field_of_any_event_is_detected_at_that_event(
    items: list[AuditDraft], data: st.DataObject
) -> None:
    events = seal_all(items)
    index = data.draw(st.integers(0, len(events) - 1))
    field = data.draw(st.sampled_from(_FIELDS))
    original = getattr(events[index], field)
    if field == "decision":
        others = [d for d in ("allow", "deny", "error", "none") if d != original]
        value = data.draw(st.sampled_from(others))
    elif field == "action":
        value = original + ".x"
    else:
        value = data.draw(texts.filter(lambda v: v != original))
    events[index] = msgspec.structs.replace(events[index], **{field: value})
    report = verify(records(events))["n"]
    assert report.problem is not None
    assert report.problem.kind == "hash_mismatch"
    assert report.problem.seq == index + 1
    assert report.problem.event_id == events[index].event_id


@settings(max_examples=100, deadline=None)
@given(chains.filter(lambda c: len(c) >= 2), st.data())
def test_rehashing_a_changed_event_breaks_the_next_link(
    items: list[AuditDraft], data: st.DataObject
) -> None:
    """An attacker who recomputes the changed event's own hash still breaks the chain."""
    events = seal_all(items)
    index = data.draw(st.integers(0, len(events) - 2))
    forged = msgspec.structs.replace(events[index], tenant=events[index].tenant + "!", hash="")
    events[index] = Chain("n", index, forged.prev_hash).seal(
        AuditDraft(**{f: getattr(forged, f) for f in AuditDraft.__struct_fields__})
    )
    report = verify(records(events))["n"]
    assert report.problem is not None
    assert (report.problem.kind, report.problem.seq) == ("broken_link", index + 2)


@settings(max_examples=100, deadline=None)
@given(chains.filter(lambda c: len(c) >= 2), st.data())
def test_a_missing_event_is_named(items: list[AuditDraft], data: st.DataObject) -> None:
    events = seal_all(items)
    index = data.draw(st.integers(0, len(events) - 2))
    del events[index]
    problem = verify(records(events))["n"].problem
    assert problem is not None
    assert (problem.kind, problem.seq) == ("missing", index + 1)


@settings(max_examples=100, deadline=None)
@given(chains.filter(lambda c: len(c) >= 2), st.data())
def test_reordering_is_detected(items: list[AuditDraft], data: st.DataObject) -> None:
    events = seal_all(items)
    i = data.draw(st.integers(0, len(events) - 2))
    events[i], events[i + 1] = events[i + 1], events[i]
    problem = verify(records(events))["n"].problem
    assert problem is not None and problem.seq == i + 1
    assert problem.kind == "missing"  # seq i+2 arrives where i+1 was expected


@settings(max_examples=100, deadline=None)
@given(chains, st.data())
def test_exact_copies_are_counted_not_fatal(items: list[AuditDraft], data: st.DataObject) -> None:
    events = seal_all(items)
    index = data.draw(st.integers(0, len(events) - 1))
    events.insert(index + 1, events[index])
    report = verify(records(events))["n"]
    assert report.ok and report.duplicates == 1 and report.events == len(events) - 1


@settings(max_examples=50, deadline=None)
@given(chains, drafts())
def test_a_fork_is_detected(items: list[AuditDraft], other: AuditDraft) -> None:
    events = seal_all(items)
    head = events[-1]
    fork = Chain("n", head.seq - 1, head.prev_hash).seal(other)
    if fork.hash == head.hash:
        return
    problem = verify(records([*events, fork]))["n"].problem
    assert problem is not None and (problem.kind, problem.seq) == ("fork", head.seq)


def test_nodes_are_checked_separately_and_interleaving_is_fine() -> None:
    a = seal_all([AuditDraft(tenant="t", actor="x", action="a")] * 3, node="a")
    b = seal_all([AuditDraft(tenant="t", actor="x", action="b")] * 2, node="b")
    mixed = [a[0], b[0], a[1], b[1], a[2]]
    reports = verify(records(mixed))
    assert reports["a"].ok and reports["a"].events == 3
    assert reports["b"].ok and reports["b"].events == 2


def test_keyed_chain_fails_without_the_key() -> None:
    events = seal_all([AuditDraft(tenant="t", actor="x", action="a")] * 2, key=b"secret")
    assert verify(records(events), key=b"secret")["n"].ok
    problem = verify(records(events))["n"].problem
    assert problem is not None and problem.kind == "hash_mismatch"


def test_unreadable_record_is_reported() -> None:
    reports = verify([("0", b"{not json")])
    assert reports["?"].problem is not None and reports["?"].problem.kind == "invalid"


def test_partial_source_from_an_anchor() -> None:
    events = seal_all([AuditDraft(tenant="t", actor="x", action="a")] * 5)
    tail = events[2:]
    assert not verify(records(tail))["n"].ok
    assert verify(records(tail), start_seq=3, anchor=events[1].hash)["n"].ok
    assert verify(records(tail), start_seq=3, anchor="")["n"].ok
