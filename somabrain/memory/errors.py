"""Errors raised by the memory library (indexes, log, tenant state).

The hierarchy::

    SomaError                      (somabrain.actors: the base of every SomaBrain error)
    └── MemoryStoreError
        ├── UnknownMemoryError     a link names a key this tenant does not hold (also a KeyError)
        ├── TenantMismatchError    a memory names another tenant than its store (also a ValueError)
        ├── InvalidVectorError     a supplied vector has the wrong shape or is not finite
        │                          (also a ValueError)
        └── LogError
            ├── LogCorruptError    the file is not a memory log, or a record whose checksum is
            │                      valid does not decode (a bug or a version skew, never a torn
            │                      write: those are truncated silently on open)
            ├── LogLockedError     another handle (this process or another) holds the log
            ├── LogClosedError     you closed the log and then used it
            ├── LogUnavailableError  the log's database could not be reached: nothing of the
            │                      write was acknowledged; the next write tries again
            └── LogBrokenError     a write or fsync failed: the log refuses further appends,
                │                  because after a failed fsync the kernel may have dropped the
                │                  dirty pages and nothing written since can be trusted
                └── LogStaleError  the log holds records this process has not applied (another
                                   writer appended to the tenant, or a commit whose answer was
                                   lost did land): reopening the tenant replays them

As in trio, "closed" (your code did it) and "broken" (something outside did it) are separate
cases, so a caller can decide whether to restart (broken) or treat it as a bug (closed).
"""

from __future__ import annotations

from ..actors import SomaError

__all__ = [
    "InvalidVectorError",
    "LogBrokenError",
    "LogClosedError",
    "LogCorruptError",
    "LogError",
    "LogLockedError",
    "LogStaleError",
    "LogUnavailableError",
    "MemoryStoreError",
    "TenantMismatchError",
    "UnknownMemoryError",
]


class MemoryStoreError(SomaError):
    """Base of the errors of the memory library."""


class UnknownMemoryError(MemoryStoreError, KeyError):
    """A key was named that the tenant does not hold (e.g. one end of a link)."""

    def __init__(self, tenant: str, key: str) -> None:
        self.tenant = tenant
        self.key = key
        super().__init__(f"tenant {tenant!r} holds no memory with key {key!r}")

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return str(self.args[0])


class TenantMismatchError(MemoryStoreError, ValueError):
    """A memory addressed to one tenant was handed to another tenant's store."""

    def __init__(self, expected: str, got: str) -> None:
        self.expected = expected
        self.got = got
        super().__init__(f"memory names tenant {got!r} but this store belongs to {expected!r}")


class InvalidVectorError(MemoryStoreError, ValueError):
    """A caller-supplied embedding has the wrong dimension or holds NaN/inf."""

    def __init__(self, expected_dim: int, detail: str) -> None:
        self.expected_dim = expected_dim
        super().__init__(f"invalid vector (expected {expected_dim} finite floats): {detail}")


class LogError(MemoryStoreError):
    """Base of the errors of the durable memory log."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        super().__init__(f"{path}: {detail}")


class LogCorruptError(LogError):
    """The file is not a memory log, or a checksummed record failed to decode."""

    def __init__(self, path: str, offset: int, detail: str) -> None:
        self.offset = offset
        super().__init__(path, f"corrupt at byte {offset}: {detail}")


class LogLockedError(LogError):
    """Another open handle holds the log's lock; two writers would interleave records."""

    def __init__(self, path: str) -> None:
        super().__init__(path, "log is locked by another open handle")


class LogClosedError(LogError):
    """The log was closed by its owner and then used."""

    def __init__(self, path: str) -> None:
        super().__init__(path, "log is closed")


class LogBrokenError(LogError):
    """An earlier write or fsync failed; the log accepts no more appends."""

    def __init__(self, path: str, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(path, f"log is broken by an earlier I/O failure: {cause!r}")


class LogUnavailableError(LogError):
    """The log's store (PostgreSQL) could not be reached or did not answer in time; the write
    was not acknowledged, and the log tries again on the next one."""

    def __init__(self, path: str, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(path, f"the memory store is unavailable: {cause!r}")


class LogStaleError(LogBrokenError):
    """The tenant's log (in PostgreSQL) holds records this handle has not applied: another
    writer appended to it, or a commit whose answer was lost did land. This handle refuses
    further appends; a reopened one replays them (the memory actor does so by itself)."""
