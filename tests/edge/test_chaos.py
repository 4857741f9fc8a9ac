"""Chaos: actors killed at random while agents write and read.

A real dev node (reads audited too), two tenants, three agents each (threads, one keep-alive
connection apiece) remembering (single and batch, some with links to earlier memories),
recalling, getting, linking, evaluating and giving feedback, retrying 503s and refused or cut
connections as a well-behaved client does (bounded). Meanwhile a chaos loop picks an actor or
supervisor from ``/admin/tree`` with a seeded RNG, the least killed ones more likely (anything
but ``/root``: tenant memory actors, the memory supervisor, the edge, planners, the audit
writer, the guardian, workers), kills it through ``/admin/actors/kill``, waits for ``/readyz``
and for every agent to get something done, and goes on. It never kills a supervisor's child
so often that the supervisor would give up (its ``intensity`` per ``period``, from the tree):
what is tested is recovery, not the node giving up. Half-way through, it also SIGKILLs the
node's search worker process (recalls and context bundles go back to the node meanwhile).

Every acknowledged write is recorded (key, content, links, audit_id). At the end:

* no answer was a 5xx other than 503 with Retry-After, and none was an unexpected 4xx (a 404
  for a memory that was acknowledged, say);
* every acknowledged memory is there with its content and links, in its tenant only;
* the tree has its initial shape again and ``/metrics`` counts the restarts; recalls and
  bundles went to the search worker, which was started once more after its kill;
* after SIGTERM, ``audit verify`` finds the spool's chain intact, and every acknowledged
  ``audit_id`` is in it exactly once, with the action and tenant of its request;
* restarted on the same data directory, the node still has every acknowledged memory;
* the node logged no error (an internal error, a task left pending by a kill), but the death
  of its search worker the test caused.

On both anyio backends (a kill of the edge cuts connections on trio; on asyncio Hypercorn
cancels the requests in flight).

``SOMA_CHAOS_SEED`` replays one run (the seed is printed when the test fails);
``SOMA_CHAOS_KILLS`` (default 20 per backend) makes a longer run, ``SOMA_CHAOS_TARGETS`` (a
regular expression) kills only the paths it matches.
"""

from __future__ import annotations

import collections
import itertools
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from somabrain import config as soma_config
from somabrain.audit.cli import run_verify
from somabrain.audit.sources import read_spool_dir
from tests.edge.devnode import DevNode

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = int(os.environ.get("SOMA_CHAOS_SEED", "0")) or random.SystemRandom().randrange(1, 2**31)
KILLS = int(os.environ.get("SOMA_CHAOS_KILLS", "20"))
TARGETS = re.compile(os.environ.get("SOMA_CHAOS_TARGETS", ".*"))
TENANTS = ("chaos-a", "chaos-b")
AGENTS_PER_TENANT = 3
#: Each agent gets at least this much done between two kills.
PROGRESS_PER_ROUND = 2
#: A request (with its retries) or a wait for the node gives up after this long.
PATIENCE = 20.0

# Every tenant is searched in the search worker (replicas reopened after each memory kill),
# and every bundle is built there: by default only while evaluates overlap, which depends on
# how fast the node serves, not on what this test checks.
CONFIG = """
[edge.rate_limit]
rate = 100000.0
burst = 100000

[memory]
offload_min_memories = 1

[context]
build_in_worker = "always"
"""

WORDS = [
    "harbor", "lighthouse", "river", "mountain", "forest", "desert", "island", "glacier",
    "canyon", "meadow", "valley", "volcano", "prairie", "lagoon", "tundra", "reef", "plateau",
    "delta", "fjord", "savanna",
]  # fmt: skip


class Failure(AssertionError):
    pass


@dataclass
class Written:
    """An acknowledged memory: what GET must answer for it, in its tenant only."""

    tenant: str
    key: str
    content: str
    links: set[tuple[str, str]] = field(default_factory=set)


