"""Subjects, patterns and the subscription index: the pure part of the bus (no I/O).

NATS rules, checked the same way for every transport so that a subject the in-process bus
accepts is one a NATS server accepts too:

* a subject is a non-empty string of dot-separated, non-empty tokens;
* no whitespace and no control characters anywhere (CR/LF would let a caller inject protocol
  lines into a NATS connection: nats.py rejects them for the same reason);
* a *publish* subject carries no wildcard character at all, so what is published is always a
  concrete address;
* a *subscription pattern* may use ``*`` (exactly one token) and ``>`` (one or more trailing
  tokens), but only as whole tokens and ``>`` only last. ``foo*`` or ``a.>.b`` are refused
  rather than read as literals, because a reader could not tell which one was meant.

:class:`SubjectIndex` is a token trie of patterns with a per-subject result cache, modelled on
nats-server's sublist: a publish looks its subject up in a dict, and only a cache miss walks
the trie. Any change to the subscriptions clears the cache, so a result is never stale.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar, cast

from ._exceptions import InvalidSubjectError

__all__ = [
    "SubjectIndex",
    "SubjectMatch",
    "matches",
    "validate_pattern",
    "validate_queue",
    "validate_subject",
]

# A token is anything but dots, wildcards, whitespace and control characters.
_TOKEN = r"[^.*>\s\x00-\x1f\x7f]+"
_SUBJECT_RE = re.compile(rf"{_TOKEN}(?:\.{_TOKEN})*")
_PATTERN_TOKEN = rf"(?:{_TOKEN}|\*)"
_PATTERN_RE = re.compile(rf"(?:{_PATTERN_TOKEN}(?:\.{_PATTERN_TOKEN})*(?:\.>)?|>)")
_QUEUE_RE = re.compile(r"[^\s\x00-\x1f\x7f]+")


def _shape_error(text: str, what: str) -> str | None:
    """The reason ``text`` breaks a rule shared by subjects and patterns, or ``None``."""
    if not text:
        return f"empty {what}"
    if "\r" in text or "\n" in text:
        return "contains CR or LF"
    for char in text:
        if char.isspace():
            return f"contains whitespace ({char!r})"
        if ord(char) < 0x20 or ord(char) == 0x7F:
            return f"contains a control character ({char!r})"
    if text.startswith("."):
        return "starts with '.' (empty first token)"
    if text.endswith("."):
        return "ends with '.' (empty last token)"
    if ".." in text:
        return "contains '..' (empty token)"
    return None


def validate_subject(subject: str) -> None:
    """Check a subject to publish (or request) on; raise :class:`InvalidSubjectError` if bad."""
    if type(subject) is str and _SUBJECT_RE.fullmatch(subject):
        return
    if not isinstance(subject, str):
        raise InvalidSubjectError(repr(subject), f"must be a str, not {type(subject).__name__}")
    reason = _shape_error(subject, "subject")
    if reason is None:
        wildcard = "*" if "*" in subject else ">"
        reason = f"wildcard {wildcard!r} is not allowed in a publish subject"
    raise InvalidSubjectError(subject, reason)


def validate_pattern(pattern: str) -> None:
    """Check a subscription pattern; raise :class:`InvalidSubjectError` if bad.

    Stricter about wildcards than :func:`validate_subject` is lenient: they are allowed, but
    ``*`` only as a whole token and ``>`` only as the whole last token.
    """
    if type(pattern) is str and _PATTERN_RE.fullmatch(pattern):
        return
    if not isinstance(pattern, str):
        raise InvalidSubjectError(repr(pattern), f"must be a str, not {type(pattern).__name__}")
    reason = _shape_error(pattern, "pattern")
    if reason is None:
        for token in pattern.split("."):
            if token == ">":
                reason = "'>' must be the last token"
                break
            if "*" in token and token != "*":
                reason = f"'*' must be a whole token, not part of {token!r}"
                break
            if ">" in token:
                reason = f"'>' must be a whole token, not part of {token!r}"
                break
        else:  # pragma: no cover - the regex and this loop agree on what is valid
            reason = "invalid pattern"
    raise InvalidSubjectError(pattern, reason)


def validate_queue(queue: str) -> None:
    """Check a queue group name: non-empty, no whitespace or control characters."""
    if type(queue) is str and _QUEUE_RE.fullmatch(queue):
        return
    if not isinstance(queue, str):
        raise InvalidSubjectError(repr(queue), f"queue group must be a str, not {type(queue)}")
    reason = _shape_error(queue, "queue group name") or "invalid queue group name"
    raise InvalidSubjectError(queue, f"queue group: {reason}")


def matches(pattern: str, subject: str) -> bool:
    """Does ``pattern`` match ``subject``? Both are assumed valid (see the validators)."""
    pattern_tokens = pattern.split(".")
    subject_tokens = subject.split(".")
    count = len(subject_tokens)
    for position, token in enumerate(pattern_tokens):
        if token == ">":
            return count > position
        if position >= count:
            return False
        if token != "*" and token != subject_tokens[position]:
            return False
    return len(pattern_tokens) == count


# ---------------------------------------------------------------------------------- index

T = TypeVar("T", bound=Hashable)


class SubjectMatch(Generic[T]):
    """What one subject matches: plain subscribers (each gets the message) and queue groups
    (one member of each gets it). Both in subscription order, so delivery is deterministic."""

    __slots__ = ("groups", "plain")

    def __init__(self, plain: tuple[T, ...], groups: tuple[tuple[T, ...], ...]) -> None:
        self.plain = plain
        self.groups = groups

    def __bool__(self) -> bool:
        return bool(self.plain or self.groups)

    def __iter__(self) -> Iterator[T]:
        yield from self.plain
        for members in self.groups:
            yield from members

    def __repr__(self) -> str:
        return f"SubjectMatch(plain={self.plain!r}, groups={self.groups!r})"


class _Node:
    __slots__ = ("children", "full", "groups", "plain", "star")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.star: _Node | None = None
        self.full: _Node | None = None  # the '>' child: its items match any non-empty rest
        self.plain: dict[object, int] = {}  # item -> insertion sequence
        self.groups: dict[str, dict[object, int]] = {}

    def empty(self) -> bool:
        return not (self.children or self.star or self.full or self.plain or self.groups)


class SubjectIndex(Generic[T]):
    """Patterns -> items (subscriptions), looked up by concrete subject.

    ``match`` validates the subject on a cache miss only: every cached subject is valid, so
    the hot path (publishing again on a known subject) costs one dict lookup whatever the
    number of wildcard patterns. The cache is bounded (oldest entry evicted first) because
    subjects carry tenant names and would otherwise grow without limit.
    """

    def __init__(self, cache_size: int = 4096) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        self._root = _Node()
        self._cache: dict[str, SubjectMatch[T]] = {}
        #: ``cached(subject)``: the cached match or ``None``; no validation, no trie walk.
        #: The publish hot path calls it first and falls back to :meth:`match`.
        self.cached = self._cache.get
        self._cache_size = cache_size
        self._sequence = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, pattern: str, item: T, queue: str | None = None) -> None:
        """Index ``item`` under ``pattern`` (validated), in queue group ``queue`` if given."""
        validate_pattern(pattern)
        if queue is not None:
            validate_queue(queue)
        node = self._root
        for token in pattern.split("."):
            if token == "*":
                node.star = node = node.star or _Node()
            elif token == ">":
                node.full = node = node.full or _Node()
            else:
                node = node.children.setdefault(token, _Node())
        bucket = node.plain if queue is None else node.groups.setdefault(queue, {})
        if item not in bucket:
            self._sequence += 1
            bucket[item] = self._sequence
            self._count += 1
        self._cache.clear()

    def remove(self, pattern: str, item: T, queue: str | None = None) -> bool:
        """Remove ``item`` from ``pattern``; returns whether it was there."""
        path: list[tuple[_Node, str]] = []
        node = self._root
        for token in pattern.split("."):
            path.append((node, token))
            if token == "*":
                child = node.star
            elif token == ">":
                child = node.full
            else:
                child = node.children.get(token)
            if child is None:
                return False
            node = child
        bucket = node.plain if queue is None else node.groups.get(queue)
        if bucket is None or bucket.pop(item, None) is None:
            return False
        if queue is not None and not bucket:
            del node.groups[queue]
        self._count -= 1
        self._cache.clear()
        # Prune the branch so that churn (tenants coming and going) does not leak nodes.
        for parent, token in reversed(path):
            if not node.empty():
                break
            if token == "*":
                parent.star = None
            elif token == ">":
                parent.full = None
            else:
                del parent.children[token]
            node = parent
        return True

    def match(self, subject: str, *, cache: bool = True) -> SubjectMatch[T]:
        """Everything subscribed to ``subject``; raises :class:`InvalidSubjectError` if the
        subject is not a valid publish subject. ``cache=False`` is for one-shot subjects
        (reply inboxes) that would only evict useful entries."""
        found = self._cache.get(subject)
        if found is not None:
            return found
        validate_subject(subject)
        plain: list[tuple[int, object]] = []
        groups: dict[str, list[tuple[int, object]]] = {}
        self._collect(self._root, subject.split("."), 0, plain, groups)
        if plain or groups:
            plain.sort(key=_by_sequence)
            grouped: list[tuple[object, ...]] = []
            for members in groups.values():
                members.sort(key=_by_sequence)
                grouped.append(tuple(item for _, item in members))
            found = cast(
                SubjectMatch[T], SubjectMatch(tuple(item for _, item in plain), tuple(grouped))
            )
        else:
            found = cast(SubjectMatch[T], _EMPTY)
        if cache:
            entries = self._cache
            if len(entries) >= self._cache_size:
                del entries[next(iter(entries))]
            entries[subject] = found
        return found

    def _collect(
        self,
        node: _Node,
        tokens: list[str],
        position: int,
        plain: list[tuple[int, object]],
        groups: dict[str, list[tuple[int, object]]],
    ) -> None:
        if position == len(tokens):
            _gather(node, plain, groups)
            return
        child = node.children.get(tokens[position])
        if child is not None:
            self._collect(child, tokens, position + 1, plain, groups)
        if node.star is not None:
            self._collect(node.star, tokens, position + 1, plain, groups)
        if node.full is not None:
            _gather(node.full, plain, groups)


def _gather(
    node: _Node, plain: list[tuple[int, object]], groups: dict[str, list[tuple[int, object]]]
) -> None:
    plain.extend((sequence, item) for item, sequence in node.plain.items())
    for queue, members in node.groups.items():
        groups.setdefault(queue, []).extend((seq, item) for item, seq in members.items())


def _by_sequence(entry: tuple[int, object]) -> int:
    return entry[0]


_EMPTY: SubjectMatch[object] = SubjectMatch((), ())
