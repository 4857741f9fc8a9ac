"""The telemetry publisher: snapshots of the node on soma.telemetry, to Kafka through the bridge."""

# ruff: noqa: ASYNC110  (the Kafka test polls the bridge's counters)

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import pytest

from somabrain.actors import ActorSystem, Msg
from somabrain.actors.kafka_bridge import KafkaBridge
from somabrain.config import SomaConfig, load
from somabrain.edge.metrics import Metrics
from somabrain.workers.telemetry import Snapshot, TelemetryPublisher, TelemetrySnapshot
from tests.servers import KafkaServer
from tests.workers.test_kafka_bridge import topic_values

pytestmark = pytest.mark.anyio


def config(**telemetry: Any) -> SomaConfig:
    return msgspec.convert(
        {"node": {"name": "node-t"}, "workers": {"telemetry": telemetry}}, SomaConfig
    )


def edge_metrics() -> Metrics:
    metrics = Metrics()
    for ms in (1, 2, 3, 4, 40):
        metrics.observe("recall", "POST", 200, ms / 1000)
    metrics.observe("recall", "POST", 422, 0.0004)
    metrics.count_rate_limited("noisy")
    return metrics


async def test_a_snapshot_reports_the_edge_the_tree_and_registered_sources() -> None:
    async with ActorSystem("telemetry") as system:
        system.resources["config"] = config(enabled=False)
        system.resources["edge.metrics"] = edge_metrics()
        system.resources["metrics.sources"] = {
            "/audit": lambda: [("soma_audit_events_total", "counter", "h", [({"node": "n"}, 7)])],
            "/broken": lambda: 1 / 0,  # skipped, as the scrape skips it
        }
        ref = await system.spawn(TelemetryPublisher, "telemetry")
        first: TelemetrySnapshot = await ref.ask(Snapshot())
        second: TelemetrySnapshot = await ref.ask(Snapshot())

    assert (first.node, first.seq, second.seq) == ("node-t", 1, 2)
    assert first.time.endswith("Z") and first.started == second.started
    [route] = first.routes
    assert (route.route, route.method, route.count) == ("recall", "POST", 6)
    assert route.statuses == {"200": 5, "422": 1}
    assert route.p50_seconds == 0.0025  # the 3rd of 6 answers took 2 ms: bucket (1, 2.5] ms
    assert route.p99_seconds == 0.05  # the slowest, 40 ms
    assert first.rate_limited == {"noisy": 1}
    assert first.samples[0].name == "soma_audit_events_total"
    assert (first.samples[0].labels, first.samples[0].value) == ({"node": "n"}, 7.0)
    assert len(first.samples) == 1


async def test_snapshots_are_published_every_interval_and_go_on_after_a_respawn() -> None:
    async with ActorSystem("telemetry") as system:
        system.resources["config"] = config(interval=0.05, subject="soma.telemetry")
        received: list[TelemetrySnapshot] = []
        got = anyio.Event()

        async def collect(msg: Msg) -> None:
            received.append(msg.data)
            if len(received) >= 3:
                got.set()

        await system.bus.subscribe("soma.telemetry", cb=collect)
        ref = await system.spawn(TelemetryPublisher, "telemetry")
        with anyio.fail_after(10):
            await got.wait()
        seqs = [s.seq for s in received]
        assert seqs == sorted(seqs) and seqs[0] == 1
        assert all(s.node == "node-t" for s in received)
        # Stopped and started again under the same name: the count goes on, and so does
        # publishing (a new ticker for the new mailbox).
        ref.stop()
        while ref.alive:
            await anyio.sleep(0.01)
        last = received[-1].seq
        got = anyio.Event()
        ref = await system.spawn(TelemetryPublisher, "telemetry")
        with anyio.fail_after(10):
            await got.wait()
        assert received[-1].seq > last


@pytest.mark.integration
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_telemetry_reaches_its_kafka_topic(kafka_server: KafkaServer) -> None:
    cfg = load(  # the default bridge routes, as a node has them
        environ={
            "SOMA_NODE__NAME": "node-k",
            "SOMA_KAFKA__BOOTSTRAP": kafka_server.bootstrap,
            "SOMA_KAFKA__REQUEST_TIMEOUT": "1.0",
            "SOMA_WORKERS__TELEMETRY__INTERVAL": "0.1",
        }
    )
    assert any(route.subjects == "soma.telemetry" for route in cfg.bridge.forward)
    async with ActorSystem("telemetry") as system:
        system.resources["config"] = cfg
        system.resources["edge.metrics"] = edge_metrics()
        await system.spawn(KafkaBridge, "bridge")
        await system.spawn(TelemetryPublisher, "telemetry")
        values = await topic_values(kafka_server.bootstrap, "soma.telemetry", 2)
    snapshots = [msgspec.convert(v, TelemetrySnapshot) for v in values]
    assert {s.node for s in snapshots} == {"node-k"}
    assert snapshots[0].routes[0].statuses == {"200": 5, "422": 1}