@dataclass
class Ledger:
    """What the agents were told, shared by the agent threads (under ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    memories: dict[tuple[str, str], Written] = field(default_factory=dict)
    keys: dict[str, list[str]] = field(default_factory=lambda: {t: [] for t in TENANTS})
    #: audit_id -> (tenant, action) of every acknowledged audited request.
    audit_ids: dict[str, tuple[str, str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    #: (route, status, error code of a 503) -> answers
    statuses: collections.Counter[tuple[str, int, str]] = field(default_factory=collections.Counter)
    transport_errors: int = 0
    done: collections.Counter[str] = field(default_factory=collections.Counter)

    def fail(self, message: str) -> None:
        with self.lock:
            self.failures.append(message)

    def acknowledge(self, tenant: str, action: str, body: dict[str, Any]) -> None:
        audit_id = body.get("audit_id")
        if not audit_id:
            self.fail(f"{tenant} {action}: acknowledged without an audit_id: {body}")
            return
        with self.lock:
            if audit_id in self.audit_ids:
                self.failures.append(f"audit_id {audit_id} answered twice")
            self.audit_ids[audit_id] = (tenant, action)

    def some_keys(self, tenant: str, rng: random.Random, n: int) -> list[str]:
        with self.lock:
            keys = self.keys[tenant]
            return rng.sample(keys, min(n, len(keys)))

    def progress(self) -> dict[str, int]:
        with self.lock:
            return dict(self.done)


def call(
    ledger: Ledger,
    client: httpx.Client,
    method: str,
    path: str,
    ok: Callable[[int], bool] = lambda status: status == 200,
    **kwargs: Any,
) -> httpx.Response | None:
    """One request, as a well-behaved client makes it: a 503 (which must say Retry-After), a
    refused or cut connection is retried with a capped backoff, for at most ``PATIENCE``
    seconds. Anything else that ``ok`` refuses is recorded as a failure (None)."""
    deadline = time.monotonic() + PATIENCE
    delay = 0.01
    route = path if not path.startswith("/memory/") or method == "POST" else "/memory/{key}"
    while True:
        try:
            response = client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            with ledger.lock:
                ledger.transport_errors += 1
            problem = f"{type(exc).__name__}: {exc}"
        else:
            status = response.status_code
            code = error_code(response) if status == 503 else ""
            with ledger.lock:
                ledger.statuses[(route, status, code)] += 1
            if ok(status):
                return response
            if status != 503:
                ledger.fail(f"{method} {path} {kwargs.get('json')}: {status} {response.text}")
                return None
            if "retry-after" not in response.headers:
                ledger.fail(f"{method} {path}: 503 without Retry-After: {response.text}")
                return None
            problem = response.text
        if time.monotonic() > deadline:
            ledger.fail(f"{method} {path}: still failing after {PATIENCE} s: {problem}")
            return None
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def error_code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "(not the error model)"


class Agent:
    """One agent of a tenant: a loop of random operations until ``stop`` is set."""

    def __init__(self, node: DevNode, tenant: str, index: int, ledger: Ledger, seed: int) -> None:
        self.node = node
        self.tenant = tenant
        self.name = f"{tenant}-{index}"
        self.ledger = ledger
        self.rng = random.Random(seed)
        self.counter = itertools.count()
        self.session = f"s-{self.name}"

    def run(self, stop: threading.Event) -> None:
        operations = [
            (self.remember, 5),
            (self.remember_batch, 2),
            (self.recall, 3),
            (self.get, 2),
            (self.link, 2),
            (self.evaluate, 2),
            (self.feedback, 1),
        ]
        actions, weights = zip(*operations, strict=True)
        try:
            with self.node.client(self.node.token_for(self.tenant)) as client:
                while not stop.is_set():
                    action = self.rng.choices(actions, weights)[0]
                    if action(client):
                        with self.ledger.lock:
                            self.ledger.done[self.name] += 1
        except Exception as exc:  # a bug of the test itself: make it visible
            self.ledger.fail(f"agent {self.name} crashed: {exc!r}")

    def _content(self, n: int) -> str:
        words = " ".join(self.rng.sample(WORDS, 3))
        return f"{self.tenant} note {self.name}-{n} about {words}"

    def _links(self) -> list[dict[str, Any]]:
        if self.rng.random() < 0.5:
            return []
        rel = self.rng.choice(["follows", "cites"])
        return [{"to_key": k, "rel": rel} for k in self.ledger.some_keys(self.tenant, self.rng, 2)]

    def _record(self, items: list[dict[str, Any]], keys: list[str]) -> None:
        with self.ledger.lock:
            for item, key in zip(items, keys, strict=True):
                links = {(ln["to_key"], ln["rel"]) for ln in item.get("links", ())}
                self.ledger.memories[(self.tenant, key)] = Written(
                    self.tenant, key, item["content"], links
                )
                self.ledger.keys[self.tenant].append(key)

    def remember(self, client: httpx.Client) -> bool:
        n = next(self.counter)
        item = {"key": f"{self.name}-{n}", "content": self._content(n), "links": self._links()}
        if self.rng.random() < 0.3:
            item["session_id"] = self.session
        r = call(self.ledger, client, "POST", "/memory/remember", json=item)
        if r is None:
            return False
        body = r.json()
        if body["key"] != item["key"]:
            self.ledger.fail(f"remember {item['key']} answered key {body['key']}")
        self._record([item], [body["key"]])
        self.ledger.acknowledge(self.tenant, "memory.remember", body)
        return True

    def remember_batch(self, client: httpx.Client) -> bool:
        items = []
        for _ in range(self.rng.randint(2, 5)):
            n = next(self.counter)
            item: dict[str, Any] = {"content": self._content(n), "links": self._links()}
            if self.rng.random() < 0.5:
                item["key"] = f"{self.name}-{n}"  # else derived from the content
            items.append(item)
        r = call(self.ledger, client, "POST", "/memory/remember/batch", json={"items": items})
        if r is None:
            return False
        body = r.json()
        keys = [result["key"] for result in body["results"]]
        if body["count"] != len(items) or any(
            "key" in item and item["key"] != key for item, key in zip(items, keys, strict=True)
        ):
            self.ledger.fail(f"batch {items} answered {body}")
        self._record(items, keys)
        self.ledger.acknowledge(self.tenant, "memory.remember_batch", body)
        return True

    def recall(self, client: httpx.Client) -> bool:
        query = {"query": " ".join(self.rng.sample(WORDS, 2)), "top_k": 10}
        if self.rng.random() < 0.3:
            query |= {"layer": "wm", "session_id": self.session}
        r = call(self.ledger, client, "POST", "/memory/recall", json=query)
        if r is None:
            return False
        body = r.json()
        strangers = [x for x in body["results"] if not x["content"].startswith(self.tenant + " ")]
        if strangers:
            self.ledger.fail(f"{self.tenant} recalled another tenant's memories: {strangers}")
        self.ledger.acknowledge(self.tenant, "memory.recall", body)
        return True

    def get(self, client: httpx.Client) -> bool:
        keys = self.ledger.some_keys(self.tenant, self.rng, 1)
        if not keys:
            return False
        with self.ledger.lock:
            expected = self.ledger.memories[(self.tenant, keys[0])]
            links = set(expected.links)
        r = call(self.ledger, client, "GET", f"/memory/{keys[0]}")
        if r is None:
            return False
        body = r.json()
        problem = check_memory(expected, body, links)
        if problem:
            self.ledger.fail(f"while the chaos ran: {problem}")
        self.ledger.acknowledge(self.tenant, "memory.get", body)
        return True

    def link(self, client: httpx.Client) -> bool:
        keys = self.ledger.some_keys(self.tenant, self.rng, 2)
        if len(keys) < 2:
            return False
        link = {"from_key": keys[0], "to_key": keys[1], "rel": "see-also"}
        r = call(self.ledger, client, "POST", "/memory/link", json=link)
        if r is None:
            return False
        with self.ledger.lock:
            self.ledger.memories[(self.tenant, keys[0])].links.add((keys[1], "see-also"))
        self.ledger.acknowledge(self.tenant, "memory.link", r.json())
        return True

    def evaluate(self, client: httpx.Client) -> bool:
        query = {"query": " ".join(self.rng.sample(WORDS, 3)), "session_id": self.session}
        r = call(self.ledger, client, "POST", "/context/evaluate", json=query)
        if r is None:
            return False
        body = r.json()
        strangers = [m for m in body["memories"] if not m["content"].startswith(self.tenant + " ")]
        if strangers:
            self.ledger.fail(f"{self.tenant} got another tenant's memories: {strangers}")
        self.ledger.acknowledge(self.tenant, "context.evaluate", body)
        return True

    def feedback(self, client: httpx.Client) -> bool:
        used = self.ledger.some_keys(self.tenant, self.rng, 3)
        feedback = {
            "session_id": self.session,
            "query": " ".join(self.rng.sample(WORDS, 2)),
            "used_keys": used,
            "reward": self.rng.choice([0.0, 0.5, 1.0]),
        }
        return call(self.ledger, client, "POST", "/context/feedback", json=feedback) is not None


def check_memory(expected: Written, body: dict[str, Any], links: set[tuple[str, str]]) -> str:
    """What is wrong with a GET's answer for ``expected`` ("" if nothing)."""
    got_links = {(ln["to_key"], ln["rel"]) for ln in body["links"]}
    if body["content"] != expected.content or not links <= got_links:
        return (
            f"{expected.tenant}/{expected.key}: content {body['content']!r}, links {got_links}; "
            f"expected {expected.content!r} and at least the links {links}"
        )
    return ""


