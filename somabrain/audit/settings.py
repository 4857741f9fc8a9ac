"""The ``[audit]`` config section (merged into ``somabrain.config.SomaConfig``)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from .._urls import check_redis_url

__all__ = ["AuditSettings"]

PositiveInt = Annotated[int, Meta(ge=1)]
PositiveFloat = Annotated[float, Meta(gt=0)]


class AuditSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Where audit events go. The cascade is Kafka (when ``[kafka] bootstrap`` is set), then
    the Redis Stream (when ``redis_url`` is set), then the local spool (always)."""

    #: Kafka topic for audit events (acks=all). Used when ``[kafka] bootstrap`` is set.
    topic: str = "soma.audit"
    #: ``redis://host:port/db``; empty: no Redis tier.
    redis_url: str = ""
    #: The node's stream is ``<prefix><node name>`` (one chain per stream).
    redis_stream_prefix: str = "soma:audit:"
    #: Spool and journal directory; empty: ``<data-dir>/audit``.
    directory: str = ""
    #: ``false`` trades power-loss safety for speed (the spool then survives a kill -9 only).
    fsync: bool = True
    segment_bytes: PositiveInt = 16 << 20
    #: Most events sealed and written as one batch.
    max_batch: PositiveInt = 2048
    #: Events moved per step while draining a backlog (new events interleave between steps).
    drain_batch: PositiveInt = 2000
    #: Seconds between probes of a tier that is down.
    retry_interval: PositiveFloat = 1.0
    #: Seconds a tier may take to connect, or to acknowledge one batch, before the writer
    #: falls back to the next tier.
    connect_timeout: PositiveFloat = 2.0
    write_timeout: PositiveFloat = 2.0
    #: Seconds ``record()`` waits for durability before it gives up (AuditUnavailableError).
    record_timeout: PositiveFloat = 10.0
    #: Events the top tier acknowledged that the writer keeps in memory: when that tier comes
    #: back holding less than it acknowledged (a broker that lost acked writes), the writer
    #: re-sends the lost ones from here before anything newer.
    replay_window: PositiveInt = 20_000
    #: Durable events are also published on the bus, each on ``<publish_subject>.<action>``
    #: (``soma.audit.memory.remember``...; subscribe to ``soma.audit.>`` for all of them);
    #: "" to turn off.
    publish_subject: str = "soma.audit"
    #: File holding the key of a keyed chain (HMAC-SHA256); empty: plain SHA-256.
    chain_key_file: str = ""
    #: Also record read access: ``POST /memory/recall`` and ``GET /memory/{key}`` leave a
    #: ``memory.recall`` / ``memory.get`` event (who read, the query's SHA-256 never the
    #: query, how many results and their keys) and answer its ``audit_id``. Off by default: an
    #: audited read waits for a durable write (see ``benchmarks/audit.py`` for the cost).
    reads: bool = False

    def __post_init__(self) -> None:
        if self.redis_url:
            check_redis_url(self.redis_url, "redis_url")
