"""The subject bus: NATS semantics behind one interface, two transports.

(Interface only; transports are filled in below.)
"""

from __future__ import annotations

from typing import Any, Protocol

import anyio.abc

__all__ = ["Bus"]


class Bus(Protocol):
    async def start(self, task_group: anyio.abc.TaskGroup) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, subject: str, data: Any, *, reply: str | None = None) -> None: ...


class InProcessBus:
    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        pass

    async def close(self) -> None:
        pass

    async def publish(self, subject: str, data: Any, *, reply: str | None = None) -> None:
        raise NotImplementedError