# ----------------------------------------------------------------------------- the tree


def walk(tree: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """(node, its supervisor) for every node of an inspected tree."""
    stack: list[tuple[dict[str, Any], dict[str, Any] | None]] = [(tree, None)]
    while stack:
        node, parent = stack.pop()
        yield node, parent
        stack.extend((child, node) for child in node.get("children", ()))


def shape(tree: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {node["path"]: (node["kind"], node["state"]) for node, _ in walk(tree)}


class Chaos:
    """Kills what the tree has, within each supervisor's restart intensity."""

    def __init__(self, node: DevNode, ledger: Ledger, rng: random.Random) -> None:
        self.node = node
        self.ledger = ledger
        self.rng = rng
        self.kills: collections.Counter[str] = collections.Counter()
        self.skipped: list[tuple[str, int]] = []
        self.worker_kills = 0
        #: supervisor path -> times its children were killed
        self.history: dict[str, list[float]] = collections.defaultdict(list)

    def candidates(self, tree: dict[str, Any]) -> list[str]:
        now = time.monotonic()
        paths = []
        for node, parent in walk(tree):
            if parent is None or node["state"] != "running" or not TARGETS.search(node["path"]):
                continue
            # Restarts are counted when they happen, a little after the kill: a margin of
            # one restart and one second keeps the supervisor well inside its intensity.
            window = parent["period"] + 1.0
            recent = [t for t in self.history[parent["path"]] if t > now - window]
            if len(recent) < parent["intensity"] - 1:
                paths.append(node["path"])
        return sorted(paths)

    def pick(self, admin: httpx.Client) -> tuple[str, dict[str, Any]]:
        """A path to kill now and the tree it was picked from (waits while every candidate
        is restarting or would strain its supervisor's intensity)."""
        deadline = time.monotonic() + PATIENCE
        while True:
            r = call(self.ledger, admin, "GET", "/admin/tree")
            if r is None:
                raise Failure("GET /admin/tree failed")
            tree = r.json()
            paths = self.candidates(tree)
            if paths:
                # The least killed first, so that a short run reaches every kind of actor.
                weights = [1.0 / (1 + self.kills[path]) ** 2 for path in paths]
                return self.rng.choices(paths, weights)[0], tree
            if time.monotonic() > deadline:
                raise Failure(f"nothing to kill for {PATIENCE} s: {shape(tree)}")
            time.sleep(0.05)

    def round(self, admin: httpx.Client) -> None:
        path, tree = self.pick(admin)
        parent = next(p for n, p in walk(tree) if n["path"] == path)
        assert parent is not None
        progress = self.ledger.progress()
        r = call(
            self.ledger,
            admin,
            "POST",
            "/admin/actors/kill",
            ok=lambda status: status in (200, 409),
            json={"path": path},
        )
        if r is None:
            raise Failure(f"killing {path} failed")
        if r.status_code == 409:  # stopped between the tree and the kill (a restart)
            self.skipped.append((path, r.status_code))
        else:
            assert r.json() == {"ok": True, "path": path, "killed": True}, r.text
            self.kills[path] += 1
            self.history[parent["path"]].append(time.monotonic())
        wait_ready(self.node, admin)
        self.wait_for_agents(progress)

    def kill_search_worker(self, admin: httpx.Client) -> None:
        """SIGKILL the node's search worker process (not an actor: its searches and bundles
        go back to the node, and the node starts another)."""
        r = call(self.ledger, admin, "GET", "/health")
        if r is None:
            raise Failure("GET /health failed")
        pid = r.json()["components"]["search_worker"]["pid"]
        if pid is None:
            raise Failure("no search worker to kill")
        progress = self.ledger.progress()
        os.kill(pid, signal.SIGKILL)
        self.worker_kills += 1
        self.wait_for_agents(progress)

    def wait_for_agents(self, before: dict[str, int]) -> None:
        deadline = time.monotonic() + PATIENCE
        while True:
            now = self.ledger.progress()
            behind = [
                a for a in agent_names() if now.get(a, 0) < before.get(a, 0) + PROGRESS_PER_ROUND
            ]
            if not behind:
                return
            if time.monotonic() > deadline:
                raise Failure(f"agents {behind} made no progress for {PATIENCE} s")
            time.sleep(0.01)


def agent_names() -> list[str]:
    return [f"{t}-{i}" for t in TENANTS for i in range(AGENTS_PER_TENANT)]


def wait_ready(node: DevNode, client: httpx.Client) -> None:
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.01)
    raise Failure("the node did not become ready:\n" + "".join(node.output[-50:]))


# ----------------------------------------------------------------------------- checks


def check_memories(node: DevNode, ledger: Ledger) -> list[str]:
    """Every acknowledged memory, with its content and links, in its own tenant only."""
    problems = []
    clients = {t: node.client(node.token_for(t)) for t in TENANTS}
    try:
        for (tenant, key), expected in sorted(ledger.memories.items()):
            r = call(ledger, clients[tenant], "GET", f"/memory/{key}")
            if r is None:
                problems.append(f"{tenant}/{key}: not answered")
                continue
            problem = check_memory(expected, r.json(), expected.links)
            if problem:
                problems.append(problem)
            for other in TENANTS:
                if other != tenant:
                    r = call(
                        ledger,
                        clients[other],
                        "GET",
                        f"/memory/{key}",
                        ok=lambda status: status == 404,
                    )
                    if r is None:
                        problems.append(f"{tenant}/{key} is visible to {other}")
    finally:
        for client in clients.values():
            client.close()
    return problems


def check_audit(data_dir: Path, ledger: Ledger) -> list[str]:
    reports = anyio.run(run_verify, soma_config.load(environ={}), "spool", str(data_dir))
    problems = [r.summary() for r in reports.values() if not r.ok or r.duplicates]
    if not reports:
        problems.append("no audit events in the spool")
    seen: collections.Counter[str] = collections.Counter()
    events = {}
    for _, payload in read_spool_dir(data_dir / "audit" / "spool"):
        event = msgspec.json.decode(payload)
        seen[event["event_id"]] += 1
        events[event["event_id"]] = event
    for audit_id, (tenant, action) in sorted(ledger.audit_ids.items()):
        if seen[audit_id] != 1:
            problems.append(f"{action} of {tenant}: audit_id {audit_id} {seen[audit_id]} times")
        elif (events[audit_id]["tenant"], events[audit_id]["action"]) != (tenant, action):
            problems.append(f"audit_id {audit_id} of {tenant} {action}: {events[audit_id]}")
    return problems


def restarts_in_metrics(text: str) -> dict[str, int]:
    restarts = {}
    for line in text.splitlines():
        if line.startswith("soma_restarts_total{"):
            labels, value = line.rsplit(" ", 1)
            path = labels.split('path="', 1)[1].split('"', 1)[0]
            restarts[path] = int(float(value))
    return restarts


# ----------------------------------------------------------------------------- the test


#: What the node logs when its search worker dies: an error, but the test's own doing. The
#: code is -9 (SIGKILL), or 255 when asyncio's child watcher found the process already reaped
#: (Python 3.11's ThreadedChildWatcher then logs "Unknown child process pid" and reports 255).
WORKER_KILLED = re.compile(r"search worker exited \(code (-9|255)\): restarting")


def node_errors(output: list[str], worker_kills: int = 0) -> list[str]:
    """What the node logged as an error: every one is a bug or a leak (kills are warnings),
    but for the deaths of the search worker the test caused."""
    errors = [line for line in output if " ERROR " in line or line.startswith("Traceback")]
    killed = [line for line in errors if WORKER_KILLED.search(line)]
    return [line for line in errors if line not in killed] + killed[worker_kills:]


def replicas_in_the_worker(node: DevNode) -> dict[str, Any]:
    """The search worker's health once the tenants' recalls reach it again: a memory actor
    killed in the last round opens its replica at its next recall, and the agents may have
    stopped before making one (bounded: a few seconds of recalls)."""
    deadline = time.monotonic() + 10
    with node.client() as admin:
        while True:
            worker: dict[str, Any] = admin.get("/health").json()["components"]["search_worker"]
            if worker["replicas"] >= 1 or time.monotonic() > deadline:
                return worker
            for tenant in TENANTS:
                with node.client(node.token_for(tenant)) as client:
                    client.post("/memory/recall", json={"query": "river stone", "top_k": 3})
            time.sleep(0.05)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_kills_under_load_lose_nothing_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    config = tmp_path / "soma.toml"
    config.write_text(CONFIG)
    data = tmp_path / "data"
    ledger = Ledger()
    rng = random.Random(SEED)
    stop = threading.Event()
    monkeypatch.setenv("SOMA_AUDIT__READS", "true")  # the node's environment: reads audited
    node = DevNode(data, "--config", str(config), backend=backend).start()
    output: list[str] = []  # the node's, over both of its runs
    started = time.monotonic()
    agents = [
        Agent(node, tenant, i, ledger, rng.randrange(2**32))
        for tenant in TENANTS
        for i in range(AGENTS_PER_TENANT)
    ]
    threads = [threading.Thread(target=a.run, args=(stop,), name=a.name) for a in agents]
    chaos = Chaos(node, ledger, rng)
    try:
        with node.client() as admin:
            wait_ready(node, admin)
            for thread in threads:
                thread.start()
            chaos.wait_for_agents({})  # both tenants' memory actors are up
            initial = shape(admin.get("/admin/tree").json())
            for i in range(KILLS):
                if ledger.failures:
                    break
                if i == KILLS // 2:
                    chaos.kill_search_worker(admin)
                chaos.round(admin)
            stop.set()
            for thread in threads:
                thread.join(PATIENCE + 5)
            assert not ledger.failures, "\n".join(ledger.failures[:20])

            problems = check_memories(node, ledger)
            assert not problems, "\n".join(problems[:20])
            tree = call(ledger, admin, "GET", "/admin/tree")
            assert tree is not None
            assert shape(tree.json()) == initial
            metrics = admin.get("/metrics").text
            restarts = restarts_in_metrics(metrics)
            searched = re.search(r"^soma_search_worker_searches_total (\d+)", metrics, re.M)
            assert searched and int(searched[1]) > 0, "no recall went to the search worker"
            built = re.search(r"^soma_search_worker_calls_total (\d+)", metrics, re.M)
            assert built and int(built[1]) > 0, "no bundle was built in the search worker"
            worker = replicas_in_the_worker(node)
            assert worker["running"] and worker["replicas"] >= 1, worker
            assert worker["starts"] == 1 + chaos.worker_kills, worker
            short = {p: (restarts.get(p), n) for p, n in chaos.kills.items() if restarts[p] < n}
            assert not short, f"restarts in /metrics below the kills (got, killed): {short}"
        assert node.stop() == 0
        output += node.output

        problems = check_audit(data, ledger)
        assert not problems, "\n".join(problems[:20])

        node.start()
        with node.client() as admin:
            wait_ready(node, admin)
        problems = check_memories(node, ledger)
        assert not problems, "\n".join(problems[:20])
        assert node.stop() == 0
        output += node.output
        errors = node_errors(output, chaos.worker_kills)
        assert not errors, "".join(errors[:20])
    except BaseException:
        stop.set()
        node.kill()
        print(f"chaos seed {SEED} on {backend}: kills {dict(chaos.kills)}")
        print(f"skipped kills {chaos.skipped}; transport errors {ledger.transport_errors}")
        print(f"statuses {sorted(ledger.statuses.items())}")
        print("".join(output[-100:] + node.output[-200:]))
        raise
    finally:
        stop.set()
        node.kill()
    print(
        f"chaos seed {SEED} on {backend}: {sum(chaos.kills.values())} kills in "
        f"{time.monotonic() - started:.1f} s, {len(ledger.memories)} memories, "
        f"{len(ledger.audit_ids)} audit ids, {ledger.transport_errors} transport errors, "
        f"statuses {sorted(ledger.statuses.items())}, kills {sorted(chaos.kills.items())}"
    )
