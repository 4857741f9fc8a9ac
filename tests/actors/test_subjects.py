"""Subject rules, wildcard matching and the subscription index (pure, no I/O)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from somabrain.actors import InvalidSubjectError
from somabrain.actors.subjects import (
    SubjectIndex,
    matches,
    validate_pattern,
    validate_queue,
    validate_subject,
)

# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "subject", ["a", "soma.mem.tenant-1.remember", "_INBOX.abc.1", "ünïcode.ok", "a-b_c:d/e"]
)
def test_valid_subjects(subject: str) -> None:
    validate_subject(subject)
    validate_pattern(subject)  # every publish subject is a valid pattern too


@pytest.mark.parametrize(
    ("subject", "reason"),
    [
        ("", "empty subject"),
        (".a", "starts with '.'"),
        ("a.", "ends with '.'"),
        ("a..b", "'..'"),
        ("a b", "whitespace"),
        ("a\tb", "whitespace"),
        ("a\r\nPUB x 1", "CR or LF"),
        ("a\nb", "CR or LF"),
        ("a\x00b", "control character"),
        ("a.*", "wildcard '*' is not allowed"),
        ("a.>", "wildcard '>' is not allowed"),
        ("a.b*", "wildcard '*' is not allowed"),
    ],
)
def test_invalid_subjects_say_why(subject: str, reason: str) -> None:
    with pytest.raises(InvalidSubjectError) as caught:
        validate_subject(subject)
    assert caught.value.subject == subject
    assert reason in caught.value.reason
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("pattern", ["*", ">", "a.*", "a.>", "*.b.>", "a.*.*.d", "*.*"])
def test_valid_patterns(pattern: str) -> None:
    validate_pattern(pattern)


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("", "empty pattern"),
        ("a..*", "'..'"),
        ("a.>.b", "'>' must be the last token"),
        (">.a", "'>' must be the last token"),
        ("a.b*", "'*' must be a whole token"),
        ("a.*b.c", "'*' must be a whole token"),
        ("a.b>", "'>' must be a whole token"),
        ("a.>>", "'>' must be a whole token"),
        ("a. *", "whitespace"),
        ("a.\r\n", "CR or LF"),
    ],
)
def test_invalid_patterns_say_why(pattern: str, reason: str) -> None:
    with pytest.raises(InvalidSubjectError) as caught:
        validate_pattern(pattern)
    assert reason in caught.value.reason


def test_non_strings_are_refused() -> None:
    with pytest.raises(InvalidSubjectError, match="must be a str"):
        validate_subject(b"a.b")  # type: ignore[arg-type]
    with pytest.raises(InvalidSubjectError, match="must be a str"):
        validate_pattern(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("queue", ["", "a b", "q\n"])
def test_invalid_queue_names(queue: str) -> None:
    with pytest.raises(InvalidSubjectError, match="queue group"):
        validate_queue(queue)


# -------------------------------------------------------------------------------- matching


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.b", "a.c", False),
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.*", "a", False),
        ("a.>", "a.b", True),
        ("a.>", "a.b.c.d", True),
        ("a.>", "a", False),
        (">", "a", True),
        (">", "a.b.c", True),
        ("*", "a", True),
        ("*", "a.b", False),
        ("*.b.>", "x.b.c", True),
        ("*.b.>", "x.b", False),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.b.d", False),
        ("a.b", "a.b.c", False),
        ("a.b.c", "a.b", False),
    ],
)
def test_matches(pattern: str, subject: str, expected: bool) -> None:
    assert matches(pattern, subject) is expected


tokens = st.text(alphabet="abcxyz-_01", min_size=1, max_size=3)
subjects = st.lists(tokens, min_size=1, max_size=6).map(".".join)


@st.composite
def patterns(draw: st.DrawFn, alphabet: st.SearchStrategy[str] = tokens) -> str:
    parts = draw(st.lists(st.one_of(alphabet, st.just("*")), min_size=1, max_size=6))
    if draw(st.booleans()):
        parts.append(">")
    return ".".join(parts)


def reference_matches(pattern: str, subject: str) -> bool:
    """An independent definition: the pattern as a regular expression over the subject."""
    parts = []
    for token in pattern.split("."):
        if token == "*":
            parts.append(r"[^.]+")
        elif token == ">":
            parts.append(r"[^.]+(?:\.[^.]+)*")
        else:
            parts.append(re.escape(token))
    return re.fullmatch(r"\.".join(parts), subject) is not None


@given(patterns(), subjects)
def test_matches_agrees_with_a_regex_reference(pattern: str, subject: str) -> None:
    validate_pattern(pattern)
    assert matches(pattern, subject) == reference_matches(pattern, subject)


@given(subjects, st.data())
def test_wildcarding_a_subject_still_matches_it(subject: str, data: st.DataObject) -> None:
    parts = subject.split(".")
    starred = [data.draw(st.sampled_from([token, "*"])) for token in parts]
    assert matches(".".join(starred), subject)
    cut = data.draw(st.integers(min_value=0, max_value=len(parts) - 1))
    assert matches(".".join([*starred[:cut], ">"]), subject)
    assert not matches(".".join([*starred, ">"]), subject)  # '>' needs one more token


@given(subjects)
def test_a_subject_matches_itself_and_nothing_longer_or_shorter(subject: str) -> None:
    assert matches(subject, subject)
    assert not matches(subject + ".x", subject)
    assert not matches(subject, subject + ".x")


printable = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)


@given(printable)
def test_validation_agrees_with_the_rules(text: str) -> None:
    tokens_ok = all(text.split(".")) and not any(
        c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text
    )
    subject_ok = tokens_ok and "*" not in text and ">" not in text
    try:
        validate_subject(text)
    except InvalidSubjectError:
        assert not subject_ok
    else:
        assert subject_ok
    pattern_tokens = text.split(".")
    pattern_ok = tokens_ok and all(
        (token in ("*", ">") or ("*" not in token and ">" not in token))
        and (token != ">" or position == len(pattern_tokens) - 1)
        for position, token in enumerate(pattern_tokens)
    )
    try:
        validate_pattern(text)
    except InvalidSubjectError:
        assert not pattern_ok
    else:
        assert pattern_ok


# ----------------------------------------------------------------------------------- index


def test_index_splits_plain_subscribers_and_queue_groups() -> None:
    index: SubjectIndex[str] = SubjectIndex()
    index.add("orders.*", "audit")
    index.add("orders.>", "w1", queue="workers")
    index.add("orders.new", "w2", queue="workers")
    index.add("orders.new", "m1", queue="mirror")
    index.add("other", "nobody")
    found = index.match("orders.new")
    assert found.plain == ("audit",)
    assert sorted(found.groups) == [("m1",), ("w1", "w2")]
    assert set(found) == {"audit", "w1", "w2", "m1"}
    assert not index.match("nothing.here")


def test_index_results_follow_subscription_order() -> None:
    index: SubjectIndex[str] = SubjectIndex()
    for name, pattern in [("c", "a.>"), ("a", "a.b"), ("b", "*.b"), ("d", ">")]:
        index.add(pattern, name)
    assert index.match("a.b").plain == ("c", "a", "b", "d")


def test_index_cache_is_invalidated_on_change() -> None:
    index: SubjectIndex[str] = SubjectIndex()
    index.add("a.*", "one")
    assert index.match("a.b").plain == ("one",)
    index.add("a.b", "two")
    assert index.match("a.b").plain == ("one", "two")
    assert index.remove("a.*", "one")
    assert index.match("a.b").plain == ("two",)
    assert not index.remove("a.*", "one")
    assert index.remove("a.b", "two")
    assert not index.match("a.b")
    assert len(index) == 0
    assert index._root.empty()  # removed branches are pruned


def test_index_cache_is_bounded_and_validates_on_miss() -> None:
    index: SubjectIndex[str] = SubjectIndex(cache_size=2)
    index.add(">", "all")
    for subject in ["a", "b", "c", "d"]:
        assert index.match(subject).plain == ("all",)
    assert len(index._cache) == 2
    index.match("e", cache=False)
    assert "e" not in index._cache
    with pytest.raises(InvalidSubjectError):
        index.match("a.*")


def test_index_rejects_bad_patterns_and_queues() -> None:
    index: SubjectIndex[str] = SubjectIndex()
    with pytest.raises(InvalidSubjectError):
        index.add("a.>.b", "x")
    with pytest.raises(InvalidSubjectError):
        index.add("a", "x", queue="bad queue")


operations = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "match"]),
        patterns(st.sampled_from(["a", "b", "c"])),
        st.sampled_from([None, "q1", "q2"]),
        st.integers(min_value=0, max_value=3),
        st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=4).map(".".join),
    ),
    max_size=40,
)


@settings(max_examples=200)
@given(operations)
def test_index_agrees_with_brute_force(ops: list[tuple[str, str, str | None, int, str]]) -> None:
    index: SubjectIndex[tuple[str, int]] = SubjectIndex(cache_size=3)
    live: dict[tuple[str, str | None, tuple[str, int]], int] = {}
    sequence = 0
    for op, pattern, queue, item_no, subject in ops:
        item = (pattern, item_no)
        key = (pattern, queue, item)
        if op == "add":
            index.add(pattern, item, queue)
            if key not in live:
                sequence += 1
                live[key] = sequence
        elif op == "remove":
            assert index.remove(pattern, item, queue) == (key in live)
            live.pop(key, None)
        else:
            found = index.match(subject)
            hits = sorted((seq, q, it) for (p, q, it), seq in live.items() if matches(p, subject))
            assert list(found.plain) == [it for _, q, it in hits if q is None]
            expected_groups = {}
            for _, q, it in hits:
                if q is not None:
                    expected_groups.setdefault(q, []).append(it)
            assert sorted(found.groups) == sorted(tuple(g) for g in expected_groups.values())
        assert len(index) == len(live)
