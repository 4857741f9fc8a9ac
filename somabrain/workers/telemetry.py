"""The telemetry publisher: a snapshot of the node on ``soma.telemetry`` every few seconds.

``/metrics`` serves a scraper that can reach each node. The snapshot carries the same figures
as one message on the bus, so the Kafka bridge (route ``soma.telemetry`` in the default config)
takes every node's telemetry to one topic, where a cluster is watched without reaching into
it: the edge's request counts and latencies per route, every actor and supervisor of the tree
(state, restarts, mailbox depth), dead letters, and the families other actors register for
``/metrics`` (``system.resources["metrics.sources"]``: the audit writer's tiers and batches,
the integrity worker's findings, the memory event outbox).

Counters are cumulative since the node started, as in Prometheus: a consumer takes rates from
two snapshots, and a lost snapshot (the bus delivers at most once) loses no count. ``seq``
numbers the snapshots of one node process from 1, ``started`` tells processes apart.

A ticker task (started once, it outlives the actor's restarts) tells the publisher ``Publish``
every ``workers.telemetry.interval`` seconds; ``ask(Snapshot())`` returns a snapshot without
publishing it.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from typing import Any

import anyio
import msgspec

from ..actors import Actor, ActorRef, ActorStoppedError, MailboxFullError
from ..supervision.tree import inspected_nodes
from .settings import TelemetrySettings

__all__ = [
    "ActorTelemetry",
    "Publish",
    "RouteTelemetry",
    "Sample",
    "Snapshot",
    "TelemetryPublisher",
    "TelemetrySnapshot",
]


class Publish(msgspec.Struct, frozen=True):
    """From the ticker: publish a snapshot now."""


class Snapshot(msgspec.Struct, frozen=True):
    """Ask: the snapshot, not published."""


class RouteTelemetry(msgspec.Struct, frozen=True, kw_only=True):
    route: str
    method: str
    #: Requests answered, by HTTP status (as a string: JSON object keys).
    statuses: dict[str, int]
    count: int
    seconds_sum: float
    #: Upper bounds of the latency buckets holding the median and the 99th percentile.
    p50_seconds: float
    p99_seconds: float


class ActorTelemetry(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    kind: str
    state: str
    restarts: int
    mailbox_depth: int | None = None
    mailbox_capacity: int | None = None


class Sample(msgspec.Struct, frozen=True):
    """One sample of a registered metrics family."""

    name: str
    kind: str
    labels: dict[str, str]
    value: float


class TelemetrySnapshot(msgspec.Struct, frozen=True, kw_only=True):
    node: str
    seq: int
    #: RFC 3339 UTC: when this snapshot and when this node process started.
    time: str
    started: str
    uptime_seconds: float
    ready: bool
    routes: list[RouteTelemetry]
    rate_limited: dict[str, int]
    actors: list[ActorTelemetry]
    dead_letters: int
    samples: list[Sample]


def _rfc3339(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    )


class _Shared:
    """What outlives an incarnation: the ticker and the sequence of snapshots."""

    def __init__(self) -> None:
        #: The publisher the ticker serves: a restart keeps its mailbox (and the ticker).
        self.ticking: ActorRef | None = None
        self.seq = 0
        self.started = time.time()
        self.started_monotonic = time.monotonic()


class TelemetryPublisher(Actor):
    async def on_start(self) -> None:
        system = self.context.system
        workers = getattr(system.resources.get("config"), "workers", None)
        self.settings: TelemetrySettings = (
            workers.telemetry if workers is not None else TelemetrySettings()
        )
        node = getattr(system.resources.get("config"), "node", None)
        self.node = str(getattr(node, "name", "") or system.name)
        self.shared: _Shared = system.resources.setdefault(
            f"telemetry:{self.context.path}", _Shared()
        )
        ticking = self.shared.ticking
        if self.settings.enabled and (ticking is None or not ticking.alive):
            self.shared.ticking = self.context.ref
            system.start_soon(_ticker, self.context.ref, self.settings.interval)

    async def receive(self, message: Any) -> Any:
        if isinstance(message, Snapshot):
            return self.snapshot()
        if isinstance(message, Publish):
            await self.context.system.bus.publish(self.settings.subject, self.snapshot())
            return None
        raise TypeError(f"telemetry publisher does not handle {type(message).__name__}")

    def snapshot(self) -> TelemetrySnapshot:
        system = self.context.system
        resources = system.resources
        self.shared.seq += 1
        now = time.time()
        routes: list[RouteTelemetry] = []
        rate_limited: dict[str, int] = {}
        metrics = resources.get("edge.metrics")
        if metrics is not None:
            routes = [RouteTelemetry(**row) for row in metrics.route_summary()]
            rate_limited = dict(metrics.rate_limited)
        actors: list[ActorTelemetry] = []
        ready = True
        tree = resources.get("tree")
        if tree is not None:
            ready = bool(tree.ready)
            actors = [
                ActorTelemetry(
                    path=n["path"],
                    kind=n["kind"],
                    state=n["state"],
                    restarts=n["restarts"],
                    mailbox_depth=n.get("mailbox_depth"),
                    mailbox_capacity=n.get("mailbox_capacity"),
                )
                for n in inspected_nodes(tree.inspect())
            ]
        return TelemetrySnapshot(
            node=self.node,
            seq=self.shared.seq,
            time=_rfc3339(now),
            started=_rfc3339(self.shared.started),
            uptime_seconds=round(time.monotonic() - self.shared.started_monotonic, 3),
            ready=ready,
            routes=routes,
            rate_limited=rate_limited,
            actors=actors,
            dead_letters=system.dead_letters.total,
            samples=_samples(resources.get("metrics.sources", {})),
        )


def _samples(sources: dict[str, Any]) -> list[Sample]:
    """The samples of every registered ``/metrics`` source (a failing source is skipped, as
    the scrape does)."""
    out: list[Sample] = []
    for _, source in sorted(sources.items()):
        try:
            families = list(source())
        except Exception:
            continue
        for name, kind, _help, samples in families:
            out += [Sample(name, kind, dict(labels), float(value)) for labels, value in samples]
    return out


async def _ticker(ref: ActorRef, interval: float) -> None:
    """Tell the publisher to publish every ``interval`` seconds, as long as its mailbox lives
    (across restarts). A full mailbox skips a beat rather than queueing snapshots up."""
    while ref.alive:
        await anyio.sleep(interval)
        if ref.alive:
            with contextlib.suppress(MailboxFullError, ActorStoppedError):
                ref.tell_nowait(Publish())
