"""The dev node as a user runs it: start, banner, token command, signals, restart."""

from __future__ import annotations

import gc
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from somabrain.node import _tune_gc
from somabrain.supervision.config import NodeSettings
from tests.edge.devnode import DevNode, NodeError

pytestmark = pytest.mark.integration


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "somabrain.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signals_stop_the_node_gracefully(tmp_path: Path, signum: int) -> None:
    node = DevNode(tmp_path).start()
    try:
        banner = "".join(node.output)
        assert re.search(r"ready in \d+\.\d+ s", banner)
        with node.client() as client:
            key = client.post("/memory/remember", json={"content": "before the signal"}).json()
        assert node.stop(signum) == 0
        assert node.output[-1].strip() == "stopped"
    finally:
        node.kill()
    with DevNode.running(tmp_path) as again, again.client() as client:
        assert client.get(f"/memory/{key['key']}").json()["content"] == "before the signal"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_process_group_stops_the_node_then_its_search_worker(
    tmp_path: Path, signum: int
) -> None:
    # Ctrl-C at a terminal and a service manager's stop signal every process of the group:
    # the search worker must leave the stopping to the node, not die first as if it crashed.
    node = DevNode(tmp_path, env={"SOMA_MEMORY__OFFLOAD_MIN_MEMORIES": "1"}).start()
    try:
        with node.client() as client:
            client.post("/memory/remember", json={"content": "searched in the worker"})
            for _ in range(200):  # bounded: the replica opens within a few recalls
                client.post("/memory/recall", json={"query": "worker"})
                worker = client.get("/health").json()["components"].get("search_worker", {})
                if worker.get("replicas") and worker.get("searches"):
                    break
                time.sleep(0.05)
            assert worker["running"] and worker["searches"], worker
        assert node.process is not None  # the worker is in a session of its own
        assert os.getpgid(worker["pid"]) != os.getpgid(node.process.pid)
        assert node.stop(signum, group=True) == 0
    finally:
        node.kill()
    output = "".join(node.output)
    assert "search worker exited" not in output and " ERROR " not in output, output
    assert output.rstrip().endswith("stopped")
    assert node.process is not None
    with pytest.raises(ProcessLookupError):  # nothing of the group is left
        os.killpg(node.process.pid, 0)
    with pytest.raises(ProcessLookupError):  # nor the worker, stopped by the node
        os.kill(worker["pid"], 0)


