"""Sealing drafts into a node's chain, and verifying a stored chain.

:class:`Chain` is the writer's in-memory head (last sequence number and hash). It is rebuilt
at start from what is durable (``writer`` takes the newest of the journal and the sinks), so a
restart continues the chain instead of forking it.

:func:`verify` reads events in stored order (Kafka offsets, stream ids, spool lines) and
checks, per node: every event parses and matches the schema's types; its ``hash`` matches its
content; ``seq`` counts up by one; ``prev_hash`` is the previous event's ``hash``. It stops at
the first problem of a node and names it (the missing sequence numbers, or the event whose
hash or link is wrong). A copy of an event already seen (same seq and same hash) is a
*detectable* duplicate: counted, and fatal only in strict mode.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import msgspec

from .event import (
    GENESIS,
    AuditDraft,
    AuditEvent,
    decode_event,
    event_hash,
    hash_and_encode,
    new_event_id,
    utc_now,
)

__all__ = ["Chain", "ChainProblem", "ChainReport", "verify"]


class Chain:
    """The head of one node's chain: seals drafts in order."""

    __slots__ = ("hash", "key", "node", "seq")

    def __init__(
        self, node: str, seq: int = 0, head_hash: str = GENESIS, key: bytes | None = None
    ) -> None:
        self.node = node
        self.seq = seq
        self.hash = head_hash
        self.key = key

    def seal(self, draft: AuditDraft) -> AuditEvent:
        return self.seal_encoded(draft)[0]

    def seal_encoded(self, draft: AuditDraft) -> tuple[AuditEvent, bytes]:
        """The sealed event and its wire form (``encode_event``), encoded once."""
        event = AuditEvent(
            event_id=draft.event_id or new_event_id(),
            time=draft.time or utc_now(),
            node=self.node,
            seq=self.seq + 1,
            tenant=draft.tenant,
            actor=draft.actor,
            action=draft.action,
            decision=draft.decision,
            reason=draft.reason,
            trace_id=draft.trace_id,
            request=draft.request,
            constitution_checksum=draft.constitution_checksum,
            prev_hash=self.hash,
        )
        digest, payload = hash_and_encode(event, self.key)
        self.seq += 1
        self.hash = digest
        return msgspec.structs.replace(event, hash=digest), payload

    def reset(self, seq: int, head_hash: str) -> None:
        self.seq = seq
        self.hash = head_hash


#: How far back (in sequence numbers) an exact copy is still recognised as a duplicate.
_DUPLICATE_WINDOW = 100_000

ProblemKind = Literal["invalid", "hash_mismatch", "broken_link", "missing", "out_of_order", "fork"]


class ChainProblem(msgspec.Struct, frozen=True):
    """The first thing wrong with a node's chain."""

    kind: ProblemKind
    #: The sequence number where the chain breaks (for ``missing``: the first missing one).
    seq: int
    #: The event found there ("" when the problem is that nothing was found).
    event_id: str
    detail: str
    #: Position of the offending record in the source (offset, line, stream id).
    position: str = ""


class ChainReport(msgspec.Struct):
    node: str
    events: int = 0
    first_seq: int = 0
    last_seq: int = 0
    head_hash: str = ""
    duplicates: int = 0
    problem: ChainProblem | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        if self.problem is None:
            dup = f", {self.duplicates} duplicate(s) skipped" if self.duplicates else ""
            span = f"seq {self.first_seq}..{self.last_seq}" if self.events else "empty"
            return f"node {self.node}: ok, {self.events} events, {span}{dup}"
        p = self.problem
        where = f" at {p.position}" if p.position else ""
        ident = f" (event {p.event_id})" if p.event_id else ""
        return f"node {self.node}: BROKEN at seq {p.seq}{ident}{where}: {p.kind}: {p.detail}"


class _State:
    __slots__ = ("report", "seen")

    def __init__(self, node: str) -> None:
        self.report = ChainReport(node)
        self.seen: dict[int, str] = {}  # seq -> hash, to recognise exact duplicates


def verify(
    records: Iterable[tuple[str, bytes | AuditEvent]],
    *,
    key: bytes | None = None,
    start_seq: int | None = 1,
    anchor: str = GENESIS,
    nodes: Sequence[str] = (),
) -> dict[str, ChainReport]:
    """Verify ``(position, record)`` pairs in stored order; one report per node.

    ``start_seq``/``anchor`` let a source that no longer holds the beginning (retention,
    drained spool) be checked from a known event on: the first event must then have
    ``seq == start_seq`` (any seq when ``None``) and ``prev_hash == anchor``, unless ``anchor``
    is ``""`` (accept the first event's link as given).
    """
    states: dict[str, _State] = {node: _State(node) for node in nodes}
    for position, record in records:
        if isinstance(record, AuditEvent):
            event = record
        else:
            try:
                event = decode_event(record)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                # A record we cannot read cannot be attributed to a node: it breaks every chain
                # that is still open, which the operator must look at anyway.
                state = states.setdefault("?", _State("?"))
                _fail(state, "invalid", 0, "", f"unreadable record: {exc}", position)
                continue
        if nodes and event.node not in nodes:
            continue
        found = states.get(event.node)
        if found is None:
            found = states[event.node] = _State(event.node)
        state = found
        if state.report.problem is None:
            _check(state, event, position, key, start_seq, anchor)
    return {node: state.report for node, state in states.items()}


def _fail(
    state: _State, kind: ProblemKind, seq: int, event_id: str, detail: str, position: str
) -> None:
    if state.report.problem is None:
        state.report.problem = ChainProblem(kind, seq, event_id, detail, position)


def _check(
    state: _State,
    event: AuditEvent,
    position: str,
    key: bytes | None,
    start_seq: int | None,
    anchor: str,
) -> None:
    report = state.report
    computed = event_hash(event, key)
    if computed != event.hash:
        _fail(
            state,
            "hash_mismatch",
            event.seq,
            event.event_id,
            "content does not match its hash",
            position,
        )
        return
    seen = state.seen.get(event.seq)
    if seen is not None:
        if seen == event.hash:
            report.duplicates += 1
        else:
            _fail(
                state,
                "fork",
                event.seq,
                event.event_id,
                "two different events share this seq",
                position,
            )
        return
    if report.events:
        expected_seq = report.last_seq + 1
    else:
        expected_seq = event.seq if start_seq is None else start_seq
    expected_prev = report.head_hash if report.events else anchor
    if event.seq < expected_seq:
        _fail(
            state,
            "out_of_order",
            event.seq,
            event.event_id,
            f"seq {event.seq} after seq {report.last_seq}",
            position,
        )
        return
    if event.seq > expected_seq:
        missing = (
            f"seq {expected_seq}"
            if event.seq == expected_seq + 1
            else f"seq {expected_seq}..{event.seq - 1}"
        )
        _fail(
            state,
            "missing",
            expected_seq,
            "",
            f"{missing} not found before event {event.event_id}",
            position,
        )
        return
    if expected_prev and event.prev_hash != expected_prev:
        _fail(
            state,
            "broken_link",
            event.seq,
            event.event_id,
            "prev_hash is not the hash of the previous event",
            position,
        )
        return
    if not report.events:
        report.first_seq = event.seq
    report.events += 1
    report.last_seq = event.seq
    report.head_hash = event.hash
    seen_map = state.seen
    seen_map[event.seq] = event.hash
    if len(seen_map) > 2 * _DUPLICATE_WINDOW:
        # Keep memory bounded on long chains: retried copies arrive close to their original.
        for seq in [s for s in seen_map if s <= event.seq - _DUPLICATE_WINDOW]:
            del seen_map[seq]
