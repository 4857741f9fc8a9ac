"""The audit writer actor: seals events into the node's chain and makes them durable.

Cascade: Kafka (acks=all) -> the node's Redis Stream -> the local spool, each present when
configured (the spool always is; the dev node has only it). A batch goes to the first tier that
is up and that no older backlog sits below (``tiers`` module doc); when a tier fails, the same
sealed batch goes to the next one at once, so a request waits for Kafka at most
``write_timeout`` once, when Kafka dies, and not at all while it is known to be down.

Group commit: appends queue in the mailbox while a batch is being written; the writer seals and
writes everything queued as the next batch (up to ``max_batch``), so throughput grows with
concurrency at the latency of about one write. A batch costs about ten times the CPU of an
event (fdatasync, the hop to a worker thread, the journal), so this matters: an edge auditing
its reads at 2,000 requests/s over 32 connections writes about 15 events per batch.

Recovery: a ticker task probes the tiers that are down (a TCP connect, outside the actor, so a
dead server never blocks the writer) and sends ``Tick``; the writer reconnects what answers and
drains the backlogs, oldest tier first, one ``drain_batch`` per message so that new events
interleave. Each step writes upstream, then forgets downstream: a kill in between leaves the
events in both, and the upstream tier drops the copy by sequence number next time.

Start (each incarnation, after a restart or a node kill -9): open the spool (cutting a torn
tail), read the journal, connect the remote tiers (bounded by ``connect_timeout``), continue the
chain from the newest event found anywhere, and re-send the journal's batch.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from pathlib import Path
from typing import Any

import anyio
import msgspec

from ..actors import Actor, ActorRef, ActorStoppedError, InvalidSubjectError, MailboxFullError
from ..actors.kafka_bridge import KafkaSettings
from ..actors.subjects import validate_subject
from .chain import Chain
from .client import Append, AuditLog
from .errors import AuditUnavailableError, SinkUnavailableError
from .event import GENESIS, decode_event
from .settings import AuditSettings
from .spool import Spool
from .tiers import Journal, SpoolTier, Tier, TierStatus

__all__ = ["AuditWriter", "GetStatus", "Sync", "Tick", "WriterStatus"]

logger = logging.getLogger("somabrain.audit")


class Tick(msgspec.Struct, frozen=True):
    """From the ticker: the tiers that accepted a TCP connection just now."""

    reachable: frozenset[str] = frozenset()


class DrainStep(msgspec.Struct, frozen=True):
    pass


class GetStatus(msgspec.Struct, frozen=True):
    pass


class Sync(msgspec.Struct, frozen=True):
    """Ask: reconnect every tier that answers, drain all that can be drained, then report."""

    max_steps: int = 1_000_000


class WriterStatus(msgspec.Struct, frozen=True):
    node: str
    head_seq: int
    head_hash: str
    tiers: list[TierStatus]
    batches: int
    events: int
    drained: int
    resent: int
    #: Events re-sent because the top tier lost them after acknowledging them.
    replayed: int


class _Shared:
    """What outlives an incarnation: the ticker, and sinks a killed incarnation left open."""

    def __init__(self) -> None:
        self.ticker = False
        self.probe: dict[str, list[tuple[str, int]]] = {}
        self.open_sinks: list[Any] = []
        self.closing: list[anyio.Event] = []
        #: Kept open across incarnations (a killed one cannot close it).
        self.journal: Journal | None = None


class AuditWriter(Actor):
    async def on_start(self) -> None:
        system = self.context.system
        resources = system.resources
        config = resources.get("config")
        self.settings: AuditSettings = getattr(config, "audit", None) or AuditSettings()
        kafka: KafkaSettings = getattr(config, "kafka", None) or KafkaSettings()
        node_cfg = getattr(config, "node", None)
        self.node = str(getattr(node_cfg, "name", "") or system.name)
        base = Path(self.settings.directory or Path(resources.get("data_dir", ".")) / "audit")
        key = await _read_key(self.settings.chain_key_file)

        self.shared: _Shared = resources.setdefault(f"audit.writer:{self.context.path}", _Shared())
        await self._close_leftovers()

        self.spool = Spool(
            base / "spool", fsync=self.settings.fsync, segment_bytes=self.settings.segment_bytes
        )
        await anyio.to_thread.run_sync(self.spool.open)
        if self.shared.journal is not None:
            self.shared.journal.close()
        self.journal = self.shared.journal = Journal(base / "inflight")
        self.tiers: list[Tier] = []
        timeout = self.settings.connect_timeout
        if (kafka.bootstrap or self.settings.redis_url) and system.backend.name != "asyncio":
            raise RuntimeError("the Kafka and Redis audit tiers need the asyncio backend")
        if kafka.bootstrap:
            from .sinks import KafkaSink

            self.tiers.append(
                Tier(
                    KafkaSink(kafka, self.settings.topic, self.node, timeout),
                    up=False,
                    backlog=False,
                )
            )
        if self.settings.redis_url:
            from .sinks import RedisSink

            stream = self.settings.redis_stream_prefix + self.node
            self.tiers.append(
                Tier(RedisSink(self.settings.redis_url, stream, timeout), up=False, backlog=None)
            )
        spool_tier = SpoolTier(self.spool)
        self.tiers.append(Tier(spool_tier, up=True, backlog=spool_tier.has_backlog))
        self.shared.open_sinks = [tier.sink for tier in self.tiers]
        for tier in self.tiers[:-1]:
            await self._connect(tier)

        journal = self.journal.read()
        newest = [p for p in [*journal[-1:], *(t.sink.last_payload for t in self.tiers)] if p]
        head = max((decode_event(p) for p in newest), key=lambda e: e.seq, default=None)
        self.chain = Chain(self.node, head.seq if head else 0, head.hash if head else GENESIS, key)
        self.pending: list[Append] = []
        self._subjects: dict[str, str | None] = {}
        self.recent: deque[tuple[int, bytes]] = deque(maxlen=self.settings.replay_window)
        self.replayed = 0
        self.batches = self.events = self.drained = self.resent = 0
        self.bus = system.bus
        if journal:
            seqs = [decode_event(p).seq for p in journal]
            await self._store(seqs, journal)
            self.resent += len(journal)
        resources.setdefault(
            "audit",
            AuditLog(self.context.ref, timeout=self.settings.record_timeout, system=system),
        )
        resources.setdefault("metrics.sources", {})[self.context.path] = self.metrics
        if not self.shared.ticker:
            self.shared.ticker = True
            system.start_soon(_ticker, self.context.ref, self.shared, self.settings.retry_interval)

    async def on_stop(self) -> None:
        if self.pending:
            await self._flush()
        await self._close_leftovers()
        self.journal.close()

    async def receive(self, message: Any) -> Any:
        if type(message) is Append:
            self.pending.append(message)
            if len(self.pending) >= self.settings.max_batch or self._mailbox_empty():
                await self._flush()
            return None
        if self.pending:
            await self._flush()
        if isinstance(message, Tick):
            for tier in self.tiers[:-1]:
                if not tier.up and tier.name in message.reachable:
                    await self._connect(tier)
            if await self._drain_step():
                self._tell_self(DrainStep())
        elif isinstance(message, DrainStep):
            if await self._drain_step():
                self._tell_self(DrainStep())
        elif isinstance(message, GetStatus):
            return self.status()
        elif isinstance(message, Sync):
            for tier in self.tiers[:-1]:
                if not tier.up:
                    await self._connect(tier)
            steps = 0
            while steps < message.max_steps and await self._drain_step():
                steps += 1
            return self.status()
        else:
            raise TypeError(f"audit writer does not handle {type(message).__name__}")
        return None

    def metrics(self) -> list[tuple[str, str, str, list[tuple[dict[str, str], float]]]]:
        """Prometheus families for ``/metrics`` (see ``somabrain.edge.metrics``)."""
        node = {"node": self.node}
        tiers = [({**node, "tier": t.name}, t) for t in self.tiers]
        return [
            ("soma_audit_events_total", "counter", "Audit events made durable.",
             [(node, self.events)]),
            ("soma_audit_batches_total", "counter", "Group commits (batches) written.",
             [(node, self.batches)]),
            ("soma_audit_head_seq", "gauge", "Sequence number of the chain's newest event.",
             [(node, self.chain.seq)]),
            ("soma_audit_tier_up", "gauge", "1 when the tier takes writes.",
             [(labels, int(t.up)) for labels, t in tiers]),
            ("soma_audit_tier_written_total", "counter", "Events written to the tier.",
             [(labels, t.written) for labels, t in tiers]),
            ("soma_audit_tier_failures_total", "counter", "Times the tier went down.",
             [(labels, t.failures) for labels, t in tiers]),
            ("soma_audit_drained_total", "counter", "Events moved up from a backlog.",
             [(node, self.drained)]),
        ]  # fmt: skip

    def status(self) -> WriterStatus:
        return WriterStatus(
            node=self.node,
            head_seq=self.chain.seq,
            head_hash=self.chain.hash,
            tiers=[tier.status() for tier in self.tiers],
            batches=self.batches,
            events=self.events,
            drained=self.drained,
            resent=self.resent,
            replayed=self.replayed,
        )

    # ------------------------------------------------------------------ writing

    def _mailbox_empty(self) -> bool:
        return self.context.ref.queued == 0

    async def _flush(self) -> None:
        batch, self.pending = self.pending, []
        seal = self.chain.seal_encoded
        sealed = [seal(append.draft) for append in batch]
        events = [event for event, _ in sealed]
        payloads = [payload for _, payload in sealed]
        seqs = [event.seq for event in events]
        try:
            self.journal.write(payloads)
            await self._store(seqs, payloads)
        except BaseException as exc:
            # Not acknowledged. The journal still holds the batch: the next incarnation (the
            # supervisor restarts this one) re-sends it, so the chain never forks.
            error = exc if isinstance(exc, Exception) else AuditUnavailableError("writer killed")
            for append in batch:
                append.receipt.fail(error)
            raise
        for append, seq in zip(batch, seqs, strict=True):
            append.receipt.complete(seq)
        self.batches += 1
        self.events += len(batch)
        if self.settings.publish_subject:
            publish = self.bus.publish
            for event in events:
                subject = self._subject(event.action)
                if subject is not None:
                    await publish(subject, event)

    def _subject(self, action: str) -> str | None:
        """``<publish_subject>.<action>``: one subject per action, so that a consumer
        subscribes to what it uses (the reward worker to ``context.evaluate`` only) and the
        others (reads, at thousands per second) cost a cached lookup instead of a message.
        None for an action that is no valid subject suffix (not published; logged once)."""
        subject = self._subjects.get(action, "")
        if subject == "":
            subject = f"{self.settings.publish_subject}.{action}"
            try:
                validate_subject(subject)
            except InvalidSubjectError:
                logger.warning("audit action %r is not published: not a subject token", action)
                subject = None
            self._subjects[action] = subject
        return subject

    def _write_index(self) -> int:
        first_up = next(i for i, tier in enumerate(self.tiers) if tier.up)
        last_backlog = max(
            (i for i, tier in enumerate(self.tiers) if i and tier.backlog is not False), default=0
        )
        return max(first_up, last_backlog)

    async def _store(self, seqs: list[int], payloads: list[bytes]) -> None:
        for index in range(self._write_index(), len(self.tiers)):
            tier = self.tiers[index]
            if not tier.up:
                continue
            try:
                tier.written += await tier.sink.write(seqs, payloads)
                logger.debug("audit %s took seq %d..%d", tier.name, seqs[0], seqs[-1])
            except SinkUnavailableError as exc:
                self._down(tier, exc)
                continue
            if index:
                tier.backlog = True
            elif tier.remote:
                self.recent.extend(zip(seqs, payloads, strict=True))
            return
        raise AuditUnavailableError("no audit tier took the batch")

    # ------------------------------------------------------------------ tiers and draining

    async def _connect(self, tier: Tier) -> None:
        for event in self.shared.closing:
            with anyio.move_on_after(self.settings.connect_timeout + 10):
                await event.wait()
        self.shared.closing = [e for e in self.shared.closing if not e.is_set()]
        acknowledged = tier.sink.tail_seq
        try:
            await tier.sink.connect()
            if tier is self.tiers[0] and tier.sink.tail_seq < acknowledged:
                await self._replay(tier, acknowledged)
        except SinkUnavailableError as exc:
            tier.last_error = exc.reason
            self.shared.probe[tier.name] = tier.sink.endpoints
            return
        tier.up = True
        tier.last_error = ""
        self.shared.probe.pop(tier.name, None)
        if hasattr(tier.sink, "has_backlog"):
            tier.backlog = bool(tier.sink.has_backlog)
        logger.info("audit tier %s up (tail seq %d)", tier.name, tier.sink.tail_seq)

    async def _replay(self, tier: Tier, acknowledged: int) -> None:
        """The top tier came back without events it had acknowledged: re-send them."""
        held = tier.sink.tail_seq
        lost = [(s, p) for s, p in self.recent if held < s <= acknowledged]
        logger.error(
            "audit tier %s lost acknowledged events (holds seq %d, acknowledged %d); "
            "re-sending %d of them from memory",
            tier.name, held, acknowledged, len(lost),
        )  # fmt: skip
        if not lost or lost[0][0] != held + 1:
            logger.error("audit events after seq %d are not in memory any more", held)
        if lost:
            await tier.sink.write([s for s, _ in lost], [p for _, p in lost])
            self.replayed += len(lost)

    def _down(self, tier: Tier, exc: SinkUnavailableError) -> None:
        logger.warning("audit tier %s down: %s", tier.name, exc.reason)
        tier.up = False
        tier.failures += 1
        tier.last_error = exc.reason
        self.shared.probe[tier.name] = tier.sink.endpoints
        # Close in the background (a producer may wait for its request timeout), but make the
        # next connect wait for it: a late batch of the old producer must not land after the
        # new producer's first one.
        done = anyio.Event()
        self.shared.closing.append(done)
        self.context.system.start_soon(_close, tier.sink, done)

    async def _drain_step(self) -> bool:
        """Move one batch of the oldest backlog one tier up; True if it moved something."""
        for index in range(1, len(self.tiers)):
            tier = self.tiers[index]
            if tier.backlog is False:
                continue
            if tier.backlog is None or not tier.up:
                return False  # older events may sit there: nothing younger may overtake them
            target = next((t for t in self.tiers[:index] if t.up), None)
            if target is None:
                return False
            try:
                records = await tier.sink.read_batch(
                    target.sink.tail_seq, self.settings.drain_batch
                )
            except SinkUnavailableError as exc:
                self._down(tier, exc)
                return False
            if not records:
                tier.backlog = False
                continue
            seqs = [seq for seq, _ in records]
            try:
                moved = await target.sink.write(seqs, [payload for _, payload in records])
            except SinkUnavailableError as exc:
                self._down(target, exc)
                return False
            target.written += moved
            self.drained += moved
            logger.debug(
                "audit drained %s -> %s seq %d..%d (%d new)",
                tier.name, target.name, seqs[0], seqs[-1], moved,
            )  # fmt: skip
            if target is not self.tiers[0]:
                target.backlog = True
            elif target.remote:
                self.recent.extend(records)
            try:
                await tier.sink.discard_through(seqs[-1])
            except SinkUnavailableError as exc:
                self._down(tier, exc)
                return False
            return True
        return False

    def _tell_self(self, message: Any) -> None:
        with contextlib.suppress(MailboxFullError, ActorStoppedError):
            self.context.ref.tell_nowait(message)  # if it does not fit, the ticker resumes

    async def _close_leftovers(self) -> None:
        sinks, self.shared.open_sinks = self.shared.open_sinks, []
        for sink in sinks:
            with anyio.CancelScope(shield=True):
                await sink.close()


async def _close(sink: Any, done: anyio.Event) -> None:
    try:
        await sink.close()
    except Exception as exc:
        logger.warning("closing audit tier %s: %r", sink.name, exc)
    finally:
        done.set()


async def _ticker(ref: ActorRef, shared: _Shared, interval: float) -> None:
    """Probe the tiers that are down; tell the writer which answer. Lives as long as the
    writer's mailbox (across restarts)."""
    while ref.alive:
        await anyio.sleep(interval)
        reachable = set()
        for name, endpoints in list(shared.probe.items()):
            for host, port in endpoints:
                with anyio.move_on_after(min(interval, 1.0)):
                    try:
                        stream = await anyio.connect_tcp(host, port)
                    except OSError:
                        continue
                    await stream.aclose()
                    reachable.add(name)
                    break
        if ref.alive:
            with contextlib.suppress(MailboxFullError, ActorStoppedError):
                ref.tell_nowait(Tick(frozenset(reachable)))


async def _read_key(path: str) -> bytes | None:
    if not path:
        return None
    data: bytes = await anyio.Path(path).read_bytes()
    return data.strip()
