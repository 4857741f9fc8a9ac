"""Hypothesis strategies for audit drafts (shared by the audit tests)."""

from __future__ import annotations

from hypothesis import strategies as st

from somabrain.audit import AuditDraft, RequestMeta

__all__ = ["drafts", "texts"]

# Every code point JSON can carry, surrogates excepted (they are not valid UTF-8).
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), texts)
actions = st.from_regex(r"[a-z0-9_]{1,8}(\.[a-z0-9_]{1,8}){0,2}", fullmatch=True)


@st.composite
def drafts(draw: st.DrawFn) -> AuditDraft:
    return AuditDraft(
        tenant=draw(texts),
        actor=draw(texts),
        action=draw(actions),
        decision=draw(st.sampled_from(["allow", "deny", "error", "none"])),
        reason=draw(texts),
        trace_id=draw(texts),
        request=RequestMeta(
            method=draw(st.sampled_from(["", "GET", "POST", "DELETE"])),
            path=draw(texts),
            status=draw(st.integers(0, 599)),
            client=draw(texts),
            attributes=draw(st.dictionaries(st.text(max_size=10), scalars, max_size=4)),
        ),
        constitution_checksum=draw(st.sampled_from(["", "ab" * 64])),
    )
