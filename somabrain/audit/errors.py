"""Audit errors.

::

    SomaError
    └── AuditError
        ├── AuditUnavailableError   record() could not make the event durable anywhere (or in time)
        ├── SinkUnavailableError    one tier (Kafka, Redis) is unreachable: the writer falls back
        └── SpoolCorruptError       a spool line that is not a torn tail is unreadable
"""

from __future__ import annotations

from pathlib import Path

from ..actors import SomaError

__all__ = ["AuditError", "AuditUnavailableError", "SinkUnavailableError", "SpoolCorruptError"]


class AuditError(SomaError):
    """Base of the audit errors."""


class AuditUnavailableError(AuditError):
    """The event was not acknowledged: it may or may not be stored, and the change it describes
    must be treated as failed (the edge answers 503)."""


class SinkUnavailableError(AuditError):
    """A tier could not take a batch; the writer tries the next one."""

    def __init__(self, sink: str, reason: str) -> None:
        self.sink = sink
        self.reason = reason
        super().__init__(f"{sink} unavailable: {reason}")


class SpoolCorruptError(AuditError):
    """A spool segment has an unreadable line before its end: not a crash, a corruption."""

    def __init__(self, path: Path, offset: int) -> None:
        self.path = path
        self.offset = offset
        super().__init__(f"spool segment {path} is corrupt at byte {offset}")
