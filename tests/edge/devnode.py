"""Run ``somabrain dev`` as a child process on a free loopback port, for end-to-end tests.

The node is started with ``--port 0``; its banner says which port it got and prints a token.
Start-up waits for the banner (never a fixed sleep); stop sends a signal and waits for the
exit code. Tokens for other tenants are signed in-process with the node's dev secret, exactly
as ``somabrain token`` would.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from somabrain.config import AuthSettings
from somabrain.edge.auth import Authenticator

__all__ = ["DevNode", "NodeError"]

_START_TIMEOUT = 30.0
_URL = re.compile(r"^\s*url:\s+(\S+)")
#: A cluster member waiting for NATS at start already listens, and says where.
_LISTENING = re.compile(r"^SomaBrain dev node listening at (\S+),")
_TOKEN = re.compile(r"^\s*token:\s+(\S+)")


class NodeError(RuntimeError):
    """The node did not start, or did not stop as expected (the message holds its output)."""


class DevNode:
    def __init__(
        self,
        data_dir: Path,
        *extra: str,
        backend: str = "asyncio",
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.extra = extra
        self.backend = backend
        self.env = env or {}
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self.url = ""
        self.token = ""
        self._reader: threading.Thread | None = None
        self._ready = threading.Event()

    # ------------------------------------------------------------------ lifecycle

    def start(self, port: int = 0, *, wait: bool = True) -> DevNode:
        """Start the node and wait for its banner; with ``wait=False``, return once the
        process runs (``wait_started``, ``wait_for_output`` wait for what it prints)."""
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        command: Sequence[str] = [
            sys.executable,
            "-m",
            "somabrain.cli",
            "dev",
            "--port",
            str(port),
            "--data-dir",
            str(self.data_dir),
            "--backend",
            self.backend,
            *self.extra,
        ]
        self.output = []
        self.url = self.token = ""
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            # Its own process group, as a service or a shell job has: ``stop(group=True)``
            # signals the node and its children at once, as Ctrl-C or systemd would.
            start_new_session=True,
        )
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, args=(self._ready,), daemon=True)
        self._reader.start()
        if wait:
            self.wait_started()
        return self

    def wait_started(self, timeout: float = _START_TIMEOUT) -> None:
        """Wait (bounded) for the banner: the node serves."""
        if not self._ready.wait(timeout) or not (self.url and self.token):
            self.kill()
            raise NodeError("the dev node did not start:\n" + "".join(self.output))

    def wait_for_output(self, text: str, timeout: float = _START_TIMEOUT) -> str:
        """Wait (bounded) until the node printed a line holding ``text``; that line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in list(self.output) if text in line), None)
            if found is not None:
                return found
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise NodeError(f"the dev node did not print {text!r}:\n" + "".join(self.output))

    def wait_exit(self, timeout: float = _START_TIMEOUT) -> int:
        """Wait (bounded) until the node exits by itself; its exit code."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise NodeError("the dev node did not exit:\n" + "".join(self.output)) from None
        self._join()
        return code

    def _read(self, ready: threading.Event) -> None:
        assert self.process is not None and self.process.stdout is not None
        try:
            for line in self.process.stdout:
                if match := _URL.match(line) or _LISTENING.match(line):
                    self.url = match.group(1)
                elif (match := _TOKEN.match(line)) and not self.token:
                    self.token = match.group(1)
                # After reading it: whoever waits for a line finds what it said (the URL).
                self.output.append(line)
                if self.url and self.token:
                    ready.set()
        finally:
            ready.set()

    def stop(
        self, signum: int = signal.SIGTERM, timeout: float = 30.0, *, group: bool = False
    ) -> int:
        """Signal the node (or, with ``group``, its whole process group) and wait for its
        exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            if group:
                os.killpg(self.process.pid, signum)
            else:
                self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise NodeError("the dev node did not stop:\n" + "".join(self.output)) from None
        self._join()
        return code

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to flush anything."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._join()

    def _join(self) -> None:
        if self._reader is not None:
            self._reader.join(10)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    @classmethod
    @contextlib.contextmanager
    def running(cls, data_dir: Path, *extra: str, backend: str = "asyncio") -> Iterator[DevNode]:
        node = cls(data_dir, *extra, backend=backend).start()
        try:
            yield node
        finally:
            node.kill()

    # ------------------------------------------------------------------ clients

    def token_for(self, *tenants: str, scopes: Sequence[str] = (), ttl: float | None = None) -> str:
        """A token signed with the node's dev secret (what ``somabrain token`` prints)."""
        issuer = Authenticator(AuthSettings(), self.data_dir).issuer()
        return issuer.issue(tenants, scopes=scopes, ttl=ttl, now=time.time())

    def client(self, token: str | None = None, **kwargs: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0, **kwargs)  # type: ignore[arg-type]

    def wait_ready(self, client: httpx.Client, attempts: int = 300) -> None:
        """Poll /readyz (bounded) until the tree is up again, e.g. after a kill."""
        for _ in range(attempts):
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        raise NodeError("the node did not become ready:\n" + "".join(self.output))
