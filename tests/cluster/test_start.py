"""A member started before its NATS server: it waits for it, its edge answering 503 meanwhile,
and serves once the server is up; it gives up after ``cluster.connect_timeout`` when one is
set; a signal stops it while it waits. Real ``somabrain dev`` processes and a real nats-server
(with a user and password, which no output may show), all on loopback."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.cluster.chaos import (
    MEMBERS,
    client,
    config,
    ok,
    start_member,
    tenant_owned_by,
    wait_for,
)
from tests.edge.devnode import DevNode
from tests.servers import NatsServer, free_port

pytestmark = pytest.mark.integration

USER, PASSWORD = "soma", "nats-password-never-shown"
TENANT_A = tenant_owned_by("node-a", "early")


def _nats_url(port: int) -> str:
    return f"nats://{USER}:{PASSWORD}@127.0.0.1:{port}"


def _start_waiting(root: Path, port: int, extra: str = "") -> DevNode:
    """Member node-a, started while nothing listens on ``port``; returns once it says it
    waits for NATS (its edge listens by then)."""
    path = root / "node-a.toml"
    path.write_text(_config("node-a", _nats_url(port), extra))
    node = DevNode(root / "node-a", "--config", str(path)).start(wait=False)
    node.wait_for_output("SomaBrain dev node listening at")
    return node


def _config(name: str, nats_url: str, extra: str) -> str:
    return config(name, nats_url, MEMBERS, extra)


def _assert_not_ready(response: httpx.Response, port: int) -> None:
    assert response.status_code == 503, response.text
    assert response.headers.get("Retry-After") == "1"
    error = response.json()["error"]
    assert error["code"] == "not_ready", error
    assert "has not joined the cluster yet" in error["message"], error
    assert f"waiting for NATS at nats://***@127.0.0.1:{port}" in error["message"], error


def test_a_member_started_before_nats_waits_then_serves(tmp_path: Path) -> None:
    port = free_port()
    a = _start_waiting(tmp_path, port)
    b: DevNode | None = None
    try:
        with client(a, TENANT_A) as via_a:
            # Waiting: alive, not ready, degraded; every tenant request a 503 to retry.
            assert ok(via_a.get("/healthz"))["status"] == "ok"
            _assert_not_ready(via_a.get("/readyz"), port)
            health = ok(via_a.get("/health"))
            assert health["status"] == "degraded"
            cluster = health["components"]["cluster"]
            assert cluster["joined"] is False
            assert cluster["nats"]["connected"] is False
            assert cluster["nats"]["url"] == f"nats://***@127.0.0.1:{port}"
            assert "connection refused" in cluster["problems"][0], cluster
            remembered = via_a.post("/memory/remember", json={"content": "said too early"})
            _assert_not_ready(remembered, port)

            with NatsServer.running("--user", USER, "--pass", PASSWORD, port=port):
                a.wait_started()  # the banner: joined and serving
                a.wait_ready(via_a)
                assert ok(via_a.get("/health"))["components"]["cluster"]["joined"] is True
                b = start_member(tmp_path, "node-b", _nats_url(port))
                # Through node-b, the tenant's owner node-a is asked over NATS: it listens.
                with client(b, TENANT_A) as via_b:
                    key = ok(via_b.post("/memory/remember", json={"content": "Oslo is cold"}))
                    hits = ok(via_a.post("/memory/recall", json={"query": "Oslo", "top_k": 1}))
                    assert [hit["key"] for hit in hits["results"]] == [key["key"]]
                    wait_for(
                        "both members heard each other",
                        lambda: not ok(via_a.get("/health"))["components"]["cluster"]["problems"],
                    )
                assert b.stop() == 0
                assert a.stop() == 0
    finally:
        a.kill()
        if b is not None:
            b.kill()
    output = "".join(a.output)
    assert "waiting for NATS at nats://***@127.0.0.1" in output
    assert "connected to NATS at" in output
    assert PASSWORD not in output + "".join(b.output if b is not None else [])


def test_a_member_gives_up_after_the_connect_timeout(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "node-a.toml"
    path.write_text(_config("node-a", _nats_url(port), "connect_timeout = 1.5"))
    node = DevNode(tmp_path / "node-a", "--config", str(path)).start(wait=False)
    try:
        code = node.wait_exit(60)
    finally:
        node.kill()
    output = "".join(node.output)
    assert code == 1, output
    assert (
        f"error: cannot connect to NATS at nats://***@127.0.0.1:{port} within 1.5 s"
        " (cluster.connect_timeout;" in output
    ), output
    assert "the last: connection refused" in output, output
    assert PASSWORD not in output
    assert "Traceback" not in output, output


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_member_waiting_for_nats(tmp_path: Path, signum: int) -> None:
    node = _start_waiting(tmp_path, free_port())
    try:
        started = time.monotonic()
        code = node.stop(signum, timeout=10)
        seconds = time.monotonic() - started
    finally:
        node.kill()
    output = "".join(node.output)
    assert code == 0, output
    assert seconds < 5, output
    assert f"received {signal.Signals(signum).name}, stopping" in output
    assert output.rstrip().endswith("stopped"), output
    assert "Traceback" not in output, output