def test_a_second_signal_while_stopping_exits_at_once_and_loses_nothing(tmp_path: Path) -> None:
    node = DevNode(tmp_path).start()
    try:
        with node.client() as client:
            key = client.post("/memory/remember", json={"content": "acknowledged"}).json()["key"]
        host, port = node.url.removeprefix("http://").split(":")
        # A request whose body never ends: the graceful stop waits for it (up to
        # edge.graceful_timeout, 10 s), so the second signal finds the node stopping.
        held = socket.create_connection((host, int(port)))
        held.sendall(b"POST /memory/remember HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                     b"Content-Type: application/json\r\n\r\n{")  # fmt: skip
        assert node.process is not None
        node.process.send_signal(signal.SIGINT)
        for _ in range(100):  # bounded: the line comes at once
            if any("stopping" in line for line in node.output):
                break
            time.sleep(0.05)
        assert node.stop(signal.SIGINT, timeout=5.0) == 128 + signal.SIGINT
        held.close()
    finally:
        node.kill()
    output = "".join(node.output)
    assert "received SIGINT again: exiting now" in output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    with DevNode.running(tmp_path) as again, again.client() as client:
        assert client.get(f"/memory/{key}").json()["content"] == "acknowledged"


def test_token_command_and_secret_reuse(tmp_path: Path) -> None:
    result = cli("token", "--tenant", "cli-tenant", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    admin = cli(
        "token",
        "--tenant",
        "a",
        "--tenant",
        "b",
        "--scope",
        "admin",
        "--data-dir",
        str(tmp_path),
        "--ttl",
        "60",
    ).stdout.strip()
    # The node finds the secret the command created, and prints a token signed with it.
    with DevNode.running(tmp_path) as node:
        with node.client(token) as client:
            assert client.post("/memory/recall", json={"query": "x"}).status_code == 200
        with node.client(admin) as client:
            assert client.get("/admin/tree").status_code == 200
            r = client.post("/memory/recall", json={"query": "x"}, headers={"X-Tenant-ID": "b"})
            assert r.status_code == 200
        printed = node.token
    with DevNode.running(tmp_path) as node, node.client(printed) as client:
        assert client.get("/admin/tree").status_code == 200  # still valid after a restart
    bad = cli("token", "--tenant", "no/slashes", "--data-dir", str(tmp_path))
    assert bad.returncode == 2 and "invalid tenant" in bad.stderr


def test_token_needs_the_data_dir_that_the_node_creates(tmp_path: Path) -> None:
    data = tmp_path / "data"
    refused = cli("token", "--tenant", "t", "--data-dir", str(data))
    assert refused.returncode == 2 and refused.stdout == ""
    assert f"data dir {data} does not exist" in refused.stderr
    assert not data.exists()
    with DevNode.running(data) as node:  # the node makes its data dir
        token = cli("token", "--tenant", "t", "--data-dir", str(data)).stdout.strip()
        with node.client(token) as client:
            assert client.post("/memory/recall", json={"query": "x"}).status_code == 200


def test_the_banner_names_the_config_that_token_needs(tmp_path: Path) -> None:
    # With auth.secret in the config, a token made from the data dir alone is refused: the
    # banner's command names the config too.
    config = tmp_path / "soma.toml"
    config.write_text('[auth]\nsecret = "this node\'s own secret, 32 bytes or more"\n')
    with DevNode.running(tmp_path / "data", "--config", str(config)) as node:
        match = re.search(r"make your own with `somabrain (token [^`]*)`", "".join(node.output))
        assert match, node.output
        argv = match.group(1).replace(" --tenant T ", " --tenant t ").split()
        assert argv[-2:] == ["--config", str(config)]
        token = cli(*argv).stdout.strip()
        with node.client(token) as client:
            assert client.post("/memory/recall", json={"query": "x"}).status_code == 200


def test_the_access_log_shows_without_verbose(tmp_path: Path) -> None:
    config = tmp_path / "soma.toml"
    config.write_text("[edge]\naccess_log = true\n")
    with DevNode.running(tmp_path / "data", "--config", str(config)) as node:
        with node.client() as client:
            assert client.post("/memory/recall", json={"query": "x"}).status_code == 200
        assert node.stop(signal.SIGTERM) == 0
    assert any('"POST /memory/recall' in line for line in node.output), node.output


def test_a_cluster_member_on_trio_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "a.toml"
    config.write_text(
        '[node]\nname = "a"\n[cluster]\nnats_url = "nats://127.0.0.1:4222"\nmembers = ["a"]\n'
    )
    data = tmp_path / "data"
    result = cli("dev", "--config", str(config), "--data-dir", str(data), "--backend", "trio")
    assert result.returncode == 2
    assert result.stderr == (
        "error: a cluster member (cluster.nats_url is set) runs on asyncio, not trio:"
        " nats-py is asyncio-only\n"
    )
    assert not data.exists()


def test_in_flight_requests_finish_on_sigterm(tmp_path: Path) -> None:
    node = DevNode(tmp_path).start()
    statuses: list[int] = []
    acknowledged: list[str] = []
    started = threading.Event()

    def writer(w: int) -> None:
        with node.client() as client:
            for i in range(2000):
                try:
                    r = client.post("/memory/remember", json={"content": f"w{w} n{i}"})
                except httpx.TransportError:
                    return
                statuses.append(r.status_code)
                if r.status_code == 200:
                    acknowledged.append(r.json()["key"])
                started.set()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    try:
        for thread in threads:
            thread.start()
        assert started.wait(60)
        assert node.stop(signal.SIGTERM) == 0
    finally:
        node.kill()
        for thread in threads:
            thread.join(60)
    assert set(statuses) <= {200, 503}, set(statuses)  # refused or done, never broken
    with DevNode.running(tmp_path) as again, again.client() as client:
        for key in acknowledged:
            assert client.get(f"/memory/{key}").status_code == 200


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with DevNode.running(tmp_path / "one") as first:
        port = first.url.rsplit(":", 1)[1]
        with pytest.raises(NodeError, match="Address already in use"):
            DevNode(tmp_path / "two").start(port=int(port))
        # As the user sees it: an `error:` line and exit 1, not a traceback.
        result = cli("dev", "--port", port, "--data-dir", str(tmp_path / "three"))
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and "Address already in use" in last, result.stderr
        assert f"cannot listen on 127.0.0.1:{port}" in last, result.stderr


def test_bad_config_is_exit_code_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[edge]\nmax_body_bytes = -1\n")
    result = cli("dev", "--config", str(config), "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "edge.max_body_bytes" in result.stderr


def test_reload_applies_a_changed_config(tmp_path: Path) -> None:
    config = tmp_path / "soma.toml"
    config.write_text("[tree.children.memory]\nidle_timeout = 300.0\n")
    with DevNode.running(tmp_path / "data", "--config", str(config)) as node:
        config.write_text(
            "[tree.children.memory]\nidle_timeout = 120.0\n[edge.rate_limit]\nrate = 50.0\n"
        )
        with node.client() as client:
            changes = client.post("/admin/reload", json={}).json()["changes"]
            assert "/root/memory: idle_timeout -> 120" in changes
            assert "edge: settings changed" in changes
            # the file's port differs from `--port`, which a reload keeps: not a change
            assert not any("after a node restart" in c for c in changes), changes
            tree = client.get("/admin/tree").json()
            memory = next(c for c in tree["children"] if c["path"] == "/root/memory")
            assert memory["idle_timeout"] == 120.0
            config.write_text("[edge]\nmax_body_bytes = 0\n")
            r = client.post("/admin/reload", json={})
            assert r.status_code == 422 and r.json()["error"]["field"] == "edge.max_body_bytes"


def test_reload_applies_context_settings_where_it_can(tmp_path: Path) -> None:
    config = tmp_path / "soma.toml"
    config.write_text("[context.limits]\nmax_memories = 50\n")
    with (
        DevNode.running(tmp_path / "data", "--config", str(config)) as node,
        node.client() as client,
    ):
        client.post("/memory/remember", json={"content": "reloads keep the node running"})
        ask = {"query": "what keeps running?", "top_k": 10}
        assert client.post("/context/evaluate", json=ask).status_code == 200
        before = client.get("/context/adaptation/state").json()["defaults"]
        config.write_text(
            '[context]\nembedder = "minilm"\n'
            "[context.limits]\nmax_memories = 5\n"
            "[context.associations]\nweight = 0.25\nneighbours = 2\n"
        )
        changes = client.post("/admin/reload", json={}).json()["changes"]
        assert "context: settings changed" in changes
        assert "context: the embedder's settings apply after a node restart" in changes
        assert any("apply to memory actors started from now on" in c for c in changes)
        # the planners read the new limits at the next request
        r = client.post("/context/evaluate", json=ask)
        assert r.status_code == 422 and r.json()["error"]["field"] == "top_k"
        # the embedder stays: the defaults are still the built-in embedder's weights, with
        # the association view at the new fraction of them (and the form view at its fraction
        # of all those)
        after = client.get("/context/adaptation/state").json()["defaults"]
        learned = ("association", "form")
        others = {v: w for v, w in before.items() if v not in learned}
        assert {v: w for v, w in after.items() if v not in learned} == others
        assert after["association"] == pytest.approx(0.25 * sum(others.values()))
        assert after["form"] == pytest.approx(0.2 * (sum(others.values()) + after["association"]))
        r = client.post("/context/evaluate", json={**ask, "top_k": 5})
        assert r.status_code == 200 and r.json()["memories"]


def test_trio_backend(tmp_path: Path) -> None:
    with DevNode.running(tmp_path, backend="trio") as node:
        with node.client() as client:
            key = client.post("/memory/remember", json={"content": "trio works"}).json()["key"]
            r = client.post("/admin/actors/kill", json={"path": "/root/edge"})
            assert r.json()["killed"]
        with node.client() as client:
            node.wait_ready(client)
            assert client.get(f"/memory/{key}").json()["content"] == "trio works"
            assert node.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize(("threshold", "freeze"), [(20_000, True), (0, False)])
def test_gc_tuning_follows_the_node_settings(threshold: int, freeze: bool) -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    try:
        _tune_gc(NodeSettings(gc_threshold=threshold, gc_freeze=freeze))
        expected = threshold or before[0]
        assert gc.get_threshold() == (expected, *before[1:])
        assert (gc.get_freeze_count() > frozen) is freeze
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
