"""Dead letters: messages that reached an actor that is gone. Counted and inspectable."""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

import msgspec

__all__ = ["DeadLetter", "DeadLetters"]


class DeadLetter(msgspec.Struct, frozen=True):
    recipient: str
    message_type: str
    reason: str
    at: float


class DeadLetters:
    """Counts every dead letter and keeps the most recent ones for inspection."""

    def __init__(self, keep: int = 1000) -> None:
        self._recent: deque[DeadLetter] = deque(maxlen=keep)
        self._by_recipient: Counter[str] = Counter()
        self.total = 0

    def record(self, recipient: str, message: Any, reason: str) -> None:
        self.total += 1
        self._by_recipient[recipient] += 1
        self._recent.append(DeadLetter(recipient, type(message).__qualname__, reason, time.time()))

    def recent(self, limit: int = 100) -> list[DeadLetter]:
        return list(self._recent)[-limit:]

    def by_recipient(self) -> dict[str, int]:
        return dict(self._by_recipient)

    def statistics(self) -> dict[str, Any]:
        return {"total": self.total, "by_recipient": self.by_recipient()}
