"""Helpers of the cluster fault tests: a two-member cluster on its own nats-server, clients,
and agents that send requests in a thread while the test breaks things."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from somabrain.cluster.ownership import owner
from somabrain.config import AuthSettings
from somabrain.edge.auth import Authenticator
from tests.edge.devnode import DevNode
from tests.servers import NatsServer

SECRET = "a-secret-every-member-shares-0123456789"
MEMBERS = ["node-a", "node-b"]
#: cluster.request_timeout of the members: no answer may take longer (plus the HTTP hop).
REQUEST_TIMEOUT = 2.0
BOUND = REQUEST_TIMEOUT + 3.0


def tenant_owned_by(member: str, prefix: str, *member_lists: list[str]) -> str:
    """A tenant that ``member`` owns under every list given (MEMBERS by default)."""
    lists = member_lists or (MEMBERS,)
    candidates = (f"{prefix}-{i}" for i in range(1000))
    return next(t for t in candidates if all(owner(t, m) == member for m in lists))


def config(name: str, nats_url: str, members: list[str], extra: str = "") -> str:
    """A member's config; ``extra`` is TOML appended to it (keys of ``[cluster]`` first)."""
    listed = ", ".join(f'"{m}"' for m in members)
    return f"""
[node]
name = "{name}"

[auth]
secret = "{SECRET}"

[edge.rate_limit]
enabled = false

[cluster]
nats_url = "{nats_url}"
members = [{listed}]
request_timeout = {REQUEST_TIMEOUT}
{extra}
"""


def start_member(
    root: Path, name: str, nats_url: str, members: list[str] = MEMBERS, extra: str = ""
) -> DevNode:
    path = root / f"{name}.toml"
    path.write_text(config(name, nats_url, members, extra))
    return DevNode(root / name, "--config", str(path)).start()


@dataclass
class Cluster:
    nats: NatsServer
    nodes: dict[str, DevNode]

    @property
    def a(self) -> DevNode:
        return self.nodes["node-a"]

    @property
    def b(self) -> DevNode:
        return self.nodes["node-b"]


@contextmanager
def cluster(
    root: Path, members: dict[str, list[str]] | None = None, extra: str = ""
) -> Iterator[Cluster]:
    """A nats-server of its own (fault tests kill it) and one member per entry of
    ``members`` (name: its cluster.members); ``extra``: TOML for every member's config."""
    lists = members or {name: MEMBERS for name in MEMBERS}
    with NatsServer.running() as nats:
        nodes: dict[str, DevNode] = {}
        try:
            for name, listed in lists.items():
                nodes[name] = start_member(root, name, nats.url, listed, extra)
            for node in nodes.values():
                with client(node, "default") as c:
                    node.wait_ready(c)
            yield Cluster(nats, nodes)
        finally:
            for node in nodes.values():
                node.kill()


def client(node: DevNode, *tenants: str, scopes: tuple[str, ...] = ("admin",)) -> httpx.Client:
    token = (
        Authenticator(AuthSettings(secret=SECRET), Path(node.data_dir))
        .issuer()
        .issue(list(tenants), scopes=list(scopes), now=time.time())
    )
    return node.client(token)


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text[:500]
    body: dict[str, Any] = response.json()
    return body


def assert_unavailable(response: httpx.Response, *fragments: str) -> None:
    """A clean 503: code ``unavailable``, Retry-After, and the message says why."""
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "unavailable", error
    assert response.headers.get("Retry-After") == "1"
    for fragment in fragments:
        assert fragment in error["message"], error


def wait_for(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll ``check`` (bounded) until it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def health(node: DevNode) -> dict[str, Any]:
    with client(node, "default") as c:
        return ok(c.get("/health"))


@dataclass
class Answer:
    label: str
    status: int  # 0: no HTTP answer (the node is down)
    code: str
    seconds: float
    key: str = ""
    content: str = ""


@dataclass
class Agents:
    """Agents that send remember and recall for their tenants through the given nodes, in a
    thread, until ``stop`` (or ``limit`` requests): what each request got is kept."""

    routes: list[tuple[str, DevNode, str]]  # (label, node, tenant)
    limit: int = 3000
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Agents:
        self._thread = threading.Thread(target=self._run, name="agents", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
            assert not self._thread.is_alive(), "the agents did not stop"

    def _run(self) -> None:
        clients = [(label, client(node, tenant)) for label, node, tenant in self.routes]
        try:
            for i in range(self.limit):
                if self._stop.is_set():
                    return
                label, c = clients[i % len(clients)]
                content = f"{label} agent fact {i}"
                if i % 2 == 0:
                    self._send(f"{label} remember", content, c.post, "/memory/remember",
                               json={"content": content})  # fmt: skip
                else:
                    self._send(f"{label} recall", "", c.post, "/memory/recall",
                               json={"query": "agent fact", "top_k": 3})  # fmt: skip
        finally:
            for _, c in clients:
                c.close()

    def _send(self, label: str, content: str, send: Any, path: str, **kwargs: Any) -> None:
        started = time.monotonic()
        try:
            r = send(path, **kwargs)
        except httpx.TransportError:
            self.answers.append(Answer(label, 0, "", time.monotonic() - started))
            time.sleep(0.05)
            return
        seconds = time.monotonic() - started
        try:
            body = r.json()
        except ValueError:
            body = {"error": {"code": r.text[:100]}}
        code = body["error"]["code"] if r.status_code != 200 else ""
        key = body.get("key", "") if r.status_code == 200 else ""
        self.answers.append(Answer(label, r.status_code, code, seconds, key, content))

    def count(self, status: int) -> int:
        return sum(a.status == status for a in self.answers)

    def acknowledged(self) -> list[Answer]:
        return [a for a in self.answers if a.status == 200 and a.key]

    def assert_clean(self) -> None:
        """Every answer a 200 or a clean 503 (or no answer from a killed node), and none
        later than the bound."""
        for answer in self.answers:
            assert answer.status in (0, 200, 503), answer
            if answer.status == 503:
                assert answer.code in ("unavailable", "timeout"), answer
            assert answer.seconds < BOUND, answer
